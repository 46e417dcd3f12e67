//! The stream the board lives in: the configuration this server creates it with, and the
//! check that an existing one can hold what this server promises.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};

use super::ClusterError;
use crate::board::Retention;

/// Room for the headers each message carries (time, address, port, message id) besides
/// its text, in the stream's and the NATS server's message size limits.
pub(super) const HEADER_ROOM: u64 = 1024;

/// What this server needs of the stream.
#[derive(Debug, Clone)]
pub(super) struct Needs {
    pub(super) name: String,
    pub(super) subject: String,
    pub(super) replicas: usize,
    pub(super) retention: Retention,
    pub(super) dedup_window: Duration,
    /// The largest message: `--max-request-size` plus [`HEADER_ROOM`].
    pub(super) max_message: u64,
}

/// A limit of the stream: `None` is unlimited (NATS writes -1, or 0 for ages).
fn limit(v: i64) -> Option<u64> {
    u64::try_from(v).ok().filter(|&v| v > 0)
}

fn to_i64(v: Option<u64>) -> i64 {
    v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

impl Needs {
    /// The configuration a new stream is created with: retention as stream limits, the
    /// deduplication window as its duplicate window.
    pub(super) fn config(&self) -> Config {
        Config {
            name: self.name.clone(),
            subjects: vec![self.subject.clone()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            discard: DiscardPolicy::Old,
            num_replicas: self.replicas,
            max_messages: to_i64(self.retention.messages),
            max_bytes: to_i64(self.retention.bytes),
            max_age: self.retention.age.unwrap_or(Duration::ZERO),
            duplicate_window: self.dedup_window,
            max_message_size: i32::try_from(self.max_message).unwrap_or(i32::MAX),
            // A replica holds a run of consecutive ids: a message deleted on its own would
            // be a hole it cannot follow (see `gap`).
            deny_delete: true,
            ..Default::default()
        }
    }

    /// Checks an existing stream's configuration; the first thing it cannot hold is the
    /// error, naming the setting to change.
    pub(super) fn check(&self, have: &Config) -> Result<(), ClusterError> {
        self.check_kind(have)?;
        self.check_sizes(have)?;
        self.check_retention(have)
    }

    /// Whether the stream works as a board at all: our subject, limits retention that
    /// drops the oldest, no per-subject limit, no single deletes, not sealed. These are
    /// fixed by another `--nats-stream`, or an edit of the stream.
    fn check_kind(&self, have: &Config) -> Result<(), ClusterError> {
        let name = &self.name;
        if !have.subjects.iter().any(|s| s == &self.subject) {
            return bad(format!(
                "stream {name} does not take subject {} (it takes {:?}): use another --nats-stream",
                self.subject, have.subjects
            ));
        }
        if have.retention != RetentionPolicy::Limits {
            return bad(format!(
                "stream {name} does not use limits retention: use another --nats-stream"
            ));
        }
        if have.discard != DiscardPolicy::Old {
            return bad(format!(
                "stream {name} discards new messages when full: set its discard policy to old"
            ));
        }
        if limit(have.max_messages_per_subject).is_some() {
            return bad(format!(
                "stream {name} limits messages per subject: remove that limit"
            ));
        }
        if !have.deny_delete {
            return bad(format!(
                "stream {name} allows deleting single messages, which the servers' replicas cannot follow: set deny_delete on it (nats stream edit {name} --deny-delete) or use another --nats-stream"
            ));
        }
        if have.sealed {
            return bad(format!(
                "stream {name} is sealed: use another --nats-stream"
            ));
        }
        Ok(())
    }

    /// Whether the stream takes the largest message this server accepts, and remembers
    /// tokens for as long as `--dedup-window` promises.
    fn check_sizes(&self, have: &Config) -> Result<(), ClusterError> {
        let name = &self.name;
        if let Some(size) = limit(have.max_message_size.into())
            && size < self.max_message
        {
            return bad(format!(
                "stream {name} takes messages up to {size} bytes, this server needs {} (--max-request-size plus {HEADER_ROOM}): raise the stream's max_msg_size or lower --max-request-size",
                self.max_message
            ));
        }
        if have.duplicate_window < self.dedup_window {
            return bad(format!(
                "stream {name} has a duplicate window of {}, shorter than --dedup-window {}: raise the stream's duplicate window or lower --dedup-window",
                humantime::format_duration(have.duplicate_window),
                humantime::format_duration(self.dedup_window)
            ));
        }
        Ok(())
    }

    /// Whether the stream keeps at least what the retention options promise (it may keep
    /// more: each server trims its replica by its own).
    fn check_retention(&self, have: &Config) -> Result<(), ClusterError> {
        let name = &self.name;
        keeps(
            name,
            "messages",
            "--retain-messages",
            limit(have.max_messages),
            self.retention.messages,
        )?;
        keeps(
            name,
            "bytes",
            "--retain-bytes",
            limit(have.max_bytes),
            self.retention.bytes,
        )?;
        let age = |d: Duration| (!d.is_zero()).then_some(d.as_secs());
        keeps(
            name,
            "seconds of age",
            "--retain-age",
            age(have.max_age),
            self.retention.age.and_then(age),
        )
    }
}

/// A refusal of the stream, saying what to change.
fn bad(what: String) -> Result<(), ClusterError> {
    Err(ClusterError::Stream(what))
}

/// The stream must keep at least what retention promises: `have` and `want` are limits,
/// `None` unlimited.
fn keeps(
    name: &str,
    what: &str,
    option: &str,
    have: Option<u64>,
    want: Option<u64>,
) -> Result<(), ClusterError> {
    match (have, want) {
        (Some(h), None) => Err(ClusterError::Stream(format!(
            "stream {name} keeps at most {h} {what}, but {option} is none: remove the stream's limit or set {option}"
        ))),
        (Some(h), Some(w)) if h < w => Err(ClusterError::Stream(format!(
            "stream {name} keeps at most {h} {what}, fewer than {option} {w}: raise the stream's limit or lower {option}"
        ))),
        _ => Ok(()),
    }
}

/// Refuses a stream with messages deleted in its middle: a replica cannot hold the holes.
pub(super) fn check_holes(name: &str, deleted: Option<u64>) -> Result<(), ClusterError> {
    match deleted {
        Some(n) if n > 0 => Err(ClusterError::Stream(format!(
            "stream {name} has {n} messages deleted in its middle, which the servers' replicas cannot hold: purge it up to the newest deleted one (nats stream purge {name} --seq ID) or use another --nats-stream"
        ))),
        _ => Ok(()),
    }
}

/// Checks that the NATS server passes messages as large as the board's.
pub(super) fn check_payload(max_payload: usize, needs: &Needs) -> Result<(), ClusterError> {
    if (max_payload as u64) < needs.max_message {
        return Err(ClusterError::Stream(format!(
            "the NATS server's max_payload is {max_payload} bytes, this server needs {} (--max-request-size plus {HEADER_ROOM}): raise max_payload in the NATS server's configuration or lower --max-request-size",
            needs.max_message
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs() -> Needs {
        Needs {
            name: "mboard".into(),
            subject: "mboard.messages".into(),
            replicas: 3,
            retention: Retention {
                messages: Some(1_000),
                bytes: None,
                age: Some(Duration::from_secs(3_600)),
            },
            dedup_window: Duration::from_secs(120),
            max_message: (16 << 20) + HEADER_ROOM,
        }
    }

    fn refusal(have: &Config) -> String {
        match needs().check(have) {
            Err(e) => e.to_string(),
            Ok(()) => panic!("accepted {have:?}"),
        }
    }

    #[test]
    fn the_stream_it_creates_passes_its_own_check() {
        let n = needs();
        let config = n.config();
        assert_eq!(config.max_messages, 1_000);
        assert_eq!(config.max_bytes, -1);
        assert_eq!(config.duplicate_window, Duration::from_secs(120));
        n.check(&config).expect("own config");
        // Larger limits everywhere are fine: the server trims its replica by its own.
        let roomy = Config {
            max_messages: 5_000,
            max_age: Duration::ZERO,
            max_message_size: -1,
            duplicate_window: Duration::from_secs(600),
            ..config
        };
        n.check(&roomy).expect("roomier");
    }

    #[test]
    fn each_shortfall_names_its_setting() {
        let good = needs().config();
        let small = Config {
            max_message_size: 1 << 20,
            ..good.clone()
        };
        assert!(
            refusal(&small).contains("max_msg_size"),
            "{}",
            refusal(&small)
        );
        let window = Config {
            duplicate_window: Duration::from_secs(5),
            ..good.clone()
        };
        assert!(refusal(&window).contains("--dedup-window"));
        let few = Config {
            max_messages: 10,
            ..good.clone()
        };
        assert!(refusal(&few).contains("--retain-messages 1000"));
        let bytes = Config {
            max_bytes: 1 << 20,
            ..good.clone()
        };
        assert!(refusal(&bytes).contains("--retain-bytes is none"));
        let young = Config {
            max_age: Duration::from_secs(60),
            ..good.clone()
        };
        assert!(refusal(&young).contains("--retain-age"));
        let new = Config {
            discard: DiscardPolicy::New,
            ..good.clone()
        };
        assert!(refusal(&new).contains("discard"));
        let deletable = Config {
            deny_delete: false,
            ..good.clone()
        };
        assert!(refusal(&deletable).contains("--deny-delete"));
        let other = Config {
            subjects: vec!["other.>".into()],
            ..good
        };
        assert!(refusal(&other).contains("--nats-stream"));
        let payload = check_payload(1 << 20, &needs()).expect_err("1 MiB");
        assert!(payload.to_string().contains("max_payload"), "{payload}");
        check_payload(17 << 20, &needs()).expect("17 MiB");
        check_holes("mboard", None).expect("none reported");
        check_holes("mboard", Some(0)).expect("none");
        let holes = check_holes("mboard", Some(2)).expect_err("two holes");
        assert!(holes.to_string().contains("purge"), "{holes}");
    }
}

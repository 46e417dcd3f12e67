//! Retention: which of the oldest messages a store stops keeping.
//!
//! Sans-IO: a store asks [`Retention::exceeded`] about its oldest message with the time it
//! is given, so the rule runs the same under the trimming thread and under a test's manual
//! clock. Messages go oldest first, until every limit holds; ids are never reused.

use std::time::Duration;

use mboard_protocol::Timestamp;

/// Limits on what a store keeps: the newest messages by count, by bytes and by age. Any
/// combination may be set; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Keep at most this many messages (`--retain-messages`).
    pub messages: Option<u64>,
    /// Keep at most this many bytes of messages (`--retain-bytes`), counted as the store
    /// says: bytes in memory for the memory board, bytes on disk for the journal.
    pub bytes: Option<u64>,
    /// Keep a message for at most this long after its publish (`--retain-age`).
    pub age: Option<Duration>,
}

/// What a store keeps, as retention weighs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    /// Messages kept.
    pub messages: u64,
    /// Their bytes, counted as the store counts them.
    pub bytes: u64,
    /// When the oldest kept message was published (`None`: nothing is kept).
    pub oldest: Option<Timestamp>,
}

impl Retention {
    /// Keeps everything.
    pub const UNLIMITED: Retention = Retention {
        messages: None,
        bytes: None,
        age: None,
    };

    /// Whether any limit is set.
    pub(crate) fn is_limited(&self) -> bool {
        self.messages.is_some() || self.bytes.is_some() || self.age.is_some()
    }

    /// Whether the oldest kept message must go at `now` for the limits to hold.
    pub(crate) fn exceeded(&self, held: Held, now: Timestamp) -> bool {
        let Some(oldest) = held.oldest else {
            return false;
        };
        self.messages.is_some_and(|m| held.messages > m)
            || self.bytes.is_some_and(|b| held.bytes > b)
            || self.age_exceeded(oldest, now)
    }

    /// Whether the count or byte limit is exceeded (what a publish can change; age is
    /// the clock's business).
    pub(crate) fn size_exceeded(&self, messages: u64, bytes: u64) -> bool {
        self.messages.is_some_and(|m| messages > m) || self.bytes.is_some_and(|b| bytes > b)
    }

    /// Whether a message published at `at` is past the age limit at `now`.
    pub(crate) fn age_exceeded(&self, at: Timestamp, now: Timestamp) -> bool {
        self.age
            .is_some_and(|age| now.0.saturating_sub(at.0) >= micros(age))
    }

    /// When a message published at `at` passes the age limit, if there is one.
    pub(crate) fn expiry(&self, at: Timestamp) -> Option<Timestamp> {
        self.age
            .map(|age| Timestamp(at.0.saturating_add(micros(age))))
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(messages: u64, bytes: u64, oldest_secs: u64) -> Held {
        Held {
            messages,
            bytes,
            oldest: Some(Timestamp(oldest_secs * 1_000_000)),
        }
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp(secs * 1_000_000)
    }

    #[test]
    fn each_limit_alone_and_together() {
        let count = Retention {
            messages: Some(3),
            ..Retention::UNLIMITED
        };
        assert!(!count.exceeded(held(3, u64::MAX, 0), at(1 << 40)));
        assert!(count.exceeded(held(4, 0, 0), at(0)));
        let bytes = Retention {
            bytes: Some(100),
            ..Retention::UNLIMITED
        };
        assert!(!bytes.exceeded(held(1_000, 100, 0), at(0)));
        assert!(bytes.exceeded(held(1, 101, 0), at(0)));
        let age = Retention {
            age: Some(Duration::from_secs(60)),
            ..Retention::UNLIMITED
        };
        assert!(!age.exceeded(held(1_000, 1 << 40, 100), at(159)));
        assert!(
            age.exceeded(held(1, 1, 100), at(160)),
            "60 s old is too old"
        );
        assert_eq!(age.expiry(at(100)), Some(at(160)));
        // A clock behind the message keeps it.
        assert!(!age.exceeded(held(1, 1, 100), at(50)));
        let all = Retention {
            messages: Some(3),
            bytes: Some(100),
            age: Some(Duration::from_secs(60)),
        };
        assert!(!all.exceeded(held(3, 100, 100), at(159)));
        assert!(all.exceeded(held(4, 100, 100), at(159)));
        assert!(all.exceeded(held(3, 101, 100), at(159)));
        assert!(all.exceeded(held(3, 100, 100), at(160)));
    }

    #[test]
    fn nothing_kept_is_never_exceeded_and_unlimited_keeps_all() {
        let all = Retention {
            messages: Some(0),
            bytes: Some(0),
            age: Some(Duration::ZERO),
        };
        let empty = Held {
            messages: 0,
            bytes: 0,
            oldest: None,
        };
        assert!(!all.exceeded(empty, at(1)));
        assert!(!Retention::UNLIMITED.is_limited());
        assert!(
            !Retention::UNLIMITED.exceeded(held(u64::MAX, u64::MAX, 0), at(u64::MAX / 2_000_000))
        );
        assert_eq!(Retention::UNLIMITED.expiry(at(1)), None);
    }
}

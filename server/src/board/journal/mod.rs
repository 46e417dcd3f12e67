//! The durable board: a journal of segment files with group commit, and an index in memory.
//!
//! The data directory holds a stub, the segments and a lock ([`layout`]; bytes in
//! [`format`]). Records are written in id order; kept ids are consecutive. Start-up replays
//! every segment ([`recovery`]), after upgrading a single-file journal of an older format
//! ([`upgrade`]); one thread appends, rolls segments, trims and deletes them ([`writer`]);
//! reads go straight to the files.
//!
//! Memory holds 16 bytes a message (its offset and a running size sum; 20 under an age
//! limit); texts are read back with positioned reads, and the page cache does the caching.
//!
//! `5:` tokens are part of their records, so start-up rebuilds the token table from the
//! records inside the window, and the writer resolves each token in the table only once its
//! record is written (and synced): a resend never learns an id that a crash could take back,
//! and a crash between the write and the reply leaves the token remembered.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use bytes::Bytes;
use mboard_protocol::{Entry, Message, MessageId, PublishToken};
use prometheus_client::registry::Registry;

use super::retention::Retention;
use super::tokens::{TokenCounts, Tokens};
use super::{Board, BoardError, Published, Span, Status};
use format::{Check, Kind, MAX_TEXT, Place, RECORD_HEAD, Salt, record_at};
use index::{Index, Piece};
use window::Window;
use writer::health::SharedState;

mod address;
mod error;
#[cfg(test)]
mod exactly_once;
mod format;
mod index;
mod layout;
mod legacy;
mod open;
mod recovery;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod testing;
mod upgrade;
mod window;
mod writer;

pub(crate) use error::JournalError;
pub(super) use open::try_lock;

/// When a publish is acknowledged relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Written and fsync'ed before the reply: survives power failure.
    Always,
    /// Written before the reply, flushed by the OS later: survives a crash of the server
    /// process, but the last messages can be lost on power failure.
    Never,
}

impl FromStr for Fsync {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Fsync::Always),
            "never" => Ok(Fsync::Never),
            other => Err(format!(
                "unknown fsync policy {other:?} (use always or never)"
            )),
        }
    }
}

impl fmt::Display for Fsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fsync::Always => "always",
            Fsync::Never => "never",
        })
    }
}

/// Where the journal lives and how it syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// The data directory (created if missing).
    pub dir: PathBuf,
    /// The fsync policy.
    pub fsync: Fsync,
    /// A segment file is closed and the next one started once it holds this many bytes
    /// (a record larger than that still fits: its segment grows past it).
    pub segment_size: u64,
    /// At shutdown, how long to wait for the disk to take what is queued; past it the
    /// server exits without acknowledging what is not durable.
    pub shutdown_grace: Duration,
}

impl JournalConfig {
    /// The journal in `dir`, with the defaults: `--fsync always`, 64 MiB segments, a 10 s
    /// shutdown grace.
    pub fn new(dir: PathBuf) -> Self {
        JournalConfig {
            dir,
            fsync: Fsync::Always,
            segment_size: 64 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The durable board.
#[derive(Debug)]
pub(crate) struct Journal {
    index: Arc<RwLock<Index>>,
    salt: Salt,
    /// Tokens of `5:` publishes inside the window; the writer resolves them.
    tokens: Tokens,
    /// Whether the writer can write, for metrics.
    state: Arc<SharedState>,
    /// The writer also holds the data directory's lock, until it ends.
    writer: writer::Handle,
}

impl Journal {
    fn index(&self) -> Result<RwLockReadGuard<'_, Index>, BoardError> {
        self.index.read().map_err(|_| BoardError::Poisoned)
    }

    /// Trims what retention no longer allows at `now` (a manual clock), as the writer does
    /// by the wall clock on its own, and deletes the segments that leaves empty.
    #[cfg(test)]
    pub(crate) async fn trim(&self, now: mboard_protocol::Timestamp) -> Result<(), BoardError> {
        Ok(self.writer.trim(now).await?)
    }

    /// Sizes message `id`'s entry from the start of its record, without its text.
    fn read_len(&self, id: MessageId) -> Result<Option<usize>, BoardError> {
        let Some((file, segment, path, offset)) = self
            .index()?
            .locate(id.0)
            .map(|(s, offset)| (s.file.clone(), s.first, s.path.clone(), offset))
        else {
            return Ok(None);
        };
        let mut head = [0u8; RECORD_HEAD];
        let n = file
            .read_at(&mut head, offset)
            .map_err(JournalError::Storage)?;
        let place = Place {
            salt: self.salt,
            segment,
            offset,
        };
        let len =
            format::entry_len(&head[..n], place).ok_or(JournalError::Damaged { path, offset })?;
        Ok(Some(len))
    }

    /// Reads the messages of `span` still kept, a segment at a time, each in one
    /// positioned read.
    fn read(&self, span: &Span) -> Result<Vec<Message>, BoardError> {
        let pieces = self.index()?.pieces(span);
        let mut messages = Vec::with_capacity(span.count as usize);
        for piece in pieces {
            self.read_piece(&piece, &mut messages)?;
        }
        Ok(messages)
    }

    fn read_piece(&self, piece: &Piece, out: &mut Vec<Message>) -> Result<(), BoardError> {
        // A window the size of the piece: one read, and every text shares its buffer.
        let mut window = Window::new(&piece.file, piece.to, (piece.to - piece.from) as usize);
        let (mut at, mut id) = (piece.from, piece.first);
        let damaged = |offset| JournalError::Damaged {
            path: piece.path.clone(),
            offset,
        };
        while id < piece.first + piece.count {
            let place = Place {
                salt: self.salt,
                segment: piece.segment,
                offset: at,
            };
            let check = record_at(&mut window, place).map_err(JournalError::Storage)?;
            let Check::Valid(record) = check else {
                return Err(damaged(at).into());
            };
            if let Kind::Message { from, .. } = record.kind {
                if record.id.0 != id {
                    return Err(damaged(at).into());
                }
                let text = format::text(&window, at, &record);
                out.push(Message {
                    id: record.id,
                    entry: Entry {
                        time: record.time,
                        from,
                        text,
                    },
                });
                id += 1;
            }
            at += record.len as u64;
            if at >= piece.to && id < piece.first + piece.count {
                return Err(damaged(at).into());
            }
        }
        Ok(())
    }
}

impl Board for Journal {
    fn defers_publish(&self) -> bool {
        true
    }

    fn register_metrics(&self, registry: &mut Registry) {
        self.writer.register_metrics(registry);
    }

    async fn publish(&self, from: SocketAddr, text: Bytes) -> Result<MessageId, BoardError> {
        if text.len() > MAX_TEXT {
            return Err(JournalError::TooLarge.into());
        }
        Ok(self.writer.publish(from, text, None).await?)
    }

    async fn publish_once(
        &self,
        from: SocketAddr,
        token: PublishToken,
        text: Bytes,
    ) -> Result<Published, BoardError> {
        if text.len() > MAX_TEXT {
            return Err(JournalError::TooLarge.into());
        }
        let claimed = match self.tokens.claim(token).await {
            Ok(claimed) => claimed,
            Err(id) => return Ok(Published::Duplicate(id)),
        };
        // The writer resolves the claim once the record is durable; if the publish fails
        // anywhere on the way, the claim is dropped, which abandons the token.
        let id = self.writer.publish(from, text, Some(claimed)).await?;
        Ok(Published::Stored(id))
    }

    fn tokens(&self) -> Option<TokenCounts> {
        Some(self.tokens.counts())
    }

    /// Hands the limits to the writer, which trims to them as soon as it has written the
    /// batch at hand. An age limit needs the publish times that only a journal started
    /// with one keeps, so it is refused on one started without.
    fn set_retention(&self, retention: Retention) -> Result<(), BoardError> {
        if retention.age.is_some() && !self.index()?.timed() {
            return Err(JournalError::AgeNeedsRestart.into());
        }
        Ok(self.writer.set_retention(retention)?)
    }

    fn oldest(&self) -> Result<MessageId, BoardError> {
        Ok(MessageId(self.index()?.sums().first()))
    }

    fn status(&self) -> Option<Status> {
        let index = self.index().ok()?;
        let held = index.held();
        Some(Status {
            messages: held.messages,
            bytes: held.bytes,
            oldest: MessageId(index.sums().first()),
            trimmed: index.trimmed(),
            state: self.state.get(),
        })
    }

    fn get(&self, id: MessageId) -> Result<Option<Entry>, BoardError> {
        let one = Span {
            start: id.0,
            count: 1,
            ..Span::default()
        };
        if self.index()?.sums().clip(&one).count == 0 {
            return Ok(None);
        }
        Ok(self.read(&one)?.pop().map(|m| m.entry))
    }

    fn entry_len(&self, id: MessageId) -> Result<Option<usize>, BoardError> {
        self.read_len(id)
    }

    fn span(&self, n: u64) -> Result<Span, BoardError> {
        Ok(self.index()?.sums().span(n))
    }

    fn span_after(&self, after: MessageId, max: u64) -> Result<Span, BoardError> {
        Ok(self.index()?.sums().span_after(after.0, max))
    }

    fn messages(&self, span: &Span) -> Result<Vec<Message>, BoardError> {
        self.read(span)
    }
}

#[cfg(test)]
impl Journal {
    /// The writer, for tests that stall it or make its disk fail.
    pub(in crate::board::journal) fn writer(&self) -> &writer::Handle {
        &self.writer
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::format::{RECORD_HEADER, SEGMENT_HEADER};
    use super::recovery::Recovery;
    use super::testing::{TEXTS, TempDir, all, from, open, publish_all, runtime};
    use super::*;

    #[test]
    fn entry_lengths_come_from_the_record_start_and_match_the_entries() {
        let dir = TempDir::new();
        let (j, _) = open(&dir, Fsync::Never).expect("open");
        let big = vec![b'b'; 100_000];
        let mut texts: Vec<&[u8]> = TEXTS.to_vec();
        texts.push(&big);
        let ids = publish_all(&j, &texts);
        let v6 = runtime().block_on(async {
            let from = SocketAddr::from(([0xfe80, 0, 0, 0, 0, 0, 0, 1], 65_535));
            j.publish(from, Bytes::from_static(b"over IPv6"))
                .await
                .expect("publish")
        });
        for id in ids.into_iter().chain([v6]) {
            let entry = j.get(id).expect("get").expect("exists");
            assert_eq!(
                j.entry_len(id).expect("len"),
                Some(entry.encoded_len()),
                "{id}"
            );
        }
        assert_eq!(j.entry_len(MessageId(99)).expect("len"), None);
    }

    #[test]
    fn messages_survive_reopening_and_ids_continue() {
        let dir = TempDir::new();
        let before = {
            let (j, rec) = open(&dir, Fsync::Always).expect("open");
            assert_eq!(
                rec,
                Recovery {
                    messages: 0,
                    torn: None,
                    format: 3,
                    tokens: 0,
                    segments: 1,
                    oldest: 0,
                }
            );
            assert_eq!(
                publish_all(&j, &TEXTS),
                (0..4).map(MessageId).collect::<Vec<_>>()
            );
            all(&j)
        };
        let (j, rec) = open(&dir, Fsync::Never).expect("reopen");
        assert_eq!(
            rec,
            Recovery {
                messages: 4,
                torn: None,
                format: 3,
                tokens: 0,
                segments: 1,
                oldest: 0,
            }
        );
        assert_eq!(all(&j), before);
        assert_eq!(before[2].entry.text, Bytes::from_static(TEXTS[2]));
        assert_eq!(before[1].entry.from, from(1));
        assert_eq!(
            j.get(MessageId(3)).expect("get").map(|e| e.text),
            Some(Bytes::from_static(b"last"))
        );
        assert_eq!(j.get(MessageId(4)).expect("get"), None);
        assert_eq!(publish_all(&j, &[b"next"]), vec![MessageId(4)]);
        let span = j.span(2).expect("span");
        assert_eq!(
            span.ids().collect::<Vec<_>>(),
            vec![MessageId(3), MessageId(4)]
        );
    }

    #[test]
    fn spans_size_replies_exactly() {
        let dir = TempDir::new();
        let (j, _) = open(&dir, Fsync::Never).expect("open");
        let texts: Vec<Vec<u8>> = (0..30).map(|i| vec![b'x'; i * 7]).collect();
        let refs: Vec<&[u8]> = texts.iter().skip(1).map(Vec::as_slice).collect();
        publish_all(&j, &refs);
        for n in [0, 1, 5, 29, 100] {
            let span = j.span(n).expect("span");
            let mut out = Vec::new();
            mboard_protocol::encode_messages(j.messages(&span).expect("read").iter(), &mut out);
            assert_eq!(
                mboard_protocol::messages_reply_len(span.count, span.records),
                out.len() as u64
            );
        }
    }
    #[test]
    fn a_second_server_cannot_open_the_same_directory() {
        let dir = TempDir::new();
        let (_first, _) = open(&dir, Fsync::Always).expect("open");
        let err = open(&dir, Fsync::Always).expect_err("locked");
        assert!(matches!(err, JournalError::Locked { .. }), "{err}");
        assert!(
            err.to_string().contains("in use by another mboard-server"),
            "{err}"
        );
    }

    #[test]
    fn a_record_damaged_after_start_up_reads_as_an_error() {
        let dir = TempDir::new();
        let (j, _) = open(&dir, Fsync::Always).expect("open");
        publish_all(&j, &TEXTS);
        let f = OpenOptions::new()
            .write(true)
            .open(dir.segment(0))
            .expect("open");
        f.write_all_at(b"X", SEGMENT_HEADER + RECORD_HEADER as u64 + 30)
            .expect("damage");
        let err = j.get(MessageId(0)).expect_err("damaged");
        let BoardError::Storage(e) = &err else {
            panic!("{err}")
        };
        assert!(matches!(
            e.downcast_ref::<JournalError>(),
            Some(JournalError::Damaged {
                offset: SEGMENT_HEADER,
                ..
            })
        ));
        assert!(
            err.to_string().contains("00000000000000000000.seg"),
            "{err}"
        );
        assert!(j.entry_len(MessageId(0)).is_ok(), "the header holds");
        assert!(j.get(MessageId(1)).is_ok());
    }
}

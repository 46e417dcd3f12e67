//! The durable board: an append-only journal with group commit, and an index in memory.
//!
//! The file is `<data dir>/journal` (layout in [`format`]); records are written in id
//! order, ids consecutive from 0. Start-up replays it ([`recovery`]); one thread appends
//! to it ([`writer`]); reads go straight to the file.
//!
//! Memory holds 16 bytes a message (its offset and a running size sum); texts are read back
//! with positioned reads, and the page cache does the caching.
//!
//! `5:` tokens are part of their records, so start-up rebuilds the token table from the
//! records inside the window, and the writer resolves each token in the table only once its
//! record is written (and synced): a resend never learns an id that a crash could take back,
//! and a crash between the write and the reply leaves the token remembered.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use mboard_protocol::{Entry, Message, MessageId, PublishToken, Timestamp};
use prometheus_client::registry::Registry;
use tracing::info;

use super::retention::Retention;
use super::sums::Sums;
use super::tokens::{TokenCounts, TokenLimits, Tokens};
use super::{Board, BoardError, Published, Span};
use error::io_at;
use format::{Check, MAX_TEXT, RECORD_HEAD, VERSION, VERSION_AT, Window, record_at};

mod error;
#[cfg(test)]
mod exactly_once;
mod format;
mod recovery;
#[cfg(test)]
mod testing;
mod writer;

pub use error::JournalError;
pub use recovery::{Recovery, Torn};

/// The journal file inside the data directory.
const JOURNAL_FILE: &str = "journal";
/// The lock file inside the data directory.
const LOCK_FILE: &str = "LOCK";

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

/// Where each message's record lies, and the sums behind spans.
#[derive(Debug, Default)]
struct Index {
    /// Offset of message `i`'s record.
    offsets: Vec<u64>,
    sums: Sums,
    /// End of the last record written (and synced, under `always`).
    end: u64,
}

impl Index {
    /// Counts one more message, whose record starts at `offset`.
    fn push(&mut self, offset: u64, record_len: u64) {
        self.offsets.push(offset);
        self.sums.push(record_len);
    }
}

/// The durable board.
#[derive(Debug)]
pub struct Journal {
    index: Arc<RwLock<Index>>,
    reader: File,
    /// Tokens of `5:` publishes inside the window; the writer resolves them.
    tokens: Tokens,
    /// Declared before the lock, so the writer finishes before the lock is released.
    writer: writer::Handle,
    /// Held for the journal's lifetime; the OS releases the lock when the process dies.
    _lock: File,
}

impl Journal {
    /// Opens (or creates) the journal in `config.dir`, replays it (upgrading an older
    /// format), rebuilds the token table within `limits` and starts the writer.
    pub fn open(
        config: &JournalConfig,
        limits: TokenLimits,
        retention: Retention,
    ) -> Result<(Journal, Recovery), JournalError> {
        let _ = retention;
        let started = Instant::now();
        let dir = &config.dir;
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let lock = lock(dir)?;
        let path = dir.join(JOURNAL_FILE);
        if !path.exists() {
            create(&path, dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_at(&path))?;
        let tokens = Tokens::new(limits);
        let now = Timestamp::from_system_time(SystemTime::now());
        let recovered = recovery::recover(&file, &path, &mut tokens.table(), now)?;
        let index = recovered.index;
        let recovery = Recovery {
            messages: index.sums.len(),
            torn: recovered.torn,
            format: recovered.format,
            tokens: tokens.table().counts().held,
        };
        info!(
            journal = %path.display(),
            format = recovery.format,
            messages = recovery.messages,
            tokens = recovery.tokens,
            bytes = index.end,
            fsync = %config.fsync,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "journal replayed"
        );
        if recovered.format < VERSION {
            upgrade(&path, recovered.format)?;
        }
        let reader = file.try_clone().map_err(io_at(&path))?;
        let index = Arc::new(RwLock::new(index));
        let writer = writer::Handle::start(file, index.clone(), config.fsync, path.clone())
            .map_err(io_at(&path))?;
        let journal = Journal {
            index,
            reader,
            tokens,
            writer,
            _lock: lock,
        };
        Ok((journal, recovery))
    }

    fn index(&self) -> Result<RwLockReadGuard<'_, Index>, BoardError> {
        self.index.read().map_err(|_| BoardError::Poisoned)
    }

    /// Sizes message `id`'s entry from the start of its record, without its text.
    fn read_len(&self, id: MessageId) -> Result<Option<usize>, BoardError> {
        let offset = {
            let index = self.index()?;
            match usize::try_from(id.0)
                .ok()
                .and_then(|i| index.offsets.get(i))
            {
                Some(&offset) => offset,
                None => return Ok(None),
            }
        };
        let mut head = [0u8; RECORD_HEAD];
        let n = self
            .reader
            .read_at(&mut head, offset)
            .map_err(JournalError::Storage)?;
        let len = format::entry_len(&head[..n]).ok_or(JournalError::Damaged { offset })?;
        Ok(Some(len))
    }

    /// Reads `count` consecutive messages from position `start` in one positioned read.
    fn read(&self, start: u64, count: u64) -> Result<Vec<Message>, BoardError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let (from, to) = {
            let index = self.index()?;
            let len = index.offsets.len() as u64;
            let end = start + count;
            if end > len {
                return Ok(Vec::new());
            }
            let to = if end < len {
                index.offsets[end as usize]
            } else {
                index.end
            };
            (index.offsets[start as usize], to)
        };
        // A window the size of the span: one read, and every text shares its buffer.
        let mut window = Window::new(&self.reader, to, (to - from) as usize);
        let mut messages = Vec::with_capacity(count as usize);
        let mut at = from;
        while at < to {
            let check = record_at(&mut window, at).map_err(JournalError::Storage)?;
            let Check::Valid(record) = check else {
                return Err(JournalError::Damaged { offset: at }.into());
            };
            let entry = Entry {
                time: record.time,
                from: record.from,
                text: window.text(at, &record),
            };
            messages.push(Message {
                id: record.id,
                entry,
            });
            at += record.len as u64;
        }
        Ok(messages)
    }
}

/// Takes the data directory's lock, or says who holds it.
fn lock(dir: &Path) -> Result<File, JournalError> {
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io_at(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(JournalError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io_at(&lock_path)(e)),
    }
}

/// Rewrites the header of a journal of format `from` to say the current version, durably,
/// before the writer appends its first record of the current format.
///
/// Records are never rewritten: the new server reads the old ones as they are. The header
/// matters to the servers before it, which would otherwise cut the new records off as a
/// torn tail; with it they refuse the file and say why. The version is 4 bytes inside the
/// first sector, so a crash leaves either version, and this server reads both.
fn upgrade(path: &Path, from: u32) -> Result<(), JournalError> {
    // The journal's own handle appends, and a positioned write through O_APPEND lands at
    // the end on Linux: the header is rewritten through a handle of its own.
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_at(path))?;
    file.write_all_at(&VERSION.to_le_bytes(), VERSION_AT)
        .and_then(|()| file.sync_data())
        .map_err(io_at(path))?;
    info!(
        journal = %path.display(),
        from,
        to = VERSION,
        "journal format upgraded: old records are read as they are, new ones carry publish tokens; servers before version {VERSION} will refuse this file"
    );
    Ok(())
}

/// Creates an empty journal durably: header written, file and directory synced.
fn create(path: &Path, dir: &Path) -> Result<(), JournalError> {
    // Written under a temporary name and renamed, so a crash never leaves a headerless file.
    let tmp = dir.join(format!("{JOURNAL_FILE}.new"));
    let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
    f.write_all(&format::file_header())
        .and_then(|()| f.sync_all())
        .map_err(io_at(&tmp))?;
    fs::rename(&tmp, path).map_err(io_at(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
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

    fn get(&self, id: MessageId) -> Result<Option<Entry>, BoardError> {
        Ok(self.read(id.0, 1)?.pop().map(|m| m.entry))
    }

    fn entry_len(&self, id: MessageId) -> Result<Option<usize>, BoardError> {
        self.read_len(id)
    }

    fn span(&self, n: u64) -> Result<Span, BoardError> {
        Ok(self.index()?.sums.span(n))
    }

    fn span_after(&self, after: MessageId, max: u64) -> Result<Span, BoardError> {
        Ok(self.index()?.sums.span_after(after.0, max))
    }

    fn messages(&self, span: &Span) -> Result<Vec<Message>, BoardError> {
        self.read(span.start, span.count)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::format::FILE_HEADER;
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
                    format: 2,
                    tokens: 0
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
                format: 2,
                tokens: 0
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
            .open(dir.journal())
            .expect("open");
        f.write_all_at(b"X", FILE_HEADER + 16 + 24).expect("damage");
        let err = j.get(MessageId(0)).expect_err("damaged");
        let BoardError::Storage(e) = &err else {
            panic!("{err}")
        };
        assert!(matches!(
            e.downcast_ref::<JournalError>(),
            Some(JournalError::Damaged {
                offset: FILE_HEADER
            })
        ));
        assert!(j.get(MessageId(1)).is_ok());
    }
}

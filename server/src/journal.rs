//! The durable board: an append-only journal with group commit, and an index in memory.
//!
//! File layout (`<data dir>/journal`), all integers little-endian:
//!
//! ```text
//! header   "MBOARD\0J" (8) | version u32 (= 1) | reserved u32
//! record   "MBR1" (4) | body_len u32 | header_crc u32 | body_crc u32 | body
//! body     id u64 | time_micros u64 | family u8 (4|6) | ip (4|16) | port u16 | text
//! ```
//!
//! `header_crc` is CRC-32C of the magic and the length, so a damaged length is detected as
//! damage instead of being trusted. Records are written in id order, ids consecutive from 0.
//!
//! Start-up reads every record once. At the first damaged record it searches the rest of the
//! file for a valid record: if there is one, the damage is corruption and start-up stops
//! with the offset, writing nothing; if there is none, the damage is a torn tail (the server
//! died mid-write) and it is cut off with a warning.
//!
//! Memory holds 16 bytes a message (its offset and a running size sum); texts are read back
//! with positioned reads, and the page cache does the caching.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use mboard_protocol::{Entry, Message, MessageId, Timestamp};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::board::{Board, BoardError, Span, Sums};

const FILE_MAGIC: &[u8; 8] = b"MBOARD\0J";
/// The journal format this server writes and reads.
pub const VERSION: u32 = 1;
const FILE_HEADER: u64 = 16;
const RECORD_MAGIC: &[u8; 4] = b"MBR1";
const RECORD_HEADER: usize = 16;
/// The journal file inside the data directory.
pub const JOURNAL_FILE: &str = "journal";
/// The lock file inside the data directory.
pub const LOCK_FILE: &str = "LOCK";
/// A batch stops growing past this many bytes (one record may exceed it on its own).
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Publishes waiting for the writer before publishers wait to enqueue.
const QUEUE: usize = 8_192;

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
}

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another server holds the data directory's lock.
    #[error("data directory {} is in use by another mboard-server (lock held on {})", .dir.display(), .dir.join(LOCK_FILE).display())]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// A damaged record with valid records after it: not a torn tail.
    #[error("journal {} is corrupt at offset {offset}: {reason}; start-up refused, nothing was changed", .path.display())]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// Byte offset of the damaged record.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// The file does not start with the journal magic.
    #[error("{} is not an mboard journal", .path.display())]
    NotAJournal {
        /// The file.
        path: PathBuf,
    },
    /// A journal of a format this server does not read.
    #[error("journal {} has format version {found}; this server reads version {VERSION}", .path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Reading, writing or creating a file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A torn tail that start-up cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Torn {
    /// Where the damaged record began (the new end of the file).
    pub offset: u64,
    /// Bytes removed.
    pub dropped: u64,
}

/// What start-up found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Messages in the journal.
    pub messages: u64,
    /// The torn tail that was cut off, if any.
    pub torn: Option<Torn>,
}

/// Appends one record for a message.
fn encode_record(out: &mut Vec<u8>, id: MessageId, time: Timestamp, from: SocketAddr, text: &[u8]) {
    let start = out.len();
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&[0; 12]);
    let body = out.len();
    out.extend_from_slice(&id.0.to_le_bytes());
    out.extend_from_slice(&time.0.to_le_bytes());
    match from.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&from.port().to_le_bytes());
    out.extend_from_slice(text);
    let body_len = (out.len() - body) as u32;
    out[start + 4..start + 8].copy_from_slice(&body_len.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[start..start + 8]);
    out[start + 8..start + 12].copy_from_slice(&header_crc.to_le_bytes());
    let body_crc = crc32c::crc32c(&out[body..]);
    out[start + 12..start + 16].copy_from_slice(&body_crc.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// A record header whose own checksum holds: `(body_len, body_crc)`.
fn parse_header(h: &[u8]) -> Option<(usize, u32)> {
    if h.len() < RECORD_HEADER || &h[..4] != RECORD_MAGIC || crc32c::crc32c(&h[..8]) != u32_at(h, 8)
    {
        return None;
    }
    Some((u32_at(h, 4) as usize, u32_at(h, 12)))
}

/// Decodes a checked body: id, time, address, and where the text starts.
fn decode_body(body: &[u8]) -> Option<(MessageId, Timestamp, SocketAddr, usize)> {
    let id = MessageId(u64_at(body.get(..8)?, 0));
    let time = Timestamp(u64_at(body.get(8..16)?, 0));
    let (ip, rest): (IpAddr, usize) = match body.get(16)? {
        4 => {
            let o: [u8; 4] = body.get(17..21)?.try_into().ok()?;
            (Ipv4Addr::from(o).into(), 21)
        }
        6 => {
            let o: [u8; 16] = body.get(17..33)?.try_into().ok()?;
            (Ipv6Addr::from(o).into(), 33)
        }
        _ => return None,
    };
    let port = u16::from_le_bytes(body.get(rest..rest + 2)?.try_into().ok()?);
    Some((id, time, SocketAddr::new(ip, port), rest + 2))
}

#[derive(Debug, Default)]
struct Index {
    /// Offset of message `i`'s record.
    offsets: Vec<u64>,
    sums: Sums,
    /// End of the last record written (and synced, under `always`).
    end: u64,
}

/// A publish waiting for the writer.
struct Pending {
    from: SocketAddr,
    text: Bytes,
    reply: oneshot::Sender<Result<MessageId, BoardError>>,
}

/// The durable board.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    metrics: WriterMetrics,
    index: Arc<RwLock<Index>>,
    reader: File,
    queue: Option<mpsc::Sender<Pending>>,
    writer: Option<JoinHandle<()>>,
    /// Held for the journal's lifetime; the OS releases the lock when the process dies.
    _lock: File,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("from", &self.from)
            .field("len", &self.text.len())
            .finish()
    }
}

impl Journal {
    /// Opens (or creates) the journal in `config.dir`, replays it and starts the writer.
    pub fn open(config: &JournalConfig) -> Result<(Journal, Recovery), JournalError> {
        let started = Instant::now();
        let dir = &config.dir;
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_at(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Locked { dir: dir.clone() });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_at(&lock_path)(e)),
        }
        let path = dir.join(JOURNAL_FILE);
        if !path.exists() {
            create(&path, dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_at(&path))?;
        let (index, torn) = scan(&file, &path)?;
        if let Some(torn) = torn {
            warn!(
                journal = %path.display(),
                offset = torn.offset,
                dropped = torn.dropped,
                "torn final record cut off: dropped {} bytes at offset {}",
                torn.dropped,
                torn.offset
            );
            file.set_len(torn.offset).map_err(io_at(&path))?;
            file.sync_all().map_err(io_at(&path))?;
        }
        let recovery = Recovery {
            messages: index.sums.len(),
            torn,
        };
        info!(
            journal = %path.display(),
            messages = recovery.messages,
            bytes = index.end,
            fsync = %config.fsync,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "journal replayed"
        );
        let reader = file.try_clone().map_err(io_at(&path))?;
        let index = Arc::new(RwLock::new(index));
        let (queue, rx) = mpsc::channel(QUEUE);
        let metrics = WriterMetrics::default();
        metrics.bytes.set(index_end_i64(&index));
        let writer = Writer {
            metrics: metrics.clone(),
            file,
            index: index.clone(),
            fsync: config.fsync,
            broken: false,
            path: path.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("mboard-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(io_at(&path))?;
        Ok((
            Journal {
                path,
                metrics,
                index,
                reader,
                queue: Some(queue),
                writer: Some(writer),
                _lock: lock,
            },
            recovery,
        ))
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn index(&self) -> Result<std::sync::RwLockReadGuard<'_, Index>, BoardError> {
        self.index.read().map_err(|_| BoardError::Poisoned)
    }

    /// Reads the start of message `id`'s record, enough for its length: header, id, time
    /// and address. The full read that follows checks the whole body's checksum.
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
        // Header, then id, time, family, an IPv6 address and the port: at most 51 bytes.
        let mut head = [0u8; RECORD_HEADER + 35];
        let corrupt = || BoardError::Corrupt { offset };
        let n = self.reader.read_at(&mut head, offset)?;
        let head = &head[..n];
        let (body_len, _) = parse_header(head).ok_or_else(corrupt)?;
        let (_, time, from, text_at) = decode_body(&head[RECORD_HEADER..]).ok_or_else(corrupt)?;
        let text_len = body_len.checked_sub(text_at).ok_or_else(corrupt)?;
        let entry = Entry {
            time,
            from,
            text: Bytes::new(),
        };
        Ok(Some(entry.encoded_len() + text_len))
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
        let mut buf = vec![0u8; (to - from) as usize];
        self.reader.read_exact_at(&mut buf, from)?;
        let buf = Bytes::from(buf);
        let mut messages = Vec::with_capacity(count as usize);
        let mut at = 0usize;
        while at < buf.len() {
            let corrupt = || BoardError::Corrupt {
                offset: from + at as u64,
            };
            let (body_len, body_crc) = parse_header(&buf[at..]).ok_or_else(corrupt)?;
            let body_start = at + RECORD_HEADER;
            let body = buf
                .get(body_start..body_start + body_len)
                .ok_or_else(corrupt)?;
            if crc32c::crc32c(body) != body_crc {
                return Err(corrupt());
            }
            let (id, time, addr, text_at) = decode_body(body).ok_or_else(corrupt)?;
            let text = buf.slice(body_start + text_at..body_start + body_len);
            messages.push(Message {
                id,
                entry: Entry {
                    time,
                    from: addr,
                    text,
                },
            });
            at = body_start + body_len;
        }
        Ok(messages)
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and stop.
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Creates an empty journal durably: header written, file and directory synced.
fn create(path: &Path, dir: &Path) -> Result<(), JournalError> {
    let mut header = Vec::with_capacity(FILE_HEADER as usize);
    header.extend_from_slice(FILE_MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&[0; 4]);
    // Written under a temporary name and renamed, so a crash never leaves a headerless file.
    let tmp = dir.join(format!("{JOURNAL_FILE}.new"));
    let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
    f.write_all(&header)
        .and_then(|()| f.sync_all())
        .map_err(io_at(&tmp))?;
    fs::rename(&tmp, path).map_err(io_at(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

/// Reads the whole journal, building the index; reports a torn tail, refuses corruption.
fn scan(file: &File, path: &Path) -> Result<(Index, Option<Torn>), JournalError> {
    let len = file.metadata().map_err(io_at(path))?.len();
    let mut header = [0u8; FILE_HEADER as usize];
    if len < FILE_HEADER
        || file.read_exact_at(&mut header, 0).is_err()
        || &header[..8] != FILE_MAGIC
    {
        return Err(JournalError::NotAJournal {
            path: path.to_path_buf(),
        });
    }
    let version = u32_at(&header, 8);
    if version != VERSION {
        return Err(JournalError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader
        .seek(SeekFrom::Start(FILE_HEADER))
        .map_err(io_at(path))?;
    let mut index = Index::default();
    let mut offset = FILE_HEADER;
    let mut record = [0u8; RECORD_HEADER];
    let mut body = Vec::new();
    let damaged = loop {
        let remaining = len - offset;
        if remaining == 0 {
            break None;
        }
        if remaining < RECORD_HEADER as u64 {
            break Some(offset);
        }
        reader.read_exact(&mut record).map_err(io_at(path))?;
        let Some((body_len, body_crc)) = parse_header(&record) else {
            break Some(offset);
        };
        if (RECORD_HEADER + body_len) as u64 > remaining {
            break Some(offset);
        }
        body.resize(body_len, 0);
        reader.read_exact(&mut body).map_err(io_at(path))?;
        if crc32c::crc32c(&body) != body_crc {
            break Some(offset);
        }
        let corrupt = |reason: String| JournalError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason,
        };
        let (id, time, from, text_at) =
            decode_body(&body).ok_or_else(|| corrupt("malformed record body".into()))?;
        let expected = index.sums.len();
        if id.0 != expected {
            return Err(corrupt(format!(
                "expected message id {expected}, found {id}"
            )));
        }
        index.offsets.push(offset);
        index
            .sums
            .push(Message::record_len_of(id, time, from, body_len - text_at) as u64);
        offset += (RECORD_HEADER + body_len) as u64;
    };
    index.end = offset;
    let Some(at) = damaged else {
        return Ok((index, None));
    };
    if let Some(valid) = find_record_after(file, at + 1, len).map_err(io_at(path))? {
        return Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            offset: at,
            reason: format!(
                "damaged record (checksum mismatch) followed by a valid record at offset {valid}"
            ),
        });
    }
    Ok((
        index,
        Some(Torn {
            offset: at,
            dropped: len - at,
        }),
    ))
}

/// The offset of the first intact record starting in `from..len`, if any.
fn find_record_after(file: &File, from: u64, len: u64) -> io::Result<Option<u64>> {
    const CHUNK: u64 = 1 << 20;
    let mut pos = from;
    let mut chunk = Vec::new();
    while pos + (RECORD_HEADER as u64) <= len {
        // Overlap chunks by a header so a record starting near a boundary is not missed.
        let n = (CHUNK + RECORD_HEADER as u64).min(len - pos) as usize;
        chunk.resize(n, 0);
        file.read_exact_at(&mut chunk, pos)?;
        for k in 0..n.saturating_sub(RECORD_HEADER - 1) {
            if chunk[k] != RECORD_MAGIC[0] || &chunk[k..k + 4] != RECORD_MAGIC {
                continue;
            }
            let Some((body_len, body_crc)) = parse_header(&chunk[k..]) else {
                continue;
            };
            let at = pos + k as u64;
            if at + (RECORD_HEADER + body_len) as u64 > len {
                continue;
            }
            let mut body = vec![0u8; body_len];
            file.read_exact_at(&mut body, at + RECORD_HEADER as u64)?;
            if crc32c::crc32c(&body) == body_crc {
                return Ok(Some(at));
            }
        }
        pos += CHUNK;
    }
    Ok(None)
}

/// What the writer thread reports through `--metrics`.
#[derive(Debug, Clone)]
struct WriterMetrics {
    /// Group commits: one write (and, under `--fsync always`, one fsync) each.
    commits: Counter,
    /// Records appended.
    records: Counter,
    /// Seconds each fsync took.
    fsync_seconds: Histogram,
    /// Bytes in the journal file.
    bytes: Gauge,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        WriterMetrics {
            commits: Counter::default(),
            records: Counter::default(),
            // 25 µs (page cache, fast NVMe) to ~0.8 s (a struggling disk), doubling.
            fsync_seconds: Histogram::new(exponential_buckets(25e-6, 2.0, 16)),
            bytes: Gauge::default(),
        }
    }
}

fn index_end_i64(index: &RwLock<Index>) -> i64 {
    index
        .read()
        .map_or(0, |i| i64::try_from(i.end).unwrap_or(i64::MAX))
}

/// The writer thread: group commit.
struct Writer {
    metrics: WriterMetrics,
    file: File,
    index: Arc<RwLock<Index>>,
    fsync: Fsync,
    /// A failed write could not be undone: refuse everything rather than misindex.
    broken: bool,
    path: PathBuf,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        let mut batch = Vec::new();
        let mut buf = Vec::new();
        // Blocks only while idle; whatever queued during the last write and fsync is the
        // next batch, so no timer adds latency.
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = first.text.len();
            batch.push(first);
            while bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(p) => {
                        bytes += p.text.len();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            self.commit(&mut batch, &mut buf);
        }
    }

    fn commit(&mut self, batch: &mut Vec<Pending>, buf: &mut Vec<u8>) {
        if self.broken {
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(BoardError::Io(io::Error::other(
                    "journal is unwritable",
                ))));
            }
            return;
        }
        let (first_id, end) = match self.index.read() {
            Ok(index) => (index.sums.len(), index.end),
            Err(_) => (0, 0),
        };
        buf.clear();
        let mut entries = Vec::with_capacity(batch.len());
        for (i, p) in batch.iter().enumerate() {
            let id = MessageId(first_id + i as u64);
            let time = Timestamp::from_system_time(SystemTime::now());
            entries.push((
                end + buf.len() as u64,
                Message::record_len_of(id, time, p.from, p.text.len()) as u64,
            ));
            encode_record(buf, id, time, p.from, &p.text);
        }
        let written = self.file.write_all(buf).and_then(|()| match self.fsync {
            Fsync::Always => {
                let started = Instant::now();
                let synced = self.file.sync_data();
                self.metrics
                    .fsync_seconds
                    .observe(started.elapsed().as_secs_f64());
                synced
            }
            Fsync::Never => Ok(()),
        });
        match written {
            Ok(()) => {
                let Ok(mut index) = self.index.write() else {
                    self.broken = true;
                    return;
                };
                for (offset, record_len) in entries {
                    index.offsets.push(offset);
                    index.sums.push(record_len);
                }
                index.end = end + buf.len() as u64;
                drop(index);
                self.metrics.commits.inc();
                self.metrics.records.inc_by(batch.len() as u64);
                self.metrics
                    .bytes
                    .set(i64::try_from(end + buf.len() as u64).unwrap_or(i64::MAX));
                for (i, p) in batch.drain(..).enumerate() {
                    let _ = p.reply.send(Ok(MessageId(first_id + i as u64)));
                }
            }
            Err(e) => {
                warn!(journal = %self.path.display(), error = %e, "journal write failed");
                // Cut back whatever part of the batch reached the file, so the file keeps
                // matching the index; if even that fails, stop writing altogether.
                if self.file.set_len(end).is_err() {
                    self.broken = true;
                }
                let kind = e.kind();
                for p in batch.drain(..) {
                    let _ = p
                        .reply
                        .send(Err(BoardError::Io(io::Error::new(kind, e.to_string()))));
                }
            }
        }
    }
}

impl Board for Journal {
    fn defers_publish(&self) -> bool {
        true
    }

    fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.metrics;
        registry.register(
            "mboard_journal_commits",
            "Group commits written to the journal (each one write, and one fsync under --fsync always)",
            m.commits.clone(),
        );
        registry.register(
            "mboard_journal_records",
            "Records appended to the journal since the server started",
            m.records.clone(),
        );
        registry.register(
            "mboard_journal_fsync_seconds",
            "Time each journal fsync took (its count is the number of fsyncs)",
            m.fsync_seconds.clone(),
        );
        registry.register(
            "mboard_journal_bytes",
            "Size of the journal file",
            m.bytes.clone(),
        );
    }

    async fn publish(&self, from: SocketAddr, text: Bytes) -> Result<MessageId, BoardError> {
        if text.len() > u32::MAX as usize - 64 {
            return Err(BoardError::TooLarge);
        }
        let queue = self.queue.as_ref().ok_or(BoardError::Closed)?;
        let (reply, answer) = oneshot::channel();
        queue
            .send(Pending { from, text, reply })
            .await
            .map_err(|_| BoardError::Closed)?;
        answer.await.map_err(|_| BoardError::Closed)?
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

    fn messages(&self, span: &Span) -> Result<Vec<Message>, BoardError> {
        self.read(span.start, span.count)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("mboard-journal-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            TempDir(dir)
        }

        fn config(&self, fsync: Fsync) -> JournalConfig {
            JournalConfig {
                dir: self.0.clone(),
                fsync,
            }
        }

        fn journal(&self) -> PathBuf {
            self.0.join(JOURNAL_FILE)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    fn from(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 1, 2, 3], port))
    }

    /// Publishes `texts` and returns the ids.
    fn publish_all(j: &Journal, texts: &[&[u8]]) -> Vec<MessageId> {
        runtime().block_on(async {
            let mut ids = Vec::new();
            for (i, t) in texts.iter().enumerate() {
                ids.push(
                    j.publish(from(i as u16), Bytes::copy_from_slice(t))
                        .await
                        .expect("publish"),
                );
            }
            ids
        })
    }

    fn all(j: &Journal) -> Vec<Message> {
        j.messages(&j.span(0).expect("span")).expect("read")
    }

    const TEXTS: [&[u8]; 4] = [b"Hello world!", b"a:b:c", b"\x00\xff binary \n", b"last"];

    #[test]
    fn entry_lengths_come_from_the_record_start_and_match_the_entries() {
        let dir = TempDir::new();
        let (j, _) = Journal::open(&dir.config(Fsync::Never)).expect("open");
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
            let (j, rec) = Journal::open(&dir.config(Fsync::Always)).expect("open");
            assert_eq!(
                rec,
                Recovery {
                    messages: 0,
                    torn: None
                }
            );
            assert_eq!(
                publish_all(&j, &TEXTS),
                (0..4).map(MessageId).collect::<Vec<_>>()
            );
            all(&j)
        };
        let (j, rec) = Journal::open(&dir.config(Fsync::Never)).expect("reopen");
        assert_eq!(
            rec,
            Recovery {
                messages: 4,
                torn: None
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
        let (j, _) = Journal::open(&dir.config(Fsync::Never)).expect("open");
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

    fn published(dir: &TempDir) -> u64 {
        let (j, _) = Journal::open(&dir.config(Fsync::Always)).expect("open");
        publish_all(&j, &TEXTS);
        fs::metadata(dir.journal()).expect("meta").len()
    }

    #[test]
    fn appended_garbage_is_a_torn_tail() {
        let dir = TempDir::new();
        let len = published(&dir);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.journal())
            .expect("open");
        f.write_all(b"MBR1 half a record from a dying server")
            .expect("append");
        drop(f);
        let (j, rec) = Journal::open(&dir.config(Fsync::Always)).expect("repaired");
        assert_eq!(
            rec,
            Recovery {
                messages: 4,
                torn: Some(Torn {
                    offset: len,
                    dropped: 38
                })
            }
        );
        assert_eq!(
            fs::metadata(dir.journal()).expect("meta").len(),
            len,
            "cut back"
        );
        assert_eq!(all(&j).len(), 4);
        assert_eq!(publish_all(&j, &[b"after repair"]), vec![MessageId(4)]);
    }

    #[test]
    fn a_record_cut_short_is_a_torn_tail() {
        let dir = TempDir::new();
        let len = published(&dir);
        let last_record = (RECORD_HEADER + 8 + 8 + 1 + 4 + 2 + 4) as u64;
        for cut in [len - 1, len - 10, len - last_record + 3] {
            let f = OpenOptions::new()
                .write(true)
                .open(dir.journal())
                .expect("open");
            f.set_len(cut).expect("cut");
            drop(f);
            let (j, rec) = Journal::open(&dir.config(Fsync::Always)).expect("repaired");
            let torn = rec.torn.expect("torn");
            assert_eq!(
                (rec.messages, torn.offset, torn.dropped),
                (3, len - last_record, cut - (len - last_record))
            );
            assert_eq!(
                all(&j)
                    .iter()
                    .map(|m| m.entry.text.clone())
                    .collect::<Vec<_>>(),
                TEXTS[..3].to_vec()
            );
            drop(j);
            // Put the fourth back for the next cut.
            let (j, _) = Journal::open(&dir.config(Fsync::Always)).expect("open");
            publish_all(&j, &[b"last"]);
        }
    }

    fn flipped_byte_is_refused(at: impl Fn(u64) -> u64) {
        let dir = TempDir::new();
        let len = published(&dir);
        let mut bytes = fs::read(dir.journal()).expect("read");
        let i = at(len) as usize;
        bytes[i] ^= 0x20;
        fs::write(dir.journal(), &bytes).expect("write");
        let listing = |d: &Path| {
            let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(d)
                .expect("dir")
                .map(|e| {
                    let e = e.expect("entry");
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        fs::read(e.path()).expect("file"),
                    )
                })
                .collect();
            v.sort();
            v
        };
        let before = listing(&dir.0);
        let err = Journal::open(&dir.config(Fsync::Always)).expect_err("corruption");
        let JournalError::Corrupt { path, offset, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(path, &dir.journal());
        assert!(*offset <= i as u64, "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("at offset {offset}")) && text.contains("nothing was changed"),
            "{text}"
        );
        assert_eq!(listing(&dir.0), before, "the directory is unchanged");
    }

    #[test]
    fn a_flipped_text_byte_in_the_middle_stops_start_up() {
        // The first record's text starts 16 + 8 + 8 + 1 + 4 + 2 bytes after the file header.
        flipped_byte_is_refused(|_| FILE_HEADER + 16 + 23 + 3);
    }

    #[test]
    fn a_flipped_length_byte_is_not_mistaken_for_a_torn_tail() {
        // Byte 1 of the first record's length: the record now claims to run past the end.
        flipped_byte_is_refused(|_| FILE_HEADER + 5);
    }

    #[test]
    fn a_second_server_cannot_open_the_same_directory() {
        let dir = TempDir::new();
        let (_first, _) = Journal::open(&dir.config(Fsync::Always)).expect("open");
        let err = Journal::open(&dir.config(Fsync::Always)).expect_err("locked");
        assert!(matches!(err, JournalError::Locked { .. }), "{err}");
        assert!(
            err.to_string().contains("in use by another mboard-server"),
            "{err}"
        );
    }

    #[test]
    fn foreign_files_are_refused() {
        let dir = TempDir::new();
        fs::create_dir_all(&dir.0).expect("dir");
        fs::write(dir.journal(), b"not a journal at all").expect("write");
        assert!(matches!(
            Journal::open(&dir.config(Fsync::Always)),
            Err(JournalError::NotAJournal { .. })
        ));
        let mut header = FILE_MAGIC.to_vec();
        header.extend_from_slice(&2u32.to_le_bytes());
        header.extend_from_slice(&[0; 4]);
        fs::write(dir.journal(), &header).expect("write");
        let err = Journal::open(&dir.config(Fsync::Always)).expect_err("version");
        assert!(
            matches!(err, JournalError::Version { found: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn concurrent_publishes_share_commits_and_get_distinct_ids() {
        let dir = TempDir::new();
        let (j, _) = Journal::open(&dir.config(Fsync::Always)).expect("open");
        let j = Arc::new(j);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("rt");
        let ids = rt.block_on(async {
            let tasks: Vec<_> = (0..200)
                .map(|i| {
                    let j = j.clone();
                    tokio::spawn(async move {
                        j.publish(from(i), Bytes::from(format!("message {i}")))
                            .await
                    })
                })
                .collect();
            let mut ids = Vec::new();
            for t in tasks {
                ids.push(t.await.expect("task").expect("publish"));
            }
            ids
        });
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, (0..200).map(MessageId).collect::<Vec<_>>());
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                j.get(*id).expect("get").map(|e| e.text),
                Some(Bytes::from(format!("message {i}")))
            );
        }
    }

    #[test]
    fn a_record_damaged_after_start_up_reads_as_an_error() {
        let dir = TempDir::new();
        let (j, _) = Journal::open(&dir.config(Fsync::Always)).expect("open");
        publish_all(&j, &TEXTS);
        let f = OpenOptions::new()
            .write(true)
            .open(dir.journal())
            .expect("open");
        f.write_all_at(b"X", FILE_HEADER + 16 + 23).expect("damage");
        assert!(matches!(
            j.get(MessageId(0)),
            Err(BoardError::Corrupt {
                offset: FILE_HEADER
            })
        ));
        assert!(j.get(MessageId(1)).is_ok());
    }
}

//! The writer thread: group commit.
//!
//! Publishes queue for one thread that appends them in batches, one write (and one fsync
//! under `--fsync always`) a batch, so the disk's latency is shared by everyone waiting.
//!
//! A `5:` publish brings its claimed token along; the writer resolves it in the token table
//! after the batch is written (and synced) and indexed, before anyone is answered, so the
//! table never holds an id that is not durable. A publish that fails drops its claim,
//! which abandons the token.

use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use mboard_protocol::{Message, MessageId, Timestamp};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::error::JournalError;
use super::format::encode_record;
use super::{Fsync, Index};
use crate::board::tokens::Claimed;

/// A batch stops growing past this many bytes (one record may exceed it on its own).
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Publishes waiting for the writer before publishers wait to enqueue.
const QUEUE: usize = 8_192;

/// A publish waiting for the writer.
struct Pending {
    from: SocketAddr,
    text: Bytes,
    /// The token of a `5:` publish, claimed in the table and resolved once durable.
    claim: Option<Claimed>,
    reply: oneshot::Sender<Result<MessageId, JournalError>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("from", &self.from)
            .field("len", &self.text.len())
            .field("token", &self.claim.as_ref().map(Claimed::token))
            .finish()
    }
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

impl WriterMetrics {
    fn set_bytes(&self, end: u64) {
        self.bytes.set(i64::try_from(end).unwrap_or(i64::MAX));
    }
}

/// The running writer: its queue, its thread and its metrics.
#[derive(Debug)]
pub(super) struct Handle {
    /// `None` only while dropping: closing it lets the writer finish what is queued.
    queue: Option<mpsc::Sender<Pending>>,
    thread: Option<JoinHandle<()>>,
    metrics: WriterMetrics,
}

impl Handle {
    /// Starts the writer appending to `file`, whose records `index` describes.
    pub(super) fn start(
        file: File,
        index: Arc<RwLock<Index>>,
        fsync: Fsync,
        path: PathBuf,
    ) -> io::Result<Handle> {
        let metrics = WriterMetrics::default();
        if let Ok(index) = index.read() {
            metrics.set_bytes(index.end);
        }
        let (queue, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            metrics: metrics.clone(),
            file,
            index,
            fsync,
            broken: false,
            path,
        };
        let thread = std::thread::Builder::new()
            .name("mboard-journal".into())
            .spawn(move || writer.run(rx))?;
        Ok(Handle {
            queue: Some(queue),
            thread: Some(thread),
            metrics,
        })
    }

    /// Queues a publish and waits until it is stored (and synced, under `always`); its
    /// `claim`, if any, is resolved before this returns.
    pub(super) async fn publish(
        &self,
        from: SocketAddr,
        text: Bytes,
        claim: Option<Claimed>,
    ) -> Result<MessageId, JournalError> {
        let queue = self.queue.as_ref().ok_or(JournalError::Closed)?;
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            from,
            text,
            claim,
            reply,
        };
        queue
            .send(pending)
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Adds the writer's metrics to `registry`.
    pub(super) fn register_metrics(&self, registry: &mut Registry) {
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
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread's state.
struct Writer {
    metrics: WriterMetrics,
    file: File,
    index: Arc<RwLock<Index>>,
    fsync: Fsync,
    /// A failed write could not be undone: refuse everything rather than misindex.
    broken: bool,
    path: PathBuf,
}

/// A batch encoded for appending: where it goes and what each record adds to the index.
struct Encoded {
    first_id: u64,
    /// The end of the file before the batch.
    end: u64,
    /// Each record's offset and `4:` record length.
    entries: Vec<(u64, u64)>,
    /// Each record's time.
    times: Vec<Timestamp>,
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
                let _ = p.reply.send(Err(JournalError::Unwritable));
            }
            return;
        }
        let encoded = self.encode(batch, buf);
        match self.write(buf) {
            Ok(()) => self.publish(encoded, batch, buf.len() as u64),
            Err(e) => self.undo(encoded.end, batch, &e),
        }
    }

    /// Encodes `batch` into `buf`, numbering it after the messages already indexed.
    fn encode(&self, batch: &[Pending], buf: &mut Vec<u8>) -> Encoded {
        // A poisoned index is noticed when the batch is published, and stops the writer.
        let (first_id, end) = match self.index.read() {
            Ok(index) => (index.sums.len(), index.end),
            Err(_) => (0, 0),
        };
        buf.clear();
        let mut entries = Vec::with_capacity(batch.len());
        let mut times = Vec::with_capacity(batch.len());
        for (i, p) in batch.iter().enumerate() {
            let id = MessageId(first_id + i as u64);
            let time = Timestamp::from_system_time(SystemTime::now());
            entries.push((
                end + buf.len() as u64,
                Message::record_len_of(id, time, p.from, p.text.len()) as u64,
            ));
            times.push(time);
            let token = p.claim.as_ref().map(Claimed::token);
            encode_record(buf, id, time, p.from, token, &p.text);
        }
        Encoded {
            first_id,
            end,
            entries,
            times,
        }
    }

    /// Appends `buf`, and syncs it under `always`.
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        if self.fsync == Fsync::Never {
            return Ok(());
        }
        let started = Instant::now();
        let synced = self.file.sync_data();
        self.metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        synced
    }

    /// Indexes a written batch, so readers see it, then acknowledges it.
    fn publish(&mut self, encoded: Encoded, batch: &mut Vec<Pending>, written: u64) {
        let Ok(mut index) = self.index.write() else {
            self.broken = true;
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(JournalError::Unwritable));
            }
            return;
        };
        for (offset, record_len) in encoded.entries {
            index.push(offset, record_len);
        }
        let end = encoded.end + written;
        index.end = end;
        drop(index);
        self.metrics.commits.inc();
        self.metrics.records.inc_by(batch.len() as u64);
        self.metrics.set_bytes(end);
        for ((i, p), time) in batch.drain(..).enumerate().zip(encoded.times) {
            let id = MessageId(encoded.first_id + i as u64);
            // Durable and indexed: a resend may now be told this id.
            if let Some(claim) = p.claim {
                claim.published(id, time);
            }
            let _ = p.reply.send(Ok(id));
        }
    }

    /// Refuses a batch whose write failed, cutting back whatever part of it reached the
    /// file so the file keeps matching the index; if even that fails, stops writing.
    fn undo(&mut self, end: u64, batch: &mut Vec<Pending>, e: &io::Error) {
        warn!(journal = %self.path.display(), error = %e, "journal write failed");
        if self.file.set_len(end).is_err() {
            self.broken = true;
        }
        for p in batch.drain(..) {
            let copy = io::Error::new(e.kind(), e.to_string());
            let _ = p.reply.send(Err(JournalError::Storage(copy)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{TempDir, from, open};
    use super::*;
    use crate::board::Board;

    #[test]
    fn concurrent_publishes_share_commits_and_get_distinct_ids() {
        let dir = TempDir::new();
        let (j, _) = open(&dir, Fsync::Always).expect("open");
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
}

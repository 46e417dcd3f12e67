//! The writer thread: group commit, segments, retention, and the disk's accidents.
//!
//! Publishes queue for one thread that appends them in batches, one write (and one fsync
//! under `--fsync always`) a batch, so the disk's latency is shared by everyone waiting.
//! The same thread rolls segments, trims what retention no longer allows (deleting
//! segments nothing kept is in), and checks before acknowledging each batch that the data
//! directory is still ours (its lock and the segment written to are still the files it
//! opened): reads never wait for any of it.
//!
//! A `5:` publish brings its claimed token along; the writer resolves it in the token table
//! after the batch is written (and synced) and indexed, before anyone is answered, so the
//! table never holds an id that is not durable. A publish that fails drops its claim,
//! which abandons the token.

use std::fs::File;
use std::net::SocketAddr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use mboard_protocol::{MessageId, Timestamp};
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use tracing::warn;

use super::JournalConfig;
use super::error::JournalError;
use super::format::Salt;
use super::index::{Index, Segment};
use super::layout::Identity;
use crate::board::retention::Retention;
use crate::board::tokens::{Claimed, Tokens};
use crate::board::warnings::Warnings;

mod commit;
pub(super) mod health;
mod lost;
mod metrics;
mod retain;
#[cfg(test)]
mod retain_tests;
#[cfg(test)]
mod tests;

use health::{Health, SharedState};
use metrics::WriterMetrics;

/// A batch stops growing past this many bytes (one record may exceed it on its own).
const MAX_BATCH_BYTES: usize = 8 << 20;
/// How often an idle writer checks that the data directory is still ours.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A kept note waits this long for a commit to ride along with before it is written alone.
const KEPT_NOTE_WAIT: Duration = Duration::from_secs(1);

/// A publish waiting for the writer.
pub(super) struct Pending {
    pub(super) from: SocketAddr,
    pub(super) text: Bytes,
    /// The token of a `5:` publish, claimed in the table and resolved once durable.
    pub(super) claim: Option<Claimed>,
    pub(super) reply: oneshot::Sender<Result<MessageId, JournalError>>,
}

/// What the writer thread is asked to do.
enum Job {
    Publish(Pending),
    /// Trim by this clock (tests' manual clock), then answer.
    #[cfg(test)]
    Trim(Timestamp, oneshot::Sender<()>),
    /// Keep what these limits allow from now on.
    Retain(Retention),
    /// Block until the sender is dropped: a disk that stalls, for tests.
    #[cfg(test)]
    Stall(mpsc::Receiver<()>),
    /// Fail the next writes with these errors, for tests.
    #[cfg(test)]
    Faults(Vec<std::io::ErrorKind>),
}

/// What the writer starts from: the newest segment, opened for appending.
pub(super) struct Start {
    pub(super) file: File,
    pub(super) segment: Segment,
    /// The id the newest segment's next message record must have.
    pub(super) next_in_file: u64,
    /// The lock file, held until the writer thread ends, and its identity.
    pub(super) lock: File,
    pub(super) lock_ident: Identity,
    /// Segments already trimmed, to delete.
    pub(super) doomed: Vec<Segment>,
    /// A kept note to write: start-up trimmed every id below it.
    pub(super) kept: Option<u64>,
}

/// The running writer: its queue, its thread and its metrics.
#[derive(Debug)]
pub(super) struct Handle {
    /// `None` only while dropping: closing it lets the writer finish what is queued.
    queue: Option<mpsc::Sender<Job>>,
    /// Closed when the thread ends.
    ended: Mutex<mpsc::Receiver<()>>,
    thread: Option<JoinHandle<()>>,
    metrics: WriterMetrics,
    grace: Duration,
}

impl Handle {
    /// Starts the writer appending to `start`'s segment, whose records `index` describes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        config: &JournalConfig,
        salt: Salt,
        start: Start,
        index: Arc<RwLock<Index>>,
        tokens: Tokens,
        retention: Retention,
        state: Arc<SharedState>,
    ) -> std::io::Result<Handle> {
        let metrics = WriterMetrics::default();
        if let Ok(index) = index.read() {
            metrics.set_size(index.bytes(), index.segments().len());
        }
        let (queue, rx) = mpsc::channel();
        let (ended_tx, ended) = mpsc::channel::<()>();
        let mut writer = commit::Writer::new(
            config,
            salt,
            start,
            index,
            tokens,
            retention,
            Health::new(state),
            metrics.clone(),
        )?;
        let thread = std::thread::Builder::new()
            .name("mboard-journal".into())
            .spawn(move || {
                let _ended = ended_tx;
                writer.run(&rx);
            })?;
        Ok(Handle {
            queue: Some(queue),
            ended: Mutex::new(ended),
            thread: Some(thread),
            metrics,
            grace: config.shutdown_grace,
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
            .send(Job::Publish(pending))
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Trims by `now` and waits until that is done.
    #[cfg(test)]
    pub(super) async fn trim(&self, now: Timestamp) -> Result<(), JournalError> {
        let queue = self.queue.as_ref().ok_or(JournalError::Closed)?;
        let (done, finished) = oneshot::channel();
        queue
            .send(Job::Trim(now, done))
            .map_err(|_| JournalError::Closed)?;
        finished.await.map_err(|_| JournalError::Closed)
    }

    /// Has the writer keep what `retention` allows, from the next job on; it trims to it
    /// at once.
    pub(super) fn set_retention(&self, retention: Retention) -> Result<(), JournalError> {
        let queue = self.queue.as_ref().ok_or(JournalError::Closed)?;
        queue
            .send(Job::Retain(retention))
            .map_err(|_| JournalError::Closed)
    }

    /// Queues a publish without waiting for it: the receiver gets the answer.
    #[cfg(test)]
    pub(super) fn enqueue(
        &self,
        from: SocketAddr,
        text: Bytes,
    ) -> oneshot::Receiver<Result<MessageId, JournalError>> {
        let (reply, answer) = oneshot::channel();
        if let Some(queue) = &self.queue {
            let pending = Pending {
                from,
                text,
                claim: None,
                reply,
            };
            let _ = queue.send(Job::Publish(pending));
        }
        answer
    }

    /// Stalls the writer until the returned sender is dropped.
    #[cfg(test)]
    pub(super) fn stall(&self) -> mpsc::Sender<()> {
        let (tx, rx) = mpsc::channel();
        if let Some(queue) = &self.queue {
            let _ = queue.send(Job::Stall(rx));
        }
        tx
    }

    /// Fails the next writes with `errors`, one each, as a disk would.
    #[cfg(test)]
    pub(super) fn inject(&self, errors: Vec<std::io::ErrorKind>) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(Job::Faults(errors));
        }
    }

    /// Adds the writer's metrics to `registry`.
    pub(super) fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }
}

impl Drop for Handle {
    /// Lets the writer finish what is queued, waiting at most the shutdown grace: a disk
    /// that does not take it by then is left behind, and what it holds was never
    /// acknowledged. The thread keeps the lock until the process ends, so no other server
    /// starts on the directory while a write of ours may still land.
    fn drop(&mut self) {
        self.queue.take();
        let started = Instant::now();
        let ended = match self.ended.get_mut() {
            Ok(ended) => ended.recv_timeout(self.grace),
            Err(_) => Err(RecvTimeoutError::Disconnected),
        };
        match ended {
            Err(RecvTimeoutError::Timeout) => warn!(
                grace_ms = self.grace.as_millis() as u64,
                "shutdown: the disk did not take the queued publishes within the grace; exiting without acknowledging them"
            ),
            _ => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
                let waited = started.elapsed();
                if waited > Duration::from_secs(1) {
                    warn!(
                        waited_ms = waited.as_millis() as u64,
                        "shutdown waited for the disk"
                    );
                }
            }
        }
    }
}

/// The wall clock now, as records carry it.
fn wall_now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// Tells everyone in `batch` the publish failed with `error`.
fn refuse(batch: &mut Vec<Pending>, error: impl Fn() -> JournalError) {
    for p in batch.drain(..) {
        let _ = p.reply.send(Err(error()));
    }
}

/// Repeated warnings from the writer thread, once per interval each.
fn warn_limited(warnings: &Warnings, key: &str, message: impl FnOnce(&str)) {
    if let Some(line) = warnings.admit(key, Instant::now()) {
        message(&line.suffix(warnings.interval()));
    }
}

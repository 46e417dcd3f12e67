//! The writer's state and its loop: batches in, records out, one segment at a time.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use mboard_protocol::{Message, MessageId, Timestamp};
use tracing::{info, warn};

use super::health::{Change, Health, classify};
use super::metrics::{Cause, WriterMetrics};
use super::retain::TRIM_CHUNK;
use super::{
    CHECK_EVERY, Job, KEPT_NOTE_WAIT, MAX_BATCH_BYTES, Pending, Start, refuse, wall_now,
    warn_limited,
};
use crate::board::journal::error::JournalError;
use crate::board::journal::format::{Body, Place, SEGMENT_HEADER, Salt, Stub, encode};
use crate::board::journal::index::{Index, Segment};
use crate::board::journal::layout::{Identity, Layout, create_segment};
use crate::board::journal::{Fsync, JournalConfig};
use crate::board::retention::Retention;
use crate::board::tokens::{Claimed, Tokens};
use crate::board::warnings::Warnings;
use crate::board::{Refusal, StoreState};

/// The segment being appended to.
pub(super) struct Active {
    pub(super) file: File,
    pub(super) first: u64,
    /// The id its next message record must have.
    pub(super) next: u64,
    /// Bytes written and indexed.
    pub(super) len: u64,
    /// A failed write may have left bytes past `len` that could not be cut yet.
    pub(super) dirty: bool,
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) layout: Layout,
    pub(super) salt: Salt,
    fsync: Fsync,
    segment_size: u64,
    pub(super) retention: Retention,
    pub(super) index: Arc<RwLock<Index>>,
    pub(super) tokens: Tokens,
    pub(super) active: Active,
    /// Held for the writer's lifetime; the OS releases it when the process ends.
    pub(super) _lock: File,
    pub(super) lock_path: PathBuf,
    pub(super) lock_ident: Identity,
    /// A lock taken on a data directory recreated after ours was removed.
    pub(super) tomb_lock: Option<File>,
    pub(super) health: Health,
    pub(super) metrics: WriterMetrics,
    pub(super) warnings: Warnings,
    /// A kept note to write: every id below it was trimmed.
    pub(super) kept: Option<u64>,
    /// When something was last written.
    pub(super) last_write: Instant,
    /// Segments nothing kept is in, to delete once their live tokens are noted.
    pub(super) doomed: Vec<Segment>,
    next_check: Instant,
    pub(super) buf: Vec<u8>,
    /// Errors the next writes fail with, for tests.
    #[cfg(test)]
    pub(super) faults: std::collections::VecDeque<io::ErrorKind>,
}

/// A batch encoded for appending: what each record adds to the index.
struct Encoded {
    first_id: u64,
    /// Each message's offset, `4:` record length and time.
    entries: Vec<(u64, u64, Timestamp)>,
    /// Whether a kept note rides along.
    kept: bool,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        config: &JournalConfig,
        salt: Salt,
        start: Start,
        index: Arc<RwLock<Index>>,
        tokens: Tokens,
        retention: Retention,
        health: Health,
        metrics: WriterMetrics,
    ) -> io::Result<Writer> {
        let active = Active {
            file: start.file,
            first: start.segment.first,
            next: start.next_in_file,
            len: start.segment.len,
            dirty: false,
        };
        Ok(Writer {
            layout: Layout::new(&config.dir),
            salt,
            fsync: config.fsync,
            segment_size: config.segment_size,
            retention,
            index,
            tokens,
            active,
            _lock: start.lock,
            lock_path: Layout::new(&config.dir).lock(),
            lock_ident: start.lock_ident,
            tomb_lock: None,
            health,
            metrics,
            warnings: Warnings::default(),
            kept: start.kept,
            last_write: Instant::now(),
            doomed: start.doomed,
            next_check: Instant::now() + CHECK_EVERY,
            buf: Vec::new(),
            #[cfg(test)]
            faults: Default::default(),
        })
    }

    pub(super) fn index(&self) -> Option<RwLockWriteGuard<'_, Index>> {
        self.index.write().ok()
    }

    /// The id the next message gets.
    pub(super) fn next_id(&self) -> u64 {
        self.index
            .read()
            .map_or(self.active.next, |index| index.next())
    }

    pub(super) fn run(&mut self, rx: &mpsc::Receiver<Job>) {
        let mut batch = Vec::new();
        self.tick(wall_now());
        loop {
            let job = match rx.recv_timeout(self.idle_for()) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    self.tick(wall_now());
                    continue;
                }
                // Every job queued before the queue closed has been taken.
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let other = match job {
                Job::Publish(first) => {
                    let other = gather(rx, first, &mut batch);
                    self.commit(&mut batch);
                    other
                }
                job => Some(job),
            };
            match other {
                #[cfg(test)]
                Some(Job::Trim(now, done)) => {
                    self.tick(now);
                    let _ = done.send(());
                }
                // Trimmed to by the tick below.
                Some(Job::Retain(retention)) => self.retention = retention,
                #[cfg(test)]
                Some(Job::Stall(until)) => {
                    let _ = until.recv();
                }
                #[cfg(test)]
                Some(Job::Faults(errors)) => self.faults.extend(errors),
                Some(Job::Publish(_)) | None => {}
            }
            self.tick(wall_now());
        }
        self.tick(wall_now());
        // What was trimmed stays trimmed after the restart that likely follows.
        if self.kept.is_some() {
            self.write_notes(Vec::new());
        }
    }

    /// How long the loop may wait for a job before it has something to do itself.
    fn idle_for(&self) -> Duration {
        let mut wait = CHECK_EVERY;
        if self.kept.is_some() {
            wait = wait.min(KEPT_NOTE_WAIT.saturating_sub(self.last_write.elapsed()));
        }
        if let Some(at) = self.next_expiry() {
            let now = wall_now();
            wait = wait.min(Duration::from_micros(at.0.saturating_sub(now.0)));
        }
        wait.max(Duration::from_millis(1))
    }

    /// When the oldest kept message passes the age limit, if there is one.
    fn next_expiry(&self) -> Option<Timestamp> {
        let oldest = self.index.read().ok()?.held().oldest?;
        self.retention.expiry(oldest)
    }

    /// What the writer does between batches: check that the directory is still ours,
    /// trim by `now`, delete trimmed segments, write a kept note that waited long enough.
    fn tick(&mut self, now: Timestamp) {
        let at = Instant::now();
        if at >= self.next_check {
            self.next_check = at + CHECK_EVERY;
            if self.health.state() != StoreState::Lost && !self.owned() {
                self.lose(self.next_id());
            }
        }
        self.retain(now);
        if self.kept.is_some() && self.last_write.elapsed() >= KEPT_NOTE_WAIT {
            self.write_notes(Vec::new());
        }
        for (key, n) in self.warnings.flush(at) {
            let n = crate::board::warnings::thousands(n);
            warn!(error = %key, "journal: {n} more like it were not logged");
        }
    }

    /// Writes `batch`, or refuses all of it saying why.
    fn commit(&mut self, batch: &mut Vec<Pending>) {
        let now = Instant::now();
        if let Some(why) = self.health.refusing(now) {
            self.health.refused(batch.len() as u64);
            refuse(batch, || JournalError::Refused(why));
            return;
        }
        if !self.lock_ours() {
            self.lose(self.active.next);
            self.health.refused(batch.len() as u64);
            refuse(batch, || JournalError::Refused(Refusal::Unavailable));
            return;
        }
        if let Err(e) = self.prepare() {
            self.failed(&e, batch);
            return;
        }
        let encoded = self.encode(batch);
        if let Err(e) = self.append() {
            self.failed(&e, batch);
            return;
        }
        // Written (and synced): only now is the directory known to be ours still. If not,
        // what was written is cut off again: a refused publish is stored nowhere.
        if !self.owned() {
            self.unwrite();
            self.lose(encoded.first_id);
            self.health.refused(batch.len() as u64);
            refuse(batch, || JournalError::Refused(Refusal::Unavailable));
            return;
        }
        self.publish(encoded, batch);
    }

    /// Makes the segment ready for the next write: cuts what a failed write left, and
    /// starts a new segment when this one is full (or the next id is not the one its
    /// records continue with).
    pub(super) fn prepare(&mut self) -> io::Result<()> {
        if self.active.dirty {
            self.active.file.set_len(self.active.len)?;
            self.active.dirty = false;
        }
        let next = self.next_id();
        let full = self.active.len >= self.segment_size && self.active.next > self.active.first;
        if full || next != self.active.next {
            self.roll(next)?;
        }
        Ok(())
    }

    /// Closes the segment (synced, even under `--fsync never`, so that only the newest
    /// segment can ever end torn) and starts segment `first`.
    fn roll(&mut self, first: u64) -> io::Result<()> {
        self.active.file.sync_data()?;
        let dir = self.layout.segments();
        let file = create_segment(&dir, self.salt, first)?;
        self.layout.write_stub(Stub {
            salt: self.salt,
            newest: first,
        })?;
        let path = self.layout.segment(first);
        let reader = File::open(&path)?;
        self.active = Active {
            file,
            first,
            next: first,
            len: SEGMENT_HEADER,
            dirty: false,
        };
        if let Some(mut index) = self.index() {
            index.add_segment(Segment::new(first, Arc::new(reader), path, SEGMENT_HEADER));
            self.metrics.set_size(index.bytes(), index.segments().len());
        }
        Ok(())
    }

    /// Where the next byte written goes.
    pub(super) fn place(&self) -> Place {
        Place {
            salt: self.salt,
            segment: self.active.first,
            offset: self.active.len,
        }
    }

    /// Encodes `batch` into the buffer, numbering it after the messages indexed, with the
    /// kept note that waits, if any.
    fn encode(&mut self, batch: &[Pending]) -> Encoded {
        let first_id = self.active.next;
        let at = self.place();
        self.buf.clear();
        let now = wall_now();
        let kept = self.kept.is_some();
        if let Some(kept) = self.kept {
            encode(&mut self.buf, at, 0, MessageId(kept), now, Body::KeptNote);
        }
        let mut entries = Vec::with_capacity(batch.len());
        for (i, p) in batch.iter().enumerate() {
            let id = MessageId(first_id + i as u64);
            // Each its own reading: times never go backwards within a commit, and a
            // commit's are after the last one's unless the clock itself went back.
            let time = wall_now().max(now);
            let offset = self.active.len + self.buf.len() as u64;
            entries.push((
                offset,
                Message::record_len_of(id, time, p.from, p.text.len()) as u64,
                time,
            ));
            let body = Body::Message {
                from: p.from,
                token: p.claim.as_ref().map(Claimed::token),
                text: &p.text,
            };
            encode(&mut self.buf, at, 0, id, time, body);
        }
        Encoded {
            first_id,
            entries,
            kept,
        }
    }

    /// Appends the buffer, and syncs it under `always`; a failed write is cut back, so the
    /// file keeps matching the index.
    pub(super) fn append(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if let Some(kind) = self.faults.pop_front() {
            return Err(io::Error::from(kind));
        }
        let written = self.active.file.write_all(&self.buf).and_then(|()| {
            if self.fsync == Fsync::Never {
                return Ok(());
            }
            let started = Instant::now();
            let synced = self.active.file.sync_data();
            self.metrics
                .fsync_seconds
                .observe(started.elapsed().as_secs_f64());
            synced
        });
        if let Err(e) = written {
            self.unwrite();
            return Err(e);
        }
        self.last_write = Instant::now();
        Ok(())
    }

    /// Cuts the buffer just appended off the segment again.
    pub(super) fn unwrite(&mut self) {
        if self.active.file.set_len(self.active.len).is_err() {
            self.active.dirty = true;
        }
    }

    /// Indexes a written batch, so readers see it, then acknowledges it.
    fn publish(&mut self, encoded: Encoded, batch: &mut Vec<Pending>) {
        let written = self.buf.len() as u64;
        let Some(mut index) = self.index.write().ok() else {
            refuse(batch, || JournalError::Closed);
            return;
        };
        for &(offset, record_len, time) in &encoded.entries {
            index.push(offset, record_len, time);
        }
        index.grow(self.active.len + written);
        // Trimmed before anyone is answered, so that a publisher reading right after its
        // publish finds the limits holding; the files go after the answers.
        let (trimmed, gone) = index.trim(&self.retention, wall_now(), TRIM_CHUNK);
        let first_kept = index.sums().first();
        self.metrics.set_size(index.bytes(), index.segments().len());
        drop(index);
        self.doomed.extend(gone);
        self.active.len += written;
        self.active.next += batch.len() as u64;
        if encoded.kept {
            self.kept = None;
        }
        if trimmed > 0 {
            self.kept = Some(first_kept);
        }
        self.metrics.commits.inc();
        self.metrics.records.inc_by(batch.len() as u64);
        self.recovered();
        for (p, (i, &(_, _, time))) in batch.drain(..).zip(encoded.entries.iter().enumerate()) {
            let id = MessageId(encoded.first_id + i as u64);
            // Durable and indexed: a resend may now be told this id.
            if let Some(claim) = p.claim {
                claim.published(id, time);
            }
            let _ = p.reply.send(Ok(id));
        }
    }

    /// A write worked: say so if the disk had been failing.
    pub(super) fn recovered(&mut self) {
        if let Some(Change::Recovered { from, refused }) = self.health.ok() {
            let refused = crate::board::warnings::thousands(refused);
            info!(
                journal = %self.layout.dir().display(),
                was = from.name(),
                "journal writable again; {refused} publishes were refused meanwhile"
            );
        }
    }

    /// Refuses a batch whose write failed, saying why, and notes the disk's state.
    fn failed(&mut self, e: &io::Error, batch: &mut Vec<Pending>) {
        let cause = self.disk_failed(e);
        self.health.refused(batch.len() as u64);
        match cause {
            Cause::Full => refuse(batch, || JournalError::Refused(Refusal::Full)),
            Cause::ReadOnly => refuse(batch, || JournalError::Refused(Refusal::ReadOnly)),
            _ => refuse(batch, || {
                JournalError::Storage(io::Error::new(e.kind(), e.to_string()))
            }),
        }
    }

    /// Counts and logs a failed write; returns its cause.
    pub(super) fn disk_failed(&mut self, e: &io::Error) -> Cause {
        let cause = classify(e);
        self.metrics.failed(cause);
        let dir = self.layout.dir().display().to_string();
        match self.health.failed(cause, Instant::now()) {
            Some(Change::Entered(StoreState::Full)) => warn!(
                journal = %dir, error = %e,
                "journal: the disk is full: publishes are answered 4:storage full until there is room (tried again every second at most); reads go on"
            ),
            Some(Change::Entered(StoreState::ReadOnly)) => warn!(
                journal = %dir, error = %e,
                "journal: the filesystem is read-only: publishes are answered 4:storage read-only until it is writable (tried again every second at most); reads go on"
            ),
            _ if cause == Cause::Io => {
                let key = format!("journal write failed: {e}");
                warn_limited(&self.warnings, &key, |repeats| {
                    warn!(journal = %dir, error = %e, "journal write failed{repeats}");
                });
            }
            _ => {}
        }
        cause
    }
}

/// Adds to `batch` the publish `first` and whatever publishes queued behind it (during the
/// last write and fsync: so no timer adds latency), up to `MAX_BATCH_BYTES`; returns the
/// job that ended the batch if it is not a publish (a retention change, or a test's job).
fn gather(rx: &mpsc::Receiver<Job>, first: Pending, batch: &mut Vec<Pending>) -> Option<Job> {
    let mut bytes = first.text.len();
    batch.push(first);
    while bytes < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(Job::Publish(p)) => {
                bytes += p.text.len();
                batch.push(p);
            }
            Ok(job) => return Some(job),
            Err(_) => break,
        }
    }
    None
}

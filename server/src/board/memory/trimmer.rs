//! The thread that trims a memory board, and the trimming itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use mboard_protocol::Timestamp;

use super::{Inner, cost};
use crate::board::BoardError;

/// Messages trimmed under one hold of the lock, so readers wait microseconds at most.
const TRIM_CHUNK: usize = 4_096;

/// How long a woken thread lets publishes gather before it trims: the board is over a
/// count or byte limit for about this long at most.
const BATCH_WAIT: Duration = Duration::from_millis(1);

/// Trims `inner` down to what its retention allows at `now`, a chunk at a time; the texts
/// are freed outside the lock.
pub(super) fn trim(inner: &RwLock<Inner>, now: Timestamp) -> Result<Option<Timestamp>, BoardError> {
    loop {
        let mut guard: RwLockWriteGuard<'_, Inner> =
            inner.write().map_err(|_| BoardError::Poisoned)?;
        let retention = guard.retention;
        let mut gone = Vec::new();
        while gone.len() < TRIM_CHUNK && retention.exceeded(guard.held(), now) {
            let Some(entry) = guard.entries.pop_front() else {
                break;
            };
            guard.bytes -= cost(&entry.text);
            gone.push(entry);
        }
        guard.sums.trim(gone.len() as u64);
        guard.trimmed += gone.len() as u64;
        if gone.len() < TRIM_CHUNK {
            if guard.entries.capacity() > 4 * guard.entries.len() + 1024 {
                let len = guard.entries.len();
                guard.entries.shrink_to(2 * len);
            }
            let next = guard.entries.front().and_then(|e| retention.expiry(e.time));
            return Ok(next);
        }
        drop(guard);
        drop(gone);
    }
}

/// The thread that trims a memory board: woken by publishes that take it over a count or
/// byte limit, by new limits, and by the clock when its oldest message passes the age
/// limit.
#[derive(Debug)]
pub(super) struct Trimmer {
    shared: Arc<TrimShared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct TrimShared {
    /// Set by a publish that wants trimming; the thread clears it before it trims, so a
    /// burst of publishes wakes it once.
    wanted: AtomicBool,
    stop: AtomicBool,
}

impl Trimmer {
    pub(super) fn start(inner: Arc<RwLock<Inner>>) -> std::io::Result<Trimmer> {
        let shared = Arc::new(TrimShared::default());
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mboard-retention".into())
            .spawn(move || {
                let mut woken = false;
                while !state.stop.load(Ordering::Acquire) {
                    if woken {
                        // Publishes keep taking the board over its limits: let them gather
                        // for a moment, so that they are trimmed in a batch and the thread
                        // is woken a thousand times a second at most, not once a publish.
                        std::thread::sleep(BATCH_WAIT);
                    }
                    state.wanted.store(false, Ordering::Release);
                    let now = Timestamp::from_system_time(SystemTime::now());
                    let next = match trim(&inner, now) {
                        Ok(next) => next,
                        Err(_) => return,
                    };
                    if state.wanted.load(Ordering::Acquire) {
                        woken = true;
                        continue;
                    }
                    // Woken early by a publish (or the board being dropped), or by the
                    // oldest message coming of age; an hour at most, so a clock that jumps
                    // is caught up with.
                    let wait = next.map_or(Duration::from_secs(3_600), |at| {
                        Duration::from_micros(at.0.saturating_sub(now.0))
                    });
                    std::thread::park_timeout(wait.min(Duration::from_secs(3_600)));
                    woken = state.wanted.load(Ordering::Acquire);
                }
            })?;
        Ok(Trimmer {
            shared,
            thread: Some(thread),
        })
    }

    pub(super) fn wake(&self) {
        // Read before writing: under a stream of publishes the flag is already set, and a
        // load does not take the cache line from the other cores.
        if !self.shared.wanted.load(Ordering::Relaxed)
            && !self.shared.wanted.swap(true, Ordering::AcqRel)
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
    }
}

impl Drop for Trimmer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

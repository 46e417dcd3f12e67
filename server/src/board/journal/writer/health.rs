//! Whether the writer may write: the disk's state (full, read-only) with its backoff, and
//! whether the data directory is still this server's.
//!
//! Sans-IO: [`Health`] is told what happened and when, and says whether to try the disk.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use super::metrics::Cause;
use crate::board::{Refusal, StoreState};

/// The first wait before the disk is tried again after it failed; it doubles up to
/// [`MAX_BACKOFF`] while failures go on.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(50);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What a failed write means.
pub(super) fn classify(e: &io::Error) -> Cause {
    use io::ErrorKind::*;
    match e.kind() {
        // A file size limit (RLIMIT_FSIZE) is full for the journal's purposes.
        StorageFull | QuotaExceeded | FileTooLarge => Cause::Full,
        ReadOnlyFilesystem => Cause::ReadOnly,
        _ => Cause::Io,
    }
}

/// The writer's state, shared with the journal for metrics.
#[derive(Debug, Default)]
pub(in crate::board::journal) struct SharedState(AtomicU8);

impl SharedState {
    pub(in crate::board::journal) fn get(&self) -> StoreState {
        StoreState::ALL
            .get(usize::from(self.0.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or_default()
    }

    fn set(&self, state: StoreState) {
        let i = StoreState::ALL
            .iter()
            .position(|s| *s == state)
            .unwrap_or(0);
        self.0.store(i as u8, Ordering::Relaxed);
    }
}

/// What a change of state is, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// The disk failed this way and had not before.
    Entered(StoreState),
    /// Writes work again after this many publishes were refused.
    Recovered { from: StoreState, refused: u64 },
}

/// The disk's state as the writer last found it.
#[derive(Debug)]
pub(super) struct Health {
    state: StoreState,
    shared: Arc<SharedState>,
    /// While failing: the disk is not tried again before this.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Publishes refused since the state last changed.
    refused: u64,
}

impl Health {
    pub(super) fn new(shared: Arc<SharedState>) -> Self {
        shared.set(StoreState::Writable);
        Health {
            state: StoreState::Writable,
            shared,
            retry_at: None,
            backoff: FIRST_BACKOFF,
            refused: 0,
        }
    }

    pub(super) fn state(&self) -> StoreState {
        self.state
    }

    /// Why publishes are refused at `now` without trying the disk, if they are: always once
    /// the directory is lost, and while waiting to try a full or read-only disk again.
    pub(super) fn refusing(&self, now: Instant) -> Option<Refusal> {
        let reason = match self.state {
            StoreState::Writable => return None,
            StoreState::Lost => return Some(Refusal::Unavailable),
            StoreState::Full => Refusal::Full,
            StoreState::ReadOnly => Refusal::ReadOnly,
        };
        self.retry_at.is_some_and(|at| now < at).then_some(reason)
    }

    /// Counts publishes refused.
    pub(super) fn refused(&mut self, n: u64) {
        self.refused += n;
    }

    /// A write failed for `cause` at `now`: wait before trying again, longer each time.
    pub(super) fn failed(&mut self, cause: Cause, now: Instant) -> Option<Change> {
        let state = match cause {
            Cause::Full => StoreState::Full,
            Cause::ReadOnly => StoreState::ReadOnly,
            Cause::Lost => return self.lost(),
            // Another error says nothing about the next write: no state, no wait.
            Cause::Io => return None,
        };
        if self.state == StoreState::Lost {
            return None;
        }
        let change = (self.state != state).then_some(Change::Entered(state));
        if change.is_some() {
            self.backoff = FIRST_BACKOFF;
            self.refused = 0;
        } else {
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
        self.state = state;
        self.shared.set(state);
        self.retry_at = Some(now + self.backoff);
        change
    }

    /// The data directory is no longer ours: nothing is written again.
    pub(super) fn lost(&mut self) -> Option<Change> {
        if self.state == StoreState::Lost {
            return None;
        }
        self.state = StoreState::Lost;
        self.shared.set(StoreState::Lost);
        self.retry_at = None;
        Some(Change::Entered(StoreState::Lost))
    }

    /// Room was made (retention deleted a segment): try the disk at once.
    pub(super) fn room(&mut self) {
        if self.state == StoreState::Full {
            self.retry_at = None;
        }
    }

    /// A write worked.
    pub(super) fn ok(&mut self) -> Option<Change> {
        if matches!(self.state, StoreState::Writable | StoreState::Lost) {
            return None;
        }
        let change = Change::Recovered {
            from: self.state,
            refused: self.refused,
        };
        self.state = StoreState::Writable;
        self.shared.set(StoreState::Writable);
        self.retry_at = None;
        self.backoff = FIRST_BACKOFF;
        self.refused = 0;
        Some(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_disk_is_retried_with_backoff_and_recovers() {
        let shared = Arc::new(SharedState::default());
        let mut h = Health::new(shared.clone());
        let t0 = Instant::now();
        assert_eq!(h.refusing(t0), None);
        assert_eq!(
            h.failed(Cause::Full, t0),
            Some(Change::Entered(StoreState::Full))
        );
        assert_eq!(shared.get(), StoreState::Full);
        assert_eq!(h.refusing(t0 + ms(49)), Some(Refusal::Full));
        assert_eq!(h.refusing(t0 + ms(50)), None, "time to try again");
        h.refused(3);
        // Still full: twice as long, then 1 s at most.
        assert_eq!(h.failed(Cause::Full, t0 + ms(50)), None);
        assert_eq!(h.refusing(t0 + ms(149)), Some(Refusal::Full));
        assert_eq!(h.refusing(t0 + ms(150)), None);
        let mut at = t0 + ms(150);
        for _ in 0..10 {
            h.failed(Cause::Full, at);
            at += MAX_BACKOFF;
        }
        assert_eq!(h.refusing(at - ms(1)), Some(Refusal::Full));
        assert_eq!(h.refusing(at), None, "never more than a second");
        // Retention made room: at once.
        h.failed(Cause::Full, at);
        h.room();
        assert_eq!(h.refusing(at), None);
        h.refused(2);
        assert_eq!(
            h.ok(),
            Some(Change::Recovered {
                from: StoreState::Full,
                refused: 5
            })
        );
        assert_eq!(
            (h.state(), shared.get()),
            (StoreState::Writable, StoreState::Writable)
        );
        assert_eq!(h.ok(), None);
    }

    #[test]
    fn read_only_is_its_own_state_and_other_errors_are_none() {
        let mut h = Health::new(Arc::default());
        let t0 = Instant::now();
        assert_eq!(h.failed(Cause::Io, t0), None);
        assert_eq!(
            h.refusing(t0),
            None,
            "an I/O error does not stop the next write"
        );
        assert_eq!(
            h.failed(Cause::ReadOnly, t0),
            Some(Change::Entered(StoreState::ReadOnly))
        );
        assert_eq!(h.refusing(t0), Some(Refusal::ReadOnly));
        h.room();
        assert_eq!(
            h.refusing(t0),
            Some(Refusal::ReadOnly),
            "room does not help"
        );
        assert_eq!(
            h.failed(Cause::Full, t0),
            Some(Change::Entered(StoreState::Full))
        );
    }

    #[test]
    fn a_lost_directory_is_for_good() {
        let mut h = Health::new(Arc::default());
        let t0 = Instant::now();
        h.failed(Cause::Full, t0);
        assert_eq!(h.lost(), Some(Change::Entered(StoreState::Lost)));
        assert_eq!(h.lost(), None, "said once");
        assert_eq!(h.failed(Cause::Full, t0), None);
        assert_eq!(h.ok(), None);
        assert_eq!(
            h.refusing(t0 + Duration::from_secs(3_600)),
            Some(Refusal::Unavailable)
        );
    }

    #[test]
    fn errors_are_classified_by_kind() {
        let e = |raw| io::Error::from_raw_os_error(raw);
        assert_eq!(classify(&e(28)), Cause::Full, "ENOSPC");
        assert_eq!(classify(&e(122)), Cause::Full, "EDQUOT");
        assert_eq!(classify(&e(27)), Cause::Full, "EFBIG");
        assert_eq!(classify(&e(30)), Cause::ReadOnly, "EROFS");
        assert_eq!(classify(&e(5)), Cause::Io, "EIO");
    }
}

//! `6:<after>:<max>:<wait>`: reading after an id, and holding the request until there is
//! something to read.
//!
//! The held requests themselves are the sans-IO [`Holds`]; this module ties them to the
//! board and the driver. No publish is missed between a reader finding nothing and its
//! request being held: the reader checks the board and holds under the lock of the held
//! requests, and a publisher makes its message readable before it takes that lock to wake
//! them, so either the reader sees the message or the publisher sees the held request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mboard_protocol::{ErrorCode, MessageId, ReplyCode, Response};
use tokio::sync::Notify;

use super::{Answer, Handler};
use crate::board::Board;
use crate::config::Limits;
use crate::held::{HoldCounts, HoldLimits, Holds, Wake, WakeCause};
use crate::reply::Reply;

/// A `6:` request's fields.
#[derive(Debug, Clone, Copy)]
pub(super) struct After {
    pub(super) after: MessageId,
    pub(super) max: u64,
    pub(super) wait_ms: u64,
}

/// Held requests, and the ones a publish has made due, for the driver to answer.
#[derive(Debug)]
pub(super) struct Followers {
    /// Held only for table operations and one board span lookup, never across an await.
    holds: Mutex<Holds>,
    /// Woken by publishes, not yet answered.
    woken: Mutex<Vec<Wake>>,
    /// Tells the driver there is something to answer, or an earlier deadline to wait for.
    signal: Notify,
    /// The last reply built for a woken request, and the span of messages it holds.
    /// Followers that are caught up wait with the same `<after>`, so a publish wakes them
    /// together and they are all owed the same bytes: encoded once, sent to each. A span
    /// names its messages for good (boards only grow), so an equal span is the same reply.
    shared: Mutex<Option<(SpanKey, Reply)>>,
}

/// Where a span starts and how many messages it holds.
type SpanKey = (u64, u64);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The tables are consistent between calls; a panic elsewhere must not stop following.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Followers {
    pub(super) fn new(limits: &Limits) -> Self {
        Followers {
            holds: Mutex::new(Holds::new(HoldLimits {
                max_wait: limits.max_hold,
                max_held: limits.max_held,
                max_per_source: limits.max_held_per_source,
            })),
            woken: Mutex::new(Vec::new()),
            signal: Notify::new(),
            shared: Mutex::new(None),
        }
    }

    /// Message `id` is readable now: wake what it satisfies.
    pub(super) fn published(&self, id: MessageId) {
        let wakes = lock(&self.holds).published(id);
        if !wakes.is_empty() {
            lock(&self.woken).extend(wakes);
            self.signal.notify_one();
        }
    }
}

impl<B: Board> Handler<B> {
    /// Answers `6:` now if there is something to read (or nothing may be waited for);
    /// otherwise holds it. `hold` is the request's length where holding is allowed.
    pub(super) fn after(
        self: &Arc<Self>,
        now: Instant,
        from: SocketAddr,
        req: After,
        hold: Option<usize>,
    ) -> Answer {
        let Some(request_len) = hold.filter(|_| req.wait_ms > 0) else {
            return self.read_after(now, from, req.after, req.max);
        };
        let mut holds = lock(&self.follow.holds);
        match self.board.span_after(req.after, req.max) {
            Ok(span) if span.count > 0 => {
                drop(holds);
                self.messages(now, from, span)
            }
            Ok(_) => {
                let wait = Duration::from_millis(req.wait_ms);
                match holds.hold(now, from, req.after, req.max, wait, request_len) {
                    Ok(()) => {
                        drop(holds);
                        // The driver may be asleep until a later deadline than this one.
                        self.follow.signal.notify_one();
                        Answer::Silent
                    }
                    Err(busy) => {
                        Answer::Reply(Reply::error(ErrorCode::ErrTransm, busy.to_string()))
                    }
                }
            }
            Err(e) => Answer::Reply(self.board_failure(&e)),
        }
    }

    fn read_after(
        self: &Arc<Self>,
        now: Instant,
        to: SocketAddr,
        after: MessageId,
        max: u64,
    ) -> Answer {
        match self.board.span_after(after, max) {
            Ok(span) => self.messages(now, to, span),
            Err(e) => Answer::Reply(self.board_failure(&e)),
        }
    }

    /// What a woken request reads: the reply built for the previous one if it covers the
    /// same span.
    fn read_woken(self: &Arc<Self>, now: Instant, wake: Wake) -> Answer {
        let span = match self.board.span_after(wake.after, wake.max) {
            Ok(span) => span,
            Err(e) => return Answer::Reply(self.board_failure(&e)),
        };
        let key = (span.start, span.count);
        if let Some((shared, reply)) = &*lock(&self.follow.shared)
            && *shared == key
        {
            return Answer::Reply(reply.clone());
        }
        let answer = self.messages(now, wake.to, span);
        // Only a direct reply can be shared: an offer is a session of its requester's.
        if let Answer::Reply(reply) = &answer
            && reply.code() == ReplyCode::Ok
        {
            *lock(&self.follow.shared) = Some((key, reply.clone()));
        }
        answer
    }

    /// Resolves when a held request may be due: a publish woke some, or one was held that
    /// may end before the deadline the caller is waiting for.
    pub(crate) async fn follow_signal(&self) {
        self.follow.signal.notified().await;
    }

    /// The held requests to answer now: those a publish woke, and those whose wait has run
    /// out by `now`.
    pub(crate) fn follow_due(&self, now: Instant) -> Vec<Wake> {
        let mut due = std::mem::take(&mut *lock(&self.follow.woken));
        due.extend(lock(&self.follow.holds).expire(now));
        due
    }

    /// When the next held request's wait runs out, if any is held.
    pub(crate) fn next_hold_deadline(&self) -> Option<Instant> {
        lock(&self.follow.holds).next_deadline()
    }

    /// Messages up to `newest` are readable, however they reached the board (a replica
    /// fed by other servers, say): wake the held requests they satisfy.
    pub fn arrived(&self, newest: MessageId) {
        self.follow.published(newest);
    }

    /// Counts of held requests, for metrics.
    pub(crate) fn hold_counts(&self) -> HoldCounts {
        lock(&self.follow.holds).counts()
    }

    /// The answer to a held request that is due: what was published after its `after`, or
    /// `0:0` when its wait ran out. Held replies obey the amplification rule like any
    /// other, measured against the request that was held.
    pub(crate) fn answer_wake(self: &Arc<Self>, now: Instant, wake: Wake) -> Answer {
        let answer = match wake.cause {
            WakeCause::Published => self.read_woken(now, wake),
            WakeCause::TimedOut => Answer::Reply(Reply::new(&Response::Messages(Vec::new()))),
        };
        self.limit_amplification(now, wake.to, wake.request_len, answer)
    }
}

//! The sans-IO transfer engine: a window of numbered items in flight, each retransmitted
//! until acknowledged, under the limits of a [`Deadline`] (silence, total, refusal).
//!
//! An item is whatever needs an answer: an upload block (`b:`), a download block request
//! (`g:`), or a single request. The engine never sees bytes or sockets; the caller asks it
//! which item to send ([`Transfer::poll_transmit`]), tells it which item a reply answered
//! ([`Transfer::on_ack`]), any other datagram ([`Transfer::on_datagram`]) or refusal
//! ([`Transfer::on_refused`]), and wakes it when [`Transfer::poll_timeout`] says so.
//!
//! A request the server may hold before answering (`6:` with a wait, [`Hold`]) is not
//! lost while it is legitimately held: its timer runs for the wait and then the RTO, the
//! deadline's silence starts only when the wait is over, and meanwhile it is renewed every
//! [`Hold::refresh`] so that a request lost on the way, or forgotten by a restarted server,
//! is held again.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::deadline::{Deadline, Expiry};
use crate::rtt::Rtt;

#[derive(Debug, Clone, Copy)]
struct Flight {
    sent_at: Instant,
    /// Karn's rule: a reply to a retransmitted item cannot be timed. Nor can a reply to a
    /// held request, which includes however long the server held it.
    untimed: bool,
}

/// A request the server may hold for up to `wait` before it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hold {
    /// The longest the server may hold it: asked for in the request.
    pub wait: Duration,
    /// How often it is sent again while held. The server replaces a held request with its
    /// resend, so renewing costs one datagram and nothing else, and it is what brings a
    /// request lost on the way, or forgotten by a server that restarted, back.
    pub refresh: Duration,
}

/// One windowed transfer of `total` items.
#[derive(Debug)]
pub(crate) struct Transfer {
    total: u64,
    window: usize,
    deadline: Deadline,
    rtt: Rtt,
    next_new: u64,
    in_flight: HashMap<u64, Flight>,
    lost: VecDeque<u64>,
    done: Vec<u64>,
    done_count: u64,
    sent: u64,
    retransmissions: u64,
    hold: Option<Hold>,
    /// When the server's hold ends: the first transmission plus the wait.
    hold_end: Option<Instant>,
    /// Datagrams that answered nothing since the last one that did.
    strays: u64,
}

/// A limit ran out with items still unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("gave up with {missing} of {total} items unanswered")]
pub(crate) struct DeadlinePassed {
    /// The limit that ran out.
    pub expiry: Expiry,
    /// Items never answered.
    pub missing: u64,
    /// Items in the transfer.
    pub total: u64,
}

impl Transfer {
    /// A transfer of `total` items, at most `window` in flight, under `deadline`'s limits.
    pub(crate) fn new(total: u64, window: usize, deadline: Deadline, rtt: Rtt) -> Self {
        Transfer {
            total,
            window: window.max(1),
            deadline,
            rtt,
            next_new: 0,
            in_flight: HashMap::new(),
            lost: VecDeque::new(),
            done: vec![0; total.div_ceil(64) as usize],
            done_count: 0,
            sent: 0,
            retransmissions: 0,
            hold: None,
            hold_end: None,
            strays: 0,
        }
    }

    /// The same transfer of requests the server may hold (`6:` with a wait): meant for a
    /// transfer of one item, whose hold starts with its first transmission.
    pub(crate) fn with_hold(mut self, hold: Option<Hold>) -> Self {
        self.hold = hold.filter(|h| !h.wait.is_zero());
        self
    }

    /// The wait to ask for in a datagram sent `now`: all of it the first time, then what is
    /// left of it, so that a resend never moves the end of the hold (a resend after it is
    /// answered at once). Zero for requests that are not held.
    pub(crate) fn hold_left(&self, now: Instant) -> Duration {
        match (self.hold, self.hold_end) {
            (Some(hold), None) => hold.wait,
            (Some(_), Some(end)) => end.saturating_duration_since(now),
            (None, _) => Duration::ZERO,
        }
    }

    /// When `flight` is due again, and whether that is a loss (or a renewal of a request
    /// still held, which is not).
    fn due(&self, flight: &Flight) -> (Instant, bool) {
        let rto = self.rtt.rto();
        match (self.hold, self.hold_end) {
            (Some(hold), Some(end)) if flight.sent_at < end => {
                // Renewed while the hold lasts; once it is over, the answer is overdue.
                let renew = flight.sent_at + hold.refresh;
                if renew < end {
                    (renew, false)
                } else {
                    (end + rto, true)
                }
            }
            _ => (flight.sent_at + rto, true),
        }
    }

    fn start_flight(&mut self, now: Instant, resent: bool) -> Flight {
        if let Some(hold) = self.hold
            && self.hold_end.is_none()
        {
            let end = now + hold.wait;
            self.hold_end = Some(end);
            self.deadline.quiet_until(end);
        }
        self.sent += 1;
        if resent {
            self.retransmissions += 1;
        }
        Flight {
            sent_at: now,
            untimed: resent || self.hold.is_some(),
        }
    }

    fn is_acked(&self, i: u64) -> bool {
        self.done[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Whether every item has been answered.
    pub(crate) fn is_done(&self) -> bool {
        self.done_count == self.total
    }

    /// Items answered so far.
    pub(crate) fn acked(&self) -> u64 {
        self.done_count
    }

    /// Datagrams sent, and how many of them were retransmissions.
    #[cfg(test)]
    pub(crate) fn sent(&self) -> (u64, u64) {
        (self.sent, self.retransmissions)
    }

    /// The estimator, to carry over to the next phase of the same operation.
    pub(crate) fn rtt(&self) -> &Rtt {
        &self.rtt
    }

    /// The clocks, to carry over to the next phase: silence goes on across phases.
    pub(crate) fn deadline(&self) -> &Deadline {
        &self.deadline
    }

    /// A datagram came that answers nothing outstanding (a duplicate, a stale reply): it
    /// is not progress, but the server is there, so the silence starts again — up to a
    /// point. Duplicates of a whole window's replies are one thing; a server that answers
    /// every resend with something that answers nothing would keep the transfer going
    /// for ever, so past [`Transfer::stray_limit`] in a row they no longer count.
    pub(crate) fn on_datagram(&mut self, now: Instant) {
        self.strays += 1;
        if self.strays <= self.stray_limit() {
            self.deadline.heard(now);
        }
    }

    /// Datagrams in a row that answer nothing and still end the silence: two for each
    /// item a window holds, and some.
    pub(crate) fn stray_limit(&self) -> u64 {
        2 * self.window as u64 + 16
    }

    /// The server's port refused a datagram (ICMP port unreachable).
    pub(crate) fn on_refused(&mut self, now: Instant) {
        self.deadline.refused(now);
    }

    /// The next item to send now, if the window has room: lost items first, then new ones.
    pub(crate) fn poll_transmit(&mut self, now: Instant) -> Option<u64> {
        if self.deadline.check(now).is_err() || self.in_flight.len() >= self.window {
            return None;
        }
        while let Some(i) = self.lost.pop_front() {
            // It may have been answered late, after it was declared lost.
            if !self.is_acked(i) {
                let flight = self.start_flight(now, true);
                self.in_flight.insert(i, flight);
                return Some(i);
            }
        }
        if self.next_new < self.total {
            let i = self.next_new;
            self.next_new += 1;
            let flight = self.start_flight(now, false);
            self.in_flight.insert(i, flight);
            return Some(i);
        }
        None
    }

    /// Records that item `index` was answered; returns false for replies that match nothing
    /// outstanding (already answered, or no such item), which the caller ignores.
    pub(crate) fn on_ack(&mut self, now: Instant, index: u64) -> bool {
        if index >= self.total || self.is_acked(index) {
            self.on_datagram(now);
            return false;
        }
        self.deadline.heard(now);
        self.strays = 0;
        self.done[(index / 64) as usize] |= 1 << (index % 64);
        self.done_count += 1;
        if let Some(flight) = self.in_flight.remove(&index)
            && !flight.untimed
        {
            self.rtt
                .sample(now.saturating_duration_since(flight.sent_at));
        }
        true
    }

    /// When the caller must call [`Transfer::handle_timeout`] if no reply comes first.
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.in_flight
            .values()
            .map(|f| self.due(f).0)
            .min()
            .map_or(self.deadline.next(), |t| t.min(self.deadline.next()))
    }

    /// Declares items whose timer ran out lost (to be resent) and backs off once.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Result<(), DeadlinePassed> {
        if !self.is_done()
            && let Err(expiry) = self.deadline.check(now)
        {
            return Err(DeadlinePassed {
                expiry,
                missing: self.total - self.done_count,
                total: self.total,
            });
        }
        let mut lost = false;
        let mut expired: Vec<u64> = Vec::new();
        for (&i, f) in &self.in_flight {
            let (at, loss) = self.due(f);
            if at <= now {
                expired.push(i);
                lost |= loss;
            }
        }
        if !expired.is_empty() {
            // One backoff per timer event, however many items it caught: a burst lost
            // together is one congestion signal, not many. Renewing a held request is
            // no signal at all.
            if lost {
                self.rtt.back_off();
            }
            expired.sort_unstable();
            for i in expired {
                self.in_flight.remove(&i);
                self.lost.push_back(i);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod hold_tests;
#[cfg(test)]
mod tests;

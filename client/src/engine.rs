//! The sans-IO transfer engine: a window of numbered items in flight, each retransmitted
//! until acknowledged, under the limits of a [`Deadline`] (silence, total, refusal).
//!
//! An item is whatever needs an answer: an upload block (`b:`), a download block request
//! (`g:`), or a single request. The engine never sees bytes or sockets; the caller asks it
//! which item to send ([`Transfer::poll_transmit`]), tells it which item a reply answered
//! ([`Transfer::on_ack`]), any other datagram ([`Transfer::on_datagram`]) or refusal
//! ([`Transfer::on_refused`]), and wakes it when [`Transfer::poll_timeout`] says so.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::deadline::{Deadline, Expiry};
use crate::rtt::Rtt;

#[derive(Debug, Clone, Copy)]
struct Flight {
    sent_at: Instant,
    /// Karn's rule: a reply to a retransmitted item cannot be timed.
    retransmitted: bool,
}

/// One windowed transfer of `total` items.
#[derive(Debug)]
pub struct Transfer {
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
}

/// A limit ran out with items still unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("gave up with {missing} of {total} items unanswered")]
pub struct DeadlinePassed {
    /// The limit that ran out.
    pub expiry: Expiry,
    /// Items never answered.
    pub missing: u64,
    /// Items in the transfer.
    pub total: u64,
}

impl Transfer {
    /// A transfer of `total` items, at most `window` in flight, under `deadline`'s limits.
    pub fn new(total: u64, window: usize, deadline: Deadline, rtt: Rtt) -> Self {
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
        }
    }

    fn is_acked(&self, i: u64) -> bool {
        self.done[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Whether every item has been answered.
    pub fn is_done(&self) -> bool {
        self.done_count == self.total
    }

    /// Items answered so far.
    pub fn acked(&self) -> u64 {
        self.done_count
    }

    /// Datagrams sent, and how many of them were retransmissions.
    pub fn sent(&self) -> (u64, u64) {
        (self.sent, self.retransmissions)
    }

    /// The estimator, to carry over to the next phase of the same operation.
    pub fn rtt(&self) -> &Rtt {
        &self.rtt
    }

    /// The clocks, to carry over to the next phase: silence goes on across phases.
    pub fn deadline(&self) -> &Deadline {
        &self.deadline
    }

    /// A datagram came that answers nothing outstanding (a duplicate, a stale reply): it
    /// is not progress, but the server is there, so the silence starts again.
    pub fn on_datagram(&mut self, now: Instant) {
        self.deadline.heard(now);
    }

    /// The server's port refused a datagram (ICMP port unreachable).
    pub fn on_refused(&mut self, now: Instant) {
        self.deadline.refused(now);
    }

    /// The next item to send now, if the window has room: lost items first, then new ones.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<u64> {
        if self.deadline.check(now).is_err() || self.in_flight.len() >= self.window {
            return None;
        }
        while let Some(i) = self.lost.pop_front() {
            // It may have been answered late, after it was declared lost.
            if !self.is_acked(i) {
                self.in_flight.insert(
                    i,
                    Flight {
                        sent_at: now,
                        retransmitted: true,
                    },
                );
                self.sent += 1;
                self.retransmissions += 1;
                return Some(i);
            }
        }
        if self.next_new < self.total {
            let i = self.next_new;
            self.next_new += 1;
            self.in_flight.insert(
                i,
                Flight {
                    sent_at: now,
                    retransmitted: false,
                },
            );
            self.sent += 1;
            return Some(i);
        }
        None
    }

    /// Records that item `index` was answered; returns false for replies that match nothing
    /// outstanding (already answered, or no such item), which the caller ignores.
    pub fn on_ack(&mut self, now: Instant, index: u64) -> bool {
        self.deadline.heard(now);
        if index >= self.total || self.is_acked(index) {
            return false;
        }
        self.done[(index / 64) as usize] |= 1 << (index % 64);
        self.done_count += 1;
        if let Some(flight) = self.in_flight.remove(&index)
            && !flight.retransmitted
        {
            self.rtt
                .sample(now.saturating_duration_since(flight.sent_at));
        }
        true
    }

    /// When the caller must call [`Transfer::handle_timeout`] if no reply comes first.
    pub fn poll_timeout(&self) -> Instant {
        let rto = self.rtt.rto();
        self.in_flight
            .values()
            .map(|f| f.sent_at + rto)
            .min()
            .map_or(self.deadline.next(), |t| t.min(self.deadline.next()))
    }

    /// Declares items whose timer ran out lost (to be resent) and backs off once.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), DeadlinePassed> {
        if !self.is_done()
            && let Err(expiry) = self.deadline.check(now)
        {
            return Err(DeadlinePassed {
                expiry,
                missing: self.total - self.done_count,
                total: self.total,
            });
        }
        let rto = self.rtt.rto();
        let mut expired: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.sent_at + rto <= now)
            .map(|(&i, _)| i)
            .collect();
        if !expired.is_empty() {
            // One backoff per timer event, however many items it caught: a burst lost
            // together is one congestion signal, not many.
            self.rtt.back_off();
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
mod tests;

//! The sans-IO transfer engine: a window of numbered items in flight, each retransmitted
//! until acknowledged, under one overall deadline.
//!
//! An item is whatever needs an answer: an upload block (`b:`), a download block request
//! (`g:`), or a single request. The engine never sees bytes or sockets; the caller asks it
//! which item to send ([`Transfer::poll_transmit`]), tells it which item a reply answered
//! ([`Transfer::on_ack`]), and wakes it when [`Transfer::poll_timeout`] says so.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

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
    deadline: Instant,
    rtt: Rtt,
    next_new: u64,
    in_flight: HashMap<u64, Flight>,
    lost: VecDeque<u64>,
    done: Vec<u64>,
    done_count: u64,
    sent: u64,
    retransmissions: u64,
}

/// The deadline passed with items still unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline passed with {missing} of {total} items unanswered")]
pub struct DeadlinePassed {
    /// Items never answered.
    pub missing: u64,
    /// Items in the transfer.
    pub total: u64,
}

impl Transfer {
    /// A transfer of `total` items, at most `window` in flight, finished by `deadline`.
    pub fn new(total: u64, window: usize, deadline: Instant, rtt: Rtt) -> Self {
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

    /// The next item to send now, if the window has room: lost items first, then new ones.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<u64> {
        if now >= self.deadline || self.in_flight.len() >= self.window {
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
            .map_or(self.deadline, |t| t.min(self.deadline))
    }

    /// Declares items whose timer ran out lost (to be resent) and backs off once.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), DeadlinePassed> {
        if !self.is_done() && now >= self.deadline {
            return Err(DeadlinePassed {
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
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A simulated network: each datagram is delivered after a latency, or dropped, or
    /// duplicated, as a seeded script decides; the far end acknowledges every item it gets.
    struct Net {
        rng: StdRng,
        loss: f64,
        dup: f64,
        jitter_ms: u64,
        /// Replies in flight, by arrival time.
        arrivals: BTreeMap<(Instant, u64), u64>,
        seq: u64,
        delivered: Vec<u64>,
    }

    impl Net {
        fn new(seed: u64, loss: f64, dup: f64, jitter_ms: u64) -> Self {
            Net {
                rng: StdRng::seed_from_u64(seed),
                loss,
                dup,
                jitter_ms,
                arrivals: BTreeMap::new(),
                seq: 0,
                delivered: Vec::new(),
            }
        }

        /// Sends item `i` at `now`: it crosses twice (request and reply), each way lossy.
        fn send(&mut self, now: Instant, i: u64) {
            let copies = if self.rng.random_bool(self.dup) { 2 } else { 1 };
            for _ in 0..copies {
                if self.rng.random_bool(self.loss) {
                    continue;
                }
                self.delivered.push(i);
                if self.rng.random_bool(self.loss) {
                    continue;
                }
                let delay = 2 * MS + MS * self.rng.random_range(0..=self.jitter_ms) as u32;
                self.seq += 1;
                self.arrivals.insert((now + delay, self.seq), i);
            }
        }

        fn next_arrival(&self) -> Option<Instant> {
            self.arrivals.keys().next().map(|(t, _)| *t)
        }
    }

    /// Runs a transfer to completion or deadline on the manual clock.
    fn run(t: &mut Transfer, net: &mut Net, start: Instant) -> Result<Instant, DeadlinePassed> {
        let mut now = start;
        loop {
            while let Some(i) = t.poll_transmit(now) {
                net.send(now, i);
            }
            if t.is_done() {
                return Ok(now);
            }
            let wake = t.poll_timeout();
            match net.next_arrival() {
                Some(at) if at <= wake => {
                    now = at;
                    let (&key, &i) = net.arrivals.iter().next().expect("arrival");
                    net.arrivals.remove(&key);
                    t.on_ack(now, i);
                }
                _ => {
                    now = wake;
                    t.handle_timeout(now)?;
                }
            }
        }
    }

    #[test]
    fn lossless_transfer_keeps_the_window_full_and_resends_nothing() {
        let start = Instant::now();
        let mut t = Transfer::new(100, 8, start + 10 * 1000 * MS, Rtt::new(100 * MS));
        let sent: Vec<u64> = std::iter::from_fn(|| t.poll_transmit(start)).collect();
        assert_eq!(
            sent,
            (0..8).collect::<Vec<_>>(),
            "a full window goes out at once"
        );
        let mut net = Net::new(1, 0.0, 0.0, 0);
        for i in sent {
            net.send(start, i);
        }
        let end = run(&mut t, &mut net, start).expect("done");
        assert_eq!(t.sent(), (100, 0));
        // 100 items, 8 at a time, 2 ms per round trip.
        assert_eq!(end - start, 13 * 2 * MS);
        assert_eq!(t.rtt().srtt(), Some(2 * MS));
    }

    #[test]
    fn exactly_the_lost_items_are_resent() {
        let start = Instant::now();
        let mut t = Transfer::new(5, 5, start + 1000 * MS, Rtt::new(50 * MS));
        let first: Vec<u64> = std::iter::from_fn(|| t.poll_transmit(start)).collect();
        assert_eq!(first.len(), 5);
        // Replies for 0, 2, 4 arrive; 1 and 3 are lost.
        for i in [0, 2, 4] {
            assert!(t.on_ack(start + 10 * MS, i));
        }
        // Three 10 ms samples: SRTT 10 ms, RTTVAR 2.8125 ms, RTO = SRTT + 4 RTTVAR.
        let rto = Duration::from_micros(21_250);
        assert_eq!(t.rtt().rto(), rto);
        assert_eq!(
            t.poll_timeout(),
            start + rto,
            "the timers of 1 and 3 run out first"
        );
        t.handle_timeout(start + rto - MS).expect("before deadline");
        assert_eq!(
            t.poll_transmit(start + rto - MS),
            None,
            "nothing is due yet"
        );
        t.handle_timeout(start + rto).expect("before deadline");
        let again: Vec<u64> = std::iter::from_fn(|| t.poll_transmit(start + rto)).collect();
        assert_eq!(again, vec![1, 3]);
        assert_eq!(
            t.rtt().rto(),
            2 * rto,
            "backed off once for the one timer event"
        );
        // A duplicate reply and a reply to nothing are ignored.
        assert!(!t.on_ack(start + 31 * MS, 0));
        assert!(!t.on_ack(start + 31 * MS, 99));
        // Karn: replies to the resent items are not timed.
        assert!(t.on_ack(start + 90 * MS, 1));
        assert!(t.on_ack(start + 90 * MS, 3));
        assert!(t.is_done());
        assert_eq!(t.rtt().srtt(), Some(10 * MS));
        assert_eq!(t.sent(), (7, 2));
    }

    #[test]
    fn a_late_reply_cancels_the_pending_resend() {
        let start = Instant::now();
        let mut t = Transfer::new(2, 1, start + 1000 * MS, Rtt::new(20 * MS));
        assert_eq!(t.poll_transmit(start), Some(0));
        t.handle_timeout(start + 20 * MS).expect("ok");
        // The window is free again; the reply to the first copy arrives before the resend.
        assert!(t.on_ack(start + 21 * MS, 0));
        assert_eq!(t.poll_transmit(start + 21 * MS), Some(1), "0 is not resent");
    }

    #[test]
    fn the_deadline_ends_a_transfer_that_gets_no_replies() {
        let start = Instant::now();
        let mut t = Transfer::new(3, 2, start + 1000 * MS, Rtt::new(100 * MS));
        let mut now = start;
        let mut timeouts = Vec::new();
        let err = loop {
            while t.poll_transmit(now).is_some() {}
            now = t.poll_timeout();
            timeouts.push(now - start);
            if let Err(e) = t.handle_timeout(now) {
                break e;
            }
        };
        assert_eq!(
            err,
            DeadlinePassed {
                missing: 3,
                total: 3
            }
        );
        assert_eq!(now, start + 1000 * MS, "gives up exactly at the deadline");
        // Exponential backoff: resends at 100, 300, 700 ms, then the deadline.
        assert_eq!(timeouts, vec![100 * MS, 300 * MS, 700 * MS, 1000 * MS]);
        assert_eq!(
            t.poll_transmit(now),
            None,
            "nothing is sent after the deadline"
        );
    }

    #[test]
    fn lossy_duplicating_reordering_network_still_completes() {
        for seed in 0..20 {
            let start = Instant::now();
            let mut t = Transfer::new(1000, 32, start + 60 * 1000 * MS, Rtt::new(100 * MS));
            let mut net = Net::new(seed, 0.10, 0.05, 20);
            run(&mut t, &mut net, start).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(t.acked(), 1000);
            let distinct: std::collections::HashSet<_> = net.delivered.iter().collect();
            assert_eq!(
                distinct.len(),
                1000,
                "seed {seed}: every item reached the far end"
            );
            let (sent, resent) = t.sent();
            assert_eq!(sent, 1000 + resent);
            // About 19% of items need a resend at 10% loss each way; allow for spurious ones.
            assert!(resent < 600, "seed {seed}: {resent} retransmissions");
        }
    }
}

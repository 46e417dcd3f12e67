//! The engine on a manual clock, over a simulated network.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use std::time::Duration;

const MS: Duration = Duration::from_millis(1);

/// The limits of the older tests: a silence timeout alone.
fn silence(start: Instant, after: Duration) -> Deadline {
    Deadline::new(start, after, None)
}

/// A simulated network: each datagram is delivered after a latency, or dropped, or
/// duplicated, as a seeded script decides; the far end acknowledges every item it gets.
struct Net {
    rng: StdRng,
    loss: f64,
    dup: f64,
    jitter_ms: u64,
    /// Round-trip time before jitter.
    latency: Duration,
    /// From this instant on, nothing gets through (the server went away).
    dead_from: Option<Instant>,
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
            latency: 2 * MS,
            dead_from: None,
            arrivals: BTreeMap::new(),
            seq: 0,
            delivered: Vec::new(),
        }
    }

    /// Sends item `i` at `now`: it crosses twice (request and reply), each way lossy.
    fn send(&mut self, now: Instant, i: u64) {
        if self.dead_from.is_some_and(|dead| now >= dead) {
            return;
        }
        let copies = if self.rng.random_bool(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            if self.rng.random_bool(self.loss) {
                continue;
            }
            self.delivered.push(i);
            if self.rng.random_bool(self.loss) {
                continue;
            }
            let delay = self.latency + MS * self.rng.random_range(0..=self.jitter_ms) as u32;
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
    let mut t = Transfer::new(100, 8, silence(start, 10 * 1000 * MS), Rtt::new(100 * MS));
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
    let mut t = Transfer::new(5, 5, silence(start, 1000 * MS), Rtt::new(50 * MS));
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
    let mut t = Transfer::new(2, 1, silence(start, 1000 * MS), Rtt::new(20 * MS));
    assert_eq!(t.poll_transmit(start), Some(0));
    t.handle_timeout(start + 20 * MS).expect("ok");
    // The window is free again; the reply to the first copy arrives before the resend.
    assert!(t.on_ack(start + 21 * MS, 0));
    assert_eq!(t.poll_transmit(start + 21 * MS), Some(1), "0 is not resent");
}

#[test]
fn the_deadline_ends_a_transfer_that_gets_no_replies() {
    let start = Instant::now();
    let mut t = Transfer::new(3, 2, silence(start, 1000 * MS), Rtt::new(100 * MS));
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
            expiry: Expiry::Silence(1000 * MS),
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
        let mut t = Transfer::new(1000, 32, silence(start, 60 * 1000 * MS), Rtt::new(100 * MS));
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

/// A network with a fixed round trip and nothing lost.
fn slow_net(round_trip: Duration) -> Net {
    let mut net = Net::new(9, 0.0, 0.0, 0);
    net.latency = round_trip;
    net
}

#[test]
fn a_slow_transfer_still_making_progress_outlives_the_silence_timeout() {
    // 100 items one at a time, 50 ms each: 5 s in all, far past a 200 ms silence limit,
    // but never 200 ms without a reply.
    let start = Instant::now();
    let limits = Deadline::new(start, 200 * MS, None);
    let mut t = Transfer::new(100, 1, limits, Rtt::new(100 * MS));
    let end = run(&mut t, &mut slow_net(50 * MS), start).expect("progress keeps it alive");
    assert_eq!(end - start, 100 * 50 * MS);
    assert_eq!(t.sent(), (100, 0));
}

#[test]
fn the_total_deadline_ends_a_transfer_still_making_progress() {
    let start = Instant::now();
    let limits = Deadline::new(start, 200 * MS, Some(1_000 * MS));
    let mut t = Transfer::new(100, 1, limits, Rtt::new(100 * MS));
    let err = run(&mut t, &mut slow_net(50 * MS), start).expect_err("over the total");
    assert_eq!(err.expiry, Expiry::Total(1_000 * MS));
    assert_eq!(t.acked(), 20, "it was progressing until the end");
    assert_eq!(err.missing, 80);
    assert_eq!(t.poll_transmit(start + 1_000 * MS), None);
}

#[test]
fn silence_after_progress_is_counted_from_the_last_reply() {
    // Replies stop at 1 s (the server went away): the transfer ends 300 ms after the last
    // reply, not 300 ms after it started.
    let start = Instant::now();
    let limits = Deadline::new(start, 300 * MS, None);
    let mut t = Transfer::new(100, 1, limits, Rtt::new(100 * MS));
    let mut net = slow_net(50 * MS);
    net.dead_from = Some(start + 1_000 * MS);
    let err = run(&mut t, &mut net, start).expect_err("silence");
    assert_eq!(err.expiry, Expiry::Silence(300 * MS));
    assert_eq!(t.acked(), 20);
    assert_eq!(t.deadline().next(), start + 1_300 * MS);
}

#[test]
fn stray_datagrams_are_not_progress_but_end_the_silence() {
    let start = Instant::now();
    let limits = Deadline::new(start, 300 * MS, Some(2_000 * MS));
    let mut t = Transfer::new(1, 1, limits, Rtt::new(1_000 * MS));
    assert_eq!(t.poll_transmit(start), Some(0));
    t.on_datagram(start + 250 * MS);
    assert_eq!(t.poll_timeout(), start + 550 * MS);
    t.handle_timeout(start + 549 * MS).expect("not yet");
    assert!(!t.is_done());
    let err = t.handle_timeout(start + 550 * MS).expect_err("silence");
    assert_eq!(err.expiry, Expiry::Silence(300 * MS));
}

#[test]
fn refusals_end_a_transfer_after_the_grace_not_the_timeout() {
    let start = Instant::now();
    let limits = Deadline::new(start, 5_000 * MS, None)
        .with_refusal_grace(Some(crate::deadline::REFUSAL_GRACE));
    let mut t = Transfer::new(1, 1, limits, Rtt::new(200 * MS));
    let mut now = start;
    let mut sends = Vec::new();
    let err = loop {
        while t.poll_transmit(now).is_some() {
            sends.push(now - start);
            // Loopback answers a datagram to a closed port at once.
            t.on_refused(now + MS);
        }
        now = t.poll_timeout();
        if let Err(e) = t.handle_timeout(now) {
            break e;
        }
    };
    assert_eq!(err.expiry, Expiry::Refused);
    assert_eq!(now, start + 1_001 * MS, "a second after the first refusal");
    assert_eq!(
        sends,
        vec![Duration::ZERO, 200 * MS, 600 * MS],
        "retried meanwhile"
    );
}

#[test]
fn a_server_answering_only_strays_runs_out_the_silence() {
    // Every resend is answered with something that answers nothing (a stale offer, say):
    // heard, but not for ever. Resends are at most 4 s apart, well within the silence.
    let start = Instant::now();
    let mut t = Transfer::new(1, 1, silence(start, 10_000 * MS), Rtt::new(20 * MS));
    let limit = t.stray_limit();
    let mut now = start;
    let mut strays = 0;
    let err = loop {
        if t.poll_transmit(now).is_some() {
            t.on_datagram(now + MS);
            strays += 1;
        }
        now = t.poll_timeout();
        if let Err(e) = t.handle_timeout(now) {
            break e;
        }
    };
    assert_eq!(err.expiry, Expiry::Silence(10_000 * MS));
    assert_eq!(
        strays,
        limit + 2,
        "heard {limit} times, then resends 4 s apart for 10 s"
    );
    // Progress starts the count again.
    let mut t = Transfer::new(2, 1, silence(start, 300 * MS), Rtt::new(20 * MS));
    assert_eq!(t.poll_transmit(start), Some(0));
    for _ in 0..limit {
        t.on_datagram(start + MS);
    }
    assert!(t.on_ack(start + 2 * MS, 0));
    for _ in 0..limit {
        t.on_datagram(start + 100 * MS);
    }
    assert_eq!(t.deadline().next(), start + 400 * MS, "still heard");
    t.on_datagram(start + 200 * MS);
    assert_eq!(t.deadline().next(), start + 400 * MS, "one too many");
}

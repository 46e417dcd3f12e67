//! Held `6:` requests: sans-IO state for readers waiting for the next message.
//!
//! A `6:<after>:<max>:<wait>` that finds nothing above `after` is held here until a publish
//! gives it something to read or its wait runs out. Fed `now` and publishes, it says whom
//! to answer; the caller reads the board and sends. Nothing here touches a socket or a
//! clock, so waking, replacing, refusing and timing out are tested on a manual clock.
//!
//! A publish of id `n` wakes every request with `after < n` at once: requests are kept
//! ordered by `after`, so a publish splits off exactly the ones it satisfies, whatever
//! the number of followers, instead of scanning them all.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mboard_protocol::MessageId;

/// Bounds on held requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HoldLimits {
    /// The longest a request is held, whatever its `<wait>` asks.
    pub(crate) max_wait: Duration,
    /// Requests held at once, in all.
    pub(crate) max_held: usize,
    /// Requests held at once for one source address (IP and port).
    pub(crate) max_per_source: usize,
}

/// A held request to answer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wake {
    /// Whom to answer.
    pub to: SocketAddr,
    /// The request's `<after>`.
    pub after: MessageId,
    /// The request's `<max>` (0 = no limit).
    pub max: u64,
    /// Bytes of the request datagram, for the amplification allowance of the reply.
    pub request_len: usize,
    /// Why it is answered: a publish (read the board), or its wait ran out (`0:0`).
    pub cause: WakeCause,
}

/// Why a held request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WakeCause {
    /// A message above its `<after>` was published.
    Published,
    /// Its wait ran out with nothing to read.
    TimedOut,
}

/// Why a request could not be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HoldError {
    /// The per-source or the total bound is reached (answered `4:busy`).
    #[error("busy")]
    Busy,
}

/// One held request. `seq` tells a request from the one that replaced it, so stale
/// entries in the order and the deadline heap are recognised and skipped.
#[derive(Debug, Clone, Copy)]
struct Held {
    seq: u64,
    max: u64,
    request_len: usize,
    deadline: Instant,
}

/// A request is named by its source and its `<after>`: a resend of the same request
/// replaces the one held.
type Key = (SocketAddr, MessageId);

/// The held requests of one server.
#[derive(Debug)]
pub(crate) struct Holds {
    limits: HoldLimits,
    held: HashMap<Key, Held>,
    /// Held requests by `<after>`, then `seq`: what a publish wakes is a prefix.
    by_after: BTreeMap<(MessageId, u64), SocketAddr>,
    /// Deadlines, possibly stale (answered or replaced since).
    deadlines: BinaryHeap<Reverse<(Instant, u64, Key)>>,
    per_source: HashMap<SocketAddr, usize>,
    next_seq: u64,
    counts: HoldCounts,
}

/// What happened to held requests since the start, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct HoldCounts {
    /// Requests held now.
    pub held: usize,
    /// Answered because a message was published.
    pub woken: u64,
    /// Answered `0:0` because their wait ran out.
    pub timed_out: u64,
    /// Refused `4:busy` because a bound was reached.
    pub refused: u64,
}

impl Holds {
    /// No requests held yet.
    pub(crate) fn new(limits: HoldLimits) -> Self {
        Holds {
            limits,
            held: HashMap::new(),
            by_after: BTreeMap::new(),
            deadlines: BinaryHeap::new(),
            per_source: HashMap::new(),
            next_seq: 0,
            counts: HoldCounts::default(),
        }
    }

    /// Counts for metrics.
    pub(crate) fn counts(&self) -> HoldCounts {
        HoldCounts {
            held: self.held.len(),
            ..self.counts
        }
    }

    /// Holds `6:<after>:<max>:<wait>` from `from` until a publish or `now + wait` (capped
    /// at the longest hold). A resend from the same address with the same `after` replaces
    /// the request held, so it is answered once.
    pub(crate) fn hold(
        &mut self,
        now: Instant,
        from: SocketAddr,
        after: MessageId,
        max: u64,
        wait: Duration,
        request_len: usize,
    ) -> Result<(), HoldError> {
        let key = (from, after);
        let replacing = self.held.contains_key(&key);
        let of_source = self.per_source.get(&from).copied().unwrap_or(0);
        if !replacing
            && (self.held.len() >= self.limits.max_held || of_source >= self.limits.max_per_source)
        {
            self.counts.refused += 1;
            return Err(HoldError::Busy);
        }
        if let Some(old) = self.held.remove(&key) {
            self.by_after.remove(&(after, old.seq));
        } else {
            *self.per_source.entry(from).or_default() += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let deadline = now + wait.min(self.limits.max_wait);
        self.held.insert(
            key,
            Held {
                seq,
                max,
                request_len,
                deadline,
            },
        );
        self.by_after.insert((after, seq), from);
        self.deadlines.push(Reverse((deadline, seq, key)));
        Ok(())
    }

    /// A message with id `id` was published: every request with `after < id` is answered.
    pub(crate) fn published(&mut self, id: MessageId) -> Vec<Wake> {
        // Everything at or above `(id, 0)` still waits; the part below it is woken.
        let waiting = self.by_after.split_off(&(id, 0));
        let woken = std::mem::replace(&mut self.by_after, waiting);
        let mut wakes = Vec::with_capacity(woken.len());
        for ((after, _), to) in woken {
            if let Some(held) = self.release((to, after)) {
                self.counts.woken += 1;
                wakes.push(wake(to, after, held, WakeCause::Published));
            }
        }
        wakes
    }

    /// Requests whose wait has run out by `now`, to be answered `0:0`.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Wake> {
        let mut wakes = Vec::new();
        while let Some(&Reverse((deadline, seq, key))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            // Stale: answered by a publish, or replaced by a resend with a later deadline.
            if self.held.get(&key).is_none_or(|h| h.seq != seq) {
                continue;
            }
            if let Some(held) = self.release(key) {
                self.by_after.remove(&(key.1, held.seq));
                self.counts.timed_out += 1;
                wakes.push(wake(key.0, key.1, held, WakeCause::TimedOut));
            }
        }
        self.compact();
        wakes
    }

    /// The earliest instant at which [`Holds::expire`] has something to do, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines
            .peek()
            .map(|Reverse((deadline, ..))| *deadline)
    }

    fn release(&mut self, key: Key) -> Option<Held> {
        let held = self.held.remove(&key)?;
        if let Some(n) = self.per_source.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&key.0);
            }
        }
        Some(held)
    }

    /// Rebuilds the deadline heap when stale entries (requests woken by publishes, or
    /// replaced) outnumber live ones, so a busy board does not grow it without bound.
    fn compact(&mut self) {
        if self.deadlines.len() > 2 * self.held.len() + 64 {
            self.deadlines = self
                .held
                .iter()
                .map(|(&key, h)| Reverse((h.deadline, h.seq, key)))
                .collect();
        }
    }
}

fn wake(to: SocketAddr, after: MessageId, held: Held, cause: WakeCause) -> Wake {
    Wake {
        to,
        after,
        max: held.max,
        request_len: held.request_len,
        cause,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HoldLimits = HoldLimits {
        max_wait: Duration::from_secs(30),
        max_held: 4,
        max_per_source: 2,
    };

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn targets(wakes: &[Wake]) -> Vec<(u16, u64)> {
        let mut t: Vec<_> = wakes.iter().map(|w| (w.to.port(), w.after.0)).collect();
        t.sort();
        t
    }

    #[test]
    fn a_publish_wakes_exactly_the_requests_it_satisfies() {
        let t0 = Instant::now();
        let mut h = Holds::new(LIMITS);
        let wait = Duration::from_secs(25);
        h.hold(t0, addr(1), MessageId(5), 10, wait, 9)
            .expect("held");
        h.hold(t0, addr(2), MessageId(7), 0, wait, 9).expect("held");
        h.hold(t0, addr(3), MessageId(9), 1, wait, 9).expect("held");
        // Id 8 is above 5 and 7, not above 9.
        let wakes = h.published(MessageId(8));
        assert_eq!(targets(&wakes), [(1, 5), (2, 7)]);
        assert!(wakes.iter().all(|w| w.cause == WakeCause::Published));
        assert_eq!(
            wakes.iter().find(|w| w.to == addr(1)).map(|w| w.max),
            Some(10)
        );
        assert_eq!(h.counts().held, 1);
        // Answered at most once: a later publish wakes only what is left.
        assert_eq!(targets(&h.published(MessageId(10))), [(3, 9)]);
        assert!(h.published(MessageId(11)).is_empty());
        assert_eq!(h.counts().woken, 3);
    }

    #[test]
    fn waits_run_out_and_are_capped() {
        let t0 = Instant::now();
        let mut h = Holds::new(LIMITS);
        h.hold(t0, addr(1), MessageId(0), 0, Duration::from_secs(1), 9)
            .expect("held");
        // Asking for an hour gets the longest hold.
        h.hold(t0, addr(2), MessageId(0), 0, Duration::from_secs(3600), 9)
            .expect("held");
        assert_eq!(h.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert!(h.expire(t0 + Duration::from_millis(999)).is_empty());
        let first = h.expire(t0 + Duration::from_secs(1));
        assert_eq!(targets(&first), [(1, 0)]);
        assert_eq!(first[0].cause, WakeCause::TimedOut);
        assert!(h.expire(t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(targets(&h.expire(t0 + Duration::from_secs(30))), [(2, 0)]);
        assert_eq!(h.counts().timed_out, 2);
        assert_eq!(h.counts().held, 0);
        assert_eq!(h.next_deadline(), None);
    }

    #[test]
    fn a_resend_replaces_the_held_request() {
        let t0 = Instant::now();
        let mut h = Holds::new(LIMITS);
        let wait = Duration::from_secs(2);
        h.hold(t0, addr(1), MessageId(3), 10, wait, 9)
            .expect("held");
        let t1 = t0 + Duration::from_secs(1);
        h.hold(t1, addr(1), MessageId(3), 5, wait, 9)
            .expect("replaced");
        assert_eq!(h.counts().held, 1);
        // The first deadline is stale: nothing times out until the resend's.
        assert!(h.expire(t0 + wait).is_empty());
        let wakes = h.expire(t1 + wait);
        assert_eq!(targets(&wakes), [(1, 3)]);
        assert_eq!(wakes[0].max, 5, "the resend's request is the one answered");
        // Another `after` from the same address is another request.
        h.hold(t1, addr(1), MessageId(3), 0, wait, 9).expect("held");
        h.hold(t1, addr(1), MessageId(4), 0, wait, 9).expect("held");
        assert_eq!(targets(&h.published(MessageId(5))), [(1, 3), (1, 4)]);
    }

    #[test]
    fn bounds_per_source_and_in_all_refuse_busy() {
        let t0 = Instant::now();
        let mut h = Holds::new(LIMITS);
        let wait = Duration::from_secs(5);
        h.hold(t0, addr(1), MessageId(0), 0, wait, 9).expect("held");
        h.hold(t0, addr(1), MessageId(1), 0, wait, 9).expect("held");
        assert_eq!(
            h.hold(t0, addr(1), MessageId(2), 0, wait, 9),
            Err(HoldError::Busy)
        );
        // A resend of a held request is a replacement, not a new one.
        h.hold(t0, addr(1), MessageId(1), 0, wait, 9)
            .expect("replaced");
        h.hold(t0, addr(2), MessageId(0), 0, wait, 9).expect("held");
        h.hold(t0, addr(3), MessageId(0), 0, wait, 9).expect("held");
        assert_eq!(
            h.hold(t0, addr(4), MessageId(0), 0, wait, 9),
            Err(HoldError::Busy)
        );
        assert_eq!(h.counts().refused, 2);
        // Answered requests make room again.
        h.published(MessageId(1));
        h.hold(t0, addr(4), MessageId(0), 0, wait, 9)
            .expect("room again");
        h.hold(t0, addr(1), MessageId(2), 0, wait, 9)
            .expect("room again");
    }

    #[test]
    fn stale_deadlines_do_not_pile_up() {
        let t0 = Instant::now();
        let mut h = Holds::new(LIMITS);
        // A follower that is woken by every publish leaves a stale deadline each time.
        for id in 0..10_000 {
            h.hold(t0, addr(1), MessageId(id), 0, Duration::from_secs(25), 9)
                .expect("held");
            assert_eq!(h.published(MessageId(id + 1)).len(), 1);
            h.expire(t0);
        }
        assert!(
            h.deadlines.len() <= 64 + 2,
            "{} stale deadlines",
            h.deadlines.len()
        );
    }
}

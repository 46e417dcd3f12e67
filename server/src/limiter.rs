//! Per-source rate limiting: a token bucket for each source address.
//!
//! Sans-IO like the session manager: [`RateLimiter::allow`] takes `now`. The table is a
//! sharded map so the two cores rarely meet on one lock, and it is bounded: buckets that
//! have refilled completely carry no state worth keeping and are swept when it fills.
//!
//! The limit itself can change while the server runs (SIGHUP, [`RateLimiter::set_limit`]):
//! it is kept in atomics that every datagram reads with plain relaxed loads, which cost
//! what reading a field does, so the path of a datagram takes no lock for it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// How fast each source may send, and how much it may save up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Datagrams per second a source may sustain (0 turns limiting off).
    pub rate: f64,
    /// Datagrams a source may send at once after being quiet.
    pub burst: f64,
    /// Sources tracked at once; when full of active ones, new sources are not limited.
    pub max_sources: usize,
}

impl Default for RateLimit {
    /// 50,000 datagrams/s per source with a burst of 50,000: far above what one client
    /// needs (a 16 MiB upload is 12,000 datagrams, and the client uses a new source port
    /// for every operation), far below what one source could otherwise take.
    fn default() -> Self {
        RateLimit {
            rate: 50_000.0,
            burst: 50_000.0,
            max_sources: 262_144,
        }
    }
}

impl RateLimit {
    /// The default limit on replies to malformed input, per destination: 100 a second,
    /// 200 at once. A client needs a handful; a reflection loop between two servers is
    /// cut off after the burst.
    pub const ERROR_REPLIES: RateLimit = RateLimit {
        rate: 100.0,
        burst: 200.0,
        max_sources: 65_536,
    };
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A [`RateLimit`] that can be replaced while it is read. A datagram judged during the
/// change may see the new rate with the old burst; either way it gets a sane verdict.
#[derive(Debug)]
struct LiveLimit {
    /// `f64` bits.
    rate: AtomicU64,
    /// `f64` bits.
    burst: AtomicU64,
    max_sources: AtomicUsize,
}

impl LiveLimit {
    fn new(limit: RateLimit) -> Self {
        LiveLimit {
            rate: AtomicU64::new(limit.rate.to_bits()),
            burst: AtomicU64::new(limit.burst.to_bits()),
            max_sources: AtomicUsize::new(limit.max_sources),
        }
    }

    fn get(&self) -> RateLimit {
        RateLimit {
            rate: f64::from_bits(self.rate.load(Ordering::Relaxed)),
            burst: f64::from_bits(self.burst.load(Ordering::Relaxed)),
            max_sources: self.max_sources.load(Ordering::Relaxed),
        }
    }

    fn set(&self, limit: RateLimit) {
        self.rate.store(limit.rate.to_bits(), Ordering::Relaxed);
        self.burst.store(limit.burst.to_bits(), Ordering::Relaxed);
        self.max_sources.store(limit.max_sources, Ordering::Relaxed);
    }
}

/// The rate limiter shared by the receive loops.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: LiveLimit,
    buckets: DashMap<SocketAddr, Bucket>,
    dropped: AtomicU64,
    untracked: AtomicU64,
    sweeping: AtomicUsize,
}

impl RateLimiter {
    /// A limiter with these settings.
    pub(crate) fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit: LiveLimit::new(limit),
            buckets: DashMap::new(),
            dropped: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
            sweeping: AtomicUsize::new(0),
        }
    }

    /// The limit in force.
    #[cfg(test)]
    pub(crate) fn limit(&self) -> RateLimit {
        self.limit.get()
    }

    /// Replaces the limit from the next datagram on. Sources keep the tokens they have
    /// saved, down to the new burst; turning limiting off forgets them all.
    pub(crate) fn set_limit(&self, limit: RateLimit) {
        self.limit.set(limit);
        if limit.rate <= 0.0 {
            self.buckets.clear();
        }
    }

    /// Whether a datagram from `from` at `now` is within its source's limit; counts it if not.
    pub(crate) fn allow(&self, from: SocketAddr, now: Instant) -> bool {
        let limit = self.limit.get();
        if limit.rate <= 0.0 {
            return true;
        }
        if let Some(mut bucket) = self.buckets.get_mut(&from) {
            return self.take(&limit, &mut bucket, now);
        }
        if self.buckets.len() >= limit.max_sources {
            self.sweep(&limit, now);
            if self.buckets.len() >= limit.max_sources {
                // Per-source limits cannot stop a flood from many addresses anyway; refusing
                // newcomers would let such a flood lock real clients out.
                self.untracked.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        // Two receive loops may meet a new source at once: the entry decides which one
        // creates its bucket, and the other takes from that bucket, so a burst is a burst.
        match self.buckets.entry(from) {
            dashmap::Entry::Occupied(mut bucket) => self.take(&limit, bucket.get_mut(), now),
            dashmap::Entry::Vacant(slot) => {
                slot.insert(Bucket {
                    tokens: limit.burst - 1.0,
                    at: now,
                });
                true
            }
        }
    }

    /// Refills `bucket` for the time since it was last used and takes a datagram from it.
    fn take(&self, limit: &RateLimit, bucket: &mut Bucket, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.rate).min(limit.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return true;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Forgets sources whose buckets have refilled: they would start full anyway.
    fn sweep(&self, limit: &RateLimit, now: Instant) {
        // One sweeper at a time; the others carry on.
        if self.sweeping.swap(1, Ordering::Acquire) == 1 {
            return;
        }
        let refill = Duration::try_from_secs_f64(limit.burst / limit.rate).unwrap_or(Duration::MAX);
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.at) < refill);
        self.sweeping.store(0, Ordering::Release);
    }

    /// Datagrams dropped for exceeding their source's limit, in all.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Datagrams let through unlimited because the table was full of active sources.
    pub(crate) fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    /// Sources tracked now.
    pub(crate) fn sources(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_new_source_met_by_many_loops_at_once_gets_one_burst() {
        for _ in 0..200 {
            let limiter = RateLimiter::new(RateLimit {
                rate: 0.001,
                burst: 4.0,
                max_sources: 100,
            });
            let now = Instant::now();
            let allowed: usize = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..4)
                    .map(|_| scope.spawn(|| (0..4).filter(|_| limiter.allow(addr(1), now)).count()))
                    .collect();
                workers.into_iter().map(|w| w.join().expect("worker")).sum()
            });
            assert_eq!(allowed, 4);
        }
    }

    #[test]
    fn a_burst_then_the_rate() {
        let l = RateLimiter::new(RateLimit {
            rate: 1_000.0,
            burst: 10.0,
            max_sources: 100,
        });
        let t0 = Instant::now();
        let allowed = (0..50).filter(|_| l.allow(addr(1), t0)).count();
        assert_eq!(allowed, 10, "the burst");
        assert_eq!(l.dropped(), 40);
        // 1,000/s refills one token a millisecond.
        assert!(!l.allow(addr(1), t0 + Duration::from_micros(500)));
        // The half token accrued by then is kept: two whole tokens at 2 ms.
        assert!(l.allow(addr(1), t0 + 2 * MS));
        assert!(l.allow(addr(1), t0 + 2 * MS));
        assert!(!l.allow(addr(1), t0 + 2 * MS));
        // Saving up stops at the burst.
        let later = t0 + 1_000 * MS;
        assert_eq!((0..50).filter(|_| l.allow(addr(1), later)).count(), 10);
    }

    #[test]
    fn sources_are_limited_separately() {
        let l = RateLimiter::new(RateLimit {
            rate: 1.0,
            burst: 2.0,
            max_sources: 100,
        });
        let t0 = Instant::now();
        assert!(l.allow(addr(1), t0) && l.allow(addr(1), t0));
        assert!(!l.allow(addr(1), t0));
        assert!(l.allow(addr(2), t0), "another port is another source");
        assert!(l.allow(SocketAddr::from(([192, 0, 2, 2], 1)), t0));
    }

    #[test]
    fn the_table_is_bounded_and_sweeps_idle_sources() {
        let l = RateLimiter::new(RateLimit {
            rate: 100.0,
            burst: 10.0,
            max_sources: 3,
        });
        let t0 = Instant::now();
        for p in 0..3 {
            assert!(l.allow(addr(p), t0));
        }
        // Full of active sources: a newcomer passes untracked.
        assert!(l.allow(addr(9), t0 + MS));
        assert_eq!((l.sources(), l.untracked()), (3, 1));
        // 100 ms later every bucket has refilled (10 tokens at 100/s): they are swept.
        assert!(l.allow(addr(9), t0 + 100 * MS));
        assert_eq!(l.sources(), 1);
    }

    #[test]
    fn a_new_limit_applies_to_the_next_datagram() {
        let l = RateLimiter::new(RateLimit {
            rate: 1.0,
            burst: 2.0,
            max_sources: 100,
        });
        let t0 = Instant::now();
        assert_eq!((0..5).filter(|_| l.allow(addr(1), t0)).count(), 2);
        // A faster rate refills the same bucket faster: 1,000/s is one token a millisecond.
        let faster = RateLimit {
            rate: 1_000.0,
            burst: 2.0,
            max_sources: 100,
        };
        l.set_limit(faster);
        assert_eq!(l.limit(), faster);
        assert_eq!((0..5).filter(|_| l.allow(addr(1), t0 + MS)).count(), 1);
        // Off: everything passes and the table is forgotten.
        l.set_limit(RateLimit {
            rate: 0.0,
            ..faster
        });
        assert_eq!(l.sources(), 0);
        assert!((0..100).all(|_| l.allow(addr(1), t0 + MS)));
        // On again with a smaller burst: a new bucket holds that burst.
        l.set_limit(RateLimit {
            burst: 3.0,
            ..faster
        });
        assert_eq!((0..10).filter(|_| l.allow(addr(1), t0 + MS)).count(), 3);
        // A smaller table: the newcomer is let through untracked while the others are active.
        l.set_limit(RateLimit {
            max_sources: 1,
            ..faster
        });
        assert!(l.allow(addr(2), t0 + MS));
        assert_eq!((l.sources(), l.untracked()), (1, 1));
    }

    #[test]
    fn a_rate_of_zero_turns_limiting_off() {
        let l = RateLimiter::new(RateLimit {
            rate: 0.0,
            burst: 0.0,
            max_sources: 0,
        });
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| l.allow(addr(1), t0)));
        assert_eq!(l.sources(), 0);
    }
}

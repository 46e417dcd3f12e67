//! Per-source rate limiting: a token bucket for each source address.
//!
//! Sans-IO like the session manager: [`RateLimiter::allow`] takes `now`. The table is a
//! sharded map so the two cores rarely meet on one lock, and it is bounded: buckets that
//! have refilled completely carry no state worth keeping and are swept when it fills.

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

/// The rate limiter shared by the receive loops.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: DashMap<SocketAddr, Bucket>,
    dropped: AtomicU64,
    untracked: AtomicU64,
    sweeping: AtomicUsize,
}

impl RateLimiter {
    /// A limiter with these settings.
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: DashMap::new(),
            dropped: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
            sweeping: AtomicUsize::new(0),
        }
    }

    /// Whether a datagram from `from` at `now` is within its source's limit; counts it if not.
    pub fn allow(&self, from: SocketAddr, now: Instant) -> bool {
        if self.limit.rate <= 0.0 {
            return true;
        }
        if let Some(mut bucket) = self.buckets.get_mut(&from) {
            return self.take(&mut bucket, now);
        }
        if self.buckets.len() >= self.limit.max_sources {
            self.sweep(now);
            if self.buckets.len() >= self.limit.max_sources {
                // Per-source limits cannot stop a flood from many addresses anyway; refusing
                // newcomers would let such a flood lock real clients out.
                self.untracked.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        // Two receive loops may meet a new source at once: the entry decides which one
        // creates its bucket, and the other takes from that bucket, so a burst is a burst.
        match self.buckets.entry(from) {
            dashmap::Entry::Occupied(mut bucket) => self.take(bucket.get_mut(), now),
            dashmap::Entry::Vacant(slot) => {
                slot.insert(Bucket {
                    tokens: self.limit.burst - 1.0,
                    at: now,
                });
                true
            }
        }
    }

    /// Refills `bucket` for the time since it was last used and takes a datagram from it.
    fn take(&self, bucket: &mut Bucket, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.limit.rate).min(self.limit.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return true;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Forgets sources whose buckets have refilled: they would start full anyway.
    fn sweep(&self, now: Instant) {
        // One sweeper at a time; the others carry on.
        if self.sweeping.swap(1, Ordering::Acquire) == 1 {
            return;
        }
        let refill = Duration::from_secs_f64(self.limit.burst / self.limit.rate);
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.at) < refill);
        self.sweeping.store(0, Ordering::Release);
    }

    /// Datagrams dropped for exceeding their source's limit, in all.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Datagrams let through unlimited because the table was full of active sources.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
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

//! The limits that end an operation, on a clock the caller supplies.
//!
//! Three limits, as curl has them and for the same reasons:
//!
//! - **silence** (`--timeout`): the longest time without any datagram from the server. A
//!   16 MiB transfer over a slow path takes as long as it takes while replies keep coming.
//! - **total** (`--max-time`, off by default): a deadline for the whole operation, however
//!   lively the server is.
//! - **refusal** (opt-in): ICMP "port unreachable" says nobody listens there. One refusal
//!   may be a server in the middle of a restart, so refusals end the operation only once
//!   they have gone on, with nothing heard, for the refusal grace ([`REFUSAL_GRACE`] in the
//!   CLI). Without a grace, refusals count as silence.
//!
//! A request the server holds on purpose (`6:` with a wait) is answered only when the wait
//! is over, so [`Deadline::quiet_until`] moves the start of the silence to then: with a
//! 25 s wait and a 5 s timeout, nothing is wrong until 30 s without a datagram.

use std::time::{Duration, Instant};

/// The CLI's refusal grace: long enough to ride out a quick restart, short enough that
/// a server that is not running is reported at once rather than after the timeout.
pub(crate) const REFUSAL_GRACE: Duration = Duration::from_secs(1);

/// Which limit ended an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Nothing came from the server for this long.
    Silence(Duration),
    /// The operation ran this long in all.
    Total(Duration),
    /// The server's port refused every datagram for the refusal grace.
    Refused,
}

/// The clocks of one operation, carried from phase to phase (open, blocks, commit, …).
#[derive(Debug, Clone)]
pub(crate) struct Deadline {
    silence: Duration,
    total: Option<(Instant, Duration)>,
    grace: Option<Duration>,
    heard: Instant,
    /// Until then the server is expected to be silent (a held request).
    quiet: Option<Instant>,
    refused_since: Option<Instant>,
}

impl Deadline {
    /// The clocks of an operation starting `now`: `silence` without a datagram is fatal,
    /// and so is `max_time` in all, if given. Refusals end nothing until a grace is set.
    pub(crate) fn new(now: Instant, silence: Duration, max_time: Option<Duration>) -> Self {
        Deadline {
            silence,
            total: max_time.map(|d| (now + d, d)),
            grace: None,
            heard: now,
            quiet: None,
            refused_since: None,
        }
    }

    /// The same clocks, ending at `at` however lively the server: the rest of a longer
    /// `max_time` that this operation is part of, reported as `max_time`.
    pub(crate) fn ending_at(mut self, at: Instant, max_time: Duration) -> Self {
        self.total = Some((at, max_time));
        self
    }

    /// The same clocks, ended by refusals that go on for `grace` (`None`: never).
    pub(crate) fn with_refusal_grace(mut self, grace: Option<Duration>) -> Self {
        self.grace = grace;
        self
    }

    /// A datagram came from the server: the silence starts again and refusals are over.
    pub(crate) fn heard(&mut self, now: Instant) {
        self.heard = self.heard.max(now);
        self.refused_since = None;
    }

    /// The server may rightly say nothing until `at` (it holds a request until then): the
    /// silence is counted from `at` if nothing is heard after it.
    pub(crate) fn quiet_until(&mut self, at: Instant) {
        self.quiet = Some(self.quiet.map_or(at, |q| q.max(at)));
    }

    /// Where the silence is counted from.
    fn silent_since(&self) -> Instant {
        self.quiet.map_or(self.heard, |q| q.max(self.heard))
    }

    /// The server's port refused a datagram: starts the grace, unless already running.
    pub(crate) fn refused(&mut self, now: Instant) {
        self.refused_since.get_or_insert(now);
    }

    /// When each limit runs out, in the order ties are reported: silence, total, refusal.
    fn limits(&self) -> [(Option<Instant>, Expiry); 3] {
        [
            (
                Some(self.silent_since() + self.silence),
                Expiry::Silence(self.silence),
            ),
            (
                self.total.map(|(at, _)| at),
                Expiry::Total(self.total.map_or(Duration::ZERO, |(_, d)| d)),
            ),
            (
                self.refused_since
                    .zip(self.grace)
                    .map(|(at, grace)| at + grace),
                Expiry::Refused,
            ),
        ]
    }

    /// The first instant at which [`Deadline::check`] fails, if nothing is heard before.
    pub(crate) fn next(&self) -> Instant {
        self.limits()
            .iter()
            .filter_map(|(at, _)| *at)
            .min()
            .unwrap_or(self.silent_since() + self.silence)
    }

    /// The limit that has run out by `now`, if any: the one that ran out first.
    pub(crate) fn check(&self, now: Instant) -> Result<(), Expiry> {
        let mut first: Option<(Instant, Expiry)> = None;
        for (at, expiry) in self.limits() {
            if let Some(at) = at
                && at <= now
                && first.is_none_or(|(f, _)| at < f)
            {
                first = Some((at, expiry));
            }
        }
        first.map_or(Ok(()), |(_, expiry)| Err(expiry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn silence_is_counted_from_the_last_datagram() {
        let start = Instant::now();
        let mut d = Deadline::new(start, 100 * MS, None);
        assert_eq!(d.next(), start + 100 * MS);
        assert_eq!(d.check(start + 99 * MS), Ok(()));
        d.heard(start + 90 * MS);
        assert_eq!(d.check(start + 150 * MS), Ok(()), "a datagram restarted it");
        assert_eq!(d.next(), start + 190 * MS);
        assert_eq!(d.check(start + 190 * MS), Err(Expiry::Silence(100 * MS)));
        // A datagram seen late (clock order) never moves the silence backwards.
        d.heard(start + 10 * MS);
        assert_eq!(d.next(), start + 190 * MS);
    }

    #[test]
    fn the_total_deadline_ends_even_a_lively_operation() {
        let start = Instant::now();
        let mut d = Deadline::new(start, 100 * MS, Some(250 * MS));
        for t in (0..250).step_by(50) {
            d.heard(start + t * MS);
            assert_eq!(d.check(start + t * MS), Ok(()));
        }
        assert_eq!(d.next(), start + 250 * MS);
        assert_eq!(d.check(start + 250 * MS), Err(Expiry::Total(250 * MS)));
    }

    #[test]
    fn whichever_runs_out_first_is_reported() {
        let start = Instant::now();
        let d = Deadline::new(start, 100 * MS, Some(300 * MS));
        assert_eq!(
            d.check(start + 400 * MS),
            Err(Expiry::Silence(100 * MS)),
            "silence ran out at 100 ms, long before the total"
        );
        let d = Deadline::new(start, 300 * MS, Some(100 * MS));
        assert_eq!(d.check(start + 400 * MS), Err(Expiry::Total(100 * MS)));
        // A tie goes to the silence.
        let d = Deadline::new(start, 100 * MS, Some(100 * MS));
        assert_eq!(d.check(start + 100 * MS), Err(Expiry::Silence(100 * MS)));
    }

    #[test]
    fn refusals_end_it_after_the_grace_unless_the_server_comes_back() {
        let start = Instant::now();
        let grace = Some(REFUSAL_GRACE);
        let mut d = Deadline::new(start, 5_000 * MS, None).with_refusal_grace(grace);
        d.refused(start + MS);
        d.refused(start + 500 * MS);
        assert_eq!(
            d.next(),
            start + 1_001 * MS,
            "counted from the first refusal"
        );
        assert_eq!(d.check(start + 1_000 * MS), Ok(()));
        assert_eq!(d.check(start + 1_001 * MS), Err(Expiry::Refused));
        // A restart: refused, then answered; the grace starts over at the next refusal.
        let mut d = Deadline::new(start, 5_000 * MS, None).with_refusal_grace(grace);
        d.refused(start);
        d.heard(start + 300 * MS);
        assert_eq!(d.check(start + 2_000 * MS), Ok(()));
        d.refused(start + 2_000 * MS);
        assert_eq!(d.check(start + 2_999 * MS), Ok(()));
        assert_eq!(d.check(start + 3_000 * MS), Err(Expiry::Refused));
    }

    #[test]
    fn a_timeout_no_longer_than_the_grace_comes_first() {
        // The silence is counted from the start, a refusal only from the first reply to
        // the first datagram, so with `--timeout 1s` the timeout is what runs out.
        let start = Instant::now();
        let mut d = Deadline::new(start, 1_000 * MS, None).with_refusal_grace(Some(REFUSAL_GRACE));
        d.refused(start + Duration::from_micros(50));
        assert_eq!(
            d.check(start + 1_000 * MS),
            Err(Expiry::Silence(1_000 * MS))
        );
        let mut d = Deadline::new(start, 1_000 * MS, None).with_refusal_grace(Some(200 * MS));
        d.refused(start + MS);
        assert_eq!(d.check(start + 1_000 * MS), Err(Expiry::Refused));
    }

    #[test]
    fn a_held_request_moves_the_start_of_the_silence_to_the_end_of_its_wait() {
        let start = Instant::now();
        let mut d = Deadline::new(start, 5_000 * MS, Some(60_000 * MS));
        d.quiet_until(start + 25_000 * MS);
        assert_eq!(d.check(start + 29_999 * MS), Ok(()));
        assert_eq!(d.next(), start + 30_000 * MS);
        assert_eq!(
            d.check(start + 30_000 * MS),
            Err(Expiry::Silence(5_000 * MS))
        );
        // Heard after the wait: counted from then. An earlier quiet never shortens it.
        d.heard(start + 27_000 * MS);
        d.quiet_until(start + 1_000 * MS);
        assert_eq!(d.next(), start + 32_000 * MS);
        // The total deadline is not moved.
        let mut d = Deadline::new(start, 5_000 * MS, Some(10_000 * MS));
        d.quiet_until(start + 25_000 * MS);
        assert_eq!(
            d.check(start + 10_000 * MS),
            Err(Expiry::Total(10_000 * MS))
        );
        // Refusals still end it after the grace: nobody holds anything at a closed port.
        let mut d = Deadline::new(start, 5_000 * MS, None).with_refusal_grace(Some(REFUSAL_GRACE));
        d.quiet_until(start + 25_000 * MS);
        d.refused(start + MS);
        assert_eq!(d.check(start + 1_001 * MS), Err(Expiry::Refused));
    }

    #[test]
    fn without_a_grace_refusals_are_silence() {
        let start = Instant::now();
        let mut d = Deadline::new(start, 2_000 * MS, None);
        d.refused(start + MS);
        assert_eq!(d.next(), start + 2_000 * MS);
        assert_eq!(d.check(start + 1_999 * MS), Ok(()));
        assert_eq!(
            d.check(start + 2_000 * MS),
            Err(Expiry::Silence(2_000 * MS))
        );
    }
}

//! Retransmission timeout estimation in the manner of RFC 6298.

use std::time::Duration;

/// Smoothed round-trip time and the retransmission timeout derived from it.
///
/// Samples come only from datagrams answered on their first transmission (Karn's rule), and
/// every timeout doubles the RTO until the next valid sample.
#[derive(Debug, Clone)]
pub(crate) struct Rtt {
    srtt: Option<Duration>,
    rttvar: Duration,
    base: Duration,
    backoff: u32,
}

/// The RTO never drops below this: timer and scheduling jitter on a busy host is this large.
pub(crate) const MIN_RTO: Duration = Duration::from_millis(5);
/// The RTO never grows past this, however often it backs off.
pub(crate) const MAX_RTO: Duration = Duration::from_secs(4);

impl Rtt {
    /// An estimator that has seen no sample yet and starts at `initial`.
    pub(crate) fn new(initial: Duration) -> Self {
        Rtt {
            srtt: None,
            rttvar: Duration::ZERO,
            base: initial.clamp(MIN_RTO, MAX_RTO),
            backoff: 0,
        }
    }

    /// Feeds one round-trip measurement.
    pub(crate) fn sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                // RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R'|; SRTT = 7/8 SRTT + 1/8 R'
                let delta = srtt.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + r) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(r);
        self.base = (srtt + self.rttvar * 4).clamp(MIN_RTO, MAX_RTO);
        self.backoff = 0;
    }

    /// Doubles the timeout after a loss.
    pub(crate) fn back_off(&mut self) {
        self.backoff = (self.backoff + 1).min(16);
    }

    /// The current retransmission timeout.
    pub(crate) fn rto(&self) -> Duration {
        self.base.saturating_mul(1 << self.backoff).min(MAX_RTO)
    }

    /// The smoothed round-trip time, once measured.
    #[cfg(test)]
    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.srtt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn first_sample_sets_rto_to_three_rtts() {
        let mut rtt = Rtt::new(200 * MS);
        assert_eq!(rtt.rto(), 200 * MS);
        rtt.sample(10 * MS);
        assert_eq!(rtt.srtt(), Some(10 * MS));
        assert_eq!(rtt.rto(), 30 * MS);
    }

    #[test]
    fn steady_samples_converge_and_keep_a_floor() {
        let mut rtt = Rtt::new(200 * MS);
        for _ in 0..100 {
            rtt.sample(20 * MS);
        }
        assert_eq!(rtt.srtt(), Some(20 * MS));
        assert!(
            rtt.rto() >= 20 * MS && rtt.rto() < 22 * MS,
            "{:?}",
            rtt.rto()
        );
        for _ in 0..100 {
            rtt.sample(Duration::from_micros(50));
        }
        assert_eq!(rtt.rto(), MIN_RTO);
    }

    #[test]
    fn backoff_doubles_until_a_sample_and_is_capped() {
        let mut rtt = Rtt::new(100 * MS);
        rtt.back_off();
        assert_eq!(rtt.rto(), 200 * MS);
        rtt.back_off();
        assert_eq!(rtt.rto(), 400 * MS);
        for _ in 0..40 {
            rtt.back_off();
        }
        assert_eq!(rtt.rto(), MAX_RTO);
        rtt.sample(10 * MS);
        assert_eq!(rtt.rto(), 30 * MS);
    }
}

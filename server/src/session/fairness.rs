//! The options that share the session budget between hosts and reclaim what does not move.

use std::time::Duration;

use crate::config::ConfigError;

/// How the session budget and table are shared between hosts, and when a session that
/// moves too slowly may be reclaimed for a new one.
///
/// A host (an IPv4 address, an IPv6 /64) may hold up to its share whenever there is room;
/// beyond it, it may take only room that leaves one share free for the others, so a
/// newcomer never finds the server full of one host. When a new session does not fit,
/// sessions moving slower than the progress floor give way, those of hosts over their
/// share first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fairness {
    /// Each host's share of `max_session_memory`, in percent (1 to 100; 100 turns per-host
    /// memory accounting off).
    pub host_memory_share: u8,
    /// Each host's share of `max_sessions`, in percent (1 to 100; 100 turns it off).
    pub host_session_share: u8,
    /// Bytes a second a claimed session must move on average (blocks received by an
    /// upload, blocks fetched from a download) to be safe from reclaiming when the server
    /// is full; 0 never reclaims a claimed session.
    pub progress_floor: u64,
    /// Time every session has before the floor applies; each byte moved adds
    /// `1 / progress_floor` seconds to it.
    pub progress_grace: Duration,
}

impl Default for Fairness {
    fn default() -> Self {
        Fairness {
            // A quarter: a newcomer always finds room for four of the largest uploads
            // (16 MiB each) and 25,000 sessions, and one host alone still gets three
            // quarters of the server. docs/SECURITY.md has the reasoning.
            host_memory_share: 25,
            host_session_share: 25,
            // 8 KiB/s = 64 kbit/s: six blocks of 1,400 bytes a second. Well below any link
            // a 16 MiB upload is sent over (at 10% loss through the test proxy it moves
            // about 30 MB/s), well above the 3 KB/s that held 16 MiB per session.
            progress_floor: 8 * 1024,
            // Longer than the client's whole patience (5 s without a reply), so a small
            // session waiting out a few lost datagrams is never judged too early.
            progress_grace: Duration::from_secs(5),
        }
    }
}

impl Fairness {
    /// Checks that the shares are percentages that leave a host some room.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (what, share) in [
            ("host memory share", self.host_memory_share),
            ("host session share", self.host_session_share),
        ] {
            if !(1..=100).contains(&share) {
                return Err(ConfigError::Share(what, share));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_percentages() {
        assert_eq!(Fairness::default().validate(), Ok(()));
        let bad = |f: fn(&mut Fairness)| {
            let mut fair = Fairness::default();
            f(&mut fair);
            fair.validate()
        };
        assert_eq!(
            bad(|f| f.host_memory_share = 0),
            Err(ConfigError::Share("host memory share", 0))
        );
        assert_eq!(
            bad(|f| f.host_session_share = 101),
            Err(ConfigError::Share("host session share", 101))
        );
        assert_eq!(bad(|f| f.host_session_share = 100), Ok(()));
        assert_eq!(
            bad(|f| f.progress_floor = 0),
            Ok(()),
            "0 turns reclaiming off"
        );
    }
}

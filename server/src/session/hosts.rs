//! Per-host accounting: what each host's claimed sessions hold, against its share.
//!
//! Every per-address limit counts IP and port, and one host has 65,535 ports: a host is
//! many sources. So claimed sessions and the bytes they reserve are also counted per
//! host — an IPv4 address, or an IPv6 /64, which one machine usually has whole. Only
//! *claimed* sessions count: an unclaimed one may come from a spoofed source, and charging
//! it to the host it names would let anyone use up a victim's share.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use mboard_protocol::SessionId;

use crate::config::Limits;

/// The host a source address counts against: an IPv4 address as it is (IPv4-mapped IPv6
/// addresses too), an IPv6 address by its /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct HostKey(IpAddr);

impl HostKey {
    /// The host of `ip`.
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                HostKey(IpAddr::V6(octets.into()))
            }
            v4 => HostKey(v4),
        }
    }

    /// The host as an address: the IPv4 address, or the first address of the /64.
    pub(crate) fn ip(self) -> IpAddr {
        self.0
    }
}

impl From<SocketAddr> for HostKey {
    fn from(addr: SocketAddr) -> Self {
        HostKey::of(addr.ip())
    }
}

/// What one host's claimed sessions hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Usage {
    pub(super) sessions: u32,
    pub(super) reserved: u64,
}

/// Each host's share, in bytes and in sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shares {
    pub(super) memory: u64,
    pub(super) sessions: u32,
}

impl Shares {
    pub(super) fn of(limits: &Limits) -> Self {
        let fair = &limits.fairness;
        let memory =
            u128::from(limits.max_session_memory) * u128::from(fair.host_memory_share) / 100;
        let sessions = u64::from(limits.max_sessions) * u64::from(fair.host_session_share) / 100;
        Shares {
            memory: memory as u64,
            sessions: (sessions as u32).max(1),
        }
    }

    /// Whether a host holding `usage` is over its share of memory or of sessions.
    pub(super) fn exceeded_by(self, usage: Usage) -> bool {
        usage.reserved > self.memory || usage.sessions > self.sessions
    }
}

/// A host's usage, claimed sessions by when they were created, and whether it is noted
/// over its share.
#[cfg(test)]
pub(super) type Books = (Usage, BTreeSet<(Instant, SessionId)>, bool);

/// Claimed usage per host; a host with nothing claimed has no entry.
#[derive(Debug)]
pub(super) struct Hosts {
    usage: HashMap<HostKey, Usage>,
    /// Claimed sessions in all.
    claimed: usize,
    /// Each host's claimed sessions by when they were created, youngest last: the order in
    /// which a host over its share gives back what it holds beyond it.
    held: HashMap<HostKey, BTreeSet<(Instant, SessionId)>>,
    /// The hosts over their share of memory or of sessions: those holding room on loan.
    /// Few (each holds more than a share), so they are kept rather than searched for.
    over: HashSet<HostKey>,
    shares: Shares,
}

impl Hosts {
    pub(super) fn new(shares: Shares) -> Self {
        Hosts {
            usage: HashMap::new(),
            claimed: 0,
            held: HashMap::new(),
            over: HashSet::new(),
            shares,
        }
    }

    pub(super) fn usage(&self, host: HostKey) -> Usage {
        self.usage.get(&host).copied().unwrap_or_default()
    }

    /// Hosts holding at least one claimed session.
    pub(super) fn len(&self) -> usize {
        self.usage.len()
    }

    /// Claimed sessions in all.
    pub(super) fn claimed(&self) -> usize {
        self.claimed
    }

    /// Each host's share.
    pub(super) fn shares(&self) -> Shares {
        self.shares
    }

    /// Whether `host` is over its share of memory or of sessions.
    pub(super) fn is_over(&self, host: HostKey) -> bool {
        self.over.contains(&host)
    }

    /// The hosts over their share, with what they hold.
    pub(super) fn over_share(&self) -> impl Iterator<Item = (HostKey, Usage)> + '_ {
        self.over.iter().map(|&host| (host, self.usage(host)))
    }

    /// `host`'s claimed sessions, youngest first.
    pub(super) fn youngest(&self, host: HostKey) -> impl Iterator<Item = SessionId> + '_ {
        self.held
            .get(&host)
            .into_iter()
            .flat_map(|held| held.iter().rev().map(|&(_, sid)| sid))
    }

    /// Session `sid` of `host`, created at `created` and holding `reserved` bytes, was
    /// claimed.
    pub(super) fn join(&mut self, host: HostKey, sid: SessionId, created: Instant, reserved: u64) {
        let usage = self.usage.entry(host).or_default();
        usage.sessions += 1;
        usage.reserved += reserved;
        self.claimed += 1;
        self.held.entry(host).or_default().insert((created, sid));
        self.restate(host);
    }

    /// Claimed session `sid` of `host`, created at `created` and holding `reserved`
    /// bytes, is gone.
    pub(super) fn leave(&mut self, host: HostKey, sid: SessionId, created: Instant, reserved: u64) {
        if let Some(usage) = self.usage.get_mut(&host) {
            usage.sessions -= 1;
            usage.reserved -= reserved;
            self.claimed -= 1;
            if usage.sessions == 0 {
                self.usage.remove(&host);
            }
        }
        if let Some(held) = self.held.get_mut(&host) {
            held.remove(&(created, sid));
            if held.is_empty() {
                self.held.remove(&host);
            }
        }
        self.restate(host);
    }

    /// A claimed session of `host` took `cost` more bytes.
    pub(super) fn charge(&mut self, host: HostKey, cost: u64) {
        if let Some(usage) = self.usage.get_mut(&host) {
            usage.reserved += cost;
        }
        self.restate(host);
    }

    /// A claimed session of `host` gave back `cost` bytes.
    pub(super) fn refund(&mut self, host: HostKey, cost: u64) {
        if let Some(usage) = self.usage.get_mut(&host) {
            usage.reserved -= cost;
        }
        self.restate(host);
    }

    /// Notes whether `host` is over its share now.
    fn restate(&mut self, host: HostKey) {
        if self.shares.exceeded_by(self.usage(host)) {
            self.over.insert(host);
        } else {
            self.over.remove(&host);
        }
    }

    /// Each host's usage, claimed sessions (by when created) and whether it is noted over
    /// its share, for tests to check against the sessions.
    #[cfg(test)]
    pub(super) fn books(&self) -> HashMap<HostKey, Books> {
        let hosts = self.usage.keys().chain(self.held.keys()).chain(&self.over);
        hosts
            .map(|&host| {
                let held = self.held.get(&host).cloned().unwrap_or_default();
                (host, (self.usage(host), held, self.over.contains(&host)))
            })
            .collect()
    }

    /// Gives memory back after a crowd has left.
    pub(super) fn shrink(&mut self) {
        super::compact::shrink_map(&mut self.usage);
        super::compact::shrink_map(&mut self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_ipv4_addresses_and_ipv6_prefixes() {
        let key = |s: &str| HostKey::of(s.parse().expect("ip"));
        assert_eq!(key("10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        assert_eq!(
            key("::ffff:10.0.0.1"),
            key("10.0.0.1"),
            "IPv4-mapped is IPv4"
        );
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(
            key("2001:db8:1:2:ffff::1").ip().to_string(),
            "2001:db8:1:2::"
        );
    }

    #[test]
    fn shares_are_percentages_of_the_limits() {
        let mut limits = Limits::default();
        assert_eq!(
            Shares::of(&limits),
            Shares {
                memory: 64 << 20,
                sessions: 25_000
            }
        );
        limits.max_sessions = 2;
        limits.fairness.host_session_share = 10;
        assert_eq!(Shares::of(&limits).sessions, 1, "never less than one");
    }

    #[test]
    fn usage_follows_claimed_sessions() {
        let shares = Shares {
            memory: 100,
            sessions: 2,
        };
        let mut hosts = Hosts::new(shares);
        let h = HostKey::of("10.0.0.1".parse().expect("ip"));
        let t = Instant::now();
        let (s1, s2, s3) = (
            SessionId(uuid::Uuid::from_u128(1)),
            SessionId(uuid::Uuid::from_u128(2)),
            SessionId(uuid::Uuid::from_u128(3)),
        );
        hosts.join(h, s1, t, 100);
        hosts.join(h, s2, t + std::time::Duration::from_secs(1), 0);
        assert_eq!(hosts.over_share().count(), 0, "at its share, not over it");
        hosts.charge(h, 50);
        assert_eq!(hosts.over_share().map(|(h, _)| h).collect::<Vec<_>>(), [h]);
        hosts.refund(h, 20);
        assert_eq!(
            hosts.usage(h),
            Usage {
                sessions: 2,
                reserved: 130
            }
        );
        hosts.join(h, s3, t + std::time::Duration::from_secs(2), 0);
        assert_eq!(hosts.youngest(h).collect::<Vec<_>>(), [s3, s2, s1]);
        hosts.leave(h, s3, t + std::time::Duration::from_secs(2), 0);
        hosts.leave(h, s1, t, 100);
        assert_eq!(hosts.over_share().count(), 0, "30 bytes in one session");
        hosts.leave(h, s2, t + std::time::Duration::from_secs(1), 30);
        assert_eq!(hosts.len(), 0, "a host with nothing left has no entry");
        assert_eq!(hosts.youngest(h).count(), 0);
    }
}

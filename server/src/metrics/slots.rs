//! The metrics endpoint's connection table, without I/O: whether a new connection is
//! admitted, which open one it takes the place of, and when it is refused.
//!
//! Accepting never waits for a slot (a listener that stops accepting leaves newcomers,
//! the scraper among them, in the kernel's backlog behind whoever filled it). Instead,
//! when a cap is reached, a connection that is not being answered gives way: idle ones
//! first, then ones still sending their request. Only when every candidate is being
//! answered is the newcomer closed at once.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use crate::config::ConfigError;

/// How many connections the metrics endpoint holds, in all and per host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointLimits {
    /// Connections open at once.
    pub connections: usize,
    /// Connections one host may hold: an IPv4 address, or an IPv6 /64 (one host usually
    /// has the whole /64, so a per-address cap would not hold it back).
    pub connections_per_ip: usize,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        // 16 leaves room for a few scrapers and browsers; 4 per host means it takes four
        // hosts to fill it, and even then idle connections give way.
        EndpointLimits {
            connections: 16,
            connections_per_ip: 4,
        }
    }
}

impl EndpointLimits {
    /// Checks that the endpoint can serve at least one connection.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.connections == 0 {
            return Err(ConfigError::Zero("metrics connections"));
        }
        if self.connections_per_ip == 0 {
            return Err(ConfigError::Zero("metrics connections per ip"));
        }
        Ok(())
    }
}

/// What a connection is doing, in the order in which connections give way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// No request in progress: just accepted, or its last response sent (keep-alive).
    /// Closing it loses nothing; a client reconnects when it next needs to.
    Idle,
    /// Part of a request has arrived. A real client sends its request in one go, so a
    /// connection that stays here is most likely holding its slot on purpose.
    Reading,
    /// Its request is being answered. Never closed for a newcomer, so no scrape is cut off.
    Responding,
}

/// The cap a new connection met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cap {
    /// Its host's (`--metrics-connections-per-ip`).
    Host,
    /// The endpoint's (`--metrics-connections`).
    Total,
}

/// A connection's entry in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotId(u64);

/// What happened to a new connection.
#[derive(Debug)]
pub(crate) enum Admission<T> {
    /// It has a slot; if a cap was reached, `evicted` gave it up and must be closed.
    Admitted {
        id: SlotId,
        evicted: Option<Evicted<T>>,
    },
    /// It must be closed: every connection it could replace is being answered.
    Refused(Cap),
}

/// A connection that gave its slot to a newer one.
#[derive(Debug)]
pub(crate) struct Evicted<T> {
    /// The cap that was reached.
    pub(crate) cap: Cap,
    /// What it was doing.
    pub(crate) phase: Phase,
    /// What it was admitted with (how to close it).
    pub(crate) handle: T,
}

#[derive(Debug)]
struct Slot<T> {
    id: u64,
    host: IpAddr,
    phase: Phase,
    /// When it entered its phase: the longest idle gives way first.
    since: Instant,
    handle: T,
}

/// The open connections, each with a `T` to close it by.
///
/// Decisions scan the table, which holds at most `connections` entries (16 by default).
#[derive(Debug)]
pub(crate) struct SlotTable<T> {
    limits: EndpointLimits,
    next: u64,
    slots: Vec<Slot<T>>,
}

impl<T> SlotTable<T> {
    pub(crate) fn new(limits: EndpointLimits) -> Self {
        SlotTable {
            limits,
            next: 0,
            slots: Vec::new(),
        }
    }

    /// Connections open.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Admits a connection from `peer`, making room if a cap is reached.
    pub(crate) fn admit(&mut self, peer: IpAddr, now: Instant, handle: T) -> Admission<T> {
        let host = host_key(peer);
        let on_host = self.slots.iter().filter(|s| s.host == host).count();
        let cap = if on_host >= self.limits.connections_per_ip {
            Some(Cap::Host)
        } else if self.slots.len() >= self.limits.connections {
            Some(Cap::Total)
        } else {
            None
        };
        let evicted = match cap {
            None => None,
            Some(cap) => match self.victim(cap, host) {
                Some(i) => {
                    let slot = self.slots.swap_remove(i);
                    Some(Evicted {
                        cap,
                        phase: slot.phase,
                        handle: slot.handle,
                    })
                }
                None => return Admission::Refused(cap),
            },
        };
        let id = self.next;
        self.next += 1;
        self.slots.push(Slot {
            id,
            host,
            phase: Phase::Idle,
            since: now,
            handle,
        });
        Admission::Admitted {
            id: SlotId(id),
            evicted,
        }
    }

    /// The connection to close for a newcomer from `host` that met `cap`: idle before
    /// reading; at the host's cap one of its own, at the endpoint's one of the host
    /// holding the most (so a scraper with one connection is the last to give way); the
    /// longest in its phase first.
    fn victim(&self, cap: Cap, host: IpAddr) -> Option<usize> {
        let mut held: HashMap<IpAddr, usize> = HashMap::new();
        for s in &self.slots {
            *held.entry(s.host).or_default() += 1;
        }
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.phase != Phase::Responding)
            .filter(|(_, s)| cap == Cap::Total || s.host == host)
            .min_by_key(|(_, s)| (s.phase, Reverse(held.get(&s.host)), s.since))
            .map(|(i, _)| i)
    }

    /// Records that connection `id` (if still open) is now in `phase`.
    pub(crate) fn set_phase(&mut self, id: SlotId, phase: Phase, now: Instant) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.id == id.0)
            && slot.phase != phase
        {
            slot.phase = phase;
            slot.since = now;
        }
    }

    /// Frees the slot of connection `id`, unless it was already given to another.
    pub(crate) fn release(&mut self, id: SlotId) {
        if let Some(i) = self.slots.iter().position(|s| s.id == id.0) {
            self.slots.swap_remove(i);
        }
    }
}

/// The host a peer address counts against: IPv4 addresses (IPv4-mapped IPv6 ones too)
/// as they are, IPv6 addresses by their /64 — as the session budget counts hosts.
pub(crate) fn host_key(ip: IpAddr) -> IpAddr {
    crate::session::HostKey::of(ip).ip()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    /// A table of `connections` in all, `per_ip` per host, on a manual clock.
    struct Sim {
        table: SlotTable<&'static str>,
        now: Instant,
    }

    impl Sim {
        fn new(connections: usize, per_ip: usize) -> Self {
            let limits = EndpointLimits {
                connections,
                connections_per_ip: per_ip,
            };
            Sim {
                table: SlotTable::new(limits),
                now: Instant::now(),
            }
        }

        /// Admits `name` from `host` a millisecond after the previous event.
        fn admit(&mut self, host: IpAddr, name: &'static str) -> Admission<&'static str> {
            self.now += Duration::from_millis(1);
            self.table.admit(host, self.now, name)
        }

        /// Admits `name`, expecting nobody to be evicted.
        fn fits(&mut self, host: IpAddr, name: &'static str) -> SlotId {
            match self.admit(host, name) {
                Admission::Admitted { id, evicted: None } => id,
                other => panic!("{name}: {other:?}"),
            }
        }

        /// Admits `name`, expecting it to take the place of `victim` (`None`: refused).
        fn replaces(&mut self, host: IpAddr, name: &'static str) -> Option<Evicted<&'static str>> {
            match self.admit(host, name) {
                Admission::Admitted { evicted, .. } => {
                    Some(evicted.unwrap_or_else(|| panic!("{name} evicted nobody")))
                }
                Admission::Refused(_) => None,
            }
        }

        fn set(&mut self, id: SlotId, phase: Phase) {
            self.now += Duration::from_millis(1);
            self.table.set_phase(id, phase, self.now);
        }
    }

    #[test]
    fn a_host_at_its_cap_gives_up_its_own_longest_idle_connection() {
        let mut sim = Sim::new(16, 2);
        let a = sim.fits(ip(2), "a");
        sim.fits(ip(2), "b");
        sim.fits(ip(3), "other host");
        // `a` answered a request since, so `b` has been idle longer.
        sim.set(a, Phase::Responding);
        sim.set(a, Phase::Idle);
        let out = sim.replaces(ip(2), "c").expect("admitted");
        assert_eq!(
            (out.handle, out.cap, out.phase),
            ("b", Cap::Host, Phase::Idle)
        );
        assert_eq!(sim.table.len(), 3);
    }

    #[test]
    fn idle_connections_give_way_before_reading_ones_and_responding_ones_never() {
        let mut sim = Sim::new(16, 3);
        let a = sim.fits(ip(2), "reading");
        let b = sim.fits(ip(2), "responding");
        let c = sim.fits(ip(2), "idle");
        sim.set(a, Phase::Reading);
        sim.set(b, Phase::Responding);
        sim.set(c, Phase::Idle);
        let out = sim.replaces(ip(2), "d").expect("admitted");
        assert_eq!(out.handle, "idle");
        // `d` is idle now, and is the next to go; then the one still reading.
        assert_eq!(sim.replaces(ip(2), "e").expect("admitted").handle, "d");
        let e = sim.table.slots.last().map(|s| SlotId(s.id)).expect("e");
        sim.set(e, Phase::Responding);
        let out = sim.replaces(ip(2), "f").expect("admitted");
        assert_eq!((out.handle, out.phase), ("reading", Phase::Reading));
        let f = sim.table.slots.last().map(|s| SlotId(s.id)).expect("f");
        sim.set(f, Phase::Responding);
        // All three are being answered: the newcomer is refused, and nothing changes.
        assert!(matches!(
            sim.admit(ip(2), "g"),
            Admission::Refused(Cap::Host)
        ));
        assert_eq!(sim.table.len(), 3);
    }

    #[test]
    fn a_host_at_its_cap_is_refused_even_with_others_idle() {
        let mut sim = Sim::new(16, 1);
        let a = sim.fits(ip(2), "busy");
        sim.fits(ip(3), "idle elsewhere");
        sim.set(a, Phase::Responding);
        assert!(matches!(
            sim.admit(ip(2), "b"),
            Admission::Refused(Cap::Host)
        ));
    }

    #[test]
    fn a_full_endpoint_takes_from_the_host_holding_the_most() {
        let mut sim = Sim::new(4, 3);
        // The scraper's connection is the oldest idle one, but its host holds only it.
        sim.fits(ip(1), "scraper");
        sim.fits(ip(2), "x1");
        sim.fits(ip(2), "x2");
        sim.fits(ip(3), "y1");
        let out = sim.replaces(ip(4), "new host").expect("admitted");
        assert_eq!((out.handle, out.cap), ("x1", Cap::Total));
        // Now every host holds one: the longest idle goes.
        assert_eq!(
            sim.replaces(ip(5), "z").expect("admitted").handle,
            "scraper"
        );
    }

    #[test]
    fn a_full_endpoint_with_everything_being_answered_refuses() {
        let mut sim = Sim::new(2, 2);
        let a = sim.fits(ip(2), "a");
        let b = sim.fits(ip(3), "b");
        sim.set(a, Phase::Responding);
        sim.set(b, Phase::Responding);
        assert!(matches!(
            sim.admit(ip(4), "c"),
            Admission::Refused(Cap::Total)
        ));
        // Once one is answered and idle again, it gives way.
        sim.set(b, Phase::Idle);
        assert_eq!(sim.replaces(ip(4), "c").expect("admitted").handle, "b");
    }

    #[test]
    fn released_slots_are_free_and_evicted_ones_are_not_released_twice() {
        let mut sim = Sim::new(2, 2);
        let a = sim.fits(ip(2), "a");
        let b = sim.fits(ip(2), "b");
        let out = sim.replaces(ip(3), "c").expect("admitted");
        assert_eq!(out.handle, "a");
        // `a`'s task ends later and releases its id: a no-op, `b` and `c` keep theirs.
        sim.table.release(a);
        sim.table.set_phase(a, Phase::Responding, sim.now);
        assert_eq!(sim.table.len(), 2);
        sim.table.release(b);
        assert_eq!(sim.table.len(), 1);
        sim.fits(ip(4), "d");
    }

    #[test]
    fn ipv6_hosts_are_their_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(host_key(a), host_key(b));
        assert_ne!(host_key(a), host_key(c));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().expect("ip");
        assert_eq!(host_key(mapped), IpAddr::from([127, 0, 0, 2]));
        let mut sim = Sim::new(16, 1);
        sim.fits(a, "a");
        assert_eq!(sim.replaces(b, "b").expect("admitted").handle, "a");
        sim.fits(c, "c");
    }

    #[test]
    fn zero_limits_are_refused() {
        assert_eq!(EndpointLimits::default().validate(), Ok(()));
        let none = EndpointLimits {
            connections: 0,
            ..EndpointLimits::default()
        };
        assert_eq!(
            none.validate(),
            Err(ConfigError::Zero("metrics connections"))
        );
        let per_ip = EndpointLimits {
            connections_per_ip: 0,
            ..EndpointLimits::default()
        };
        assert_eq!(
            per_ip.validate(),
            Err(ConfigError::Zero("metrics connections per ip"))
        );
    }
}

//! The session budget: what sessions reserve, in all and per host, and download
//! reservations.
//!
//! Memory is accounted as *reservations*: `a:` reserves the upload's size (plus its block
//! bitmap) against `max_session_memory`, at its first block, and allocates only as blocks
//! arrive, so a flood of opens costs nothing but table entries. A download reserves its
//! size before its response is built.
//!
//! A session its owner has not used yet is *unclaimed*: it may be a spoofed request's, so
//! it counts against no host, and it is the first to give way (see `room`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use mboard_protocol::{Offer, SessionId};

use super::hosts::{HostKey, Hosts, Shares};
use super::manager::{Session, State};
use super::unclaimed::Unclaimed;
use super::{SessionError, SessionManager};

/// Bytes reserved, per host too, and the sessions that may give way.
#[derive(Debug)]
pub(super) struct Budget {
    /// Bytes reserved by all sessions.
    pub(super) reserved: u64,
    /// Bytes reserved by unclaimed sessions.
    pub(super) unclaimed_reserved: u64,
    /// Sessions not yet claimed, oldest first (see `unclaimed`).
    pub(super) unclaimed: Unclaimed,
    /// What each host's claimed sessions hold.
    pub(super) hosts: Hosts,
    /// Moves on every change above (and so on every session made, claimed, grown, shrunk
    /// or gone): a request refused at one generation is refused at the same one.
    pub(super) generation: u64,
}

impl Budget {
    pub(super) fn new(shares: Shares) -> Self {
        Budget {
            reserved: 0,
            unclaimed_reserved: 0,
            unclaimed: Unclaimed::default(),
            hosts: Hosts::new(shares),
            generation: 0,
        }
    }

    /// Bytes reserved by all sessions.
    pub(super) fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Takes `cost` more bytes for a session, claimed by `host` or not yet claimed.
    pub(super) fn charge(&mut self, cost: u64, host: Option<HostKey>) {
        self.generation += 1;
        self.reserved += cost;
        match host {
            Some(host) => self.hosts.charge(host, cost),
            None => self.unclaimed_reserved += cost,
        }
    }

    /// Gives back `cost` bytes a session (claimed by `host`, or not) held.
    pub(super) fn refund(&mut self, cost: u64, host: Option<HostKey>) {
        self.generation += 1;
        self.reserved -= cost;
        match host {
            Some(host) => self.hosts.refund(host, cost),
            None => self.unclaimed_reserved -= cost,
        }
    }

    /// Session `sid` of `host`, created at `created` and holding `reserved` bytes, was
    /// just claimed: it no longer gives way as unclaimed, and it counts against its host.
    pub(super) fn claim(&mut self, sid: SessionId, created: Instant, reserved: u64, host: HostKey) {
        self.generation += 1;
        self.unclaimed_reserved -= reserved;
        self.hosts.join(host, sid, created, reserved);
    }

    /// Session `sid`, created at `created` and holding `reserved` bytes, is gone.
    pub(super) fn release(
        &mut self,
        sid: SessionId,
        created: Instant,
        reserved: u64,
        host: Option<HostKey>,
    ) {
        self.refund(reserved, host);
        if let Some(host) = host {
            self.hosts.leave(host, sid, created, 0);
        }
    }

    /// Charges a new, unclaimed session `sid` (already in `sessions`) and queues it to
    /// give way.
    pub(super) fn enlist(
        &mut self,
        sid: SessionId,
        now: Instant,
        cost: u64,
        sessions: &HashMap<SessionId, Session>,
    ) {
        self.charge(cost, None);
        self.unclaimed.push(now, sid, cost);
        // Claimed and closed sessions leave stale entries; drop them before they pile up.
        if self.unclaimed.len() > 2 * sessions.len() + 1024 {
            self.prune(sessions);
        }
    }

    /// Drops the queue's stale entries.
    pub(super) fn prune(&mut self, sessions: &HashMap<SessionId, Session>) {
        self.unclaimed.prune(sessions);
    }

    /// Gives memory back after a crowd of sessions has left.
    pub(super) fn shrink(&mut self, sessions: &HashMap<SessionId, Session>) {
        if self.unclaimed.len() > 2 * sessions.len() {
            self.prune(sessions);
        }
        self.unclaimed.shrink();
        self.hosts.shrink();
    }
}

/// A download reservation made before its response is built.
///
/// Sizing first means a huge `4:0` is refused as busy before any of it is copied.
#[derive(Debug)]
#[must_use = "a reservation holds budget until filled or cancelled"]
pub(crate) struct Reservation {
    sid: SessionId,
    size: u64,
}

impl SessionManager {
    /// Reserves a download of `size` bytes for `from`, or refuses it as busy.
    pub(crate) fn reserve(
        &mut self,
        now: Instant,
        from: SocketAddr,
        size: u64,
    ) -> Result<Reservation, SessionError> {
        let sid = self.admit(now, from, size, true)?;
        let state = State::Download {
            data: Bytes::new(),
            block_size: self.limits.download_block_size() as u64,
        };
        self.insert(sid, now, from, size, state);
        Ok(Reservation { sid, size })
    }

    /// Fills a reservation with the response and returns the offer to send.
    ///
    /// `data` must be the reserved size; if the reservation expired meanwhile, it is
    /// refused as busy rather than offered under an id that names nothing. So is an empty
    /// response: an offer's size is at least 1.
    pub(crate) fn fill(
        &mut self,
        reservation: Reservation,
        data: Bytes,
    ) -> Result<Offer, SessionError> {
        debug_assert_eq!(data.len() as u64, reservation.size);
        match self.sessions.get_mut(&reservation.sid) {
            Some(Session {
                state:
                    State::Download {
                        data: slot,
                        block_size,
                    },
                ..
            }) if !data.is_empty() => {
                *slot = data;
                Ok(Offer {
                    sid: reservation.sid,
                    size: reservation.size,
                    block_size: *block_size,
                })
            }
            _ => Err(SessionError::Busy),
        }
    }

    /// Gives back a reservation whose response could not be built.
    pub(crate) fn cancel(&mut self, reservation: Reservation) {
        self.remove(reservation.sid);
    }

    /// Offers `data` as a download: reserve and fill in one step.
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn offer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: Bytes,
    ) -> Result<Offer, SessionError> {
        let reservation = self.reserve(now, from, data.len() as u64)?;
        self.fill(reservation, data)
    }
}

//! Reclaiming claimed sessions that do not move, when a new one does not fit.
//!
//! A session is *slow* when it has moved fewer bytes than the progress floor asks for the
//! time since it started, after a grace: `progress < floor × (age − grace)`, as Apache's
//! `mod_reqtimeout` extends a request body's deadline by one second per `MinRate` bytes.
//! Bytes, not blocks: the client picks the block size, and counting blocks would let
//! `a:16777216:1` hold 18 MiB for one tiny datagram a second. A session that trickles a
//! 65,000-byte block every 20 s into a 16 MiB upload (3 KB/s) falls below the default
//! 8 KiB/s within 13 s; an honest upload that moves at all moves hundreds of times faster.
//!
//! Each claimed session has the instant it would turn slow if it moved no more. They wait
//! in a heap that progress does not touch, as the expiry deadlines do: an entry that
//! comes due is checked against its session, which is put back at its real instant if it
//! moved meanwhile, or joins the *pool* of slow sessions, ordered best to reclaim first.
//! Nothing walks the whole table, so a flood of requests for room costs each a few heap
//! operations. A reclaimed session's id is remembered for a session timeout so that its
//! owner is told `4:expired: …` rather than `unknown session`.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mboard_protocol::SessionId;

use super::compact;
use super::fairness::Fairness;
use super::hosts::HostKey;
use super::manager::{Reclaimed, Session, State};
use super::room::Shortfall;
use super::{SessionError, SessionManager};

/// How long a session that is due but cannot be judged yet (its commit is executing) waits
/// to be looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// The instant `session` turns slow if it moves no more; `None` with the floor off.
fn slow_at(session: &Session, fairness: &Fairness) -> Option<Instant> {
    if fairness.progress_floor == 0 {
        return None;
    }
    let credit = session.progress as f64 / fairness.progress_floor as f64;
    let credit = Duration::try_from_secs_f64(credit).unwrap_or(Duration::MAX);
    let at = session.created.checked_add(fairness.progress_grace)?;
    at.checked_add(credit)
}

/// Whether `session` moves slower than the floor at `now`.
pub(super) fn is_slow(session: &Session, now: Instant, fairness: &Fairness) -> bool {
    session.claimed
        && !matches!(session.state, State::Executing(_))
        && slow_at(session, fairness).is_some_and(|at| now > at)
}

/// Where a slow session stands in the pool: the greatest is reclaimed first.
type Rank = (bool, u64, Reverse<Instant>, SessionId);

/// When claimed sessions may turn slow, those that have, reclaimed ones, and counts.
#[derive(Debug, Default)]
pub(super) struct Reclaimer {
    /// When each claimed session would turn slow, as it was when pushed; checked when due.
    due: BinaryHeap<Reverse<(Instant, SessionId)>>,
    /// Sessions found slow, by whether their host was over its share, their reservation
    /// and their age when found; possibly stale (moved, closed or gone since), which is
    /// checked before one is used.
    pool: BTreeSet<Rank>,
    /// The reservations of the pool's sessions as ranked: at least what reclaiming all of
    /// them would free, so that a request they cannot help is refused without a walk.
    pool_bytes: u64,
    tombstones: Tombstones,
    reclaimed: Reclaimed,
}

impl Reclaimer {
    pub(super) fn reclaimed(&self) -> Reclaimed {
        self.reclaimed
    }

    /// Watches `session`, just claimed, from now on.
    pub(super) fn watch(
        &mut self,
        sid: SessionId,
        session: &Session,
        sessions: &HashMap<SessionId, Session>,
        fairness: &Fairness,
    ) {
        let Some(at) = slow_at(session, fairness) else {
            return;
        };
        self.due.push(Reverse((at, sid)));
        // Closed sessions leave stale entries; rebuild before they outnumber live ones.
        if self.due.len() > 2 * sessions.len() + 1024 {
            self.due = sessions
                .iter()
                .filter(|(_, s)| s.claimed)
                .filter_map(|(sid, s)| Some(Reverse((slow_at(s, fairness)?, *sid))))
                .collect();
        }
    }

    /// The soonest a watched session may turn slow (and join the pool).
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }

    /// At most what reclaiming every slow session would free: bytes and slots.
    pub(super) fn bound(&self) -> Shortfall {
        Shortfall {
            bytes: self.pool_bytes,
            slots: self.pool.len() as u64,
        }
    }

    fn pool_insert(&mut self, rank: Rank) {
        if self.pool.insert(rank) {
            self.pool_bytes += rank.1;
        }
    }

    fn pool_remove(&mut self, rank: &Rank) {
        if self.pool.remove(rank) {
            self.pool_bytes -= rank.1;
        }
    }

    /// Moves the sessions that have turned slow by `now` into the pool.
    pub(super) fn refresh(
        &mut self,
        now: Instant,
        sessions: &HashMap<SessionId, Session>,
        fairness: &Fairness,
        over_share: impl Fn(HostKey) -> bool,
    ) {
        while let Some(&Reverse((at, sid))) = self.due.peek() {
            if at >= now {
                break;
            }
            self.due.pop();
            let Some(session) = sessions.get(&sid) else {
                continue;
            };
            match slow_at(session, fairness) {
                Some(real) if real >= now => self.due.push(Reverse((real, sid))),
                Some(_) if is_slow(session, now, fairness) => {
                    let over = over_share(session.host);
                    self.pool_insert((over, session.reserved, Reverse(session.created), sid));
                }
                // Executing: judged once its reply is in.
                Some(_) => self.due.push(Reverse((now + RECHECK, sid))),
                None => {}
            }
        }
    }

    /// The slow sessions (never `requester`) that make up as much of `short` as they can,
    /// best first, and what they leave missing.
    ///
    /// Best first: sessions of hosts over their share (`over_share`), then the largest,
    /// then the oldest.
    pub(super) fn plan(
        &mut self,
        now: Instant,
        short: Shortfall,
        requester: Option<SessionId>,
        sessions: &HashMap<SessionId, Session>,
        fairness: &Fairness,
        over_share: impl Fn(HostKey) -> bool,
    ) -> (Vec<SessionId>, Shortfall) {
        if fairness.progress_floor == 0 {
            return (Vec::new(), short);
        }
        self.refresh(now, sessions, fairness, over_share);
        let (mut take, mut left, mut stale) = (Vec::new(), short, Vec::new());
        for rank in self.pool.iter().rev() {
            if left.is_met() {
                break;
            }
            let sid = rank.3;
            match sessions.get(&sid) {
                Some(s) if is_slow(s, now, fairness) => {
                    if Some(sid) != requester {
                        left = left.minus(s.reserved);
                        take.push(sid);
                    }
                }
                moved => {
                    stale.push(*rank);
                    // It moved since it was found: watch it again.
                    if let Some(at) = moved.and_then(|s| slow_at(s, fairness)) {
                        self.due.push(Reverse((at.max(now), sid)));
                    }
                }
            }
        }
        for rank in stale {
            self.pool_remove(&rank);
        }
        (take, left)
    }

    /// Remembers that `sid`, owned by `owner`, was reclaimed (answered `why` from then on),
    /// until `until`.
    pub(super) fn bury(
        &mut self,
        sid: SessionId,
        owner: SocketAddr,
        why: SessionError,
        until: Instant,
        max: usize,
    ) {
        self.tombstones.insert(sid, (owner, why), until, max);
    }

    /// Counts a session reclaimed as `why`, its host over its share or not.
    pub(super) fn count(&mut self, why: &SessionError, over_share: bool) {
        match (why, over_share) {
            (SessionError::Recalled, _) => self.reclaimed.recalled += 1,
            (_, true) => self.reclaimed.over_share += 1,
            (_, false) => self.reclaimed.within_share += 1,
        }
    }

    /// Why `sid`, which is not in the table, is refused to `from`.
    pub(super) fn gone(&self, sid: SessionId, from: SocketAddr) -> SessionError {
        match self.tombstones.owner(sid) {
            Some((owner, why)) if owner == from => why,
            _ => SessionError::UnknownSession,
        }
    }

    /// Forgets that `sid` was reclaimed: its owner closed it.
    pub(super) fn forget(&mut self, sid: SessionId) {
        self.tombstones.remove(sid);
    }

    #[cfg(test)]
    pub(super) fn tombstones_len(&self) -> usize {
        self.tombstones.owners.len()
    }

    #[cfg(test)]
    pub(super) fn watched(&self) -> (usize, usize) {
        (self.due.len(), self.pool.len())
    }

    /// Drops what is out of date at `now` and gives memory back.
    pub(super) fn expire(&mut self, now: Instant, sessions: &HashMap<SessionId, Session>) {
        self.tombstones.expire(now);
        if self.pool.len() > sessions.len() {
            self.pool.retain(|rank| sessions.contains_key(&rank.3));
            self.pool_bytes = self.pool.iter().map(|rank| rank.1).sum();
        }
        if self.due.len() > 2 * sessions.len() + 1024 {
            self.due
                .retain(|Reverse((_, sid))| sessions.contains_key(sid));
        }
        compact::shrink_heap(&mut self.due);
    }
}

/// Reclaimed sessions' ids, each with its owner and what it is answered, until a session
/// timeout has passed.
#[derive(Debug, Default)]
struct Tombstones {
    owners: HashMap<SessionId, (SocketAddr, SessionError)>,
    /// When each entry lapses, in order; possibly stale (closed by its owner).
    order: VecDeque<(Instant, SessionId)>,
}

impl Tombstones {
    fn insert(
        &mut self,
        sid: SessionId,
        owner: (SocketAddr, SessionError),
        until: Instant,
        max: usize,
    ) {
        while self.owners.len() >= max.max(1) {
            let Some((_, old)) = self.order.pop_front() else {
                break;
            };
            self.owners.remove(&old);
        }
        self.owners.insert(sid, owner);
        self.order.push_back((until, sid));
    }

    fn owner(&self, sid: SessionId) -> Option<(SocketAddr, SessionError)> {
        self.owners.get(&sid).cloned()
    }

    fn remove(&mut self, sid: SessionId) {
        self.owners.remove(&sid);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(until, sid)) = self.order.front() {
            if until > now {
                break;
            }
            self.order.pop_front();
            self.owners.remove(&sid);
        }
        if self.order.len() > 2 * self.owners.len() + 1024 {
            let owners = &self.owners;
            self.order.retain(|(_, sid)| owners.contains_key(sid));
        }
        compact::shrink_map(&mut self.owners);
        compact::shrink_deque(&mut self.order);
    }
}

impl SessionManager {
    /// Drops session `sid` to make room, remembering for its owner why: slow
    /// ([`SessionError::Reclaimed`]) or held beyond its host's share
    /// ([`SessionError::Recalled`]).
    pub(super) fn reclaim(&mut self, now: Instant, sid: SessionId, why: SessionError) {
        let Some(session) = self.sessions.get(&sid) else {
            return;
        };
        let over = self.budget.hosts.is_over(session.host);
        let owner = session.owner;
        self.remove(sid);
        let until = now + self.limits.session_timeout;
        let max = self.limits.max_sessions as usize;
        self.reclaimer.count(&why, over);
        self.reclaimer.bury(sid, owner, why, until, max);
    }
}

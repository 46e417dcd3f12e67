//! The session table, session ids, and one function per session request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use mboard_protocol::{Response, SessionId, SessionRequest};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::SessionError;
use super::budget::Budget;
use super::expiry::Deadlines;
use super::hosts::{HostKey, Shares};
use super::reclaim::Reclaimer;
use super::room::Need;
use super::upload::{Shape, Upload};
use super::validated::Validated;
use crate::config::Limits;
use crate::reply::Reply;

/// What the caller should do with a session request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub enum Outcome {
    /// Send this response: `Opened`, `Acked`, `Data` or `Closed`.
    Respond(Response),
    /// Send this refusal.
    Refuse(SessionError),
    /// Send the committed request's reply again, as [`SessionManager::finish`] stored it.
    Replay(Reply),
    /// A complete upload was committed: execute `request` (a whole request PDU), then hand
    /// its reply to [`SessionManager::finish`] and send it.
    Execute {
        /// The committed session.
        sid: SessionId,
        /// The assembled request PDU.
        request: Bytes,
    },
    /// Send nothing: the commit is already executing; the client's resend will get the reply.
    Nothing,
}

impl From<Result<Response, SessionError>> for Outcome {
    fn from(result: Result<Response, SessionError>) -> Self {
        match result {
            Ok(response) => Outcome::Respond(response),
            Err(e) => Outcome::Refuse(e),
        }
    }
}

/// Counters for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct Stats {
    /// Sessions open now.
    pub sessions: usize,
    /// Bytes reserved by them.
    pub reserved: u64,
    /// Bytes actually allocated for upload buffers and held responses (at most `reserved`).
    pub buffered: u64,
    /// Addresses in the validated table (some may have lapsed and await a sweep).
    pub validated: usize,
    /// Sessions dropped after the session timeout, since the start.
    pub expired: u64,
    /// Unclaimed sessions dropped to make room for new ones, since the start.
    pub evicted: u64,
    /// Claimed sessions reclaimed for new ones, since the start: below the progress floor
    /// (of hosts over their share, and the others), and held beyond a host's share.
    pub reclaimed: Reclaimed,
    /// Requests refused busy while their host held more than its share, since the start.
    pub host_refusals: HostRefusals,
    /// Hosts holding at least one claimed session.
    pub hosts: usize,
}

/// Claimed sessions reclaimed, by why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct Reclaimed {
    /// Slow, of a host holding more than its share of memory or sessions.
    pub over_share: u64,
    /// Slow, of a host within its shares.
    pub within_share: u64,
    /// Not slow, but held beyond its host's share: taken back for a host within its share
    /// (the youngest of the host most over its share first).
    pub recalled: u64,
}

/// Busy refusals of hosts over their share, by the resource that was short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct HostRefusals {
    /// The host was over its share of session memory.
    pub memory: u64,
    /// The host was over its share of the session table.
    pub sessions: u64,
}

#[derive(Debug)]
pub(super) enum State {
    Upload(Upload),
    /// Handed out by [`Outcome::Execute`]; no reply yet.
    Executing(Shape),
    /// Executed: every later commit replays `reply`.
    Committed {
        shape: Shape,
        reply: Reply,
    },
    /// A response being served; empty until its reservation is filled.
    Download {
        data: Bytes,
        block_size: u64,
    },
}

#[derive(Debug)]
pub(super) struct Session {
    pub(super) owner: SocketAddr,
    pub(super) host: HostKey,
    pub(super) created: Instant,
    pub(super) last_seen: Instant,
    pub(super) reserved: u64,
    /// Its owner has sent a datagram naming it since it was created. Until then it may be
    /// a spoofed request's, and may be dropped to make room (see `Limits::claim_grace`).
    pub(super) claimed: bool,
    /// Bytes moved since it was created: new blocks stored, blocks fetched (at most the
    /// download's size). What the progress floor is checked against.
    pub(super) progress: u64,
    pub(super) state: State,
}

impl Session {
    /// The host it is charged to: only a claimed session counts against its host.
    pub(super) fn claimant(&self) -> Option<HostKey> {
        self.claimed.then_some(self.host)
    }

    fn buffered(&self) -> u64 {
        match &self.state {
            State::Upload(up) => up.buffered(),
            State::Executing(_) => 0,
            State::Committed { reply, .. } => reply.len() as u64,
            State::Download { data, .. } => data.len() as u64,
        }
    }
}

/// Session state for the whole server.
#[derive(Debug)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct SessionManager {
    pub(super) limits: Limits,
    rng: StdRng,
    pub(super) sessions: HashMap<SessionId, Session>,
    pub(super) per_source: HashMap<SocketAddr, u32>,
    pub(super) budget: Budget,
    pub(super) expiry: Deadlines,
    pub(super) validated: Validated,
    pub(super) reclaimer: Reclaimer,
    /// Sessions dropped by expiry, and to make room, since the start.
    pub(super) expired_total: u64,
    pub(super) evicted_total: u64,
    pub(super) host_refusals: HostRefusals,
    /// The last request that walked the sessions that could give way and was refused
    /// (see `room`).
    pub(super) refused: Option<super::room::Refused>,
    /// Walks of the sessions that could give way, since the start.
    #[cfg(test)]
    pub(super) walks: u64,
}

impl SessionManager {
    /// A manager whose session ids come from a generator seeded with `seed`.
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn new(limits: Limits, seed: u64) -> Self {
        let shares = Shares::of(&limits);
        SessionManager {
            validated: Validated::new(limits.validation_ttl, limits.max_validated),
            limits,
            rng: StdRng::seed_from_u64(seed),
            sessions: HashMap::new(),
            per_source: HashMap::new(),
            budget: Budget::new(shares),
            expiry: Deadlines::default(),
            reclaimer: Reclaimer::default(),
            expired_total: 0,
            evicted_total: 0,
            host_refusals: HostRefusals::default(),
            refused: None,
            #[cfg(test)]
            walks: 0,
        }
    }

    /// Sessions open and bytes reserved.
    ///
    /// `buffered` walks every session, so call it for reports, not per datagram.
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn stats(&self) -> Stats {
        Stats {
            sessions: self.sessions.len(),
            reserved: self.budget.reserved(),
            buffered: self.sessions.values().map(Session::buffered).sum(),
            validated: self.validated.len(),
            expired: self.expired_total,
            evicted: self.evicted_total,
            reclaimed: self.reclaimer.reclaimed(),
            host_refusals: self.host_refusals,
            hosts: self.budget.hosts.len(),
        }
    }

    /// Handles one session request from `from` at `now`.
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn handle(&mut self, now: Instant, from: SocketAddr, req: SessionRequest) -> Outcome {
        match req {
            SessionRequest::Open { size, block_size } => {
                self.open(now, from, size, block_size).into()
            }
            SessionRequest::Block { sid, index, data } => {
                self.block(now, from, sid, index, &data).into()
            }
            SessionRequest::Commit(sid) => self.commit(now, from, sid),
            SessionRequest::Fetch { sid, index } => self.fetch(now, from, sid, index).into(),
            SessionRequest::Close(sid) => self.close(now, from, sid),
        }
    }

    fn open(
        &mut self,
        now: Instant,
        from: SocketAddr,
        size: u64,
        block_size: u64,
    ) -> Result<Response, SessionError> {
        let max = self.limits.max_request_size;
        if size > max {
            return Err(SessionError::TooLarge { max });
        }
        let upload = Upload::new(size, block_size, self.limits.max_datagram);
        let block_size = upload.block_size();
        // The open is refused when the budget has no room for it now, but it reserves (and
        // allocates) nothing until its first block proves its owner receives our replies:
        // `a:` from spoofed sources, which costs a dozen bytes, then cannot hold the budget.
        let sid = self.admit(now, from, upload.cost(), false)?;
        self.insert(sid, now, from, 0, State::Upload(upload));
        Ok(Response::Opened { sid, block_size })
    }

    /// The session `sid` names, once `from` is found to own it; every request but `a:`
    /// starts here.
    ///
    /// The owner's datagram keeps the session alive, claims it (it no longer gives way to
    /// make room) and validates the owner's address. A `first_block` takes an upload's
    /// reservation if it has none yet; without room it is refused busy and changes nothing
    /// else, so the client may resend it later.
    fn claim(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sid: SessionId,
        first_block: bool,
    ) -> Result<&mut Session, SessionError> {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return Err(self.reclaimer.gone(sid, from));
        };
        if session.owner != from {
            return Err(SessionError::ForeignAddress);
        }
        session.last_seen = now;
        let host = session.host;
        let newly_claimed = !session.claimed;
        session.claimed = true;
        let unreserved = match &session.state {
            State::Upload(up) if first_block && session.reserved == 0 => Some(up.cost()),
            _ => None,
        };
        if newly_claimed {
            let session = &self.sessions[&sid];
            self.budget
                .claim(sid, session.created, session.reserved, host);
            let fairness = self.limits.fairness;
            self.reclaimer
                .watch(sid, session, &self.sessions, &fairness);
        }
        // Only the address the id was sent to could echo it: it receives our datagrams.
        self.validated.insert(from, now);
        if let Some(cost) = unreserved {
            let need = Need {
                host,
                bytes: cost,
                slot: false,
                take_bytes: true,
                requester: Some(sid),
            };
            self.make_room(now, need)?;
        }
        // Making room never drops the session it is made for: this one is still there.
        let session = self
            .sessions
            .get_mut(&sid)
            .ok_or(SessionError::UnknownSession)?;
        if let (Some(cost), State::Upload(up)) = (unreserved, &mut session.state) {
            up.reserved();
            session.reserved = cost;
            self.budget.charge(cost, Some(host));
        }
        Ok(session)
    }

    fn block(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sid: SessionId,
        index: u64,
        data: &[u8],
    ) -> Result<Response, SessionError> {
        let session = self.claim(now, from, sid, true)?;
        let received = match &mut session.state {
            State::Upload(up) => {
                let before = up.received();
                let received = up.store(index, data)?;
                if received > before {
                    session.progress += data.len() as u64;
                }
                received
            }
            // A late duplicate after the commit: every block is held, so say so again.
            State::Executing(shape) | State::Committed { shape, .. } => {
                shape.check(index, data.len())?;
                shape.blocks()
            }
            State::Download { .. } => return Err(SessionError::NotUpload),
        };
        Ok(Response::Acked {
            sid,
            index,
            received,
        })
    }

    fn commit(&mut self, now: Instant, from: SocketAddr, sid: SessionId) -> Outcome {
        let session = match self.claim(now, from, sid, false) {
            Ok(session) => session,
            Err(e) => return Outcome::Refuse(e),
        };
        match &mut session.state {
            State::Upload(up) => match up.assemble() {
                Ok(request) => {
                    session.state = State::Executing(up.shape());
                    Outcome::Execute { sid, request }
                }
                Err(e) => Outcome::Refuse(e),
            },
            State::Executing(_) => Outcome::Nothing,
            State::Committed { reply, .. } => Outcome::Replay(reply.clone()),
            State::Download { .. } => Outcome::Refuse(SessionError::NotUpload),
        }
    }

    /// Records the reply of an executed commit; later commits replay it.
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn finish(&mut self, sid: SessionId, reply: Reply) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            // Closed or expired while executing: the reply still goes out once.
            return;
        };
        if let State::Executing(shape) = session.state {
            // Replies are at most a datagram (larger ones are offers), within the reservation.
            debug_assert!(
                reply.len() as u64 <= session.reserved,
                "reply larger than its reservation"
            );
            let cost = (reply.len() as u64).min(session.reserved);
            self.budget
                .refund(session.reserved - cost, session.claimant());
            session.reserved = cost;
            session.state = State::Committed { shape, reply };
        }
    }

    fn fetch(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sid: SessionId,
        index: u64,
    ) -> Result<Response, SessionError> {
        let session = self.claim(now, from, sid, false)?;
        let State::Download { data, block_size } = &session.state else {
            return Err(SessionError::NotDownload);
        };
        if data.is_empty() {
            return Err(SessionError::NotDownload);
        }
        let start = index.saturating_mul(*block_size);
        if start >= data.len() as u64 {
            return Err(SessionError::IndexPastEnd);
        }
        let end = (start + block_size).min(data.len() as u64);
        let size = data.len() as u64;
        let data = data.slice(start as usize..end as usize);
        // Fetching the same block again moves nothing new, but a lost reply makes a client
        // do just that; capping at the size keeps refetching from buying time forever.
        session.progress = (session.progress + data.len() as u64).min(size);
        Ok(Response::Data { sid, index, data })
    }

    fn close(&mut self, now: Instant, from: SocketAddr, sid: SessionId) -> Outcome {
        match self.claim(now, from, sid, false) {
            // Closing is idempotent: a lost `0:` must not turn a resent `x:` into an error.
            Ok(_)
            | Err(
                SessionError::UnknownSession | SessionError::Reclaimed | SessionError::Recalled,
            ) => {
                self.remove(sid);
                self.reclaimer.forget(sid);
                Outcome::Respond(Response::Closed)
            }
            Err(e) => Outcome::Refuse(e),
        }
    }

    /// A fresh v4 id from the seeded generator, not in the table.
    pub(super) fn new_sid(&mut self) -> SessionId {
        loop {
            let mut bytes = [0u8; 16];
            self.rng.fill_bytes(&mut bytes);
            let sid = SessionId(uuid::Builder::from_random_bytes(bytes).into_uuid());
            if !self.sessions.contains_key(&sid) {
                return sid;
            }
        }
    }

    /// Adds a new, unclaimed session reserving `cost` bytes.
    pub(super) fn insert(
        &mut self,
        sid: SessionId,
        now: Instant,
        owner: SocketAddr,
        cost: u64,
        state: State,
    ) {
        *self.per_source.entry(owner).or_insert(0) += 1;
        let session = Session {
            owner,
            host: owner.into(),
            created: now,
            last_seen: now,
            reserved: cost,
            claimed: false,
            progress: 0,
            state,
        };
        self.sessions.insert(sid, session);
        self.budget.enlist(sid, now, cost, &self.sessions);
        let timeout = self.limits.session_timeout;
        self.expiry.schedule(sid, now, timeout, &self.sessions);
    }

    pub(super) fn remove(&mut self, sid: SessionId) {
        let Some(session) = self.sessions.remove(&sid) else {
            return;
        };
        self.budget
            .release(sid, session.created, session.reserved, session.claimant());
        if let Some(n) = self.per_source.get_mut(&session.owner) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&session.owner);
            }
        }
    }
}

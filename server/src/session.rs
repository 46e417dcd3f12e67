//! The session manager: sans-IO state for uploads, cached commits and downloads.
//!
//! Fed `(now, source, request)`, it returns what to answer; the caller owns the socket and
//! the clock. That keeps loss, duplication, reordering and expiry testable on a manual
//! clock, without sleeping.
//!
//! Memory is accounted as *reservations*: `a:` reserves the upload's size (plus its block
//! bitmap) against `max_session_memory` but allocates only as blocks arrive, so a flood of
//! opens costs nothing but table entries.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use mboard_protocol::{ErrorCode, MAX_BLOCK_SIZE, Offer, Response, SessionId, SessionRequest};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::config::Limits;

/// What the caller should do with a session request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes back to the source.
    Reply(Bytes),
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

/// Counters for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
}

/// A download reservation made before its response is built.
///
/// Sizing first means a huge `4:0` is refused as busy before any of it is copied.
#[derive(Debug)]
#[must_use = "a reservation holds budget until filled or cancelled"]
pub struct Reservation {
    sid: SessionId,
    size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    size: u64,
    block_size: u64,
}

impl Shape {
    fn blocks(self) -> u64 {
        self.size.div_ceil(self.block_size)
    }

    fn block_len(self, index: u64) -> u64 {
        (self.size - index * self.block_size).min(self.block_size)
    }
}

#[derive(Debug)]
struct Upload {
    shape: Shape,
    /// What it reserves from the session budget, at its first block (see `SessionManager::handle`).
    cost: u64,
    /// Empty until the first block, then `shape.size` of capacity; its length covers the
    /// highest block received.
    buf: Vec<u8>,
    /// One bit per block.
    have: Vec<u64>,
    received: u64,
}

#[derive(Debug)]
enum State {
    Upload(Upload),
    /// Handed out by [`Outcome::Execute`]; no reply yet.
    Executing(Shape),
    /// Executed: every later commit replays `reply`.
    Committed {
        shape: Shape,
        reply: Bytes,
    },
    /// A response being served; empty until its reservation is filled.
    Download {
        data: Bytes,
        block_size: u64,
    },
}

#[derive(Debug)]
struct Session {
    owner: SocketAddr,
    last_seen: Instant,
    reserved: u64,
    /// Its owner has sent a datagram naming it since it was created. Until then it may be
    /// a spoofed request's, and may be dropped to make room (see `Limits::claim_grace`).
    claimed: bool,
    state: State,
}

/// Session state for the whole server.
#[derive(Debug)]
pub struct SessionManager {
    limits: Limits,
    rng: StdRng,
    sessions: HashMap<SessionId, Session>,
    per_source: HashMap<SocketAddr, u32>,
    reserved: u64,
    /// Deadlines, possibly stale: an entry is checked against the session when it comes due.
    expiry: BinaryHeap<Reverse<(Instant, SessionId)>>,
    /// Addresses that echoed a session id we sent them, until when.
    validated: HashMap<SocketAddr, Instant>,
    /// Sessions not yet claimed, oldest first, with when they were created; possibly
    /// stale (claimed or gone since), which is checked when an entry reaches the front.
    unclaimed: VecDeque<(Instant, SessionId)>,
    /// Bytes reserved by unclaimed sessions.
    unclaimed_reserved: u64,
    /// Sessions dropped by expiry, and to make room, since the start.
    expired_total: u64,
    evicted_total: u64,
}

fn reply(r: Response) -> Bytes {
    r.to_bytes()
}

fn err(code: ErrorCode, reason: impl Into<String>) -> Bytes {
    Response::error(code, reason.into()).to_bytes()
}

fn busy() -> Bytes {
    err(ErrorCode::ErrTransm, "busy")
}

impl SessionManager {
    /// A manager whose session ids come from a generator seeded with `seed`.
    pub fn new(limits: Limits, seed: u64) -> Self {
        SessionManager {
            limits,
            rng: StdRng::seed_from_u64(seed),
            sessions: HashMap::new(),
            per_source: HashMap::new(),
            reserved: 0,
            expiry: BinaryHeap::new(),
            validated: HashMap::new(),
            unclaimed: VecDeque::new(),
            unclaimed_reserved: 0,
            expired_total: 0,
            evicted_total: 0,
        }
    }

    /// Sessions open and bytes reserved.
    ///
    /// `buffered` walks every session, so call it for reports, not per datagram.
    pub fn stats(&self) -> Stats {
        let buffered = self
            .sessions
            .values()
            .map(|s| match &s.state {
                State::Upload(up) => up.buf.capacity() as u64,
                State::Executing(_) => 0,
                State::Committed { reply, .. } => reply.len() as u64,
                State::Download { data, .. } => data.len() as u64,
            })
            .sum();
        Stats {
            sessions: self.sessions.len(),
            reserved: self.reserved,
            buffered,
            validated: self.validated.len(),
            expired: self.expired_total,
            evicted: self.evicted_total,
        }
    }

    /// Handles one session request from `from` at `now`.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, req: SessionRequest) -> Outcome {
        let SessionRequest::Open { size, block_size } = req else {
            return self.handle_existing(now, from, req);
        };
        if size > self.limits.max_request_size {
            let max = self.limits.max_request_size;
            return Outcome::Reply(err(
                ErrorCode::ErrTransm,
                format!("too large: max {max} bytes"),
            ));
        }
        let block_size = block_size.min(MAX_BLOCK_SIZE);
        let shape = Shape { size, block_size };
        // The bitmap is part of the cost: `a:<16 MiB>:1` needs 2 MiB of it. And at least one
        // response datagram is reserved, so that the committed reply (which replaces the
        // upload) always fits in what the session already holds: the budget is never
        // exceeded, not even briefly.
        let have_words = shape.blocks().div_ceil(64);
        let cost = (size + have_words * 8).max(self.limits.max_datagram as u64);
        // The open is refused when the budget has no room for it now, but it reserves (and
        // allocates) nothing until its first block proves its owner receives our replies:
        // `a:` from spoofed sources, which costs a dozen bytes, then cannot hold the budget.
        let Some(sid) = self.admit(now, from, cost) else {
            return Outcome::Reply(busy());
        };
        let upload = Upload {
            shape,
            cost,
            buf: Vec::new(),
            have: Vec::new(),
            received: 0,
        };
        self.insert(sid, now, from, 0, State::Upload(upload));
        Outcome::Reply(reply(Response::Opened { sid, block_size }))
    }

    fn handle_existing(&mut self, now: Instant, from: SocketAddr, req: SessionRequest) -> Outcome {
        let Some(sid) = req.sid() else {
            return Outcome::Nothing;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return Outcome::Reply(match req {
                // Closing is idempotent: a lost `0:` must not turn a resent `x:` into an error.
                SessionRequest::Close(_) => reply(Response::Closed),
                _ => err(ErrorCode::ErrTransm, "unknown session"),
            });
        };
        if session.owner != from {
            return Outcome::Reply(err(
                ErrorCode::ErrTransm,
                "session belongs to another address",
            ));
        }
        session.last_seen = now;
        if !session.claimed {
            session.claimed = true;
            self.unclaimed_reserved -= session.reserved;
        }
        // Only the address the id was sent to could echo it: it receives our datagrams.
        self.validate(from, now);
        let Some(session) = self.sessions.get_mut(&sid) else {
            return Outcome::Nothing;
        };
        // An upload's first block takes its reservation; without room it is refused busy
        // and changes nothing (the client may resend it later).
        let unreserved = match &session.state {
            State::Upload(up) if session.reserved == 0 => Some(up.cost),
            _ => None,
        };
        if let (SessionRequest::Block { .. }, Some(cost)) = (&req, unreserved)
            && !self.reserve_upload(now, sid, cost)
        {
            return Outcome::Reply(busy());
        }
        let Some(session) = self.sessions.get_mut(&sid) else {
            return Outcome::Nothing;
        };
        match req {
            SessionRequest::Open { .. } => Outcome::Nothing,
            SessionRequest::Block { index, data, .. } => {
                Outcome::Reply(Self::block(sid, session, index, &data))
            }
            SessionRequest::Commit(_) => match &mut session.state {
                State::Upload(up) if up.received < up.shape.blocks() => {
                    let (missing, total) = (up.shape.blocks() - up.received, up.shape.blocks());
                    Outcome::Reply(err(
                        ErrorCode::ErrTransm,
                        format!("incomplete: {missing} of {total} blocks missing"),
                    ))
                }
                State::Upload(up) => {
                    let request = Bytes::from(std::mem::take(&mut up.buf));
                    session.state = State::Executing(up.shape);
                    Outcome::Execute { sid, request }
                }
                State::Executing(_) => Outcome::Nothing,
                State::Committed { reply, .. } => Outcome::Reply(reply.clone()),
                State::Download { .. } => {
                    Outcome::Reply(err(ErrorCode::ErrTransm, "not an upload session"))
                }
            },
            SessionRequest::Fetch { index, .. } => match &session.state {
                State::Download { data, block_size } if !data.is_empty() => {
                    let start = index.saturating_mul(*block_size);
                    if start >= data.len() as u64 {
                        return Outcome::Reply(err(
                            ErrorCode::BadFormat,
                            "block index past the end",
                        ));
                    }
                    let end = (start + block_size).min(data.len() as u64);
                    let data = data.slice(start as usize..end as usize);
                    Outcome::Reply(reply(Response::Data { sid, index, data }))
                }
                _ => Outcome::Reply(err(ErrorCode::ErrTransm, "not a download session")),
            },
            SessionRequest::Close(_) => {
                self.remove(sid);
                Outcome::Reply(reply(Response::Closed))
            }
        }
    }

    fn block(sid: SessionId, session: &mut Session, index: u64, data: &[u8]) -> Bytes {
        let (shape, up) = match &mut session.state {
            State::Upload(up) => (up.shape, Some(up)),
            // A late duplicate after the commit: every block is held, so say so again.
            State::Executing(shape) | State::Committed { shape, .. } => (*shape, None),
            State::Download { .. } => return err(ErrorCode::ErrTransm, "not an upload session"),
        };
        if index >= shape.blocks() {
            return err(ErrorCode::BadFormat, "block index past the end");
        }
        let want = shape.block_len(index);
        if data.len() as u64 != want {
            return err(
                ErrorCode::BadFormat,
                format!("block {index} must be {want} bytes"),
            );
        }
        let Some(up) = up else {
            return reply(Response::Acked {
                sid,
                index,
                received: shape.blocks(),
            });
        };
        let (word, bit) = ((index / 64) as usize, 1u64 << (index % 64));
        if up.have[word] & bit == 0 {
            let start = (index * shape.block_size) as usize;
            let end = start + data.len();
            if up.buf.capacity() == 0 {
                // The declared size, reserved at the open, allocated once at the first block:
                // growing instead cost a copy of everything received at every doubling, and
                // the page faults of touching it twice (a third of the server's time on a
                // 16 MiB upload). The kernel still commits pages only as blocks land in them.
                up.buf = Vec::with_capacity(shape.size as usize);
            }
            if start >= up.buf.len() {
                // Blocks in order are appended; a gap before this one is zeroed until filled.
                up.buf.resize(start, 0);
                up.buf.extend_from_slice(data);
            } else {
                up.buf[start..end].copy_from_slice(data);
            }
            up.have[word] |= bit;
            up.received += 1;
        }
        reply(Response::Acked {
            sid,
            index,
            received: up.received,
        })
    }

    /// Records the reply of an executed commit; later commits replay it.
    pub fn finish(&mut self, sid: SessionId, response: Bytes) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            // Closed or expired while executing: the reply still goes out once.
            return;
        };
        if let State::Executing(shape) = session.state {
            // Replies are at most a datagram (larger ones are offers), within the reservation.
            debug_assert!(
                response.len() as u64 <= session.reserved,
                "reply larger than its reservation"
            );
            let cost = (response.len() as u64).min(session.reserved);
            self.reserved = self.reserved - session.reserved + cost;
            session.reserved = cost;
            session.state = State::Committed {
                shape,
                reply: response,
            };
        }
    }

    /// Reserves a download of `size` bytes for `from`, or refuses with the `4:busy` reply.
    pub fn reserve(
        &mut self,
        now: Instant,
        from: SocketAddr,
        size: u64,
    ) -> Result<Reservation, Bytes> {
        let sid = self.admit(now, from, size).ok_or_else(busy)?;
        let block_size = self.limits.download_block_size() as u64;
        self.insert(
            sid,
            now,
            from,
            size,
            State::Download {
                data: Bytes::new(),
                block_size,
            },
        );
        Ok(Reservation { sid, size })
    }

    /// Fills a reservation with the response and returns the `d:` offer to send.
    ///
    /// `data` must be the reserved size; if the reservation expired meanwhile, the reply is
    /// `4:busy` rather than an offer that names nothing.
    pub fn fill(&mut self, reservation: Reservation, data: Bytes) -> Bytes {
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
                let offer = Offer {
                    sid: reservation.sid,
                    size: reservation.size,
                    block_size: *block_size,
                };
                reply(Response::Offer(offer))
            }
            _ => busy(),
        }
    }

    /// Gives back a reservation whose response could not be built.
    pub fn cancel(&mut self, reservation: Reservation) {
        self.remove(reservation.sid);
    }

    /// Offers `data` as a download: reserve and fill in one step.
    pub fn offer(&mut self, now: Instant, from: SocketAddr, data: Bytes) -> Bytes {
        match self.reserve(now, from, data.len() as u64) {
            Ok(r) => self.fill(r, data),
            Err(busy) => busy,
        }
    }

    /// Whether `from` has proved, recently enough, that it receives what we send it.
    pub fn is_validated(&self, from: SocketAddr, now: Instant) -> bool {
        self.validated.get(&from).is_some_and(|&until| until > now)
    }

    fn validate(&mut self, from: SocketAddr, now: Instant) {
        let until = now + self.limits.validation_ttl;
        if let Some(slot) = self.validated.get_mut(&from) {
            *slot = until;
            return;
        }
        if self.validated.len() >= self.limits.max_validated {
            self.validated.retain(|_, until| *until > now);
        }
        // A full table of live entries leaves newcomers unvalidated: they still get every
        // reply, only large ones as offers.
        if self.validated.len() < self.limits.max_validated {
            self.validated.insert(from, until);
        }
    }

    /// Drops every session idle for the timeout or longer at `now`; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let timeout = self.limits.session_timeout;
        let mut expired = 0;
        while let Some(&Reverse((deadline, sid))) = self.expiry.peek() {
            if deadline > now {
                break;
            }
            self.expiry.pop();
            let Some(session) = self.sessions.get(&sid) else {
                continue;
            };
            let real = session.last_seen + timeout;
            if real <= now {
                self.remove(sid);
                expired += 1;
                self.expired_total += 1;
            } else {
                self.expiry.push(Reverse((real, sid)));
            }
        }
        expired
    }

    /// The earliest instant at which [`SessionManager::expire`] may have work.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiry.peek().map(|Reverse((deadline, _))| *deadline)
    }

    /// Whether a new session of `cost` bytes fits the server-wide limits.
    fn fits(&self, cost: u64) -> bool {
        self.sessions.len() < self.limits.max_sessions as usize && self.fits_memory(cost)
    }

    /// Whether `cost` more bytes fit the session budget.
    fn fits_memory(&self, cost: u64) -> bool {
        self.reserved.saturating_add(cost) <= self.limits.max_session_memory
    }

    /// Reserves `cost` for the claimed upload `sid` and allocates its block bitmap, making
    /// room if need be; false if there is none.
    fn reserve_upload(&mut self, now: Instant, sid: SessionId, cost: u64) -> bool {
        if !self.fits_memory(cost) {
            self.make_room(now, cost, false);
            if !self.fits_memory(cost) {
                return false;
            }
        }
        let Some(session) = self.sessions.get_mut(&sid) else {
            return false;
        };
        if let State::Upload(up) = &mut session.state {
            up.have = vec![0; up.shape.blocks().div_ceil(64) as usize];
        }
        session.reserved = cost;
        self.reserved += cost;
        true
    }

    /// Drops unclaimed sessions older than the claim grace, oldest first, until a new
    /// session of `cost` bytes fits.
    ///
    /// Without this, a few spoofed requests for large replies (or `a:` opens) would hold
    /// the whole budget for a session timeout, and every real client would be told busy.
    /// Nothing is dropped unless dropping every unclaimed session would make room.
    fn make_room(&mut self, now: Instant, cost: u64, new_session: bool) {
        let claimed_reserved = self.reserved - self.unclaimed_reserved;
        if claimed_reserved.saturating_add(cost) > self.limits.max_session_memory {
            return;
        }
        let fits = |m: &Self| {
            if new_session {
                m.fits(cost)
            } else {
                m.fits_memory(cost)
            }
        };
        while !fits(self) {
            let Some(&(created, sid)) = self.unclaimed.front() else {
                return;
            };
            match self.sessions.get(&sid) {
                Some(session) if !session.claimed => {
                    if created + self.limits.claim_grace > now {
                        return;
                    }
                    self.unclaimed.pop_front();
                    self.remove(sid);
                    self.evicted_total += 1;
                }
                _ => {
                    self.unclaimed.pop_front();
                }
            }
        }
    }

    /// Checks the limits for a new session of `cost` bytes and picks its id.
    fn admit(&mut self, now: Instant, from: SocketAddr, cost: u64) -> Option<SessionId> {
        // Expire first, so idle sessions never make a live client busy.
        self.expire(now);
        let per_source = self.per_source.get(&from).copied().unwrap_or(0);
        if per_source >= self.limits.max_sessions_per_source {
            return None;
        }
        if !self.fits(cost) {
            self.make_room(now, cost, true);
            if !self.fits(cost) {
                return None;
            }
        }
        loop {
            let mut bytes = [0u8; 16];
            self.rng.fill_bytes(&mut bytes);
            let sid = SessionId(uuid::Builder::from_random_bytes(bytes).into_uuid());
            if !self.sessions.contains_key(&sid) {
                return Some(sid);
            }
        }
    }

    fn insert(&mut self, sid: SessionId, now: Instant, owner: SocketAddr, cost: u64, state: State) {
        self.reserved += cost;
        self.unclaimed_reserved += cost;
        *self.per_source.entry(owner).or_insert(0) += 1;
        self.sessions.insert(
            sid,
            Session {
                owner,
                last_seen: now,
                reserved: cost,
                claimed: false,
                state,
            },
        );
        self.unclaimed.push_back((now, sid));
        // Claimed and closed sessions leave stale entries; drop them before they pile up.
        if self.unclaimed.len() > 2 * self.sessions.len() + 1024 {
            let sessions = &self.sessions;
            self.unclaimed
                .retain(|(_, sid)| sessions.get(sid).is_some_and(|s| !s.claimed));
        }
        self.expiry
            .push(Reverse((now + self.limits.session_timeout, sid)));
        // Closed sessions leave stale heap entries; rebuild before they outnumber live ones.
        if self.expiry.len() > 2 * self.sessions.len() + 1024 {
            let timeout = self.limits.session_timeout;
            self.expiry = self
                .sessions
                .iter()
                .map(|(sid, s)| Reverse((s.last_seen + timeout, *sid)))
                .collect();
        }
    }

    fn remove(&mut self, sid: SessionId) {
        if let Some(session) = self.sessions.remove(&sid) {
            self.reserved -= session.reserved;
            if !session.claimed {
                self.unclaimed_reserved -= session.reserved;
            }
            if let Some(n) = self.per_source.get_mut(&session.owner) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&session.owner);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mboard_protocol::{Expect, Request};

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A session manager on a manual clock, speaking wire bytes like a client would.
    struct Sim {
        mgr: SessionManager,
        t0: Instant,
        now: Instant,
    }

    impl Sim {
        fn new(limits: Limits) -> Self {
            let t0 = Instant::now();
            Sim {
                mgr: SessionManager::new(limits, 7),
                t0,
                now: t0,
            }
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
        }

        fn at(&mut self, ms: u64) {
            self.now = self.t0 + Duration::from_millis(ms);
        }

        fn send(&mut self, from: SocketAddr, pdu: impl AsRef<[u8]>) -> Outcome {
            let Ok(Request::Session(req)) = Request::parse(Bytes::copy_from_slice(pdu.as_ref()))
            else {
                panic!(
                    "not a session request: {:?}",
                    String::from_utf8_lossy(pdu.as_ref())
                )
            };
            self.mgr.handle(self.now, from, req)
        }

        /// Sends and expects a reply; returns it as text.
        fn reply(&mut self, from: SocketAddr, pdu: impl AsRef<[u8]>) -> String {
            match self.send(from, pdu) {
                Outcome::Reply(b) => String::from_utf8_lossy(&b).into_owned(),
                other => panic!("expected a reply, got {other:?}"),
            }
        }

        fn open(&mut self, from: SocketAddr, size: u64, block_size: u64) -> SessionId {
            let r = self.reply(from, format!("a:{size}:{block_size}"));
            match Response::parse(Bytes::from(r.clone()), Expect::Opened) {
                Ok(Response::Opened { sid, .. }) => sid,
                _ => panic!("open refused: {r}"),
            }
        }

        /// Commits, executes by answering `reply`, and returns what was executed.
        fn commit_and_run(
            &mut self,
            from: SocketAddr,
            sid: SessionId,
            reply: &'static [u8],
        ) -> Bytes {
            match self.send(from, format!("c:{sid}")) {
                Outcome::Execute { sid: s, request } => {
                    assert_eq!(s, sid);
                    self.mgr.finish(sid, Bytes::from_static(reply));
                    request
                }
                other => panic!("expected execute, got {other:?}"),
            }
        }
    }

    fn block(sid: SessionId, index: u64, data: &[u8]) -> Vec<u8> {
        let mut pdu = format!("b:{sid}:{index}:").into_bytes();
        pdu.extend_from_slice(data);
        pdu
    }

    #[test]
    fn contract_example_session() {
        let mut sim = Sim::new(Limits::default());
        let c = addr(1000);
        let sid = sim.open(c, 7, 2);
        assert_eq!(sim.reply(c, block(sid, 0, b"1:")), format!("0:{sid}:0:1"));
        assert_eq!(sim.reply(c, block(sid, 2, b"ll")), format!("0:{sid}:2:2"));
        assert_eq!(
            sim.reply(c, format!("c:{sid}")),
            "4:incomplete: 2 of 4 blocks missing"
        );
        assert_eq!(sim.reply(c, block(sid, 1, b"he")), format!("0:{sid}:1:3"));
        assert_eq!(sim.reply(c, block(sid, 3, b"o")), format!("0:{sid}:3:4"));
        assert_eq!(
            sim.commit_and_run(c, sid, b"0:42"),
            Bytes::from_static(b"1:hello")
        );
        assert_eq!(sim.reply(c, format!("c:{sid}")), "0:42");
        assert_eq!(sim.reply(c, format!("c:{sid}")), "0:42");
        assert_eq!(sim.reply(c, format!("x:{sid}")), "0:");
        assert_eq!(sim.reply(c, format!("c:{sid}")), "4:unknown session");
        // Nothing held; the client's address stays validated (it echoed our session id).
        let validated = Stats {
            validated: 1,
            ..Stats::default()
        };
        assert_eq!(sim.mgr.stats(), validated);
    }

    #[test]
    fn blocks_in_any_order_with_duplicates_assemble_once() {
        let mut sim = Sim::new(Limits::default());
        let c = addr(1000);
        let text: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut pdu = b"1:".to_vec();
        pdu.extend_from_slice(&text);
        let sid = sim.open(c, pdu.len() as u64, 100);
        let blocks: Vec<&[u8]> = pdu.chunks(100).collect();
        let order = [10usize, 3, 3, 0, 9, 1, 2, 10, 8, 7, 6, 5, 4, 0];
        let mut received = 0;
        let mut seen = std::collections::HashSet::new();
        for &i in &order {
            if seen.insert(i) {
                received += 1;
            }
            assert_eq!(
                sim.reply(c, block(sid, i as u64, blocks[i])),
                format!("0:{sid}:{i}:{received}")
            );
        }
        assert_eq!(received, 11);
        assert_eq!(sim.commit_and_run(c, sid, b"0:1"), Bytes::from(pdu));
    }

    #[test]
    fn wrong_blocks_are_refused_and_change_nothing() {
        let mut sim = Sim::new(Limits::default());
        let c = addr(1000);
        let sid = sim.open(c, 7, 2);
        assert_eq!(
            sim.reply(c, block(sid, 0, b"1")),
            "1:block 0 must be 2 bytes"
        );
        assert_eq!(
            sim.reply(c, block(sid, 3, b"o:")),
            "1:block 3 must be 1 bytes"
        );
        assert_eq!(
            sim.reply(c, block(sid, 4, b"x")),
            "1:block index past the end"
        );
        assert_eq!(
            sim.reply(c, block(sid, u64::MAX, b"x")),
            "1:block index past the end"
        );
        assert_eq!(
            sim.reply(c, format!("c:{sid}")),
            "4:incomplete: 4 of 4 blocks missing"
        );
        assert_eq!(sim.reply(c, block(sid, 0, b"1:")), format!("0:{sid}:0:1"));
    }

    #[test]
    fn a_commit_executes_once_even_while_running() {
        let mut sim = Sim::new(Limits::default());
        let c = addr(1000);
        let sid = sim.open(c, 3, 10);
        sim.reply(c, block(sid, 0, b"1:x"));
        let Outcome::Execute { .. } = sim.send(c, format!("c:{sid}")) else {
            panic!("execute")
        };
        // Resent before the first finished: nothing runs twice, nothing is answered yet.
        assert_eq!(sim.send(c, format!("c:{sid}")), Outcome::Nothing);
        // A late duplicate block is acknowledged as complete.
        assert_eq!(sim.reply(c, block(sid, 0, b"1:x")), format!("0:{sid}:0:1"));
        sim.mgr.finish(sid, Bytes::from_static(b"0:9"));
        for _ in 0..3 {
            assert_eq!(sim.reply(c, format!("c:{sid}")), "0:9");
        }
        assert_eq!(
            sim.mgr.stats().reserved,
            3,
            "only the cached reply stays reserved"
        );
    }

    #[test]
    fn foreign_addresses_change_nothing() {
        let mut sim = Sim::new(Limits::default());
        let (owner, other) = (addr(1000), addr(1001));
        let sid = sim.open(owner, 4, 2);
        let foreign = "4:session belongs to another address";
        sim.at(20_000);
        assert_eq!(sim.reply(other, block(sid, 0, b"1:")), foreign);
        assert_eq!(sim.reply(other, format!("c:{sid}")), foreign);
        assert_eq!(sim.reply(other, format!("g:{sid}:0")), foreign);
        assert_eq!(sim.reply(other, format!("x:{sid}")), foreign);
        // The other address's datagrams neither stored a block nor kept the session alive.
        sim.at(29_999);
        assert_eq!(
            sim.reply(owner, format!("c:{sid}")),
            "4:incomplete: 2 of 2 blocks missing"
        );
        sim.at(59_999);
        sim.reply(other, format!("c:{sid}"));
        sim.at(59_999 + 1);
        assert_eq!(sim.mgr.expire(sim.now), 1);
        // A different port on the same IP is a different address too.
        let sid = sim.open(owner, 4, 2);
        let same_ip_other_port = SocketAddr::new(owner.ip(), 1002);
        assert_eq!(sim.reply(same_ip_other_port, format!("x:{sid}")), foreign);
    }

    #[test]
    fn idle_sessions_expire_and_free_memory() {
        let mut sim = Sim::new(Limits {
            session_timeout: Duration::from_secs(1),
            ..Limits::default()
        });
        let c = addr(1000);
        let idle = sim.open(c, 100, 10);
        let busy = sim.open(c, 100, 10);
        assert_eq!(sim.mgr.next_expiry(), Some(sim.t0 + Duration::from_secs(1)));
        sim.at(900);
        sim.reply(c, block(busy, 0, &[b'x'; 10]));
        sim.at(999);
        assert_eq!(sim.mgr.expire(sim.now), 0);
        sim.at(1000);
        assert_eq!(sim.mgr.expire(sim.now), 1);
        assert_eq!(sim.reply(c, format!("c:{idle}")), "4:unknown session");
        assert_eq!(sim.reply(c, format!("x:{idle}")), "0:");
        assert_eq!(sim.mgr.stats().sessions, 1);
        sim.at(1899);
        assert_eq!(sim.mgr.expire(sim.now), 0);
        sim.at(1900);
        assert_eq!(sim.mgr.expire(sim.now), 1);
        let after = Stats {
            validated: 1,
            expired: 2,
            ..Stats::default()
        };
        assert_eq!(sim.mgr.stats(), after);
        assert_eq!(sim.mgr.next_expiry(), None);
    }

    #[test]
    fn request_size_limit() {
        let mut sim = Sim::new(Limits {
            max_request_size: 1000,
            ..Limits::default()
        });
        let c = addr(1000);
        assert_eq!(sim.reply(c, "a:1001:100"), "4:too large: max 1000 bytes");
        sim.open(c, 1000, 100);
    }

    #[test]
    fn block_sizes_are_lowered_never_raised() {
        let mut sim = Sim::new(Limits::default());
        let c = addr(1000);
        let r = sim.reply(c, "a:100000:65001");
        assert!(r.ends_with(":65000"), "{r}");
        let r = sim.reply(c, "a:100000:3");
        assert!(r.ends_with(":3"), "{r}");
    }

    #[test]
    fn sessions_per_source_limit() {
        let mut sim = Sim::new(Limits {
            max_sessions_per_source: 3,
            ..Limits::default()
        });
        let (a, b) = (addr(1000), addr(1001));
        let first = sim.open(a, 10, 10);
        sim.open(a, 10, 10);
        sim.open(a, 10, 10);
        assert_eq!(sim.reply(a, "a:10:10"), "4:busy");
        sim.open(b, 10, 10);
        // Downloads count too.
        assert_eq!(
            sim.mgr.offer(sim.now, a, Bytes::from_static(b"0:big")),
            Bytes::from_static(b"4:busy")
        );
        sim.reply(a, format!("x:{first}"));
        sim.open(a, 10, 10);
    }

    #[test]
    fn total_sessions_limit() {
        let mut sim = Sim::new(Limits {
            max_sessions: 2,
            ..Limits::default()
        });
        sim.open(addr(1), 10, 10);
        sim.open(addr(2), 10, 10);
        assert_eq!(sim.reply(addr(3), "a:10:10"), "4:busy");
        // Once the others have expired, there is room again without a separate sweep.
        sim.advance(Duration::from_secs(30));
        sim.open(addr(3), 10, 10);
    }

    #[test]
    fn opens_reserve_nothing_until_their_first_block() {
        let mut sim = Sim::new(Limits {
            max_session_memory: 10_000,
            ..Limits::default()
        });
        // Spoofed opens: their owners never send a block, and they hold no budget.
        for port in 1..=5 {
            sim.open(addr(port), 8_000, 1_000);
        }
        assert_eq!(sim.mgr.stats().reserved, 0);
        let c = addr(100);
        let sid = sim.open(c, 8_000, 1_000);
        assert!(
            sim.reply(c, block(sid, 0, &[b'x'; 1_000]))
                .starts_with("0:")
        );
        assert_eq!(sim.mgr.stats().reserved, 8_008);
        // Another open is refused while its reservation could not fit ...
        assert_eq!(sim.reply(addr(101), "a:5000:1000"), "4:busy");
        // ... and one that fitted at its open but not at its first block is refused there,
        // unchanged, so that its block can be sent again once there is room.
        let late = sim.open(addr(102), 1_000, 1_000);
        let other = sim.open(addr(103), 1_500, 1_500);
        assert!(
            sim.reply(addr(103), block(other, 0, &[b'o'; 1_500]))
                .starts_with("0:")
        );
        assert_eq!(
            sim.reply(addr(102), block(late, 0, &[b'l'; 1_000])),
            "4:busy"
        );
        sim.reply(addr(103), format!("x:{other}"));
        assert_eq!(
            sim.reply(addr(102), block(late, 0, &[b'l'; 1_000])),
            format!("0:{late}:0:1")
        );
    }

    #[test]
    fn a_first_block_makes_room_among_unfetched_offers() {
        let mut sim = Sim::new(Limits {
            max_session_memory: 10_000,
            ..Limits::default()
        });
        let c = addr(2);
        let sid = sim.open(c, 5_000, 1_000);
        // A spoofed request for a large reply: an offer nobody fetches.
        let _ = sim
            .mgr
            .offer(sim.now, addr(1), Bytes::from(vec![b'a'; 8_000]));
        assert_eq!(sim.reply(c, block(sid, 0, &[b'x'; 1_000])), "4:busy");
        sim.at(499);
        assert_eq!(
            sim.reply(c, block(sid, 0, &[b'x'; 1_000])),
            "4:busy",
            "still within the grace"
        );
        sim.at(500);
        assert_eq!(
            sim.reply(c, block(sid, 0, &[b'x'; 1_000])),
            format!("0:{sid}:0:1")
        );
        assert_eq!(sim.mgr.stats().evicted, 1);
        assert_eq!(sim.mgr.stats().sessions, 1);
        // A claimed session is never dropped to make room, however old.
        sim.at(5_000);
        assert!(sim.mgr.reserve(sim.now, addr(3), 6_000).is_err());
        assert_eq!(sim.mgr.stats().evicted, 1);
    }

    #[test]
    fn unfetched_offers_make_room_but_fetched_ones_stay() {
        let mut sim = Sim::new(Limits {
            max_session_memory: 10_000,
            ..Limits::default()
        });
        let (spoofed, real) = (addr(1), addr(2));
        let offer = |r: Bytes| match Response::parse(r, Expect::Published) {
            Ok(Response::Offer(o)) => o,
            other => panic!("not an offer: {other:?}"),
        };
        offer(
            sim.mgr
                .offer(sim.now, spoofed, Bytes::from(vec![b'a'; 6_000])),
        );
        let fetched = offer(sim.mgr.offer(sim.now, real, Bytes::from(vec![b'b'; 3_000])));
        sim.reply(real, format!("g:{}:0", fetched.sid));
        assert!(sim.mgr.reserve(sim.now, addr(3), 5_000).is_err());
        sim.at(600);
        let r = sim
            .mgr
            .reserve(sim.now, addr(3), 5_000)
            .expect("the unfetched offer makes room");
        sim.mgr.cancel(r);
        assert_eq!(sim.mgr.stats().evicted, 1);
        assert!(
            sim.reply(real, format!("g:{}:1", fetched.sid))
                .starts_with(&format!("0:{}:1:", fetched.sid))
        );
    }

    #[test]
    fn the_session_table_makes_room_the_same_way() {
        let mut sim = Sim::new(Limits {
            max_sessions: 2,
            ..Limits::default()
        });
        sim.open(addr(1), 10, 10);
        let kept = sim.open(addr(2), 10, 10);
        sim.reply(addr(2), block(kept, 0, &[b'k'; 10]));
        assert_eq!(sim.reply(addr(3), "a:10:10"), "4:busy");
        sim.at(500);
        sim.open(addr(3), 10, 10);
        assert_eq!(sim.mgr.stats().evicted, 1);
        assert_eq!(
            sim.reply(addr(4), "a:10:10"),
            "4:busy",
            "the new one is in its grace"
        );
    }

    #[test]
    fn nothing_is_dropped_when_dropping_could_not_make_room() {
        let mut sim = Sim::new(Limits {
            max_session_memory: 10_000,
            ..Limits::default()
        });
        let claimed = sim.open(addr(1), 7_000, 1_000);
        sim.reply(addr(1), block(claimed, 0, &[b'c'; 1_000]));
        let unclaimed = sim.open(addr(2), 1_500, 1_500);
        sim.at(1_000);
        // 7,007 claimed + 3,000 > 10,000 even without the unclaimed session: keep it.
        assert_eq!(sim.reply(addr(3), "a:3000:1000"), "4:busy");
        assert_eq!(sim.mgr.stats().evicted, 0);
        assert!(
            sim.reply(addr(2), block(unclaimed, 0, &[b'u'; 1_500]))
                .starts_with("0:")
        );
    }

    #[test]
    fn memory_limit_counts_reservations_and_allocates_at_the_first_block() {
        let mut sim = Sim::new(Limits {
            max_session_memory: 10_000,
            ..Limits::default()
        });
        let c = addr(1000);
        // 8,000 bytes in blocks of 1,000: 8 bitmap bytes on top.
        let sid = sim.open(c, 8_000, 1_000);
        assert_eq!(sim.mgr.stats().reserved, 0, "an open reserves nothing yet");
        assert_eq!(sim.mgr.stats().buffered, 0, "and allocates nothing");
        // The first block reserves, and allocates the declared size once.
        sim.reply(c, block(sid, 7, &[b'7'; 1_000]));
        assert_eq!(sim.mgr.stats().reserved, 8_008);
        assert_eq!(sim.mgr.stats().buffered, 8_000, "{:?}", sim.mgr.stats());
        assert_eq!(sim.reply(c, "a:1993:1000"), "4:busy");
        let second = sim.open(c, 1_900, 1_000);
        sim.reply(c, block(second, 0, &[b's'; 1_000]));
        assert_eq!(sim.mgr.stats().reserved, 9_916);
        sim.reply(c, block(sid, 0, &[b'0'; 1_000]));
        assert_eq!(sim.mgr.stats().buffered, 9_900, "{:?}", sim.mgr.stats());
        // A download that would not fit is refused before anything is built.
        assert!(sim.mgr.reserve(sim.now, c, 1_000).is_err());
        sim.reply(c, format!("x:{sid}"));
        let r = sim
            .mgr
            .reserve(sim.now, c, 1_000)
            .expect("room after close");
        sim.mgr.cancel(r);
        assert_eq!(sim.mgr.stats().sessions, 1);
    }

    #[test]
    fn an_upload_reserves_room_for_its_reply() {
        // A 3-byte upload whose reply may be a whole datagram: the reservation covers the
        // reply, so committing never takes the budget past its limit.
        let mut sim = Sim::new(Limits {
            max_session_memory: 2_000,
            ..Limits::default()
        });
        let c = addr(1000);
        let sid = sim.open(c, 3, 3);
        sim.reply(c, block(sid, 0, b"4:0"));
        assert_eq!(sim.mgr.stats().reserved, 1_472);
        assert_eq!(
            sim.reply(c, "a:3:3"),
            "4:busy",
            "a second one would not fit"
        );
        sim.commit_and_run(c, sid, b"0:big reply");
        assert_eq!(sim.mgr.stats().reserved, 11);
    }

    #[test]
    fn downloads_serve_blocks_in_any_order() {
        let limits = Limits {
            max_datagram: 160,
            ..Limits::default()
        };
        let mut sim = Sim::new(limits.clone());
        let c = addr(1000);
        let data: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        let offer = sim.mgr.offer(sim.now, c, Bytes::from(data.clone()));
        let Ok(Response::Offer(offer)) = Response::parse(offer, Expect::Published) else {
            panic!("offer")
        };
        assert_eq!((offer.size, offer.block_size), (250, 100));
        let fetch = |sim: &mut Sim, i: u64| match sim.send(c, format!("g:{}:{i}", offer.sid)) {
            Outcome::Reply(b) => match Response::parse(b, Expect::Data) {
                Ok(Response::Data { index, data, .. }) if index == i => data,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let b2 = fetch(&mut sim, 2);
        let b0 = fetch(&mut sim, 0);
        let b1 = fetch(&mut sim, 1);
        assert_eq!(fetch(&mut sim, 1), b1);
        assert_eq!([b0, b1, b2].concat(), data);
        assert_eq!(
            sim.reply(c, format!("g:{}:3", offer.sid)),
            "1:block index past the end"
        );
        assert_eq!(
            sim.reply(c, format!("c:{}", offer.sid)),
            "4:not an upload session"
        );
        assert_eq!(
            sim.reply(c, block(offer.sid, 0, b"x")),
            "4:not an upload session"
        );
        let up = sim.open(c, 10, 10);
        assert_eq!(
            sim.reply(c, format!("g:{up}:0")),
            "4:not a download session"
        );
    }

    #[test]
    fn session_ids_are_v4_and_follow_the_seed() {
        let mut a = Sim::new(Limits::default());
        let mut b = Sim::new(Limits::default());
        let (x, y) = (a.open(addr(1), 5, 5), b.open(addr(1), 5, 5));
        assert_eq!(x, y);
        assert_eq!(x.0.get_version_num(), 4);
        assert_ne!(a.open(addr(1), 5, 5), x);
    }

    #[test]
    fn echoing_a_session_id_validates_the_address_for_a_while() {
        let limits = Limits {
            validation_ttl: Duration::from_secs(10),
            max_validated: 2,
            ..Limits::default()
        };
        let mut sim = Sim::new(limits);
        let (owner, other) = (addr(1000), addr(1001));
        let sid = sim.open(owner, 10, 10);
        assert!(
            !sim.mgr.is_validated(owner, sim.now),
            "an open alone proves nothing"
        );
        sim.reply(other, format!("c:{sid}"));
        assert!(
            !sim.mgr.is_validated(other, sim.now),
            "a foreign echo proves nothing"
        );
        sim.reply(owner, format!("c:{sid}"));
        assert!(sim.mgr.is_validated(owner, sim.now));
        sim.advance(Duration::from_millis(9_999));
        assert!(sim.mgr.is_validated(owner, sim.now));
        sim.advance(Duration::from_millis(1));
        assert!(!sim.mgr.is_validated(owner, sim.now), "validation lapses");
        // The table is bounded: a third live address is not remembered.
        for (i, port) in [2000u16, 2001, 2002].into_iter().enumerate() {
            let a = addr(port);
            let sid = sim.open(a, 10, 10);
            sim.reply(a, format!("x:{sid}"));
            assert_eq!(sim.mgr.is_validated(a, sim.now), i < 2, "address {i}");
        }
        assert!(sim.mgr.validated.len() <= 2);
        // Once entries lapse, there is room again.
        sim.advance(Duration::from_secs(10));
        let a = addr(2003);
        let sid = sim.open(a, 10, 10);
        sim.reply(a, format!("x:{sid}"));
        assert!(sim.mgr.is_validated(a, sim.now));
    }

    #[test]
    fn stale_expiry_entries_do_not_pile_up() {
        let mut sim = Sim::new(Limits::default());
        let c = addr(1);
        for _ in 0..10_000 {
            let sid = sim.open(c, 5, 5);
            sim.reply(c, format!("x:{sid}"));
        }
        assert!(sim.mgr.expiry.len() <= 1024 + 2, "{}", sim.mgr.expiry.len());
    }
}

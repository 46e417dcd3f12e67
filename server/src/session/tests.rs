//! The manual-clock harness, and tests of requests as a client sends them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mboard_protocol::{Expect, Request, Response, SessionId};

use super::{Fairness, Outcome, SessionManager, Stats};
use crate::config::Limits;
use crate::reply::Reply;

pub(super) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The default limits with per-host shares and the progress floor off: every address of
/// [`addr`] is on one host, so these are the limits for tests of the per-source and total
/// limits alone.
pub(super) fn unshared() -> Limits {
    Limits {
        fairness: Fairness {
            host_memory_share: 100,
            host_session_share: 100,
            progress_floor: 0,
            ..Fairness::default()
        },
        ..Limits::default()
    }
}

/// A session manager on a manual clock, speaking wire bytes like a client would.
pub(super) struct Sim {
    pub(super) mgr: SessionManager,
    pub(super) t0: Instant,
    pub(super) now: Instant,
}

impl Sim {
    pub(super) fn new(limits: Limits) -> Self {
        let t0 = Instant::now();
        Sim {
            mgr: SessionManager::new(limits, 7),
            t0,
            now: t0,
        }
    }

    pub(super) fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    pub(super) fn at(&mut self, ms: u64) {
        self.now = self.t0 + Duration::from_millis(ms);
    }

    pub(super) fn send(&mut self, from: SocketAddr, pdu: impl AsRef<[u8]>) -> Outcome {
        let Ok(Request::Session(req)) = Request::parse(Bytes::copy_from_slice(pdu.as_ref())) else {
            panic!(
                "not a session request: {:?}",
                String::from_utf8_lossy(pdu.as_ref())
            )
        };
        self.mgr.handle(self.now, from, req)
    }

    /// Sends and expects a reply; returns it as the text the server would send.
    pub(super) fn reply(&mut self, from: SocketAddr, pdu: impl AsRef<[u8]>) -> String {
        let reply = match self.send(from, pdu) {
            Outcome::Respond(r) => Reply::new(&r),
            Outcome::Refuse(e) => Reply::from(e),
            Outcome::Replay(reply) => reply,
            other => panic!("expected a reply, got {other:?}"),
        };
        String::from_utf8_lossy(reply.bytes()).into_owned()
    }

    pub(super) fn open(&mut self, from: SocketAddr, size: u64, block_size: u64) -> SessionId {
        let r = self.reply(from, format!("a:{size}:{block_size}"));
        match Response::parse(Bytes::from(r.clone()), Expect::Opened) {
            Ok(Response::Opened { sid, .. }) => sid,
            _ => panic!("open refused: {r}"),
        }
    }

    /// Commits, executes by answering `reply`, and returns what was executed.
    pub(super) fn commit_and_run(
        &mut self,
        from: SocketAddr,
        sid: SessionId,
        reply: &'static [u8],
    ) -> Bytes {
        match self.send(from, format!("c:{sid}")) {
            Outcome::Execute { sid: s, request } => {
                assert_eq!(s, sid);
                self.mgr.finish(sid, Reply::ok(Bytes::from_static(reply)));
                request
            }
            other => panic!("expected execute, got {other:?}"),
        }
    }
}

pub(super) fn block(sid: SessionId, index: u64, data: &[u8]) -> Vec<u8> {
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
    sim.mgr.finish(sid, Reply::ok(Bytes::from_static(b"0:9")));
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
fn downloads_serve_blocks_in_any_order() {
    let limits = Limits {
        max_datagram: 160,
        ..Limits::default()
    };
    let mut sim = Sim::new(limits.clone());
    let c = addr(1000);
    let data: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
    let offer = sim
        .mgr
        .offer(sim.now, c, Bytes::from(data.clone()))
        .expect("offer");
    assert_eq!((offer.size, offer.block_size), (250, 100));
    let fetch = |sim: &mut Sim, i: u64| match sim.send(c, format!("g:{}:{i}", offer.sid)) {
        Outcome::Respond(Response::Data { index, data, .. }) if index == i => data,
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

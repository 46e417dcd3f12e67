//! The session manager driven by arbitrary sequences of (time step, source, request).
//!
//! Invariants: no panic; bytes reserved never exceed the memory limit, and bytes actually
//! buffered never exceed what is reserved; a committed session replays the same reply.
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mboard_protocol::{Response, SessionId, SessionRequest};
use mboard_server::Limits;
use mboard_server::fuzzing::{Outcome, Reply, SessionManager};

#[derive(Arbitrary, Debug)]
enum Op {
    Open { size: u16, block_size: u16 },
    Block { sid: u8, index: u16, len: u16 },
    Commit { sid: u8 },
    Fetch { sid: u8, index: u16 },
    Close { sid: u8 },
    Offer { len: u16 },
}

#[derive(Arbitrary, Debug)]
struct Step {
    advance_ms: u16,
    source: u8,
    op: Op,
}

fuzz_target!(|steps: Vec<Step>| {
    let limits = Limits {
        max_request_size: 20_000,
        max_session_memory: 64 * 1024,
        max_sessions_per_source: 4,
        max_sessions: 16,
        session_timeout: Duration::from_secs(2),
        max_datagram: 200,
        ..Limits::default()
    };
    let max_memory = limits.max_session_memory;
    let mut mgr = SessionManager::new(limits, 0);
    let mut now = Instant::now();
    // Session ids as the server handed them out, so the fuzzer can name real sessions.
    let mut sids: Vec<SessionId> = Vec::new();
    let mut replies: HashMap<SessionId, Reply> = HashMap::new();
    for step in steps {
        now += Duration::from_millis(u64::from(step.advance_ms));
        mgr.expire(now);
        let from = SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(step.source % 6)));
        let pick = |i: u8| sids.get(usize::from(i) % sids.len().max(1)).copied();
        let request = match step.op {
            Op::Open { size, block_size } => SessionRequest::Open {
                size: u64::from(size).max(1),
                block_size: u64::from(block_size).max(1),
            },
            Op::Block { sid, index, len } => {
                let Some(sid) = pick(sid) else { continue };
                let data = Bytes::from(vec![b'1'; usize::from(len % 2048)]);
                SessionRequest::Block {
                    sid,
                    index: u64::from(index),
                    data,
                }
            }
            Op::Commit { sid } => match pick(sid) {
                Some(sid) => SessionRequest::Commit(sid),
                None => continue,
            },
            Op::Fetch { sid, index } => match pick(sid) {
                Some(sid) => SessionRequest::Fetch {
                    sid,
                    index: u64::from(index),
                },
                None => continue,
            },
            Op::Close { sid } => match pick(sid) {
                Some(sid) => SessionRequest::Close(sid),
                None => continue,
            },
            Op::Offer { len } => {
                let data = Bytes::from(vec![b'0'; usize::from(len).max(1)]);
                if let Ok(offer) = mgr.offer(now, from, data) {
                    sids.push(offer.sid);
                }
                continue;
            }
        };
        let commit = match &request {
            SessionRequest::Commit(sid) => Some(*sid),
            _ => None,
        };
        match mgr.handle(now, from, request) {
            Outcome::Respond(Response::Opened { sid, .. }) => sids.push(sid),
            Outcome::Respond(_) | Outcome::Refuse(_) | Outcome::Nothing => {}
            // A committed session answers every later commit with the same reply.
            Outcome::Replay(reply) => {
                let sid = commit.expect("only a commit replays");
                assert_eq!(replies.get(&sid), Some(&reply), "a replayed commit changed");
            }
            Outcome::Execute { sid, request } => {
                assert!(!replies.contains_key(&sid), "a session executed twice");
                // A reply that depends on the request, at most one datagram long.
                let reply = Reply::ok(Bytes::from(format!("0:{}", request.len())));
                mgr.finish(sid, reply.clone());
                replies.insert(sid, reply);
            }
        }
        let stats = mgr.stats();
        assert!(
            stats.reserved <= max_memory,
            "reserved {} > {max_memory}",
            stats.reserved
        );
        assert!(
            stats.buffered <= stats.reserved,
            "buffered {} > reserved {}",
            stats.buffered,
            stats.reserved
        );
    }
});

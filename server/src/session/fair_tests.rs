//! Per-host shares and reclaiming, on the manual clock: the lockouts of one host with many
//! ports, a slow honest upload kept, idle hogs reclaimed.

use std::net::SocketAddr;

use bytes::Bytes;
use mboard_protocol::{Expect, Offer, Response, SessionId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::manager::HostRefusals;
use super::tests::{Sim, block};
use super::{Fairness, Outcome, SessionError};
use crate::config::Limits;
use crate::reply::Reply;

const MIB16: u64 = 16 * 1024 * 1024;
pub(super) const EXPIRED: &str = "4:expired: too slow while the server was full";

/// Port `port` of host 127.0.0.`n`.
pub(super) fn host(n: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n], port))
}

/// The default limits with per-host shares off: one host may hold everything, so only
/// reclaiming can make room.
pub(super) fn shares_off() -> Limits {
    Limits {
        fairness: Fairness {
            host_memory_share: 100,
            host_session_share: 100,
            ..Fairness::default()
        },
        ..Limits::default()
    }
}

/// Opens an upload and sends its first block of `first` bytes; returns the session.
pub(super) fn hold(sim: &mut Sim, from: SocketAddr, size: u64, block_size: u64) -> SessionId {
    let sid = sim.open(from, size, block_size);
    let first = block_size.min(size) as usize;
    let ack = sim.reply(from, block(sid, 0, &vec![b'h'; first]));
    assert_eq!(ack, format!("0:{sid}:0:1"), "first block of {size}");
    sid
}

/// Publishes `size` bytes from `from` in one go: open, every block, commit, close.
fn publish(sim: &mut Sim, from: SocketAddr, size: u64) -> Result<(), String> {
    let r = sim.reply(from, format!("a:{size}:65000"));
    let Ok(Response::Opened { sid, block_size }) =
        Response::parse(Bytes::from(r.clone()), Expect::Opened)
    else {
        return Err(r);
    };
    let mut pdu = b"1:".to_vec();
    pdu.resize(size as usize, b'w');
    for (i, chunk) in pdu.chunks(block_size as usize).enumerate() {
        let r = sim.reply(from, block(sid, i as u64, chunk));
        if !r.starts_with("0:") {
            return Err(r);
        }
    }
    match sim.send(from, format!("c:{sid}")) {
        Outcome::Execute { .. } => sim.mgr.finish(sid, Reply::ok(Bytes::from_static(b"0:1"))),
        other => return Err(format!("{other:?}")),
    }
    sim.reply(from, format!("x:{sid}"));
    Ok(())
}

pub(super) fn offer(r: Result<Offer, SessionError>) -> Offer {
    match r {
        Ok(o) => o,
        Err(e) => panic!("not an offer: {e}"),
    }
}

#[test]
fn an_idle_hog_gives_way_and_a_slow_honest_upload_is_kept() {
    let mut sim = Sim::new(shares_off());
    let honest = host(1, 1000);
    // A 16 MiB upload over a 128 kbit/s link that loses 10% of its blocks.
    let up = hold(&mut sim, honest, MIB16, 1400);
    let blocks = MIB16.div_ceil(1400);
    // The memory lockout, from one port: 16 MiB uploads, each with its first block, and
    // one sized to fill the rest; then a duplicate block per session every 20 s.
    let hog = host(2, 2000);
    let mut hogs: Vec<SessionId> = (0..14)
        .map(|_| hold(&mut sim, hog, MIB16, 65_000))
        .collect();
    let rest = sim.mgr.limits.max_session_memory - sim.mgr.stats().reserved;
    hogs.push(hold(&mut sim, hog, rest - 40, 65_000));
    assert_eq!(sim.mgr.stats().reserved, sim.mgr.limits.max_session_memory);
    assert_eq!(sim.reply(host(3, 1), "a:1000:1000"), "4:busy", "full");

    let mut rng = StdRng::seed_from_u64(1);
    let (mut next_keepalive, mut next_newcomer) = (20_000u64, 30_000u64);
    let (mut published, mut restarted, mut port) = (0, 0, 1u16);
    let mut ms = 0u64;
    let mut index = 1;
    while index < blocks {
        if rng.random_bool(0.1) {
            // Lost on the way: the client's timer runs out and it sends the block again.
            ms += 200;
        } else {
            sim.at(ms);
            let len = (MIB16 - index * 1400).min(1400) as usize;
            let ack = sim.reply(honest, block(up, index, &vec![b'u'; len]));
            assert_eq!(ack, format!("0:{up}:{index}:{}", index + 1), "at {ms} ms");
            index += 1;
            ms += 85;
        }
        if ms >= next_keepalive {
            next_keepalive += 20_000;
            sim.at(ms);
            for sid in &mut hogs {
                let r = sim.reply(hog, block(*sid, 0, &[b'h'; 65_000]));
                if r == EXPIRED {
                    // Reclaimed: its owner may start again, and does.
                    restarted += 1;
                    let r = sim.reply(hog, format!("a:{MIB16}:65000"));
                    if let Ok(Response::Opened { sid: new, .. }) =
                        Response::parse(Bytes::from(r), Expect::Opened)
                    {
                        sim.reply(hog, block(new, 0, &[b'h'; 65_000]));
                        *sid = new;
                    }
                }
            }
        }
        if ms >= next_newcomer {
            next_newcomer += 60_000;
            sim.at(ms);
            port += 1;
            publish(&mut sim, host(3, port), 1 << 20).expect("a newcomer publishes 1 MiB");
            published += 1;
        }
    }
    assert!(
        ms > 1_000_000,
        "the upload took {ms} ms of the manual clock"
    );
    let Outcome::Execute { request, .. } = sim.send(honest, format!("c:{up}")) else {
        panic!("the honest upload commits")
    };
    assert_eq!(request.len() as u64, MIB16);
    let stats = sim.mgr.stats();
    assert!(published >= 20, "{published} newcomers");
    // Hogs gave way to the newcomers, and to each other: a hog starting again may take
    // the room of its own slow sessions.
    assert!(stats.reclaimed.within_share >= published, "{stats:?}");
    assert!(restarted >= published, "{restarted} hogs started again");
}

#[test]
fn an_upload_below_the_floor_is_reclaimed() {
    // The same honest shape, at 4 KiB/s: under the 8 KiB/s floor.
    let mut sim = Sim::new(Limits {
        max_session_memory: 200_000,
        ..shares_off()
    });
    let slow = host(1, 1000);
    let up = hold(&mut sim, slow, 150_000, 1400);
    let mut index = 1;
    for ms in (340..20_000).step_by(340) {
        sim.at(ms);
        let r = sim.reply(slow, block(up, index, &[b's'; 1400]));
        assert!(r.starts_with("0:"), "{r}");
        index += 1;
    }
    // 57 blocks in 19.7 s: 4 KB/s, 80 KB where the floor asks for 120 KB.
    assert_eq!(publish(&mut sim, host(2, 1), 60_000), Ok(()));
    assert_eq!(sim.reply(slow, block(up, index, &[b's'; 1400])), EXPIRED);
    assert_eq!(sim.reply(slow, format!("c:{up}")), EXPIRED);
    assert_eq!(
        sim.reply(host(2, 1), format!("c:{up}")),
        "4:unknown session",
        "only its owner is told"
    );
    assert_eq!(sim.reply(slow, format!("x:{up}")), "0:");
    assert_eq!(sim.reply(slow, format!("c:{up}")), "4:unknown session");
    // Its owner may start again at once.
    hold(&mut sim, slow, 1_000, 1_000);
    assert_eq!(sim.mgr.stats().reclaimed.within_share, 1);
}

#[test]
fn a_session_table_held_by_one_block_each_gives_way_after_the_grace() {
    let mut sim = Sim::new(Limits {
        max_sessions: 2_000,
        ..shares_off()
    });
    // The session-table lockout, scaled: 63 sessions of `a:3:2` per port, a first block each.
    let mut held = 0;
    'fill: for port in 1.. {
        for _ in 0..63 {
            if held == 2_000 {
                break 'fill;
            }
            hold(&mut sim, host(2, port), 3, 2);
            held += 1;
        }
    }
    let victim = host(1, 1000);
    assert_eq!(sim.reply(victim, "a:10:10"), "4:busy", "within the grace");
    // Two bytes buy 0.24 ms past the 5 s grace.
    sim.at(5_001);
    let r = offer(
        sim.mgr
            .offer(sim.now, victim, Bytes::from(vec![b'g'; 3_000])),
    );
    assert_eq!(r.size, 3_000);
    assert_eq!(publish(&mut sim, victim, 3_000), Ok(()));
    assert_eq!(sim.mgr.stats().reclaimed.within_share, 2);
    assert_eq!(sim.mgr.stats().sessions, 1_999);
}

#[test]
fn one_host_keeps_a_share_of_memory_free_for_the_others() {
    let mut sim = Sim::new(Limits {
        max_session_memory: 100_000,
        ..Limits::default()
    });
    let (a, b, c) = (host(2, 1), host(1, 1), host(3, 1));
    // 20,008 bytes each: a host's share is 25,000, and beyond it a host may fill the
    // budget up to 75,000.
    for _ in 0..3 {
        hold(&mut sim, a, 20_000, 1_000);
    }
    assert_eq!(
        sim.reply(a, "a:20000:1000"),
        "4:busy",
        "75,000 would be passed"
    );
    assert_eq!(
        sim.mgr.stats().host_refusals,
        HostRefusals {
            memory: 1,
            sessions: 0
        }
    );
    // Another host finds its share free at once ...
    hold(&mut sim, b, 20_000, 1_000);
    // ... and is held to the same rule beyond it.
    assert_eq!(sim.reply(b, "a:5000:1000"), "4:busy");
    assert_eq!(sim.mgr.stats().host_refusals.memory, 2);
    // A third host within its share finds the server full, and takes back what the first
    // holds beyond its share (see the test below): that is no host refusal.
    hold(&mut sim, c, 20_000, 1_000);
    assert_eq!(sim.mgr.stats().host_refusals.memory, 2);
    assert_eq!(sim.mgr.stats().reclaimed.recalled, 1);
}

const RECALLED: &str = "4:expired: its host held more than its share while the server was full";

#[test]
fn what_a_host_holds_beyond_its_share_is_taken_back_for_a_host_within_it() {
    let mut sim = Sim::new(Limits {
        max_session_memory: 100_000,
        ..Limits::default()
    });
    let (hog, b) = (host(2, 1), host(1, 1));
    // The hog: three uploads of 20,020 bytes, opened 1 ms apart, all young and moving.
    let hogs: Vec<SessionId> = (0..3)
        .map(|i| {
            sim.at(i);
            hold(&mut sim, hog, 20_000, 1_000)
        })
        .collect();
    // Another host fills the share the hog had to leave free, within its own share.
    sim.at(10);
    let b1 = hold(&mut sim, b, 20_000, 1_000);
    let b2 = hold(&mut sim, b, 4_000, 1_000);
    assert_eq!(sim.mgr.stats().reserved, 4 * 20_008 + 4_008);
    // A newcomer needs 20,020: the hog's youngest upload gives way, although it moves.
    sim.at(20);
    let c = hold(&mut sim, host(3, 1), 20_000, 1_000);
    assert_eq!(sim.reply(hog, block(hogs[2], 1, &[b'h'; 1_000])), RECALLED);
    assert_eq!(sim.mgr.stats().reclaimed.recalled, 1);
    // And again for the next one, down to what the hog may hold as of right.
    let d = hold(&mut sim, host(4, 1), 20_000, 1_000);
    assert_eq!(sim.reply(hog, block(hogs[1], 1, &[b'h'; 1_000])), RECALLED);
    // Within its share now, the hog keeps the rest; the next newcomer waits.
    assert_eq!(sim.reply(host(5, 1), "a:20000:1000"), "4:busy");
    for (owner, sid) in [
        (hog, hogs[0]),
        (b, b1),
        (b, b2),
        (host(3, 1), c),
        (host(4, 1), d),
    ] {
        let r = sim.reply(owner, format!("c:{sid}"));
        assert!(r.starts_with("4:incomplete"), "{sid}: {r}");
    }
    let reclaimed = sim.mgr.stats().reclaimed;
    assert_eq!(
        (
            reclaimed.recalled,
            reclaimed.over_share,
            reclaimed.within_share
        ),
        (2, 0, 0)
    );
}

#[test]
fn sessions_beyond_a_host_s_share_of_the_table_are_taken_back_too() {
    let mut sim = Sim::new(Limits {
        max_sessions: 8,
        ..Limits::default()
    });
    let (hog, b) = (host(2, 1), host(1, 1));
    let hogs: Vec<SessionId> = (0..6)
        .map(|i| {
            sim.at(i);
            hold(&mut sim, hog, 10, 10)
        })
        .collect();
    hold(&mut sim, b, 10, 10);
    hold(&mut sim, b, 10, 10);
    // The table is full; an open from a newcomer takes the hog's youngest slot.
    let c = sim.open(host(3, 1), 10, 10);
    assert_eq!(sim.reply(hog, format!("c:{}", hogs[5])), RECALLED);
    // The other host, at its share, may not take the hog's loans for more of its own:
    // beyond its share it takes nobody's session.
    assert_eq!(sim.reply(b, "a:10:10"), "4:busy");
    assert_eq!(sim.mgr.stats().host_refusals.sessions, 1);
    assert_eq!(
        sim.reply(host(3, 1), block(c, 0, b"c123456789")),
        format!("0:{c}:0:1")
    );
    // The hog keeps the rest (a block sent again is acknowledged again).
    for sid in &hogs[..5] {
        assert_eq!(
            sim.reply(hog, block(*sid, 0, &[b'h'; 10])),
            format!("0:{sid}:0:1")
        );
    }
    assert_eq!(sim.mgr.stats().reclaimed.recalled, 1);
}

#[test]
fn a_commit_that_is_executing_is_never_taken_back() {
    let mut sim = Sim::new(Limits {
        max_session_memory: 100_000,
        ..Limits::default()
    });
    let hog = host(2, 1);
    let oldest = hold(&mut sim, hog, 30_000, 1_000);
    sim.at(1);
    let younger = hold(&mut sim, hog, 30_000, 1_000);
    sim.at(2);
    // Its youngest: one block, complete, its commit executing.
    let running = hold(&mut sim, hog, 1_000, 1_000);
    assert!(matches!(
        sim.send(hog, format!("c:{running}")),
        Outcome::Execute { .. }
    ));
    hold(&mut sim, host(1, 1), 24_000, 1_000);
    // A newcomer's 20,008 does not fit: the hog's youngest that is not executing goes.
    sim.at(3);
    hold(&mut sim, host(3, 1), 20_000, 1_000);
    assert_eq!(sim.reply(hog, format!("c:{younger}")), RECALLED);
    assert!(
        sim.reply(hog, format!("c:{oldest}"))
            .starts_with("4:incomplete")
    );
    sim.mgr
        .finish(running, Reply::ok(Bytes::from_static(b"0:9")));
    assert_eq!(sim.reply(hog, format!("c:{running}")), "0:9");
    assert_eq!(sim.mgr.stats().reclaimed.recalled, 1);
}

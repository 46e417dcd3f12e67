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
    // A third host within its share is refused only because the server is full: that is
    // no host refusal.
    assert_eq!(sim.reply(c, "a:20000:1000"), "4:busy");
    assert_eq!(sim.mgr.stats().host_refusals.memory, 2);
    hold(&mut sim, c, 19_000, 1_000);
}

#[test]
fn one_host_keeps_a_share_of_the_table_free_for_the_others() {
    let mut sim = Sim::new(Limits {
        max_sessions: 8,
        ..Limits::default()
    });
    let (a, b, c) = (host(2, 1), host(1, 1), host(3, 1));
    // Two sessions a host, and beyond them up to six in all.
    for _ in 0..6 {
        hold(&mut sim, a, 10, 10);
    }
    assert_eq!(sim.reply(a, "a:10:10"), "4:busy");
    assert_eq!(
        sim.mgr.stats().host_refusals,
        HostRefusals {
            memory: 0,
            sessions: 1
        }
    );
    hold(&mut sim, b, 10, 10);
    hold(&mut sim, b, 10, 10);
    assert_eq!(sim.reply(c, "a:10:10"), "4:busy", "full");
    assert_eq!(sim.mgr.stats().host_refusals.sessions, 1);
    assert_eq!(sim.mgr.stats().hosts, 2);
}

#[test]
fn spoofed_sessions_count_against_no_host() {
    let mut sim = Sim::new(Limits {
        max_session_memory: 100_000,
        ..Limits::default()
    });
    let victim = host(1, 1);
    // Requests for large replies with the victim's address as their source, never fetched.
    for port in 2..5 {
        offer(
            sim.mgr
                .offer(sim.now, host(1, port), Bytes::from(vec![b's'; 20_000])),
        );
    }
    assert_eq!(sim.mgr.stats().hosts, 0);
    // Had they counted, the victim would be over its 25,000 and held to 75,000 in all.
    hold(&mut sim, victim, 20_000, 1_000);
    assert_eq!(sim.mgr.stats().hosts, 1);
    assert_eq!(sim.mgr.stats().host_refusals, HostRefusals::default());
}

#[test]
fn hosts_over_their_share_give_way_first_then_the_largest_then_the_oldest() {
    let mut sim = Sim::new(Limits {
        max_session_memory: 100_000,
        ..Limits::default()
    });
    let (hog, b, c) = (host(2, 1), host(1, 1), host(3, 1));
    let hog_old = hold(&mut sim, hog, 19_000, 1_000);
    sim.at(10);
    let hog_new = hold(&mut sim, hog, 19_000, 1_000);
    let b_large = hold(&mut sim, b, 24_000, 1_000);
    let c_old = hold(&mut sim, c, 10_000, 1_000);
    sim.at(20);
    let c_new = hold(&mut sim, c, 10_000, 1_000);
    // 82,040 of 100,000 reserved; the hog holds 38,016, over its 25,000. At 6 s all of
    // them are slow (1,000 bytes buy 0.12 s past the grace).
    sim.at(6_000);
    let order = [
        (hog, hog_old),
        (hog, hog_new),
        (b, b_large),
        (c, c_old),
        (c, c_new),
    ];
    for (i, &(owner, sid)) in order.iter().enumerate() {
        // A newcomer (a new host each time, within its share) asks one byte more than
        // is free: exactly one session has to go.
        let free = sim.mgr.limits.max_session_memory - sim.mgr.stats().reserved;
        let size = free + 1 - 8;
        hold(&mut sim, host(10 + i as u8, 1), size, size);
        assert_eq!(
            sim.reply(owner, format!("c:{sid}")),
            EXPIRED,
            "{i} goes {i}th"
        );
        for &(owner, later) in &order[i + 1..] {
            let r = sim.reply(owner, format!("c:{later}"));
            assert!(r.starts_with("4:incomplete"), "{i}: {r}");
        }
    }
    let reclaimed = sim.mgr.stats().reclaimed;
    // Only the first was of a host over its share by the time it went.
    assert_eq!((reclaimed.over_share, reclaimed.within_share), (1, 4));
}

#[test]
fn a_host_over_its_share_takes_nobody_s_session() {
    let mut sim = Sim::new(Limits {
        max_session_memory: 100_000,
        ..Limits::default()
    });
    let (hog, other) = (host(2, 1), host(1, 1));
    let slow = hold(&mut sim, other, 20_000, 1_000);
    for _ in 0..2 {
        hold(&mut sim, hog, 20_000, 1_000);
    }
    sim.at(20_000);
    // Everyone is slow now, but the hog is over its share: it may not take the other's.
    assert_eq!(sim.reply(hog, "a:40000:1000"), "4:busy");
    assert_eq!(sim.mgr.stats().reclaimed.within_share, 0);
    assert_eq!(sim.mgr.stats().host_refusals.memory, 1);
    assert!(
        sim.reply(other, format!("c:{slow}"))
            .starts_with("4:incomplete")
    );
}

#[test]
fn nothing_is_reclaimed_in_vain_and_executing_commits_are_kept() {
    let mut sim = Sim::new(Limits {
        max_session_memory: 30_000,
        ..shares_off()
    });
    let (a, b) = (host(2, 1), host(3, 1));
    let slow = hold(&mut sim, a, 10_000, 1_000);
    // A complete upload whose commit is executing: it must not vanish under its reply.
    let running = hold(&mut sim, b, 1_000, 1_000);
    assert!(matches!(
        sim.send(b, format!("c:{running}")),
        Outcome::Execute { .. }
    ));
    sim.at(19_000);
    hold(&mut sim, b, 17_000, 17_000);
    sim.at(20_000);
    // Only the 10,008 slow bytes may go (the executing commit's 1,472 stay, the
    // 17,008 are young): not enough for 20,008, so nothing goes.
    assert_eq!(sim.reply(host(1, 1), "a:20000:1000"), "4:busy");
    assert!(
        sim.reply(a, format!("c:{slow}"))
            .starts_with("4:incomplete")
    );
    // Enough for 9,008.
    hold(&mut sim, host(1, 1), 9_000, 1_000);
    assert_eq!(sim.reply(a, format!("c:{slow}")), EXPIRED);
    sim.mgr
        .finish(running, Reply::ok(Bytes::from_static(b"0:7")));
    assert_eq!(sim.reply(b, format!("c:{running}")), "0:7");
}

//! Making room: the per-source and total limits, unclaimed sessions giving way, and the
//! session memory counted in reservations.

use std::time::Duration;

use bytes::Bytes;
use mboard_protocol::Offer;

use crate::config::Limits;
use crate::session::SessionError;
use crate::session::tests::{Sim, addr, block, unshared};

#[test]
fn sessions_per_source_limit() {
    let mut sim = Sim::new(Limits {
        max_sessions_per_source: 3,
        ..unshared()
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
        Err(SessionError::Busy)
    );
    sim.reply(a, format!("x:{first}"));
    sim.open(a, 10, 10);
}

#[test]
fn total_sessions_limit() {
    let mut sim = Sim::new(Limits {
        max_sessions: 2,
        ..unshared()
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
        ..unshared()
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
        ..unshared()
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
    // A claimed session is never dropped to make room as unclaimed, however old (and
    // with the progress floor off, never at all).
    sim.at(5_000);
    assert!(sim.mgr.reserve(sim.now, addr(3), 6_000).is_err());
    assert_eq!(sim.mgr.stats().evicted, 1);
}

#[test]
fn unfetched_offers_make_room_but_fetched_ones_stay() {
    let mut sim = Sim::new(Limits {
        max_session_memory: 10_000,
        ..unshared()
    });
    let (spoofed, real) = (addr(1), addr(2));
    let offer = |r: Result<Offer, SessionError>| match r {
        Ok(o) => o,
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
        ..unshared()
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
        ..unshared()
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
        ..unshared()
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
        ..unshared()
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

//! Unclaimed sessions giving way under a flood of opens: only those that free what is
//! missing, found however many opens stand in front of them, never more of the queues
//! looked at than a bound, and a refusal at the bound remembered.

use bytes::Bytes;

use super::tests::{Sim, addr, block, unshared};
use super::unclaimed::EVICT_WALK;
use crate::config::Limits;

/// A manager with 10,000 bytes of session memory, `upload` bytes of them held by a claimed
/// upload.
fn holding(upload: u64) -> Sim {
    let mut sim = Sim::new(Limits {
        max_session_memory: 10_000,
        ..unshared()
    });
    let owner = addr(1);
    let sid = sim.open(owner, upload, 1_000);
    assert!(
        sim.reply(owner, block(sid, 0, &[b'u'; 1_000]))
            .starts_with("0:")
    );
    sim
}

/// A manager with 10,000 bytes of session memory, 8,000 of them held by a claimed upload,
/// `opens` unclaimed opens (holding no memory) and then an unfetched 1,000-byte offer,
/// all past their claim grace.
fn flooded(opens: usize) -> Sim {
    let mut sim = holding(8_000);
    for i in 0..opens {
        sim.open(addr(2_000 + i as u16), 1_000, 1_000);
    }
    sim.mgr
        .offer(sim.now, addr(2), Bytes::from(vec![b'o'; 1_000]))
        .expect("an offer");
    sim.at(1_000);
    sim
}

#[test]
fn opens_that_hold_no_memory_do_not_give_way_for_memory() {
    let mut sim = flooded(50);
    let sessions = sim.mgr.stats().sessions;
    // Short of memory only: the offer holds what is missing, the opens nothing.
    let reservation = sim
        .mgr
        .reserve(sim.now, addr(3), 1_500)
        .expect("the offer makes room");
    assert_eq!(sim.mgr.stats().evicted, 1, "only the offer");
    sim.mgr.cancel(reservation);
    assert_eq!(
        sim.mgr.stats().sessions,
        sessions - 1,
        "every open is still there"
    );
}

#[test]
fn an_offer_behind_more_opens_than_the_bound_still_gives_way() {
    // Opens cost a spoofer nothing: a crowd of them in front of the offer must not hide
    // it from a request short of memory.
    let mut sim = flooded(4 * EVICT_WALK);
    let reservation = sim
        .mgr
        .reserve(sim.now, addr(3), 1_500)
        .expect("the offer makes room");
    assert_eq!(sim.mgr.stats().evicted, 1, "only the offer");
    sim.mgr.cancel(reservation);
}

/// 10,000 bytes of session memory, 7,000 of them held by a claimed upload, and 2,000
/// unfetched 1-byte offers past their claim grace: a request short of 1,500 bytes would
/// need 1,500 of them.
fn crumbs() -> Sim {
    let mut sim = holding(7_000);
    for i in 0..2_000 {
        sim.mgr
            .offer(sim.now, addr(2_000 + i), Bytes::from_static(b"o"))
            .expect("an offer");
    }
    sim.at(1_000);
    sim
}

#[test]
fn no_request_looks_further_into_the_queue_than_the_bound() {
    let mut sim = crumbs();
    // What lies within the bound frees too little, so the request is refused, and
    // nothing was dropped for it.
    assert!(sim.mgr.reserve(sim.now, addr(3), 2_500).is_err());
    assert_eq!(sim.mgr.stats().evicted, 0);
    // One the offers within the bound make room for drops only as many as it needs.
    let size = 1_000 + EVICT_WALK as u64 / 2;
    let missing = sim.mgr.budget.reserved() + size - 10_000;
    let reservation = sim
        .mgr
        .reserve(sim.now, addr(3), size)
        .expect("room within the bound");
    assert_eq!(sim.mgr.stats().evicted, missing);
    sim.mgr.cancel(reservation);
}

#[test]
fn a_refusal_after_a_walk_to_the_bound_is_remembered() {
    let mut sim = crumbs();
    for _ in 0..3 {
        assert!(sim.mgr.reserve(sim.now, addr(3), 2_500).is_err());
    }
    // Nothing changed between the three, and the offers beyond the bound are past their
    // grace already: the first walk's answer holds.
    assert_eq!(sim.mgr.walks, 1, "walked again for the same refusal");
    assert_eq!(sim.mgr.stats().evicted, 0);
}

#[test]
fn a_missing_slot_takes_the_oldest_of_opens_and_offers() {
    let mut sim = Sim::new(Limits {
        max_sessions: 10,
        ..unshared()
    });
    let first_open = sim.open(addr(2), 1_000, 1_000);
    sim.at(10);
    let offer = sim
        .mgr
        .offer(sim.now, addr(3), Bytes::from_static(b"offered"))
        .expect("an offer")
        .sid;
    sim.at(20);
    let opens: Vec<_> = (0..8)
        .map(|i| sim.open(addr(10 + i), 1_000, 1_000))
        .collect();
    sim.at(1_000);
    let live = |sim: &Sim, sid| sim.mgr.sessions.contains_key(&sid);
    sim.open(addr(100), 1_000, 1_000);
    assert!(!live(&sim, first_open), "the oldest, an open, gave way");
    assert!(live(&sim, offer));
    sim.open(addr(101), 1_000, 1_000);
    assert!(!live(&sim, offer), "then the oldest, an offer");
    assert!(opens.iter().all(|&sid| live(&sim, sid)));
    assert_eq!(sim.mgr.stats().evicted, 2);
}

#[test]
fn stale_entries_within_the_bound_are_cleared_before_a_walk_gives_up() {
    let mut sim = Sim::new(Limits {
        max_session_memory: 100_000,
        ..unshared()
    });
    let offer = |sim: &mut Sim, from| {
        sim.mgr
            .offer(sim.now, from, Bytes::from_static(b"o"))
            .expect("an offer")
            .sid
    };
    offer(&mut sim, addr(1));
    // Fetched and closed by their owners: stale entries within the walk's bound, more
    // than a walk steps over before it prunes.
    for i in 0..300 {
        let from = addr(10_000 + i);
        let sid = offer(&mut sim, from);
        assert!(sim.reply(from, format!("g:{sid}:0")).starts_with("0:"));
        assert_eq!(sim.reply(from, format!("x:{sid}")), "0:");
    }
    for i in 0..1_000 {
        offer(&mut sim, addr(100 + i));
    }
    sim.at(1_000);
    // Short of 800 bytes: counting the stale entries, the bound would stop the walk after
    // 724 offers, and a refusal remembered would outlast the prune that follows it.
    let size = 100_000 - sim.mgr.budget.reserved() + 800;
    let reservation = sim
        .mgr
        .reserve(sim.now, addr(3), size)
        .expect("the stale entries use up none of the bound");
    assert_eq!(sim.mgr.stats().evicted, 800);
    sim.mgr.cancel(reservation);
}

#[test]
fn a_refusal_short_of_a_slot_alone_does_not_refuse_one_short_of_memory_too() {
    let mut sim = Sim::new(Limits {
        max_sessions: 8,
        max_session_memory: 40_000,
        fairness: crate::session::Fairness {
            progress_floor: 0,
            ..crate::session::Fairness::default()
        },
        ..Limits::default()
    });
    let host = |ip: u8, port: u16| std::net::SocketAddr::from(([10, 0, 0, ip], port));
    let claim = |sim: &mut Sim, from, size: u64| {
        let sid = sim.open(from, size, 1_000);
        let first = vec![b'u'; size.min(1_000) as usize];
        assert!(sim.reply(from, block(sid, 0, &first)).starts_with("0:"));
    };
    // Host 1 holds memory beyond its share; hosts 2 to 4 two small uploads each.
    claim(&mut sim, host(1, 1), 27_000);
    for ip in 2..=4 {
        claim(&mut sim, host(ip, 1), 100);
        claim(&mut sim, host(ip, 2), 100);
    }
    sim.at(1_000);
    // The last slot, held by an offer still within its grace.
    sim.mgr
        .offer(sim.now, host(7, 1), Bytes::from_static(b"spoofed"))
        .expect("an offer");
    sim.at(1_100);
    // Short of a slot alone, nobody lends one: refused, and remembered.
    assert!(sim.mgr.reserve(sim.now, host(6, 1), 100).is_err());
    // Short of memory too, host 1's loan of memory is taken back, which frees a slot.
    let reservation = sim
        .mgr
        .reserve(sim.now, host(6, 1), 9_000)
        .expect("a loan of memory makes room");
    assert_eq!(sim.mgr.stats().reclaimed.recalled, 1);
    sim.mgr.cancel(reservation);
}

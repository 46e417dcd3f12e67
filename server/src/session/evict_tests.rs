//! Unclaimed sessions giving way under a flood of opens: only those that free what is
//! missing, never more of the queue looked at than a bound, and a refusal behind them
//! remembered.

use bytes::Bytes;

use super::room::EVICT_WALK;
use super::tests::{Sim, addr, block, unshared};
use crate::config::Limits;

/// A manager with 10,000 bytes of session memory, 8,000 of them held by a claimed upload,
/// `opens` unclaimed opens (holding no memory) and then an unfetched 1,000-byte offer,
/// all past their claim grace.
fn flooded(opens: usize) -> Sim {
    let mut sim = Sim::new(Limits {
        max_session_memory: 10_000,
        ..unshared()
    });
    let owner = addr(1);
    let upload = sim.open(owner, 8_000, 1_000);
    assert!(
        sim.reply(owner, block(upload, 0, &[b'u'; 1_000]))
            .starts_with("0:")
    );
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
fn no_request_looks_further_into_the_queue_than_the_bound() {
    let mut sim = flooded(EVICT_WALK);
    // The offer is past the bound: what is within it frees nothing, so the request is
    // refused, and nothing was dropped for it.
    assert!(sim.mgr.reserve(sim.now, addr(3), 1_500).is_err());
    assert_eq!(sim.mgr.stats().evicted, 0);
}

#[test]
fn a_refusal_behind_opens_it_passed_over_is_remembered() {
    let mut sim = flooded(EVICT_WALK);
    for _ in 0..3 {
        assert!(sim.mgr.reserve(sim.now, addr(3), 1_500).is_err());
    }
    // Nothing changed between the three. The opens the walk passed over are past their
    // grace already, and the offer lies beyond the bound: the first walk's answer holds.
    assert_eq!(sim.mgr.walks, 1, "walked again for the same refusal");
    assert_eq!(sim.mgr.stats().evicted, 0);
}

//! Seeded simulations of making room: opens, offers, first blocks, fetches, closes and
//! reservations at random on a small server. After every step the unclaimed queues hold
//! each unclaimed session once, in the right queue and in order; and no reservation is
//! refused that the same manager, with its memo of refusals forgotten, would grant.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use mboard_protocol::{Expect, Response, SessionId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Fairness;
use super::tests::{Sim, block, unshared};
use crate::config::Limits;

/// Sessions the simulation may act on, by who opened them.
#[derive(Default)]
struct Known {
    opens: Vec<(SocketAddr, SessionId)>,
    offers: Vec<(SocketAddr, SessionId)>,
}

/// Runs 2,000 random steps; returns how many refusals a walk remembered were relied on.
fn simulate(seed: u64, limits: Limits) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sim = Sim::new(limits);
    let mut known = Known::default();
    let mut remembered = 0;
    for step in 0..2_000 {
        // Five hosts, many ports each: shares and per-source limits both come into play.
        let host: u8 = rng.random_range(1..6);
        let from = SocketAddr::from(([10, 0, 0, host], rng.random_range(1..2_000)));
        match rng.random_range(0..10) {
            0 | 1 => {
                let size = rng.random_range(1..3_000u64);
                let r = sim.reply(from, format!("a:{size}:1000"));
                if let Ok(Response::Opened { sid, .. }) =
                    Response::parse(Bytes::from(r), Expect::Opened)
                {
                    known.opens.push((from, sid));
                }
            }
            2 | 3 => {
                let data = Bytes::from(vec![b'o'; rng.random_range(1..3_000)]);
                if let Ok(offer) = sim.mgr.offer(sim.now, from, data) {
                    known.offers.push((from, offer.sid));
                }
            }
            4 if !known.opens.is_empty() => {
                let (owner, sid) = known.opens[rng.random_range(0..known.opens.len())];
                sim.reply(owner, block(sid, 0, b"b"));
            }
            5 if !known.offers.is_empty() => {
                let (owner, sid) = known.offers[rng.random_range(0..known.offers.len())];
                sim.reply(owner, format!("g:{sid}:0"));
            }
            6 if !known.opens.is_empty() => {
                let (owner, sid) = known
                    .opens
                    .swap_remove(rng.random_range(0..known.opens.len()));
                sim.reply(owner, format!("x:{sid}"));
            }
            7 => sim.advance(Duration::from_millis(rng.random_range(0..400))),
            _ => remembered += u64::from(reserve(&mut sim, from, &mut rng, seed, step)),
        }
        if let Err(e) = sim.mgr.budget.unclaimed.check(&sim.mgr.sessions) {
            panic!("seed {seed}, step {step}: {e}");
        }
        let unclaimed: u64 = sim
            .mgr
            .sessions
            .values()
            .filter(|s| !s.claimed)
            .map(|s| s.reserved)
            .sum();
        assert_eq!(
            unclaimed, sim.mgr.budget.unclaimed_reserved,
            "seed {seed}, step {step}"
        );
    }
    remembered
}

/// A random reservation; if the memo refused it, the same request with the memo
/// forgotten must be refused too. Says whether the memo was relied on.
fn reserve(sim: &mut Sim, from: SocketAddr, rng: &mut StdRng, seed: u64, step: u32) -> bool {
    let size = rng.random_range(1..6_000u64);
    let memo = sim.mgr.refused;
    let walks = sim.mgr.walks;
    match sim.mgr.reserve(sim.now, from, size) {
        Ok(r) => {
            sim.mgr.cancel(r);
            false
        }
        Err(_) if memo.is_some() && sim.mgr.walks == walks => {
            sim.mgr.refused = None;
            let again = sim.mgr.reserve(sim.now, from, size);
            assert!(
                again.is_err(),
                "seed {seed}, step {step}: the memo {memo:?} refused {size} bytes"
            );
            true
        }
        Err(_) => false,
    }
}

/// Forty seeds on a server of 30 sessions and 30,000 bytes, `fairness` aside.
fn simulate_seeds(fairness: Fairness) {
    let limits = Limits {
        max_sessions: 30,
        max_session_memory: 30_000,
        fairness,
        ..Limits::default()
    };
    let relied: u64 = (0..40).map(|seed| simulate(seed, limits.clone())).sum();
    // The property is only tested if the memo is relied on at all.
    assert!(relied > 0, "the memo was never relied on");
}

#[test]
fn the_memo_never_refuses_what_a_walk_would_grant_with_shares_off() {
    simulate_seeds(unshared().fairness);
}

#[test]
fn the_memo_never_refuses_what_a_walk_would_grant_with_host_shares() {
    simulate_seeds(Fairness::default());
}

//! Taking back loans, attacked: a host loses only what it holds beyond its share, and a
//! request that cannot be helped drops nothing.

use bytes::Bytes;

use super::fair_tests::{hold, host, offer};
use super::tests::{Sim, block};
use mboard_protocol::SessionId;

use super::{Outcome, SessionError};
use crate::config::Limits;

fn limits() -> Limits {
    Limits {
        max_session_memory: 100_000,
        ..Limits::default()
    }
}

/// Whether `sid`, an upload of `owner` with blocks of 1,000 bytes, is still held.
fn held(sim: &mut Sim, owner: std::net::SocketAddr, sid: SessionId) -> bool {
    sim.reply(owner, format!("c:{sid}"))
        .starts_with("4:incomplete")
}

#[test]
fn a_host_whose_slow_session_gives_way_lends_only_what_is_left_beyond_its_share() {
    let mut sim = Sim::new(limits());
    let hog = host(2, 1);
    // 5,008 bytes, created at 0 with one block: below the progress floor from 5.2 s on.
    let slow = hold(&mut sim, hog, 5_000, 1_000);
    // Then 25,000 bytes that move (young at 6 s): exactly the hog's share without the
    // slow one, which is all it holds beyond it.
    sim.at(2_000);
    let moving = [
        hold(&mut sim, hog, 10_000, 1_000),
        hold(&mut sim, hog, 10_000, 1_000),
        hold(&mut sim, hog, 4_976, 1_000),
    ];
    // Other hosts within their shares fill the server.
    let (b, d, e) = (host(1, 1), host(4, 1), host(5, 1));
    hold(&mut sim, b, 24_000, 1_000);
    hold(&mut sim, d, 24_000, 1_000);
    hold(&mut sim, e, 21_968, 1_000);
    assert_eq!(sim.mgr.stats().reserved, 100_000);
    // A newcomer needs 10,008: the slow session frees 5,008, and the hog lends nothing
    // more, so the newcomer is refused and nobody loses a session for it.
    sim.at(6_000);
    let c = host(3, 1);
    assert_eq!(sim.reply(c, "a:10000:1000"), "4:busy");
    assert_eq!(
        sim.mgr.reserve(sim.now, c, 10_000).err(),
        Some(SessionError::Busy)
    );
    for sid in moving {
        assert!(held(&mut sim, hog, sid), "{sid} was within the hog's share");
    }
    assert!(held(&mut sim, hog, slow), "dropped in vain");
    let reclaimed = sim.mgr.stats().reclaimed;
    assert_eq!((reclaimed.recalled, reclaimed.over_share), (0, 0));
}

/// The server full: a hog over its share with a commit executing (30,008 bytes) and a
/// younger upload (5,008), an unfetched offer of 2,000 past the claim grace, and two hosts
/// within their shares. What the hog could lend beyond its share is mostly the commit,
/// which is never taken back.
fn full_with_an_executing_loan() -> (Sim, std::net::SocketAddr, SessionId, SessionId) {
    let mut sim = Sim::new(limits());
    let hog = host(2, 1);
    let running = hold(&mut sim, hog, 30_000, 30_000);
    assert!(matches!(
        sim.send(hog, format!("c:{running}")),
        Outcome::Execute { .. }
    ));
    let younger = hold(&mut sim, hog, 5_000, 1_000);
    let spoofed = host(9, 1);
    offer(
        sim.mgr
            .offer(sim.now, spoofed, Bytes::from(vec![b'o'; 2_000])),
    );
    hold(&mut sim, host(1, 1), 24_000, 1_000);
    hold(&mut sim, host(4, 1), 24_968, 1_000);
    assert_eq!(sim.mgr.stats().reserved, 100_000 - 14_000);
    sim.at(1_000);
    (sim, hog, running, younger)
}

#[test]
fn a_request_the_loans_cannot_help_drops_no_unclaimed_session() {
    let (mut sim, hog, _, younger) = full_with_an_executing_loan();
    // 24,008 needs 10,008 more than is free: the offer and the hog's younger upload make
    // 7,008 of it, and the executing commit may not give way.
    let c = host(3, 1);
    assert_eq!(sim.reply(c, "a:24000:1000"), "4:busy");
    let up = sim.open(c, 1_000, 1_000);
    assert_eq!(
        sim.mgr.reserve(sim.now, c, 24_000).err(),
        Some(SessionError::Busy)
    );
    assert_eq!(sim.mgr.stats().evicted, 0, "the offer was dropped in vain");
    assert!(held(&mut sim, hog, younger));
    assert!(sim.reply(c, block(up, 0, &[b'c'; 1_000])).starts_with("0:"));
}

#[test]
fn an_open_makes_nobody_give_way_for_memory_it_does_not_take_yet() {
    let (mut sim, _, _, _) = full_with_an_executing_loan();
    // 15,000 fits once the offer has gone: the open is answered, but only its first block
    // takes the memory, so only that drops the offer.
    let c = host(3, 1);
    let up = sim.open(c, 15_000, 1_000);
    assert_eq!(sim.mgr.stats().evicted, 0, "an open took no bytes");
    assert_eq!(
        sim.reply(c, block(up, 0, &[b'c'; 1_000])),
        format!("0:{up}:0:1")
    );
    assert_eq!(sim.mgr.stats().evicted, 1);
}

/// Checks each host's books against the sessions it has claimed.
fn check_books(sim: &Sim) {
    use std::collections::HashMap;

    use super::hosts::{Books, HostKey, Shares};
    let mgr = &sim.mgr;
    let shares = Shares::of(&mgr.limits);
    let mut want: HashMap<HostKey, Books> = HashMap::new();
    for (sid, s) in mgr.sessions.iter().filter(|(_, s)| s.claimed) {
        let (usage, held, _) = want.entry(s.host).or_default();
        usage.sessions += 1;
        usage.reserved += s.reserved;
        held.insert((s.created, *sid));
    }
    for (usage, _, over) in want.values_mut() {
        *over = shares.exceeded_by(*usage);
    }
    assert_eq!(mgr.budget.hosts.books(), want);
    let claimed: u64 = want.values().map(|(u, _, _)| u.reserved).sum();
    assert_eq!(
        mgr.budget.reserved,
        claimed + mgr.budget.unclaimed_reserved,
        "reserved in all"
    );
}

#[test]
fn the_books_of_hosts_follow_every_way_a_session_ends() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use crate::reply::Reply;
    let mut sim = Sim::new(Limits {
        max_session_memory: 60_000,
        max_sessions: 24,
        session_timeout: std::time::Duration::from_secs(3),
        ..Limits::default()
    });
    let mut rng = StdRng::seed_from_u64(3);
    let mut open: Vec<(std::net::SocketAddr, SessionId)> = Vec::new();
    let mut ms = 0;
    for step in 0..20_000 {
        ms += rng.random_range(0..40);
        sim.at(ms);
        let from = host(rng.random_range(1..=4), rng.random_range(1..=3));
        match rng.random_range(0..10) {
            0..=2 => {
                let size = rng.random_range(1..=12) * 1_000;
                let r = sim.reply(from, format!("a:{size}:1000"));
                if let Ok(mboard_protocol::Response::Opened { sid, .. }) =
                    mboard_protocol::Response::parse(
                        Bytes::from(r),
                        mboard_protocol::Expect::Opened,
                    )
                {
                    open.push((from, sid));
                }
            }
            3 => {
                let size = rng.random_range(1..=8_000);
                if let Ok(o) = sim.mgr.offer(sim.now, from, Bytes::from(vec![b'd'; size])) {
                    open.push((from, o.sid));
                }
            }
            _ if open.is_empty() => {}
            n => {
                let (owner, sid) = open[rng.random_range(0..open.len())];
                let pdu = match n {
                    4..=6 => {
                        let i = rng.random_range(0..12u64);
                        let mut b = format!("b:{sid}:{i}:").into_bytes();
                        b.extend_from_slice(&[b'u'; 1_000]);
                        b
                    }
                    7 => format!("c:{sid}").into_bytes(),
                    8 => format!("g:{sid}:0").into_bytes(),
                    _ => format!("x:{sid}").into_bytes(),
                };
                if let Outcome::Execute { sid, .. } = sim.send(owner, pdu)
                    && rng.random_bool(0.8)
                {
                    sim.mgr.finish(sid, Reply::ok(Bytes::from_static(b"0:1")));
                }
            }
        }
        if step % 7 == 0 {
            sim.mgr.expire(sim.now);
        }
        check_books(&sim);
    }
    let stats = sim.mgr.stats();
    assert!(
        stats.reclaimed.recalled > 0 && stats.evicted > 0 && stats.expired > 0,
        "{stats:?}"
    );
}

#[test]
fn a_committed_reply_is_not_taken_back_for_the_bytes_it_does_not_hold() {
    let mut sim = Sim::new(limits());
    let hog = host(2, 1);
    let older = hold(&mut sim, hog, 30_000, 1_000);
    sim.at(1);
    let younger = hold(&mut sim, hog, 30_000, 1_000);
    sim.at(2);
    // Its youngest: a v1 publish, executed; its reply (3 bytes) is what a resent `c:`
    // gets when the first answer was lost, and the only way to tell it was stored.
    let done = hold(&mut sim, hog, 1_000, 1_000);
    sim.commit_and_run(hog, done, b"0:9");
    hold(&mut sim, host(1, 1), 24_000, 1_000);
    sim.at(3);
    hold(&mut sim, host(3, 1), 20_000, 1_000);
    assert_eq!(sim.reply(hog, format!("c:{done}")), "0:9");
    assert!(!held(&mut sim, hog, younger), "the loan is taken back");
    assert!(held(&mut sim, hog, older));
    assert_eq!(sim.mgr.stats().reclaimed.recalled, 1);
}

/// A full server where the bounds let a request of 13,960 bytes walk, and the walk finds
/// too little: the hog is 5,016 over its share of 25,000, but the only slow session it has
/// (10,008 bytes, created at 0) is that loan; the rest is young at 6 s.
fn full_with_a_slow_loan() -> Sim {
    let mut sim = Sim::new(limits());
    let hog = host(2, 1);
    hold(&mut sim, hog, 10_000, 1_000);
    sim.at(6_000);
    hold(&mut sim, hog, 20_000, 1_000);
    hold(&mut sim, host(3, 1), 24_000, 1_000);
    hold(&mut sim, host(4, 1), 20_000, 1_000);
    assert_eq!(sim.mgr.stats().reserved, 74_032);
    sim
}

fn reserve(sim: &mut Sim, from: u8, size: u64) -> Result<(), SessionError> {
    let r = sim.mgr.reserve(sim.now, host(from, 1), size)?;
    sim.mgr.cancel(r);
    Ok(())
}

#[test]
fn a_request_refused_after_a_walk_is_refused_again_without_one_until_something_changes() {
    let mut sim = full_with_a_slow_loan();
    let young = hold(&mut sim, host(1, 1), 24_000, 1_000);
    sim.at(6_001);
    assert_eq!(reserve(&mut sim, 5, 13_960), Err(SessionError::Busy));
    assert_eq!(sim.mgr.walks, 1);
    // The same, or a larger one, from anyone within its share: refused, no walk.
    for _ in 0..100 {
        assert_eq!(reserve(&mut sim, 5, 13_960), Err(SessionError::Busy));
        assert_eq!(reserve(&mut sim, 6, 14_000), Err(SessionError::Busy));
    }
    assert_eq!(sim.mgr.walks, 1, "nothing changed: no second walk");
    // Something changed (a session went): the request is looked at afresh, and fits.
    sim.reply(host(1, 1), format!("x:{young}"));
    assert_eq!(reserve(&mut sim, 5, 13_960), Ok(()));
    assert_eq!(
        sim.mgr.stats().reclaimed.within_share + sim.mgr.stats().reclaimed.over_share,
        0
    );
}

#[test]
fn a_refusal_remembered_lapses_when_a_session_turns_slow() {
    let mut sim = full_with_a_slow_loan();
    hold(&mut sim, host(1, 1), 24_000, 1_000);
    sim.at(6_001);
    assert_eq!(reserve(&mut sim, 5, 13_960), Err(SessionError::Busy));
    // From 11.2 s the young uploads are slow too: the same request now finds room.
    sim.at(11_500);
    assert_eq!(reserve(&mut sim, 5, 13_960), Ok(()));
    assert_eq!(sim.mgr.walks, 1, "no walk in vain");
}

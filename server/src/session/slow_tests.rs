//! Slow sessions on the manual clock: when a download or an upload turns slow and stops
//! being slow, and what a crowd of them leaves behind once expired.

use std::time::Duration;

use bytes::Bytes;

use super::SessionError;
use super::fair_tests::{EXPIRED, hold, host, offer, shares_off};
use super::tests::{Sim, block};
use crate::config::Limits;

#[test]
fn a_download_moves_by_its_fetches_and_refetching_buys_no_time_past_its_size() {
    let mut sim = Sim::new(Limits {
        max_session_memory: 200_000,
        ..shares_off()
    });
    let (reader, newcomer) = (host(2, 1), host(3, 1));
    // 107 blocks of 1,412. Fetched again and again, block 0 moves the download at most
    // its size: 150,000 bytes, 18.3 s past the grace.
    let o = offer(
        sim.mgr
            .offer(sim.now, reader, Bytes::from(vec![b'd'; 150_000])),
    );
    for ms in (0..=23_300).step_by(100) {
        sim.at(ms);
        let r = sim.reply(reader, format!("g:{}:0", o.sid));
        assert!(r.starts_with("0:"), "{ms}: {r}");
    }
    sim.at(23_400);
    let taken = offer(
        sim.mgr
            .offer(sim.now, newcomer, Bytes::from(vec![b'n'; 60_000])),
    );
    assert_eq!(sim.reply(reader, format!("g:{}:1", o.sid)), EXPIRED);
    sim.reply(newcomer, format!("x:{}", taken.sid));
    // A reader fetching eight new blocks a second (11 KB/s) is kept.
    let o = offer(
        sim.mgr
            .offer(sim.now, reader, Bytes::from(vec![b'd'; 150_000])),
    );
    for i in 0..96 {
        sim.advance(Duration::from_millis(125));
        let r = sim.reply(reader, format!("g:{}:{i}", o.sid));
        assert!(r.starts_with("0:"), "{i}: {r}");
    }
    let refused = sim
        .mgr
        .offer(sim.now, newcomer, Bytes::from(vec![b'n'; 60_000]));
    assert_eq!(refused.err(), Some(SessionError::Busy));
    assert!(
        sim.reply(reader, format!("g:{}:96", o.sid))
            .starts_with("0:")
    );
}

#[test]
fn a_session_is_found_slow_the_moment_it_turns_slow_and_not_before() {
    let mut sim = Sim::new(Limits {
        max_sessions: 2,
        ..shares_off()
    });
    let early = hold(&mut sim, host(2, 1), 3, 2);
    sim.at(4_000);
    let late = hold(&mut sim, host(2, 2), 3, 2);
    // Two bytes buy 0.24 ms past the grace: the first turns slow at 5.0002 s.
    sim.at(5_000);
    let reader = host(1, 1);
    assert!(
        sim.mgr
            .offer(sim.now, reader, Bytes::from_static(b"xx"))
            .is_err()
    );
    sim.at(5_001);
    let o = offer(sim.mgr.offer(sim.now, reader, Bytes::from_static(b"xx")));
    assert!(
        sim.reply(reader, format!("g:{}:0", o.sid))
            .starts_with("0:")
    );
    assert_eq!(sim.reply(host(2, 1), format!("c:{early}")), EXPIRED);
    // The second turns slow at 9.0002 s; asking again and again before then changes
    // nothing, and the moment it has turned, it gives way.
    let other = host(1, 2);
    for ms in [6_000, 8_000, 9_000] {
        sim.at(ms);
        assert!(
            sim.mgr
                .offer(sim.now, other, Bytes::from_static(b"xx"))
                .is_err()
        );
    }
    sim.at(9_001);
    assert!(
        sim.mgr
            .offer(sim.now, other, Bytes::from_static(b"xx"))
            .is_ok()
    );
    assert_eq!(sim.reply(host(2, 2), format!("c:{late}")), EXPIRED);
    assert_eq!(sim.mgr.stats().reclaimed.within_share, 2);
}

#[test]
fn a_session_that_moves_again_leaves_the_pool_of_slow_ones() {
    let mut sim = Sim::new(Limits {
        max_session_memory: 30_000,
        ..shares_off()
    });
    let mover = host(2, 1);
    let sid = hold(&mut sim, mover, 20_000, 1_000);
    sim.at(5_500);
    hold(&mut sim, host(3, 1), 9_000, 1_000);
    // Slow from 5.12 s, and found so by a request that it could not make room for.
    sim.at(6_000);
    let newcomer = host(1, 1);
    assert_eq!(sim.reply(newcomer, "a:21000:1000"), "4:busy");
    assert_eq!(sim.mgr.reclaimer.watched().1, 1, "in the pool");
    // It sends the rest: 20,000 bytes buy it up to 7.44 s.
    for i in 1..20 {
        sim.reply(mover, block(sid, i, &[b'm'; 1_000]));
    }
    assert!(
        sim.mgr
            .offer(sim.now, newcomer, Bytes::from(vec![b'n'; 9_000]))
            .is_err()
    );
    assert_eq!(sim.mgr.reclaimer.watched().1, 0, "out of the pool");
    sim.at(7_400);
    assert!(
        sim.mgr
            .offer(sim.now, newcomer, Bytes::from(vec![b'n'; 9_000]))
            .is_err()
    );
    // Watched again: once it has turned slow again, it gives way.
    sim.at(7_500);
    assert!(
        sim.mgr
            .offer(sim.now, newcomer, Bytes::from(vec![b'n'; 9_000]))
            .is_ok()
    );
    assert_eq!(sim.reply(mover, format!("c:{sid}")), EXPIRED);
}

#[test]
fn a_crowd_that_expired_leaves_small_tables() {
    let mut sim = Sim::new(Limits {
        max_sessions: 12_000,
        ..shares_off()
    });
    for port in 0..200 {
        for _ in 0..60 {
            hold(&mut sim, host(2, 1000 + port), 3, 2);
        }
    }
    // Half of them reclaimed for newcomers, so there are tombstones to forget too.
    sim.at(6_000);
    for port in 0..100 {
        for _ in 0..60 {
            sim.open(host(1, 1000 + port), 3, 3);
        }
    }
    assert_eq!(sim.mgr.stats().reclaimed.within_share, 6_000);
    assert_eq!(sim.mgr.reclaimer.tombstones_len(), 6_000);
    assert!(sim.mgr.sessions.capacity() >= 12_000);
    sim.at(60_000);
    assert_eq!(sim.mgr.expire(sim.now), 12_000);
    let m = &sim.mgr;
    assert_eq!(m.stats().sessions, 0);
    assert!(m.sessions.capacity() <= 1_024, "{}", m.sessions.capacity());
    assert!(m.per_source.capacity() <= 1_024);
    assert!(m.expiry.capacity() <= 1_024, "{}", m.expiry.capacity());
    assert!(m.budget.unclaimed.capacity() <= 1_024);
    assert_eq!(m.reclaimer.tombstones_len(), 0);
    assert_eq!(m.reclaimer.watched(), (0, 0));
}

//! Held requests (`6:` with a wait) on a manual clock: the wait is expected silence, the
//! request is renewed while held, and only a reply missing after the wait is a loss.

use std::time::Duration;

use super::*;

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

/// A 25 s hold renewed every 5 s, under a 5 s silence timeout: the follower's defaults.
fn held(start: Instant, rtt: Rtt) -> Transfer {
    let deadline = Deadline::new(start, 5 * S, None);
    Transfer::new(1, 1, deadline, rtt).with_hold(Some(Hold {
        wait: 25 * S,
        refresh: 5 * S,
    }))
}

/// Drives `t` with no reply at all until a limit runs out; returns each transmission as
/// (time since start, wait asked for) and the limit.
fn unanswered(t: &mut Transfer, start: Instant) -> (Vec<(Duration, Duration)>, DeadlinePassed) {
    let mut now = start;
    let mut sends = Vec::new();
    loop {
        while t.poll_transmit(now).is_some() {
            sends.push((now - start, t.hold_left(now)));
        }
        now = t.poll_timeout();
        if let Err(e) = t.handle_timeout(now) {
            return (sends, e);
        }
    }
}

#[test]
fn a_held_request_is_renewed_with_what_is_left_of_its_wait_and_then_given_up() {
    let start = Instant::now();
    let mut t = held(start, Rtt::new(200 * MS));
    assert_eq!(
        t.hold_left(start),
        25 * S,
        "the whole wait before it is sent"
    );
    let (sends, err) = unanswered(&mut t, start);
    assert_eq!(
        sends,
        vec![
            (Duration::ZERO, 25 * S),
            // Renewals while held ask for the rest: the hold still ends at 25 s.
            (5 * S, 20 * S),
            (10 * S, 15 * S),
            (15 * S, 10 * S),
            (20 * S, 5 * S),
            // Past the wait and an RTO: lost, resent asking for no wait, backed off.
            (25 * S + 200 * MS, Duration::ZERO),
            (25 * S + 600 * MS, Duration::ZERO),
            (25 * S + 1_400 * MS, Duration::ZERO),
            (25 * S + 3_000 * MS, Duration::ZERO),
        ]
    );
    // The silence timeout counts from the end of the wait, not from the request.
    assert_eq!(err.expiry, Expiry::Silence(5 * S));
    assert_eq!(t.deadline().next(), start + 30 * S);
}

#[test]
fn renewals_do_not_back_off_and_the_answer_is_not_timed() {
    let start = Instant::now();
    let mut rtt = Rtt::new(200 * MS);
    rtt.sample(10 * MS);
    let rto = rtt.rto();
    let mut t = held(start, rtt);
    assert_eq!(t.poll_transmit(start), Some(0));
    for k in 1..=3 {
        let at = start + 5 * S * k;
        assert_eq!(t.poll_timeout(), at);
        t.handle_timeout(at).expect("held, not silent");
        assert_eq!(t.poll_transmit(at), Some(0), "renewed at {k} × 5 s");
        assert_eq!(t.rtt().rto(), rto, "a renewal is no loss");
    }
    // A publish wakes it at 17 s: a reply after 2 s, which is no round trip.
    assert!(t.on_ack(start + 17 * S, 0));
    assert!(t.is_done());
    assert_eq!(t.rtt().srtt(), Some(10 * MS), "not sampled");
    assert_eq!(t.sent(), (4, 3));
}

#[test]
fn a_reply_at_the_end_of_the_wait_is_in_time() {
    // The server answers `0:0` when the wait runs out, one way later than it was held.
    let start = Instant::now();
    let mut t = held(start, Rtt::new(200 * MS));
    assert_eq!(t.poll_transmit(start), Some(0));
    for at in [5, 10, 15, 20] {
        t.handle_timeout(start + at * S).expect("held");
        t.poll_transmit(start + at * S);
    }
    t.handle_timeout(start + 25 * S + MS).expect("in time");
    assert_eq!(t.poll_transmit(start + 25 * S + MS), None, "not resent yet");
    assert!(t.on_ack(start + 25 * S + MS, 0));
    assert!(t.is_done());
}

/// The far end holds what it gets until a publish at 12 s, but restarts at 3 s and forgets
/// the request it held. Returns when the publish reached the client, and the datagrams sent.
fn restarted_server(refresh: Duration) -> (Duration, (u64, u64)) {
    let start = Instant::now();
    let deadline = Deadline::new(start, 5 * S, None);
    let mut t = Transfer::new(1, 1, deadline, Rtt::new(200 * MS)).with_hold(Some(Hold {
        wait: 25 * S,
        refresh,
    }));
    let (restart, published) = (start + 3 * S, start + 12 * S);
    let mut now = start;
    let mut holding: Option<Instant> = None;
    loop {
        if now >= restart && holding.is_some_and(|since| since < restart) {
            holding = None;
        }
        while t.poll_transmit(now).is_some() {
            holding = Some(now);
        }
        if holding.is_some() && now >= published {
            assert!(t.on_ack(now, 0));
            return (now - start, t.sent());
        }
        now = t.poll_timeout();
        if holding.is_some() && now > published {
            now = published;
            continue;
        }
        t.handle_timeout(now).expect("never silent");
    }
}

#[test]
fn a_server_that_forgot_the_request_holds_the_renewal() {
    // Renewed every 5 s, the request is held again from 5 s on, and the publish at 12 s
    // is seen at once: the request, and renewals at 5 and 10 s.
    assert_eq!(restarted_server(5 * S), (12 * S, (3, 2)));
    // Never renewed, it is seen only when the lost request is resent after the wait.
    assert_eq!(restarted_server(25 * S), (25 * S + 200 * MS, (2, 1)));
}

#[test]
fn a_refresh_as_long_as_the_wait_only_resends_after_it() {
    let start = Instant::now();
    let deadline = Deadline::new(start, 5 * S, None);
    let mut t = Transfer::new(1, 1, deadline, Rtt::new(100 * MS)).with_hold(Some(Hold {
        wait: 2 * S,
        refresh: 2 * S,
    }));
    let (sends, err) = unanswered(&mut t, start);
    assert_eq!(sends[0], (Duration::ZERO, 2 * S));
    assert_eq!(sends[1], (2 * S + 100 * MS, Duration::ZERO));
    assert_eq!(err.expiry, Expiry::Silence(5 * S));
    assert_eq!(t.deadline().next(), start + 7 * S);
}

#[test]
fn no_wait_is_no_hold() {
    let start = Instant::now();
    let deadline = Deadline::new(start, 1 * S, None);
    let mut t = Transfer::new(1, 1, deadline, Rtt::new(100 * MS)).with_hold(Some(Hold {
        wait: Duration::ZERO,
        refresh: 5 * S,
    }));
    assert_eq!(t.hold_left(start), Duration::ZERO);
    assert_eq!(t.poll_transmit(start), Some(0));
    assert_eq!(t.poll_timeout(), start + 100 * MS, "an ordinary RTO");
    assert!(t.on_ack(start + 10 * MS, 0));
    assert_eq!(t.rtt().srtt(), Some(10 * MS), "timed as any request");
}

use std::net::{IpAddr, Ipv4Addr};

use super::*;

fn host(last: u8) -> HostKey {
    HostKey::of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
}

/// The host that floods.
fn flood() -> HostKey {
    host(99)
}

/// Runs `windows` windows from `*now`, each with `traffic` (host, datagrams) interleaved
/// evenly, the loop waiting once a window if `keeps_up`; returns what each host got through,
/// in `traffic`'s order.
fn drive(
    o: &mut Overload,
    now: &mut Instant,
    windows: u32,
    traffic: &[(HostKey, u32)],
    keeps_up: bool,
) -> Vec<u32> {
    let mut admitted = vec![0; traffic.len()];
    let total: u32 = traffic.iter().map(|t| t.1).sum();
    for _ in 0..windows {
        let step = WINDOW / total.max(1);
        // Interleaved as a flood would arrive: each host in proportion.
        let mut sent = vec![0; traffic.len()];
        for i in 0..total {
            let (k, (h, _)) = traffic
                .iter()
                .enumerate()
                .filter(|(k, (_, n))| sent[*k] < *n)
                .min_by_key(|(k, (_, n))| u64::from(sent[*k]) * u64::from(total) / u64::from(*n))
                .expect("a host with datagrams left");
            sent[k] += 1;
            // Once a window, midway, the loop finds the queue empty.
            if keeps_up && i == total / 2 {
                o.waited();
            }
            if o.admit(*h, *now + step * i) {
                admitted[k] += 1;
            }
        }
        *now += WINDOW;
    }
    admitted
}

/// What the kernel says: `drops` so far, and whether the queue is crowded.
fn kernel(o: &mut Overload, drops: Option<u64>, crowded: bool) {
    o.kernel(QueueState { drops, crowded });
}

/// A crowded queue starts shedding; then, drained, the loop keeps up until the hold ends.
fn shed_through_one_hold(o: &mut Overload, now: &mut Instant, traffic: &[(HostKey, u32)]) {
    kernel(o, Some(0), true);
    while o.began().is_none() {
        drive(o, now, 1, traffic, false);
    }
    kernel(o, Some(0), false);
    while o.shedding(*now) {
        drive(o, now, 1, traffic, true);
    }
}

fn start() -> (Overload, Instant) {
    let now = Instant::now();
    (Overload::new(Shedding::default(), now), now)
}

#[test]
fn a_loop_that_keeps_up_sheds_nothing_however_lopsided_the_traffic() {
    let (mut o, mut now) = start();
    let traffic = [(flood(), 5_000), (host(1), 5)];
    assert_eq!(drive(&mut o, &mut now, 40, &traffic, true), [200_000, 200]);
}

#[test]
fn one_host_alone_is_never_shed_even_when_the_loop_is_behind() {
    // A benchmark from one machine saturates the server with nobody to protect.
    let (mut o, mut now) = start();
    assert_eq!(
        drive(&mut o, &mut now, 40, &[(host(1), 5_000)], false),
        [200_000]
    );
}

#[test]
fn behind_the_flood_is_cut_to_its_share_and_the_quiet_host_loses_nothing() {
    let (mut o, mut now) = start();
    let traffic = [(flood(), 2_000), (host(1), 2), (host(2), 20)];
    // The first window only counts; from then on the flood keeps a third (an equal share
    // of three hosts is more than the configured quarter).
    drive(&mut o, &mut now, 1, &traffic, false);
    let got = drive(&mut o, &mut now, 10, &traffic, false);
    assert_eq!(got[1..], [20, 200]);
    let quota = (2_022f64 / 3.0).ceil() as u32;
    assert_eq!(got[0], 10 * quota);
}

#[test]
fn the_configured_share_applies_among_many_hosts() {
    let (mut o, mut now) = start();
    let mut traffic: Vec<(HostKey, u32)> = (1..=9).map(|i| (host(i), 10)).collect();
    traffic.push((flood(), 1_000));
    drive(&mut o, &mut now, 1, &traffic, false);
    let got = drive(&mut o, &mut now, 4, &traffic, false);
    assert!(got[..9].iter().all(|&n| n == 40), "{got:?}");
    assert_eq!(got[9], 4 * (1_090f64 * 0.25).ceil() as u32);
}

#[test]
fn shedding_lasts_its_hold_after_the_loop_catches_up_then_stops() {
    let (mut o, mut now) = start();
    let traffic = [(flood(), 1_000), (host(1), 1_000), (host(2), 10)];
    drive(
        &mut o,
        &mut now,
        1,
        &[(flood(), 1_000), (host(2), 10)],
        false,
    );
    // The window's count is judged when the next one's first datagram comes.
    assert_eq!(o.began(), None);
    assert!(o.admit(host(2), now));
    assert_eq!(o.began(), Some(BASE_HOLD));
    assert_eq!(o.began(), None, "said once");
    // Caught up (thanks to the shedding): still shedding for the hold.
    let windows = (BASE_HOLD.as_millis() / WINDOW.as_millis()) as u32;
    drive(&mut o, &mut now, windows - 1, &traffic, true);
    assert!(o.shedding(now));
    drive(&mut o, &mut now, 2, &traffic, true);
    assert!(!o.shedding(now));
    assert_eq!(
        drive(&mut o, &mut now, 2, &traffic, true),
        [2_000, 2_000, 20]
    );
}

#[test]
fn each_relapse_doubles_the_hold_up_to_the_longest_and_calm_resets_it() {
    let (mut o, mut now) = start();
    let traffic = [(flood(), 1_000), (host(1), 10)];
    let mut holds = Vec::new();
    for _ in 0..8 {
        // Behind until shedding begins, then caught up until it ends; then behind at once.
        while o.began().is_none() {
            drive(&mut o, &mut now, 1, &traffic, false);
        }
        holds.push(o.hold);
        while o.shedding(now) {
            drive(&mut o, &mut now, 1, &traffic, true);
        }
    }
    let secs: Vec<u64> = holds.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, [1, 2, 4, 8, 16, 32, 32, 32]);
    // Kept up for longer than a hold without shedding: the next overload starts afresh.
    drive(&mut o, &mut now, 33 * 20, &traffic, true);
    drive(&mut o, &mut now, 1, &traffic, false);
    assert!(o.admit(host(1), now));
    assert_eq!(o.began(), Some(BASE_HOLD));
}

#[test]
fn hosts_that_send_alike_are_left_to_the_kernel() {
    let (mut o, mut now) = start();
    let traffic = [(host(1), 1_000), (host(2), 1_000)];
    assert_eq!(
        drive(&mut o, &mut now, 10, &traffic, false),
        [10_000, 10_000]
    );
}

#[test]
fn a_share_of_zero_turns_shedding_off() {
    let now = Instant::now();
    let mut o = Overload::new(Shedding { host_share: 0 }, now);
    let mut now = now;
    let traffic = [(flood(), 2_000), (host(1), 2)];
    assert_eq!(drive(&mut o, &mut now, 10, &traffic, false), [20_000, 20]);
    assert_eq!(o.began(), None);
}

#[test]
fn hosts_past_the_table_are_let_through() {
    let (mut o, mut now) = start();
    let t0 = now;
    // Behind with two hosts, so shedding starts.
    drive(
        &mut o,
        &mut now,
        1,
        &[(flood(), 1_000), (host(1), 10)],
        false,
    );
    assert!(o.admit(host(1), now));
    assert!(o.shedding(now));
    // A window of spoofed sources filling the table: those past it are not counted.
    let spoofed = (0..MAX_HOSTS as u32 + 10)
        .map(|i| HostKey::of(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i))))
        .collect::<Vec<_>>();
    for (i, h) in spoofed.iter().enumerate() {
        assert!(o.admit(*h, now + Duration::from_micros(i as u64)), "{i}");
    }
    assert!(o.counts.len() <= MAX_HOSTS);
    assert!(now > t0);
    // The flood, over its quota last window, was kept in the table: still held to it, once
    // past its share of this window's traffic (the spoofed sources count in it).
    let shed = (0..10_000).filter(|_| !o.admit(flood(), now)).count();
    assert!(shed > 0);
}

#[test]
fn hosts_seen_before_a_long_quiet_are_forgotten() {
    let (mut o, mut now) = start();
    // Two hosts, the loop keeping up; then a long quiet; then one host alone and behind.
    drive(
        &mut o,
        &mut now,
        30,
        &[(host(1), 200), (host(2), 200)],
        true,
    );
    now += Duration::from_secs(10);
    drive(&mut o, &mut now, 1, &[(host(1), 1_000)], false);
    let alone = drive(&mut o, &mut now, 40, &[(host(1), 1_000)], false);
    assert_eq!(alone, [40_000]);
    assert_eq!(o.began(), None);
}

#[test]
fn a_quiet_window_during_the_hold_does_not_shrink_the_quota() {
    // The flood stops; the hold goes on. A window in which a host asks twice says nothing
    // of the next: scaled to it, the quota would be one datagram a window, and an honest
    // burst would be shed while the loop has nothing else to do.
    let (mut o, mut now) = start();
    let traffic = [(flood(), 1_000), (host(1), 10)];
    drive(&mut o, &mut now, 2, &traffic, false);
    assert!(o.shedding(now));
    drive(&mut o, &mut now, 1, &[(host(1), 2)], true);
    assert!(o.shedding(now), "still in its hold");
    assert_eq!(drive(&mut o, &mut now, 1, &[(host(1), 40)], true), [40]);
    // A quiet pause in a pulsing flood does not make the honest host pay either.
    drive(&mut o, &mut now, 1, &[(host(1), 2)], true);
    let got = drive(&mut o, &mut now, 1, &traffic, false);
    assert_eq!(got[1], 10);
    assert!(
        got[0] < 1_000,
        "the flood is still held to its quota: {got:?}"
    );
}

#[test]
fn a_share_of_a_hundred_sheds_nothing_even_as_the_traffic_grows() {
    // The quota is counted on one window and applied to the next: traffic that grows would
    // be shed past the whole of the last window's, were the share not taken as "no limit".
    let now = Instant::now();
    let mut o = Overload::new(Shedding { host_share: 100 }, now);
    let mut now = now;
    drive(&mut o, &mut now, 2, &[(flood(), 200), (host(1), 2)], false);
    let traffic = [(flood(), 2_000), (host(1), 2)];
    assert_eq!(drive(&mut o, &mut now, 4, &traffic, false), [8_000, 8]);
}

#[test]
fn a_host_within_its_share_of_traffic_that_grows_is_not_shed() {
    // Shedding, the traffic grows tenfold at once (a crowd comes back): the host sending a
    // fifth of it is within its quarter, though past the quota the last window gave it.
    let (mut o, mut now) = start();
    let before = [(flood(), 100), (host(1), 25), (host(2), 5), (host(3), 5)];
    drive(&mut o, &mut now, 2, &before, false);
    assert!(o.shedding(now));
    let after = [
        (flood(), 1_000),
        (host(1), 400),
        (host(2), 300),
        (host(3), 300),
    ];
    let got = drive(&mut o, &mut now, 1, &after, false);
    assert_eq!(got[1..], [400, 300, 300]);
    assert!(
        got[0] < 1_000,
        "the flood is still held to its share: {got:?}"
    );
}

#[test]
fn a_loop_behind_while_the_kernel_drops_nothing_sheds_nothing() {
    // A closed-loop benchmark keeps the queue from emptying on its own; a few other hosts
    // trickle in. The kernel drops nothing and the queue is short: no one is harmed, no
    // one is shed.
    let (mut o, mut now) = start();
    kernel(&mut o, Some(7), false);
    let traffic = [(host(1), 5_000), (host(2), 1), (host(3), 1)];
    assert_eq!(
        drive(&mut o, &mut now, 40, &traffic, false),
        [200_000, 40, 40]
    );
    assert!(o.watchful(), "the drop count is worth reading often");
    assert_eq!(o.began(), None);
}

/// Two windows of a flood with the kernel saying nothing is wrong, then ten after it says
/// `drops` and `crowded`: shedding begins at once, the quiet host loses nothing and the
/// flood is cut. The loop finds the queue empty once a window if `keeps_up`.
fn sheds_once_the_kernel_says(
    keeps_up: bool,
    drops: Option<u64>,
    crowded: bool,
) -> (Overload, Instant) {
    let (mut o, mut now) = start();
    kernel(&mut o, Some(0), false);
    let traffic = [(flood(), 2_000), (host(1), 2)];
    drive(&mut o, &mut now, 2, &traffic, keeps_up);
    assert_eq!(o.began(), None, "short, and nothing dropped");
    assert_eq!(o.watchful(), !keeps_up, "read often only while behind");
    // Shedding begins at the next window's first datagram.
    kernel(&mut o, drops, crowded);
    let got = drive(&mut o, &mut now, 10, &traffic, keeps_up);
    assert_eq!(o.began(), Some(BASE_HOLD));
    assert_eq!(got[1], 20, "the quiet host loses nothing");
    assert!(got[0] < 10 * 2_000 * 6 / 10, "the flood is cut: {got:?}");
    (o, now)
}

#[test]
fn a_loop_behind_while_the_kernel_drops_sheds_until_the_hold_ends() {
    let (o, now) = sheds_once_the_kernel_says(false, Some(500), false);
    // The drops stop (shedding worked): it goes on for its hold all the same.
    assert!(o.shedding(now));
}

#[test]
fn an_unknown_drop_count_leaves_being_behind_enough() {
    let (mut o, mut now) = start();
    kernel(&mut o, None, false);
    drive(
        &mut o,
        &mut now,
        2,
        &[(flood(), 2_000), (host(1), 2)],
        false,
    );
    assert_eq!(o.began(), Some(BASE_HOLD));
}

#[test]
fn a_crowded_queue_starts_shedding_before_the_kernel_drops() {
    // A flood fills the queue: every datagram waits behind it, long before any is lost.
    sheds_once_the_kernel_says(false, Some(0), true);
}

#[test]
fn a_crowded_queue_the_loop_keeps_up_with_is_no_harm() {
    // A burst the loop is working through, finding the queue empty now and then: it is
    // not behind, whatever the queue held when last read.
    let (mut o, mut now) = start();
    kernel(&mut o, Some(0), true);
    let traffic = [(flood(), 2_000), (host(1), 2)];
    assert_eq!(drive(&mut o, &mut now, 20, &traffic, true), [40_000, 40]);
    assert_eq!(o.began(), None);
}

#[test]
fn a_flood_that_crowds_the_queue_again_after_the_hold_is_a_relapse() {
    let (mut o, mut now) = start();
    let traffic = [(flood(), 1_000), (host(1), 10)];
    shed_through_one_hold(&mut o, &mut now, &traffic);
    // The flood fills it again, still without a drop: shedding is back, for longer.
    kernel(&mut o, Some(0), true);
    drive(&mut o, &mut now, 2, &traffic, false);
    assert_eq!(o.began(), Some(2 * BASE_HOLD));
}

#[test]
fn a_loop_that_finds_the_queue_empty_now_and_then_still_sheds_while_the_kernel_drops() {
    // Loops sharing the socket and two cores with the flood drain the queue in bursts when
    // they run, and it overflows while they do not: empty at times, and losing datagrams.
    let (o, _) = sheds_once_the_kernel_says(true, Some(900), false);
    assert!(o.watchful(), "read often while shedding");
}

#[test]
fn the_queue_is_read_often_for_a_while_after_shedding_ends() {
    let (mut o, mut now) = start();
    let traffic = [(flood(), 1_000), (host(1), 10)];
    shed_through_one_hold(&mut o, &mut now, &traffic);
    // Caught up: a relapse would show within the next second, so it is looked for.
    drive(&mut o, &mut now, 1, &traffic, true);
    assert!(o.watchful());
    drive(&mut o, &mut now, 21, &traffic, true);
    assert!(!o.watchful(), "calm for longer than a relapse");
}

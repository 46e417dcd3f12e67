//! Flood soak: garbage, abandoned opens, half-finished uploads and valid requests from many
//! source ports of one host, while another host holds what it can of the session memory
//! and table and keeps it alive. Valid requests from a third host, direct replies and
//! downloads alike, keep being answered and memory stays bounded.
//!
//! CI runs a 5-second variant. The 60-second soak:
//!
//! ```sh
//! cargo test --release -p mboard-tests --test e2e soak:: -- --ignored --nocapture
//! ```

// The figures are the point of the soak; they show with `--nocapture`.
#![allow(clippy::print_stdout)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mboard_protocol::{Expect, Response};
use mboard_tests::{Peer, ServerProcess, gate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::hog::Hog;

/// The session memory the soak configures; resident memory must stay under it plus
/// [`MARGIN`]: the runtime, the receive buffers, the board's own growth and the allocator's
/// slack.
const SESSION_MEMORY: u64 = 64 << 20;
const MARGIN: u64 = 64 << 20;

/// The flooding host; the checker is on 127.0.0.1, the hogging host on 127.0.0.2.
const FLOODER: &str = "127.0.0.3:0";
const HOGGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// One attacker thread: many source ports, a mix of hostile traffic, as fast as it can.
fn attack(server: SocketAddr, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let sockets: Vec<UdpSocket> = (0..32)
        .map(|_| {
            let s = UdpSocket::bind(FLOODER).expect("bind");
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect();
    let mut buf = vec![0u8; 2048];
    let mut sids: Vec<(usize, String)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let k = rng.random_range(0..sockets.len());
        let s = &sockets[k];
        match rng.random_range(0..4) {
            // Random garbage.
            0 => {
                let len = rng.random_range(0..300);
                let junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                let _ = s.send_to(&junk, server);
            }
            // Opens that are never used: 8 MB each, which they would reserve at a first block.
            1 => {
                let _ = s.send_to(b"a:8000000:1400", server);
            }
            // Half-finished uploads: open, send a few blocks, walk away.
            2 => {
                if let Some((i, sid)) = sids.pop() {
                    for index in 0..rng.random_range(1..20) {
                        let mut block = format!("b:{sid}:{index}:").into_bytes();
                        block.extend(std::iter::repeat_n(b'h', 1400));
                        let _ = sockets[i].send_to(&block, server);
                    }
                } else {
                    let _ = s.send_to(b"a:1400000:1400", server);
                }
            }
            // Valid requests, answered or not.
            _ => {
                let _ = s.send_to(b"4:5", server);
            }
        }
        // Read whatever came back, to learn session ids for half-finished uploads.
        for (i, s) in sockets.iter().enumerate().take(4) {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                let reply = &buf[..n];
                if reply.starts_with(b"0:") && n == 2 + 36 + 5 {
                    let sid = String::from_utf8_lossy(&reply[2..38]).into_owned();
                    if sids.len() < 64 {
                        sids.push((i, sid));
                    }
                }
            }
        }
    }
}

/// What the checker saw while the flood went on.
struct Checked {
    asked: u64,
    answered: u64,
    /// Of those, downloads (`3:5`).
    long: (u64, u64),
    /// The longest stretch without an answer: a flood that overfills the socket's receive
    /// queue makes the kernel drop some of anyone's datagrams, but never for long.
    longest_gap: Duration,
    /// The server's peak resident memory, sampled every second.
    peak: u64,
}

/// Message 5 is this long: its `3:5` is answered by a download offer, whose session a
/// hogging host would keep from being made.
const LONG: usize = 3_000;

/// Sends `pdu` and waits 200 ms for a reply that `fits` (skipping late replies to earlier
/// datagrams), `tries` times at most, as a client resends what goes unanswered.
fn exchange(
    checker: &Peer,
    pdu: &[u8],
    tries: usize,
    fits: impl Fn(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    for _ in 0..tries {
        checker.send(pdu);
        let deadline = Instant::now() + Duration::from_millis(200);
        while let Some(reply) =
            checker.recv_within(deadline.saturating_duration_since(Instant::now()))
        {
            if fits(&reply) {
                return Some(reply);
            }
        }
    }
    None
}

/// One valid request: `3:0`, one datagram given 200 ms; or (`long`) `3:5`, whose offer is
/// fetched block by block and closed, each datagram resent up to twice. Whether it was
/// answered in full.
fn ask(checker: &Peer, long: bool) -> bool {
    if !long {
        // Message 0 never changes, whatever the garbage happens to publish.
        let fits = |r: &[u8]| r.starts_with(b"0:") && r.ends_with(b":seed 0");
        return exchange(checker, b"3:0", 1, fits).is_some();
    }
    let Some(reply) = exchange(checker, b"3:5", 3, |r| r.starts_with(b"d:")) else {
        return false;
    };
    let Ok(Response::Offer(offer)) = Response::parse(Bytes::from(reply), Expect::Entry) else {
        return false;
    };
    let mut whole = Vec::new();
    for index in 0..offer.blocks() {
        let head = format!("0:{}:{index}:", offer.sid);
        let pdu = format!("g:{}:{index}", offer.sid);
        match exchange(checker, pdu.as_bytes(), 3, |r| {
            r.starts_with(head.as_bytes())
        }) {
            Some(block) => whole.extend_from_slice(&block[head.len()..]),
            None => return false,
        }
    }
    // The close is not waited for: a client sends it once.
    checker.send(format!("x:{}", offer.sid).as_bytes());
    whole.ends_with(&[b'L'; LONG])
}

/// Valid requests for `duration`, one at a time.
fn check(server: &ServerProcess, checker: &Peer, duration: Duration) -> Checked {
    let started = Instant::now();
    let (mut asked, mut answered, mut peak) = (0u64, 0u64, 0u64);
    let (mut last_answer, mut longest_gap) = (Instant::now(), Duration::ZERO);
    let mut long = (0, 0);
    let mut sampled = Instant::now();
    while started.elapsed() < duration {
        asked += 1;
        let is_long = asked % 2 == 0;
        long.0 += u64::from(is_long);
        if ask(checker, is_long) {
            answered += 1;
            long.1 += u64::from(is_long);
            longest_gap = longest_gap.max(last_answer.elapsed());
            last_answer = Instant::now();
        }
        if sampled.elapsed() >= Duration::from_secs(1) {
            sampled = Instant::now();
            peak = peak.max(server.resident_bytes().unwrap_or(0));
        }
    }
    longest_gap = longest_gap.max(last_answer.elapsed());
    Checked {
        asked,
        answered,
        long,
        longest_gap,
        peak,
    }
}

/// What the server saw, by its own count: prints its drops and sessions and returns how
/// many datagrams it handled.
fn handled_by_server(metrics: SocketAddr) -> u64 {
    let scrape = mboard_tests::scrape(metrics).expect("scrape");
    let series = |name: &str| scrape.value(name).unwrap_or(0.0) as u64;
    let handled: u64 = scrape
        .body
        .lines()
        .filter(|l| l.starts_with("mboard_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    println!(
        "server: {handled} datagrams handled; dropped: {} over the rate limit, {} shed by a loop behind, {} by the kernel (receive queue full); sessions: {} evicted unclaimed, {} reclaimed slow ({} of hosts over their share), {} taken back from beyond a host's share, {} expired; {} refused for a host's share",
        series("mboard_datagrams_dropped_total{reason=\"rate_limit\"}"),
        series("mboard_datagrams_dropped_total{reason=\"overload\"}"),
        series("mboard_datagrams_dropped_total{reason=\"receive_queue_full\"}"),
        series("mboard_sessions_evicted_total"),
        series("mboard_sessions_reclaimed_total{reason=\"slow\"}")
            + series("mboard_sessions_reclaimed_total{reason=\"slow_over_share\"}"),
        series("mboard_sessions_reclaimed_total{reason=\"slow_over_share\"}"),
        series("mboard_sessions_reclaimed_total{reason=\"over_share\"}"),
        series("mboard_sessions_expired_total"),
        series("mboard_host_share_refusals_total{resource=\"memory\"}")
            + series("mboard_host_share_refusals_total{resource=\"sessions\"}"),
    );
    handled
}

/// `grace` is the server's `--progress-grace`: how soon the hog's sessions, kept alive by a
/// trickle, turn slow and may give way to the checker's downloads.
fn soak(duration: Duration, at_least: f64, grace: &str) {
    let memory = SESSION_MEMORY.to_string();
    let server = ServerProcess::must_start(&[
        "--in-memory",
        "--max-session-memory",
        &memory,
        "--metrics",
        "127.0.0.1:0",
        "--progress-grace",
        grace,
    ]);
    let metrics = server.metrics_addr().expect("metrics address");
    let checker = Peer::new(server.addr);
    for i in 0..5 {
        checker.ask(format!("1:seed {i}"));
    }
    let long = format!("1:{}", "L".repeat(LONG));
    assert_eq!(checker.ask_str(long), "0:5");
    // The hogging host: as much of the table and the memory as its share lets it take,
    // a block each, kept alive.
    let mut hog = Hog::new(server.addr, HOGGER);
    hog.hold_table(5_000);
    hog.hold_memory(&[1 << 20; 64]);
    println!(
        "hogging host holds {} sessions ({} refused)",
        hog.held.len(),
        hog.refused
    );
    let keeper = hog.keep(Duration::from_secs(10));
    let stop = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = (0..3)
        .map(|t| {
            let (addr, stop) = (server.addr, stop.clone());
            std::thread::spawn(move || attack(addr, t, stop))
        })
        .collect();
    let Checked {
        asked,
        answered,
        long,
        longest_gap,
        peak,
    } = check(&server, &checker, duration);
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().expect("attacker");
    }
    drop(keeper.stop());
    let peak = peak.max(server.resident_bytes().unwrap_or(0));
    // The share is of direct replies, as the soak has always counted; downloads, which
    // need a session and so compete with the hogging host, are reported beside it.
    let (direct_asked, direct_answered) = (asked - long.0, answered - long.1);
    let share = direct_answered as f64 / direct_asked as f64;
    let downloads = long.1 as f64 / long.0.max(1) as f64;
    println!(
        "soak {:?}: {direct_answered} of {direct_asked} valid requests answered ({:.1}%), downloads {} of {} ({:.1}%), longest gap {:?}, peak resident memory {:.1} MiB (limit {} MiB session memory + {} MiB margin)",
        duration,
        share * 100.0,
        long.1,
        long.0,
        downloads * 100.0,
        longest_gap,
        peak as f64 / (1 << 20) as f64,
        SESSION_MEMORY >> 20,
        MARGIN >> 20
    );
    // The server's own view first, so that a failure below says what it saw.
    let handled = handled_by_server(metrics);
    assert!(
        longest_gap < Duration::from_secs(3),
        "no valid request answered for {longest_gap:?}"
    );
    assert!(
        share >= at_least,
        "only {:.1}% of valid requests answered",
        share * 100.0
    );
    // Downloads need a session, which the flooding host's opens compete for within its
    // share (docs/SECURITY.md): 71–100% answered, by the machine's load.
    assert!(
        downloads > 0.5,
        "only {:.1}% of downloads answered",
        downloads * 100.0
    );
    assert!(
        peak < SESSION_MEMORY + MARGIN,
        "peak resident memory {peak} bytes"
    );
    assert!(
        handled > asked,
        "the server counted fewer datagrams than the checker sent"
    );
    // Still fully working afterwards, once the flood's backlog in the socket's receive
    // buffer has drained (a second or more of a debug build on a loaded machine).
    let after = Peer::new(server.addr);
    let reply = (0..20).find_map(|_| {
        after.send(b"3:0");
        after.recv_within(Duration::from_secs(1))
    });
    let reply =
        String::from_utf8_lossy(&reply.expect("an answer within 20 s of the flood")).into_owned();
    assert!(reply.ends_with(":seed 0"), "{reply}");
}

#[test]
fn flood_short() {
    // Three attackers flat out, and the checker times its answers under them.
    let _gate = gate::alone();
    // Five seconds of a debug build under three flat-out floods, at the default progress
    // grace: the hog's sessions never turn slow within it. A server that keeps up with the
    // flood (the receive loops batch their system calls) lets the flooding host fill its
    // own share with uploads beside the hog's three quarters; the checker's downloads then
    // find room only because what the hog holds beyond its share is taken back for them.
    soak(Duration::from_secs(5), 0.8, "5s");
}

#[test]
#[ignore = "60-second soak; run with --ignored"]
fn flood_soak_60s() {
    // Three attackers flat out, and the checker times its answers under them.
    let _gate = gate::alone();
    // docs/SECURITY.md has the figures: 99.7% on a 2-core machine shared with builds.
    soak(Duration::from_secs(60), 0.99, "5s");
}

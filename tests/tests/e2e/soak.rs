//! Flood soak: garbage, abandoned opens, half-finished uploads and valid requests from many
//! source ports at once. Valid requests keep being answered and memory stays bounded.
//!
//! CI runs a 5-second variant. The 60-second soak:
//!
//! ```sh
//! cargo test --release -p mboard-tests --test e2e soak:: -- --ignored --nocapture
//! ```

// The figures are the point of the soak; they show with `--nocapture`.
#![allow(clippy::print_stdout)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mboard_tests::{Peer, ServerProcess, gate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The session memory the soak configures; resident memory must stay under it plus
/// [`MARGIN`]: the runtime, the receive buffers, the board's own growth and the allocator's
/// slack.
const SESSION_MEMORY: u64 = 64 << 20;
const MARGIN: u64 = 64 << 20;

/// One attacker thread: many source ports, a mix of hostile traffic, as fast as it can.
fn attack(server: SocketAddr, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let sockets: Vec<UdpSocket> = (0..32)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
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
    /// The longest stretch without an answer: a flood that overfills the socket's receive
    /// queue makes the kernel drop some of anyone's datagrams, but never for long.
    longest_gap: Duration,
    /// The server's peak resident memory, sampled every second.
    peak: u64,
}

/// Valid requests for `duration`, one at a time, each given 200 ms.
fn check(server: &ServerProcess, checker: &Peer, duration: Duration) -> Checked {
    let started = Instant::now();
    let (mut asked, mut answered, mut peak) = (0u64, 0u64, 0u64);
    let (mut last_answer, mut longest_gap) = (Instant::now(), Duration::ZERO);
    let mut sampled = Instant::now();
    while started.elapsed() < duration {
        asked += 1;
        // Message 0 never changes, whatever the garbage happens to publish.
        checker.send(b"3:0");
        let got = checker.recv_within(Duration::from_millis(200));
        if got.is_some_and(|r| r.starts_with(b"0:") && r.ends_with(b":seed 0")) {
            answered += 1;
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
        "server: {handled} datagrams handled; dropped: {} over the rate limit, {} by the kernel (receive queue full); sessions: {} evicted unclaimed, {} expired",
        series("mboard_datagrams_dropped_total{reason=\"rate_limit\"}"),
        series("mboard_datagrams_dropped_total{reason=\"receive_queue_full\"}"),
        series("mboard_sessions_evicted_total"),
        series("mboard_sessions_expired_total"),
    );
    handled
}

fn soak(duration: Duration) {
    let memory = SESSION_MEMORY.to_string();
    let server = ServerProcess::must_start(&[
        "--in-memory",
        "--max-session-memory",
        &memory,
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = server.metrics_addr().expect("metrics address");
    let checker = Peer::new(server.addr);
    for i in 0..5 {
        checker.ask(format!("1:seed {i}"));
    }
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
        longest_gap,
        peak,
    } = check(&server, &checker, duration);
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().expect("attacker");
    }
    let peak = peak.max(server.resident_bytes().unwrap_or(0));
    let share = answered as f64 / asked as f64;
    println!(
        "soak {:?}: {answered} of {asked} valid requests answered ({:.1}%), longest gap {:?}, peak resident memory {:.1} MiB (limit {} MiB session memory + {} MiB margin)",
        duration,
        share * 100.0,
        longest_gap,
        peak as f64 / (1 << 20) as f64,
        SESSION_MEMORY >> 20,
        MARGIN >> 20
    );
    assert!(
        longest_gap < Duration::from_secs(3),
        "no valid request answered for {longest_gap:?}"
    );
    assert!(
        share > 0.5,
        "only {:.1}% of valid requests answered",
        share * 100.0
    );
    assert!(
        peak < SESSION_MEMORY + MARGIN,
        "peak resident memory {peak} bytes"
    );
    assert!(
        handled_by_server(metrics) > asked,
        "the server counted fewer datagrams than the checker sent"
    );
    // Still fully working afterwards.
    assert!(Peer::new(server.addr).ask_str("3:0").ends_with(":seed 0"));
}

#[test]
fn flood_short() {
    // Three attackers flat out, and the checker times its answers under them.
    let _gate = gate::alone();
    soak(Duration::from_secs(5));
}

#[test]
#[ignore = "60-second soak; run with --ignored"]
fn flood_soak_60s() {
    // Three attackers flat out, and the checker times its answers under them.
    let _gate = gate::alone();
    soak(Duration::from_secs(60));
}

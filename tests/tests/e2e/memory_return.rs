//! Memory comes back after a crowd of sessions has expired: three rounds of 100,000
//! uploads with one block each, from four hosts, and the server's resident memory before,
//! at the peak and after each round has expired (docs/BENCHMARKS.md, "Memory returned").
//!
//! CI runs one round of 20,000. The measurement:
//!
//! ```sh
//! cargo test --release -p mboard-tests --test e2e memory_return:: -- --ignored --nocapture
//! ```

// The figures are the point; they show with `--nocapture`.
#![allow(clippy::print_stdout)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mboard_tests::{ServerProcess, gate, scrape};

use super::hog::Hog;

const MIB: f64 = (1 << 20) as f64;
/// Long enough for the setup of a round (about 3 s in a release build) to finish before
/// its first sessions expire.
const SESSION_TIMEOUT: &str = "10s";
/// How long memory is given to come back after the last session expired.
const SETTLE: Duration = Duration::from_secs(15);

fn series(metrics: SocketAddr, name: &str) -> u64 {
    scrape(metrics).expect("scrape").value(name).unwrap_or(0.0) as u64
}

/// Resident memory of `server` once it has settled: the least of a few samples.
fn resident(server: &ServerProcess) -> u64 {
    let mut least = u64::MAX;
    for _ in 0..5 {
        least = least.min(server.resident_bytes().expect("resident memory"));
        std::thread::sleep(Duration::from_millis(100));
    }
    least
}

/// One round: `sessions` uploads of 2,000 bytes with one block of 1,400 each, spread
/// over four hosts (so that each stays within its share), then waits until all expired.
/// Returns the resident memory at the peak and after.
fn round(server: &ServerProcess, metrics: SocketAddr, sessions: usize) -> (u64, u64) {
    let per_host = sessions / 4;
    let mut hogs: Vec<Hog> = (2..6)
        .map(|last| Hog::new(server.addr, Ipv4Addr::new(127, 0, 0, last)))
        .collect();
    let held: usize = hogs
        .iter_mut()
        .map(|h| h.hold_many(per_host, 2_000, 1_400))
        .sum();
    let refused: usize = hogs.iter().map(|h| h.refused).sum();
    assert_eq!(
        held,
        per_host * 4,
        "every session opened and claimed ({refused} refused)"
    );
    let peak = resident(server);
    drop(hogs);
    let deadline = Instant::now() + Duration::from_secs(60);
    while series(metrics, "mboard_sessions") > 0 {
        assert!(Instant::now() < deadline, "sessions did not expire");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The allocator gives freed pages back after they have been unused for 10 s.
    std::thread::sleep(SETTLE);
    (peak, resident(server))
}

fn measure(rounds: usize, sessions: usize) -> (u64, Vec<(u64, u64)>) {
    let server = ServerProcess::must_start(&[
        "--in-memory",
        "--metrics",
        "127.0.0.1:0",
        "--session-timeout",
        SESSION_TIMEOUT,
    ]);
    let metrics = server.metrics_addr().expect("metrics address");
    let start = resident(&server);
    println!("start: {:.1} MiB", start as f64 / MIB);
    let results: Vec<(u64, u64)> = (1..=rounds)
        .map(|r| {
            let (peak, after) = round(&server, metrics, sessions);
            println!(
                "round {r}: {sessions} sessions, peak {:.1} MiB, after expiry {:.1} MiB",
                peak as f64 / MIB,
                after as f64 / MIB
            );
            (peak, after)
        })
        .collect();
    (start, results)
}

#[test]
fn memory_comes_back_after_a_crowd_of_sessions_expires() {
    // 40,000 datagrams, and resident memory sampled: nothing else should allocate beside.
    let _gate = gate::load();
    let (start, rounds) = measure(1, 20_000);
    let (peak, after) = rounds[0];
    assert!(peak > start, "the crowd took memory");
    // A sanity bound, not the measure: most of what the crowd took is given back.
    assert!(
        after < start + (peak - start) / 2,
        "start {start}, peak {peak}, after {after}"
    );
}

#[test]
#[ignore = "three rounds of 100,000 sessions; run with --ignored --nocapture"]
fn memory_comes_back_after_three_crowds_of_100000() {
    let _gate = gate::alone();
    let (start, rounds) = measure(3, 100_000);
    let last = rounds.last().expect("rounds").1;
    assert!(
        last < start + (64 << 20),
        "start {start}, after three rounds {last}"
    );
}

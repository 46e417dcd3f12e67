//! Lockouts by one host with many ports (docs/SECURITY.md, "Lockout"): the memory lockout
//! (16 MiB uploads trickled a block at a time) and the session-table lockout (100,000
//! three-byte uploads with one block each), from 127.0.0.2, against a victim on 127.0.0.1
//! using the real `mboard-client`.

// The timings are worth seeing; they show with `--nocapture`.
#![allow(clippy::print_stdout)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mboard_protocol::{Expect, Response};
use mboard_tests::proxy::{Faults, Proxy};
use mboard_tests::{ServerProcess, binary, cli, gate, scrape};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::hog::Hog;

const MIB: u64 = 1 << 20;
const MIB16: u64 = 16 << 20;
const MEMORY: u64 = 256 << 20;
const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Longer than the default 30 s, so that the first sessions of an attack are still there
/// when a debug build has finished setting up the last ones; it only makes a lockout
/// harder to break.
const SESSION_TIMEOUT: &str = "90s";

/// The real server, in memory, with a metrics endpoint and `extra` options; and where its
/// metrics are.
fn start(extra: &[&str]) -> (ServerProcess, SocketAddr) {
    let mut args = vec!["--in-memory", "--metrics", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = ServerProcess::must_start(&args);
    let metrics = server.metrics_addr().expect("metrics address");
    (server, metrics)
}

/// Per-host shares off, so that one host can fill the server.
const SHARES_OFF: [&str; 4] = ["--host-memory-share", "100", "--host-session-share", "100"];

fn metric(metrics: SocketAddr, series: &str) -> u64 {
    let s = scrape(metrics).expect("scrape");
    s.value(series).unwrap_or(0.0) as u64
}

/// The size of an upload in blocks of 65,000 whose reservation is `cost` bytes: its size
/// plus 8 bytes for every 64 blocks of its bitmap.
fn size_for_cost(cost: u64) -> u64 {
    let mut size = cost;
    loop {
        let words = size.div_ceil(65_000).div_ceil(64);
        if size + 8 * words <= cost {
            return size;
        }
        size -= 1;
    }
}

/// What the victim did, and how long each took.
struct Victim {
    last: Duration,
    get: Duration,
    publish: Duration,
}

/// The board the victim reads: three short messages and one of 3,000 bytes (id 3).
fn seed(server: SocketAddr) -> Vec<u8> {
    for i in 0..3 {
        let out = cli(server, &["publish", &format!("seed {i}")], b"");
        assert_eq!(out.code, Some(0), "{}", out.stderr);
    }
    let text = vec![b'k'; 3_000];
    let out = cli(server, &["publish", "-"], &text);
    assert_eq!(out.out().trim(), "3", "{}", out.stderr);
    text
}

/// The victim's `last`, its `get` of the 3 KB message and its 5 MiB publish, each of which
/// must succeed.
fn victim(server: SocketAddr, three_kb: &[u8]) -> Victim {
    let t = Instant::now();
    let out = cli(server, &["last", "-n", "4"], b"");
    assert_eq!(out.code, Some(0), "last: {}", out.stderr);
    assert!(out.out().contains("seed 2"), "{}", out.out());
    let last = t.elapsed();
    let t = Instant::now();
    let out = cli(server, &["get", "3"], b"");
    assert_eq!(out.code, Some(0), "get: {}", out.stderr);
    assert_eq!(out.stdout, three_kb);
    let get = t.elapsed();
    let t = Instant::now();
    let big = vec![b'v'; 5 << 20];
    let out = cli(server, &["publish", "-"], &big);
    assert_eq!(out.code, Some(0), "publish: {}", out.stderr);
    let publish = t.elapsed();
    println!("victim: last {last:?}, get 3 KB {get:?}, publish 5 MiB {publish:?}");
    Victim { last, get, publish }
}

/// Generous bounds: on loopback these take milliseconds; only a lockout takes seconds.
fn within_normal_time(v: &Victim) {
    assert!(v.last < Duration::from_secs(3), "last took {:?}", v.last);
    assert!(v.get < Duration::from_secs(3), "get took {:?}", v.get);
    assert!(
        v.publish < Duration::from_secs(5),
        "publish took {:?}",
        v.publish
    );
}

#[test]
fn one_host_with_many_ports_cannot_lock_another_host_out() {
    // Loads the machine (100,000 attack datagrams) and times the victim.
    let _gate = gate::load();
    let (server, metrics) = start(&["--session-timeout", SESSION_TIMEOUT]);
    let three_kb = seed(server.addr);
    let mut hog = Hog::new(server.addr, ATTACKER);
    let started = Instant::now();
    // The memory lockout: sixteen 16 MiB uploads from one port. Beyond its share (a
    // quarter), a host may take only room that leaves a quarter free.
    hog.hold_memory(&[MIB16; 16]);
    let memory_sessions = hog.held.len();
    // The session-table lockout: 63 sessions on each of 1,600 ports.
    hog.hold_table(100_800);
    let reserved = metric(metrics, "mboard_session_reserved_bytes");
    let sessions = metric(metrics, "mboard_sessions");
    println!(
        "attacker holds {} sessions ({memory_sessions} of 16 MiB), {reserved} bytes reserved; {} refused; set up in {:?}",
        hog.held.len(),
        hog.refused,
        started.elapsed()
    );
    assert_eq!(
        memory_sessions, 11,
        "eleven 16 MiB uploads fit in three quarters"
    );
    assert!(
        reserved <= MEMORY / 4 * 3 && reserved > MEMORY / 2,
        "{reserved}"
    );
    assert!(sessions as usize >= hog.held.len(), "{sessions}");
    let refusals = metric(
        metrics,
        "mboard_host_share_refusals_total{resource=\"memory\"}",
    );
    assert!(refusals >= 5, "{refusals} host refusals");

    let keeper = hog.keep(Duration::from_secs(10));
    let v = victim(server.addr, &three_kb);
    drop(keeper.stop());
    within_normal_time(&v);
    // Nobody had to be reclaimed, nor anything taken back from beyond the attacker's
    // share: the room it had to leave free was free.
    for reason in ["slow", "slow_over_share", "over_share"] {
        let series = format!("mboard_sessions_reclaimed_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(metrics, &series), 0, "{series}");
    }
}

#[test]
fn sessions_that_do_not_move_give_way_to_a_host_that_finds_the_server_full() {
    // Loads the machine (100,000 attack datagrams) and times the victim.
    let _gate = gate::load();
    // Shares off, so that one host can fill the server and only reclaiming makes room.
    let (server, metrics) =
        start(&[&SHARES_OFF[..], &["--session-timeout", SESSION_TIMEOUT]].concat());
    let three_kb = seed(server.addr);
    let mut hog = Hog::new(server.addr, ATTACKER);
    // Both lockouts at once: the table nearly full of `a:3:2`, then 16 MiB uploads, then
    // the last few slots, then one upload sized to fill the rest of the memory.
    hog.hold_table(99_981);
    hog.hold_memory(&[MIB16; 7]);
    let slots = 100_000 - metric(metrics, "mboard_sessions");
    hog.hold_table(slots as usize - 1);
    let rest = MEMORY - metric(metrics, "mboard_session_reserved_bytes");
    hog.hold_memory(&[size_for_cost(rest)]);
    let held_at = Instant::now();
    assert_eq!(metric(metrics, "mboard_sessions"), 100_000, "table full");
    assert_eq!(
        metric(metrics, "mboard_session_reserved_bytes"),
        MEMORY,
        "memory full"
    );
    let keeper = hog.keep(Duration::from_secs(10));
    // A 16 MiB upload's first block of 65,000 bytes buys it 5 s + 7.9 s.
    std::thread::sleep(Duration::from_secs(13).saturating_sub(held_at.elapsed()));
    let v = victim(server.addr, &three_kb);
    let hog = keeper.stop();
    within_normal_time(&v);
    let reclaimed = metric(metrics, "mboard_sessions_reclaimed_total{reason=\"slow\"}");
    let expired = hog.expired();
    println!("reclaimed {reclaimed}; {expired} of the attacker's sessions answer expired");
    // The largest go first: a 16 MiB upload gave way for the first reservation, and its
    // room served the rest.
    assert!(reclaimed >= 1, "{reclaimed}");
    assert_eq!(
        expired as u64, reclaimed,
        "only 16 MiB uploads were reclaimed"
    );
}

#[test]
fn an_honest_16_mib_upload_at_10_percent_loss_is_never_reclaimed() {
    // A large lossy transfer while others keep reclaiming: loads the machine.
    let _gate = gate::load();
    // Shares off, and the floor applying from the first 100 ms: stricter than the default.
    let (server, metrics) = start(&[&SHARES_OFF[..], &["--progress-grace", "100ms"]].concat());
    let mut rng = StdRng::seed_from_u64(16);
    // The largest text a 16 MiB upload carries (`1:` and the text).
    // The largest text the client can publish: the server's 16 MiB request limit less the
    // `5:<token>:` the text travels in.
    let big: Vec<u8> = (0..MIB16 - 39).map(|_| rng.random()).collect();
    // 1 MiB uploads with a first block each, filling the memory.
    let mut hog = Hog::new(server.addr, ATTACKER);
    hog.hold_memory(&[MIB; 255]);
    let rest = MEMORY - metric(metrics, "mboard_session_reserved_bytes");
    hog.hold_memory(&[size_for_cost(rest)]);
    assert_eq!(metric(metrics, "mboard_session_reserved_bytes"), MEMORY);
    // 65,000 bytes buy 0.1 s + 7.9 s.
    std::thread::sleep(Duration::from_secs(8));
    let keeper = hog.keep(Duration::from_secs(10));
    // Another host keeps taking 1 MiB at a time, so that the server stays full and each
    // of its reservations, and the honest one, has to reclaim slow sessions.
    let stop = Arc::new(AtomicBool::new(false));
    let grabs = Arc::new(AtomicU64::new(0));
    let grabber = {
        let (stop, grabs, addr) = (stop.clone(), grabs.clone(), server.addr);
        std::thread::spawn(move || grab(addr, &stop, &grabs))
    };
    let proxy = Proxy::start(server.addr, Faults::lossy(), Faults::lossy(), 11);
    let t = Instant::now();
    let before = grabs.load(Ordering::Relaxed);
    let published = cli(proxy.addr, &["--timeout", "60s", "publish", "-"], &big);
    let took = t.elapsed();
    let during = grabs.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    grabber.join().expect("grabber");
    drop(keeper.stop());
    assert_eq!(published.code, Some(0), "{}", published.stderr);
    let reclaimed = metric(metrics, "mboard_sessions_reclaimed_total{reason=\"slow\"}");
    let shed = metric(
        metrics,
        "mboard_datagrams_dropped_total{reason=\"overload\"}",
    );
    let expired = metric(metrics, "mboard_sessions_expired_total");
    println!(
        "16 MiB at 10% loss in {took:?}, while {during} grabs of 1 MiB took room; {reclaimed} sessions reclaimed in all, {expired} expired; {shed} datagrams shed"
    );
    assert!(during >= 5, "only {during} grabs while the upload ran");
    // Each grab reclaimed a slow session, and the upload sixteen. Except one grab at most:
    // once the upload is stored its 16 MiB are free, and a grab that lands between then and
    // the count above needs no reclaim (the grabs are 20 ms apart).
    assert!(reclaimed + 1 >= during + 16, "{reclaimed} reclaimed");
    let id = published.out().trim().to_owned();
    let got = cli(server.addr, &["get", &id], b"");
    assert!(got.stdout == big, "the 16 MiB read back differ");
}

/// From 127.0.0.3, takes 1 MiB (an open and its first block) every 20 ms until `stop`.
fn grab(server: SocketAddr, stop: &AtomicBool, grabs: &AtomicU64) {
    let sockets: Vec<UdpSocket> = (0..4)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.3:0").expect("bind");
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            s
        })
        .collect();
    let mut buf = vec![0u8; 2048];
    let mut k = 0;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
        k += 1;
        let s = &sockets[k % sockets.len()];
        let _ = s.send_to(format!("a:{MIB}:65000").as_bytes(), server);
        let Ok((n, _)) = s.recv_from(&mut buf) else {
            continue;
        };
        let Ok(Response::Opened { sid, .. }) =
            Response::parse(Bytes::copy_from_slice(&buf[..n]), Expect::Opened)
        else {
            continue;
        };
        let mut block = format!("b:{sid}:0:").into_bytes();
        block.resize(block.len() + 65_000, b'g');
        let _ = s.send_to(&block, server);
        if let Ok((n, _)) = s.recv_from(&mut buf)
            && buf[..n].starts_with(b"0:")
        {
            grabs.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn host_shares_and_the_progress_floor_are_options_with_environment_variables() {
    // Only start-up refusals: nothing is timed.
    let _gate = gate::plain();
    let refused = |args: &[&str], env: &[(&str, &str)], code: i32| {
        let out = Command::new(binary("mboard-server"))
            .args(["--in-memory", "--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run mboard-server");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        stderr
    };
    // Values that parse but cannot work: one line, exit 1.
    let err = refused(&["--host-memory-share", "0"], &[], 1);
    assert_eq!(
        err.lines().last(),
        Some(
            "error: invalid configuration: host memory share must be a percentage from 1 to 100, not 0"
        )
    );
    let err = refused(&[], &[("MBOARD_HOST_SESSION_SHARE", "101")], 1);
    assert!(
        err.contains("host session share must be a percentage"),
        "{err}"
    );
    // Values that do not parse: a usage error naming the option, exit 2.
    let err = refused(&[], &[("MBOARD_PROGRESS_FLOOR", "fast")], 2);
    assert!(err.contains("--progress-floor"), "{err}");
    let err = refused(&[], &[("MBOARD_PROGRESS_GRACE", "soon")], 2);
    assert!(err.contains("--progress-grace"), "{err}");
    let err = refused(&[], &[("MBOARD_HOST_MEMORY_SHARE", "300")], 2);
    assert!(err.contains("--host-memory-share"), "{err}");
    // Good values start a server.
    let server = ServerProcess::must_start(&[
        "--in-memory",
        "--host-memory-share",
        "50",
        "--host-session-share",
        "10",
        "--progress-floor",
        "0",
        "--progress-grace",
        "1s",
    ]);
    assert!(server.stop().is_some());
}

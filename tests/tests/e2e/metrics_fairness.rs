//! The metrics endpoint stays reachable for a scraper while other hosts hold, churn or
//! keep alive its connections (the "metrics lockout" attack, docs/SECURITY.md).
//!
//! The attackers bind to other loopback addresses (127.0.0.2 and up) before connecting,
//! so the server sees them as other hosts than the scraper on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mboard_tests::{TestServer, gate, scrape};
use tokio::net::{TcpSocket, TcpStream};

/// No attack outlives this, even if the test that started it panics before stopping it.
const ATTACK_MAX: Duration = Duration::from_secs(30);

/// What each attacking connection does.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Connects and sends nothing; reconnects as soon as the server closes it.
    Idle,
    /// Sends `GET /metrics` on a keep-alive connection every `0`, reading each response;
    /// reconnects when closed.
    KeepAlive(Duration),
}

/// Connections from other hosts, run on a runtime of their own until stopped.
struct Attack {
    stop: Arc<AtomicBool>,
    /// Connections established (first ones and reconnections).
    connects: Arc<AtomicU64>,
    /// Connections that are up and, for keep-alive ones, got their first response.
    ready: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Attack {
    /// `per_host` connections from each of `hosts`, all doing `behaviour` to `target`.
    fn start(
        target: SocketAddr,
        hosts: &[Ipv4Addr],
        per_host: usize,
        behaviour: Behaviour,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let connects = Arc::new(AtomicU64::new(0));
        let ready = Arc::new(AtomicU64::new(0));
        let hosts = hosts.to_vec();
        let (s, c, r) = (stop.clone(), connects.clone(), ready.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("attack runtime");
            runtime.block_on(async move {
                let deadline = Instant::now() + ATTACK_MAX;
                let mut tasks = tokio::task::JoinSet::new();
                for host in hosts {
                    for _ in 0..per_host {
                        let peer = Attacker {
                            host,
                            target,
                            behaviour,
                            deadline,
                            stop: s.clone(),
                            connects: c.clone(),
                            ready: r.clone(),
                        };
                        tasks.spawn(peer.run());
                    }
                }
                while tasks.join_next().await.is_some() {}
            });
        });
        Attack {
            stop,
            connects,
            ready,
            thread: Some(thread),
        }
    }

    /// Waits (up to 5 s) until `n` connections are ready.
    fn wait_ready(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.ready.load(Relaxed) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One attacking connection, reconnected whenever it is closed.
struct Attacker {
    host: Ipv4Addr,
    target: SocketAddr,
    behaviour: Behaviour,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    connects: Arc<AtomicU64>,
    ready: Arc<AtomicU64>,
}

impl Attacker {
    fn going(&self) -> bool {
        !self.stop.load(Relaxed) && Instant::now() < self.deadline
    }

    async fn run(self) {
        let mut first = true;
        while self.going() {
            let Ok(stream) = self.connect().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            self.connects.fetch_add(1, Relaxed);
            match self.behaviour {
                Behaviour::Idle => {
                    if std::mem::take(&mut first) {
                        self.ready.fetch_add(1, Relaxed);
                    }
                    self.hold(stream).await;
                }
                Behaviour::KeepAlive(every) => self.keep_alive(stream, every, &mut first).await,
            }
        }
    }

    /// Connects from this attacker's host, giving up after a second (a SYN the kernel
    /// dropped because the backlog was full is retried only after one).
    async fn connect(&self) -> std::io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(self.host.into(), 0))?;
        match tokio::time::timeout(Duration::from_secs(1), socket.connect(self.target)).await {
            Ok(connected) => connected,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Sends nothing and returns once the server closes the connection (or when stopped).
    async fn hold(&self, stream: TcpStream) {
        while self.going() && !closed_within(&stream, Duration::from_millis(100)).await {}
    }

    /// Asks for the metrics every `every` on one connection until it fails, reconnecting
    /// as soon as the server closes it.
    async fn keep_alive(&self, stream: TcpStream, every: Duration, first: &mut bool) {
        while self.going() {
            if get_metrics(&stream).await.is_err() {
                return;
            }
            if std::mem::take(first) {
                self.ready.fetch_add(1, Relaxed);
            }
            let until = Instant::now() + every;
            while self.going() && Instant::now() < until {
                if closed_within(&stream, Duration::from_millis(100)).await {
                    return;
                }
            }
        }
    }
}

/// Whether the server closes `stream` within `wait` (anything it sends is ignored).
async fn closed_within(stream: &TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, read_some(stream, &mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Reads what has arrived, waiting for something (the tests' tokio has no `io-util`).
async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            done => return done,
        }
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One keep-alive `GET /metrics`, reading the whole response by its `content-length`.
async fn get_metrics(stream: &TcpStream) -> Result<()> {
    write_all(stream, b"GET /metrics HTTP/1.1\r\nHost: mboard\r\n\r\n").await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 16_384];
    let whole = loop {
        let n = read_some(stream, &mut buf).await?;
        if n == 0 {
            bail!("closed mid-response");
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(whole) = response_length(&got)? {
            break whole;
        }
    };
    while got.len() < whole {
        let n = read_some(stream, &mut buf).await?;
        if n == 0 {
            bail!("closed mid-body");
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// The length of the response whose start is `got`, once its headers are complete.
fn response_length(got: &[u8]) -> Result<Option<usize>> {
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&got[..end]);
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .context("no content-length")?;
    Ok(Some(end + 4 + length))
}

/// One `GET /metrics` from 127.0.0.1, as a scraper makes it, failing after 10 s; returns
/// how long it took.
fn timed_scrape(addr: SocketAddr) -> Result<Duration> {
    let started = Instant::now();
    let limit = Duration::from_secs(10);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, limit).context("connect")?;
    stream.set_read_timeout(Some(limit.saturating_sub(started.elapsed())))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: application/openmetrics-text\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).context("read")?;
    let text = String::from_utf8_lossy(&raw);
    if !text.starts_with("HTTP/1.1 200 ") || !text.ends_with("# EOF\n") {
        bail!("not a whole scrape: {:?}", text.lines().next());
    }
    Ok(started.elapsed())
}

/// Scrapes `n` times, half a second apart, while an attack runs; every scrape must
/// succeed, each within `bound` (unattacked, one takes about a millisecond).
#[allow(clippy::print_stderr)] // what the scrapes took, for `--nocapture`
fn scrapes_succeed(metrics: SocketAddr, n: usize, attack: &Attack, what: &str, bound: Duration) {
    let mut took = Vec::new();
    for i in 0..n {
        match timed_scrape(metrics) {
            Ok(t) => took.push(t),
            Err(e) => panic!("{what}: scrape {i} failed after {took:?}: {e:#}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let connects = attack.connects.load(Relaxed);
    eprintln!("{what}: scrapes took {took:?}; attacker connections made: {connects}");
    for t in &took {
        assert!(*t < bound, "{what}: a scrape took {t:?}");
    }
}

fn loopback(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Under 200 peers that reconnect the moment they are closed, the test listener's
/// 128-entry backlog overflows now and then, and a SYN the kernel drops is sent again
/// after 1 s, then 2 s more: this bound allows two such drops in a row.
const CHURN_BOUND: Duration = Duration::from_secs(4);

fn server() -> (TestServer, SocketAddr) {
    let server = TestServer::builder().metrics().start();
    let metrics = server.metrics.expect("metrics endpoint");
    (server, metrics)
}

fn value(metrics: SocketAddr, series: &str) -> f64 {
    let s = scrape(metrics).expect("scrape");
    s.value(series)
        .unwrap_or_else(|| panic!("no {series}:\n{}", s.body))
}

#[test]
fn idle_reconnecting_connections_from_one_host_do_not_lock_a_scraper_out() {
    // The attacks share two cores with the server: one at a time, and beside no other
    // load, so that each test measures its own attack.
    let _gate = gate::load();
    let (_server, metrics) = server();
    let attack = Attack::start(metrics, &[loopback(2)], 200, Behaviour::Idle);
    attack.wait_ready(200);
    scrapes_succeed(metrics, 4, &attack, "200 idle from 127.0.0.2", CHURN_BOUND);
    drop(attack);
    // 127.0.0.2 held its 4 slots; every other connection of its took one of them.
    let evicted = "mboard_metrics_connections_evicted_total{reason=\"per_ip\",state=\"idle\"}";
    assert!(value(metrics, evicted) >= 196.0);
}

#[test]
fn idle_connections_from_many_hosts_give_way_to_a_scraper() {
    // The attacks share two cores with the server: one at a time, and beside no other
    // load, so that each test measures its own attack.
    let _gate = gate::load();
    let (_server, metrics) = server();
    // Eight hosts at their per-host cap of 4 take twice the 16 connections there are.
    let hosts: Vec<Ipv4Addr> = (2..10).map(loopback).collect();
    let attack = Attack::start(metrics, &hosts, 25, Behaviour::Idle);
    attack.wait_ready(200);
    scrapes_succeed(metrics, 4, &attack, "200 idle from 8 hosts", CHURN_BOUND);
    drop(attack);
    let evicted = "mboard_metrics_connections_evicted_total{reason=\"full\",state=\"idle\"}";
    assert!(value(metrics, evicted) >= 4.0);
}

#[test]
fn keep_alive_connections_do_not_delay_a_scrape() {
    // The attacks share two cores with the server: one at a time, and beside no other
    // load, so that each test measures its own attack.
    let _gate = gate::load();
    let (_server, metrics) = server();
    // Four hosts, four each: every one of the 16 connections is held, and each asks for
    // the metrics every 2 s, inside the header timeout, so none is ever closed for idling.
    let hosts: Vec<Ipv4Addr> = (2..6).map(loopback).collect();
    let attack = Attack::start(
        metrics,
        &hosts,
        4,
        Behaviour::KeepAlive(Duration::from_secs(2)),
    );
    attack.wait_ready(16);
    // Nothing here is retried by the kernel: a generous bound on what takes a millisecond.
    let bound = Duration::from_secs(3);
    scrapes_succeed(metrics, 6, &attack, "16 keep-alive from 4 hosts", bound);
    drop(attack);
    // The first scrape at least found every connection taken (later ones may arrive while
    // an evicted attacker is reconnecting).
    let evicted = "mboard_metrics_connections_evicted_total{reason=\"full\",state=\"idle\"}";
    assert!(value(metrics, evicted) >= 1.0);
}

/// Runs the real server with `args` and `env`, returning its exit code and standard error
/// if it exits within 5 s, or the standard error up to `until` if it logs it first.
fn run_server(args: &[&str], env: &[(&str, &str)], until: &str) -> (Option<i32>, String) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(mboard_tests::binary("mboard-server"))
        .args([
            "--in-memory",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ])
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mboard-server");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let until = until.to_owned();
    std::thread::spawn(move || {
        let mut log = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            log.push_str(&line);
            log.push('\n');
            if line.contains(&until) {
                break;
            }
        }
        let _ = tx.send(log);
    });
    let log = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
    if let Ok(Some(status)) = child.try_wait() {
        return (status.code(), log);
    }
    let _ = child.kill();
    let status = child.wait().expect("wait for mboard-server");
    (status.code(), log)
}

#[test]
fn the_connection_caps_are_options_and_environment_variables() {
    let _gate = gate::plain();
    let env = [
        ("MBOARD_METRICS_CONNECTIONS", "7"),
        ("MBOARD_METRICS_CONNECTIONS_PER_IP", "2"),
    ];
    let (_, log) = run_server(&[], &env, "serving metrics");
    assert!(log.contains("connections=7 per_ip=2"), "{log}");
    // A flag overrides the environment.
    let (_, log) = run_server(&["--metrics-connections", "9"], &env, "serving metrics");
    assert!(log.contains("connections=9 per_ip=2"), "{log}");
}

#[test]
fn zero_connection_caps_are_refused_in_one_line() {
    let _gate = gate::plain();
    let quiet = ["--log-level", "warn"];
    let (code, log) = run_server(
        &[&quiet[..], &["--metrics-connections", "0"]].concat(),
        &[],
        "never",
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        log,
        "error: invalid configuration: metrics connections must be at least 1\n"
    );
    let env = [("MBOARD_METRICS_CONNECTIONS_PER_IP", "0")];
    let (code, log) = run_server(&quiet, &env, "never");
    assert_eq!(code, Some(1));
    assert_eq!(
        log,
        "error: invalid configuration: metrics connections per ip must be at least 1\n"
    );
}

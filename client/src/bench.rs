//! The engine of `mboard-bench`: closed-loop load, a bare UDP echo ceiling, and reports.
//!
//! Each client is a thread with its own socket that sends one request, waits for its reply
//! (resending after a timeout, so a lost datagram cannot stall it), records the latency and
//! sends the next. Throughput is what the server sustains against that many clients.

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{Client, ClientConfig};

/// What each client does, over and over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scenario {
    /// Any datagram to the echo ceiling: the reply is the request.
    Echo,
    /// `3:<id>` over ids `0..messages`.
    Get {
        /// How many messages to spread the reads over.
        messages: u64,
    },
    /// `4:<n>`.
    Last {
        /// Messages per request.
        n: u64,
    },
    /// `1:<text>` in one datagram (at-least-once).
    Publish {
        /// Text bytes.
        size: usize,
    },
    /// A publish through an upload session (exactly-once), as the CLI does.
    PublishSession {
        /// Text bytes.
        size: usize,
    },
    /// One large publish per operation.
    Upload {
        /// Text bytes.
        size: usize,
    },
    /// One large get per operation, of a message [`seed`] publishes first.
    Download {
        /// Text bytes.
        size: usize,
        /// The message to read (set by [`seed`]).
        id: u64,
    },
}

impl Scenario {
    /// The scenario's name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Echo => "echo",
            Scenario::Get { .. } => "get",
            Scenario::Last { .. } => "last",
            Scenario::Publish { .. } => "publish",
            Scenario::PublishSession { .. } => "publish-session",
            Scenario::Upload { .. } => "upload",
            Scenario::Download { .. } => "download",
        }
    }

    /// Bytes of payload an operation moves (for MB/s), if that is the point of it.
    fn payload(&self) -> Option<usize> {
        match self {
            Scenario::Upload { size } | Scenario::Download { size, .. } => Some(*size),
            _ => None,
        }
    }
}

/// How to load the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// The server (or echo ceiling).
    pub server: SocketAddr,
    /// Concurrent closed-loop clients.
    pub clients: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it, to fill caches and queues.
    pub warmup: Duration,
    /// Resend a single-datagram request after this long without a reply.
    pub resend: Duration,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The scenario's name.
    pub scenario: &'static str,
    /// Concurrent clients.
    pub clients: usize,
    /// Measured seconds.
    pub seconds: f64,
    /// Operations completed in the measured time.
    pub operations: u64,
    /// Latency percentiles in microseconds: p50, p99, p99.9.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Resends after a timeout.
    pub timeouts: u64,
    /// Operations that failed (error reply, or no reply within 5 s).
    pub errors: u64,
    /// Megabytes per second moved, for transfer scenarios.
    pub mb_per_s: Option<f64>,
    /// What the first failed operation reported, so a run that fails says why.
    pub first_error: Option<String>,
}

impl Report {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.operations as f64 / self.seconds
    }

    /// One JSON object.
    pub fn json(&self) -> String {
        let mut s = format!(
            "{{\"scenario\":\"{}\",\"clients\":{},\"seconds\":{:.3},\"operations\":{},\"rate\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"timeouts\":{},\"errors\":{}",
            self.scenario,
            self.clients,
            self.seconds,
            self.operations,
            self.rate(),
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.timeouts,
            self.errors
        );
        if let Some(mb) = self.mb_per_s {
            let _ = write!(s, ",\"mb_per_s\":{mb:.1}");
        }
        if let Some(e) = &self.first_error {
            let escaped: String = e.chars().flat_map(char::escape_default).collect();
            let _ = write!(s, ",\"first_error\":\"{escaped}\"");
        }
        s.push('}');
        s
    }

    /// One line for people.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{:<16} clients={:<3} {:>10.0} ops/s  p50 {:>8.1} us  p99 {:>8.1} us  p99.9 {:>8.1} us  timeouts {}  errors {}",
            self.scenario,
            self.clients,
            self.rate(),
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.timeouts,
            self.errors
        );
        if let Some(mb) = self.mb_per_s {
            let _ = write!(s, "  {mb:.1} MB/s");
        }
        if let Some(e) = &self.first_error {
            let _ = write!(s, "  (first error: {e})");
        }
        s
    }
}

/// Per-client tallies.
#[derive(Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    timeouts: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    /// Counts one operation begun at `started`, if the measured window is open.
    fn record(&mut self, measuring: &AtomicBool, started: Instant, ok: bool) {
        if measuring.load(Ordering::Relaxed) {
            if ok {
                self.latencies_ns.push(started.elapsed().as_nanos() as u64);
            } else {
                self.errors += 1;
            }
        }
    }

    /// Counts one operation and keeps the first failure's description.
    fn record_result<T, E: std::fmt::Display>(
        &mut self,
        measuring: &AtomicBool,
        started: Instant,
        result: Result<T, E>,
    ) {
        if let Err(e) = &result {
            self.first_error.get_or_insert_with(|| e.to_string());
        }
        self.record(measuring, started, result.is_ok());
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1_000.0
}

/// Prepares the board for a scenario (`get` needs messages, `download` one large one) and
/// returns the scenario with what it should read.
pub fn seed(load: &Load, scenario: &Scenario) -> io::Result<Scenario> {
    // A load against nothing would report zeros; fail clearly (and promptly) instead.
    Client::new(load.server, ClientConfig::default())
        .and_then(|mut c| c.ids(1))
        .map_err(io::Error::other)?;
    let config = ClientConfig {
        timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    };
    let mut client = Client::new(load.server, config).map_err(io::Error::other)?;
    match scenario {
        Scenario::Get { messages } => {
            let have = client
                .ids(1)
                .map_err(io::Error::other)?
                .first()
                .map_or(0, |id| id.0 + 1);
            for i in have..*messages {
                client
                    .publish_datagram(format!("seed message {i}").as_bytes())
                    .map_err(io::Error::other)?;
            }
            Ok(Scenario::Get {
                messages: (*messages).max(have),
            })
        }
        Scenario::Download { size, .. } => {
            let id = client
                .publish(&vec![b'd'; *size])
                .map_err(io::Error::other)?;
            Ok(Scenario::Download {
                size: *size,
                id: id.0,
            })
        }
        other => Ok(other.clone()),
    }
}

/// Runs `scenario` against `load.server` and reports.
pub fn run(load: &Load, scenario: &Scenario) -> io::Result<Report> {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    // Datagram scenarios run as tasks on one small runtime: 32 blocking threads on two cores
    // would measure the load generator's context switches instead of the server.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()?;
    let mut tasks = Vec::new();
    let mut threads = Vec::new();
    for c in 0..load.clients {
        let (stop, measuring) = (stop.clone(), measuring.clone());
        let (load, scenario) = (load.clone(), scenario.clone());
        if scenario.payload().is_none() {
            tasks.push(runtime.spawn(async move {
                datagram_client(c, &load, &scenario, &stop, &measuring).await
            }));
        } else {
            threads.push(std::thread::spawn(move || {
                session_client(c, &load, &scenario, &stop, &measuring)
            }));
        }
    }
    std::thread::sleep(load.warmup);
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(load.duration);
    measuring.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut all = Tally::default();
    let mut tallies = Vec::new();
    for t in threads {
        tallies.push(
            t.join()
                .map_err(|_| io::Error::other("client thread panicked"))??,
        );
    }
    for t in tasks {
        tallies.push(runtime.block_on(t).map_err(io::Error::other)??);
    }
    for tally in tallies {
        all.latencies_ns.extend(tally.latencies_ns);
        all.timeouts += tally.timeouts;
        all.errors += tally.errors;
        if all.first_error.is_none() {
            all.first_error = tally.first_error;
        }
    }
    all.latencies_ns.sort_unstable();
    let operations = all.latencies_ns.len() as u64;
    Ok(Report {
        scenario: scenario.name(),
        clients: load.clients,
        seconds,
        operations,
        p50_us: percentile(&all.latencies_ns, 0.50),
        p99_us: percentile(&all.latencies_ns, 0.99),
        p999_us: percentile(&all.latencies_ns, 0.999),
        timeouts: all.timeouts,
        errors: all.errors,
        mb_per_s: scenario
            .payload()
            .map(|size| operations as f64 * size as f64 / seconds / 1e6),
        first_error: all.first_error,
    })
}

/// The request a datagram scenario sends next.
fn next_request(c: usize, i: &mut u64, scenario: &Scenario, out: &mut Vec<u8>) {
    out.clear();
    match scenario {
        Scenario::Echo => out.extend_from_slice(b"3:0"),
        Scenario::Get { messages } => {
            *i = (*i + 7919) % (*messages).max(1);
            out.extend_from_slice(format!("3:{i}").as_bytes());
        }
        Scenario::Last { n } => out.extend_from_slice(format!("4:{n}").as_bytes()),
        Scenario::Publish { size } => {
            out.extend_from_slice(b"1:");
            out.resize(2 + (*size).max(1), b'a' + (c % 26) as u8);
        }
        _ => {}
    }
}

/// Whether a reply is what the scenario expects (an echo, or OK / a download offer).
fn reply_ok(scenario: &Scenario, request: &[u8], reply: &[u8]) -> bool {
    match scenario {
        Scenario::Echo => reply == request,
        Scenario::Publish { .. } => reply.starts_with(b"0:"),
        _ => reply.starts_with(b"0:") || reply.starts_with(b"d:"),
    }
}

/// Sends `request` until a reply that `accept` takes arrives, resending after `resend`;
/// `None` after 5 s. Other replies (late answers to earlier requests) are skipped.
async fn exchange(
    socket: &tokio::net::UdpSocket,
    request: &[u8],
    buf: &mut [u8],
    tally: &mut Tally,
    resend: Duration,
    accept: impl Fn(&[u8]) -> bool,
) -> io::Result<Option<usize>> {
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        match socket.send(request).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e),
        }
        let resend_at = tokio::time::Instant::now() + resend;
        loop {
            match tokio::time::timeout_at(resend_at, socket.recv(buf)).await {
                Ok(Ok(n)) if accept(&buf[..n]) => return Ok(Some(n)),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) if e.kind() != io::ErrorKind::ConnectionRefused => return Err(e),
                _ => break,
            }
        }
        tally.timeouts += 1;
        if Instant::now() >= give_up {
            return Ok(None);
        }
    }
}

/// One exactly-once publish through a session, as the CLI does it: `a:`, the blocks,
/// `c:`, then `x:` without waiting. Returns whether the commit answered with an id.
async fn session_publish(
    socket: &tokio::net::UdpSocket,
    text: &[u8],
    buf: &mut [u8],
    tally: &mut Tally,
    resend: Duration,
) -> io::Result<bool> {
    use bytes::Bytes;
    use mboard_protocol::{Expect, Request, Response, SessionRequest};
    let pdu = [b"1:".as_slice(), text].concat();
    let open = Request::Session(SessionRequest::Open {
        size: pdu.len() as u64,
        block_size: 1_400,
    })
    .to_bytes();
    let opened = |r: &[u8]| {
        matches!(
            Response::parse(Bytes::copy_from_slice(r), Expect::Opened),
            Ok(Response::Opened { .. })
        )
    };
    let Some(n) = exchange(socket, &open, buf, tally, resend, opened).await? else {
        return Ok(false);
    };
    let Ok(Response::Opened { sid, block_size }) =
        Response::parse(Bytes::copy_from_slice(&buf[..n]), Expect::Opened)
    else {
        return Ok(false);
    };
    for (index, block) in pdu.chunks(block_size.max(1) as usize).enumerate() {
        let data = Bytes::copy_from_slice(block);
        let b = Request::Session(SessionRequest::Block {
            sid,
            index: index as u64,
            data,
        })
        .to_bytes();
        let acked = |r: &[u8]| matches!(Response::parse(Bytes::copy_from_slice(r), Expect::Acked), Ok(Response::Acked { sid: s, .. }) if s == sid);
        if exchange(socket, &b, buf, tally, resend, acked)
            .await?
            .is_none()
        {
            return Ok(false);
        }
    }
    let commit = Request::Session(SessionRequest::Commit(sid)).to_bytes();
    let published = |r: &[u8]| {
        matches!(
            Response::parse(Bytes::copy_from_slice(r), Expect::Published),
            Ok(Response::Published(_))
        )
    };
    let committed = exchange(socket, &commit, buf, tally, resend, published)
        .await?
        .is_some();
    let _ = socket
        .send(&Request::Session(SessionRequest::Close(sid)).to_bytes())
        .await;
    Ok(committed)
}

async fn datagram_client(
    c: usize,
    load: &Load,
    scenario: &Scenario,
    stop: &AtomicBool,
    measuring: &AtomicBool,
) -> io::Result<Tally> {
    let mut tally = Tally::default();
    let bind: SocketAddr = if load.server.is_ipv4() {
        ([127, 0, 0, 1], 0).into()
    } else {
        (std::net::Ipv6Addr::LOCALHOST, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    socket.connect(load.server).await?;
    let mut buf = vec![0u8; 65_536];
    let mut request = Vec::new();
    let session_text = match scenario {
        Scenario::PublishSession { size } => vec![b'a' + (c % 26) as u8; (*size).max(1)],
        _ => Vec::new(),
    };
    let mut i = c as u64;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let ok = if let Scenario::PublishSession { .. } = scenario {
            session_publish(&socket, &session_text, &mut buf, &mut tally, load.resend).await?
        } else {
            next_request(c, &mut i, scenario, &mut request);
            // Any reply answers a single-datagram request: errors are counted, not skipped.
            match exchange(&socket, &request, &mut buf, &mut tally, load.resend, |_| {
                true
            })
            .await?
            {
                Some(n) => {
                    let ok = reply_ok(scenario, &request, &buf[..n]);
                    if !ok && tally.first_error.is_none() {
                        tally.first_error =
                            Some(format!("reply {:?}", String::from_utf8_lossy(&buf[..n])));
                    }
                    ok
                }
                None => false,
            }
        };
        tally.record(measuring, started, ok);
    }
    Ok(tally)
}

/// Large transfers use the blocking [`Client`] (windows, retransmission), one thread each.
fn session_client(
    c: usize,
    load: &Load,
    scenario: &Scenario,
    stop: &AtomicBool,
    measuring: &AtomicBool,
) -> io::Result<Tally> {
    let mut tally = Tally::default();
    let config = ClientConfig {
        timeout: Duration::from_secs(30),
        ..ClientConfig::default()
    };
    let mut client = Client::new(load.server, config).map_err(io::Error::other)?;
    let text = match scenario {
        Scenario::PublishSession { size } | Scenario::Upload { size } => {
            vec![b'a' + (c % 26) as u8; (*size).max(1)]
        }
        _ => Vec::new(),
    };
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        match scenario {
            Scenario::Download { id, .. } => {
                let result = client.get(mboard_protocol::MessageId(*id));
                tally.record_result(measuring, started, result);
            }
            _ => {
                let result = client.publish(&text);
                tally.record_result(measuring, started, result);
            }
        }
    }
    Ok(tally)
}

/// A bare UDP echo server on loopback, built like the mboard driver (receive loops on a
/// multi-threaded runtime sharing one socket) so the comparison isolates what mboard does
/// per request. It parses nothing and stores nothing: the ceiling for every scenario.
pub fn start_echo(threads: usize) -> io::Result<SocketAddr> {
    let std_socket = UdpSocket::bind("127.0.0.1:0")?;
    std_socket.set_nonblocking(true)?;
    let addr = std_socket.local_addr()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        runtime.block_on(async move {
            let socket = match tokio::net::UdpSocket::from_std(std_socket) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let loops: Vec<_> = (0..2 * threads.max(1))
                .map(|_| {
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                            let _ = socket.send_to(&buf[..n], from).await;
                        }
                    })
                })
                .collect();
            for l in loops {
                let _ = l.await;
            }
        });
    });
    ready_rx.recv().map_err(io::Error::other)??;
    Ok(addr)
}

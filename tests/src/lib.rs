//! Support for the end-to-end tests: servers on port 0, raw UDP peers, the real binaries,
//! and a fault-injecting proxy.

pub mod classic;
pub mod proxy;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use mboard_protocol::{Expect, Offer, Response, SessionId};
use mboard_server::{Config, Limits, Store};
use tokio::sync::oneshot;

/// A server started in-process through `mboard_server::run`, on its own runtime thread.
///
/// Dropping it shuts the server down and waits for `run` to return.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its metrics endpoint listens, if it has one.
    pub metrics: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// A server with default limits on 127.0.0.1:0.
    pub fn start() -> Self {
        Self::with_limits(Limits::default())
    }

    /// A server with these limits on 127.0.0.1:0.
    pub fn with_limits(limits: Limits) -> Self {
        Self::on("127.0.0.1:0", limits)
    }

    /// A server on `listen` (port 0 picks a free one).
    pub fn on(listen: &str, limits: Limits) -> Self {
        Self::with_store(listen, Store::Memory, limits)
    }

    /// A server on `listen` keeping its board in `store`.
    pub fn with_store(listen: &str, store: Store, limits: Limits) -> Self {
        Self::with_config(listen, Self::config(store, limits), false)
    }

    /// The configuration the other constructors use: two receive loops, a fixed seed.
    pub fn config(store: Store, limits: Limits) -> Config {
        Config {
            store,
            limits,
            rate_limit: mboard_server::RateLimit::default(),
            error_limit: mboard_server::RateLimit::ERROR_REPLIES,
            workers: 2,
            seed: Some(42),
        }
    }

    /// A server on `listen` with this configuration, and a metrics endpoint on
    /// 127.0.0.1:0 if `metrics` is set.
    pub fn with_config(listen: &str, config: Config, metrics: bool) -> Self {
        Self::spawn(listen, metrics, move |listeners, shutdown| {
            mboard_server::run(listeners, config, shutdown)
        })
    }

    /// A server on 127.0.0.1:0 answering through `handler`, over any board.
    pub fn serving<B: mboard_server::board::Board>(
        handler: std::sync::Arc<mboard_server::handler::Handler<B>>,
    ) -> Self {
        let rate_limit = mboard_server::RateLimit::default();
        Self::spawn("127.0.0.1:0", false, move |listeners, shutdown| {
            let errors = mboard_server::RateLimit::ERROR_REPLIES;
            mboard_server::serve(listeners, handler, 2, rate_limit, errors, shutdown)
        })
    }

    /// Binds `listen` and runs the server `start` builds on a two-thread runtime of its
    /// own, until the `TestServer` is dropped.
    fn spawn<F, Fut>(listen: &str, metrics: bool, start: F) -> Self
    where
        F: FnOnce(
                mboard_server::Listeners,
                std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
            ) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = Result<(), mboard_server::ServerError>>,
    {
        let std_socket = UdpSocket::bind(listen).expect("bind test server");
        std_socket.set_nonblocking(true).expect("nonblocking");
        let addr = std_socket.local_addr().expect("local addr");
        let std_listener = metrics.then(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind metrics");
            listener.set_nonblocking(true).expect("nonblocking");
            listener
        });
        let metrics = std_listener
            .as_ref()
            .map(|l| l.local_addr().expect("metrics addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let udp = tokio::net::UdpSocket::from_std(std_socket).expect("tokio socket");
                let metrics = std_listener
                    .map(|l| tokio::net::TcpListener::from_std(l).expect("tokio listener"));
                let shutdown = Box::pin(async {
                    let _ = stopped.await;
                });
                let listeners = mboard_server::Listeners { udp, metrics };
                start(listeners, shutdown).await.expect("server ran");
            });
        });
        TestServer {
            addr,
            metrics,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A raw UDP peer with its own socket (and so its own source address).
pub struct Peer {
    socket: UdpSocket,
    server: SocketAddr,
}

impl Peer {
    /// A peer on a fresh ephemeral port, talking to `server`.
    pub fn new(server: SocketAddr) -> Self {
        let bind = if server.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        let socket = UdpSocket::bind(bind).expect("bind peer");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Peer { socket, server }
    }

    /// This peer's address as the server sees it.
    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("peer addr")
    }

    /// Sends one datagram without waiting.
    pub fn send(&self, pdu: &[u8]) {
        self.socket.send_to(pdu, self.server).expect("send");
    }

    /// Waits up to `timeout` for one datagram.
    pub fn recv_within(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.socket
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        let mut buf = vec![0u8; 65_536];
        let got = self
            .socket
            .recv_from(&mut buf)
            .ok()
            .map(|(n, _)| buf[..n].to_vec());
        self.socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        got
    }

    /// Sends one datagram and returns the reply (loopback does not lose datagrams).
    pub fn ask(&self, pdu: impl AsRef<[u8]>) -> Vec<u8> {
        self.send(pdu.as_ref());
        let mut buf = vec![0u8; 65_536];
        let (n, _) = self.socket.recv_from(&mut buf).expect("reply within 5 s");
        buf.truncate(n);
        buf
    }

    /// [`Peer::ask`], as text (lossy) for readable assertions.
    pub fn ask_str(&self, pdu: impl AsRef<[u8]>) -> String {
        String::from_utf8_lossy(&self.ask(pdu)).into_owned()
    }

    /// Opens an upload session and returns its id and block size.
    pub fn open(&self, size: usize, block_size: usize) -> Result<(SessionId, usize)> {
        let reply = self.ask(format!("a:{size}:{block_size}"));
        match Response::parse(Bytes::from(reply), Expect::Opened)? {
            Response::Opened { sid, block_size } => Ok((sid, block_size as usize)),
            other => bail!("open refused: {other:?}"),
        }
    }

    /// Fetches every block of a download offer, in the given index order, and assembles it.
    pub fn fetch(&self, offer: &Offer, order: impl IntoIterator<Item = u64>) -> Result<Vec<u8>> {
        let mut blocks = vec![None; offer.blocks() as usize];
        for index in order {
            let reply = self.ask(format!("g:{}:{index}", offer.sid));
            match Response::parse(Bytes::from(reply), Expect::Data)? {
                Response::Data {
                    sid,
                    index: got,
                    data,
                } if sid == offer.sid && got == index => {
                    blocks[index as usize] = Some(data);
                }
                other => bail!("bad block reply {other:?}"),
            }
        }
        let mut out = Vec::with_capacity(offer.size as usize);
        for (i, b) in blocks.into_iter().enumerate() {
            out.extend_from_slice(&b.with_context(|| format!("block {i} never fetched"))?);
        }
        Ok(out)
    }
}

/// The path of a workspace binary, built once per test process with the test's profile.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--workspace", "--bins", "--quiet"]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --bins failed");
    });
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile dir");
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// What a run of `mboard-client` produced.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output, raw.
    pub stdout: Vec<u8>,
    /// Standard error, as text.
    pub stderr: String,
}

impl CliOutput {
    /// Standard output as text.
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `mboard-client --server <server> <args>` with `stdin` as standard input.
pub fn cli(server: SocketAddr, args: &[&str], stdin: &[u8]) -> CliOutput {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(binary("mboard-client"))
        .arg("--server")
        .arg(server.to_string())
        .args(args)
        .env_remove("MBOARD_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mboard-client");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // Written from a thread so that a large input cannot deadlock against the output pipes.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().expect("wait for mboard-client");
    let _ = writer.join();
    CliOutput {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every message on the board, read with raw datagrams (`4:0`, following the offer).
pub fn board_contents(server: SocketAddr) -> Result<Vec<mboard_protocol::Message>> {
    let peer = Peer::new(server);
    let reply = match Response::parse(Bytes::from(peer.ask("4:0")), Expect::Messages)? {
        Response::Offer(offer) => {
            let whole = peer.fetch(&offer, 0..offer.blocks())?;
            peer.send(format!("x:{}", offer.sid).as_bytes());
            Response::parse(Bytes::from(whole), Expect::Messages)?
        }
        direct => direct,
    };
    match reply {
        Response::Messages(messages) => Ok(messages),
        other => bail!("unexpected reply to 4:0: {other:?}"),
    }
}

/// One HTTP response from a metrics endpoint.
#[derive(Debug)]
pub struct Scrape {
    /// The status line, e.g. `HTTP/1.1 200 OK`.
    pub status: String,
    /// Header lines, as sent.
    pub headers: Vec<String>,
    /// The body.
    pub body: String,
}

impl Scrape {
    /// The value of the sample named exactly `series` (name and labels, as printed), if
    /// the body has it.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.body.lines().find_map(|line| {
            let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    /// The value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| {
            let (key, value) = h.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Sends `<method> <path> HTTP/1.1` to a metrics endpoint and reads the whole response
/// (the request asks the server to close the connection after it).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> Result<Scrape> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).context("connect to metrics")?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .context("read metrics response")?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .context("response without a blank line after its headers")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_owned();
    Ok(Scrape {
        status,
        headers: lines.map(str::to_owned).collect(),
        body: body.to_owned(),
    })
}

/// `GET /metrics`, which must answer 200.
pub fn scrape(addr: SocketAddr) -> Result<Scrape> {
    let s = http(addr, "GET", "/metrics")?;
    if !s.status.contains(" 200 ") {
        bail!("scrape answered {}", s.status);
    }
    Ok(s)
}

/// The real `mboard-server` binary, running as a child process.
pub struct ServerProcess {
    child: std::process::Child,
    /// Where it serves.
    pub addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ServerProcess {
    /// Starts `mboard-server --listen 127.0.0.1:0 <args>` and waits until it serves; if it
    /// exits instead, returns its exit code and standard error.
    pub fn start(args: &[&str]) -> std::result::Result<ServerProcess, (Option<i32>, String)> {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new(binary("mboard-server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mboard-server");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        // Keeps draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next()?.parse().ok())
                {
                    let _ = tx.send(addr);
                }
                let mut log = sink.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => Ok(ServerProcess { child, addr, log }),
            Err(_) => {
                let status = child.wait().expect("wait");
                // Give the reader a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                let text = log.lock().expect("log").clone();
                Err((status.code(), text))
            }
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory in bytes, from `/proc` (Linux).
    pub fn resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// Where its metrics endpoint listens (started with `--metrics`), from its log.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .log()
                .split("serving metrics addr=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next()?.parse().ok());
            if found.is_some() || std::time::Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Kills it with SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it with SIGTERM and returns its exit code.
    pub fn stop(mut self) -> Option<i32> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new, not yet existing, directory path unique to this process and call.
    pub fn new(name: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mboard-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    /// The path as a string, for command lines.
    pub fn arg(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

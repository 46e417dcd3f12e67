//! The `--metrics` endpoint: `GET /metrics` over hyper's HTTP/1 server, shared fairly.
//!
//! The accept loop never waits: every connection is taken off the backlog at once and
//! either given a slot in the [`SlotTable`] (perhaps in place of an idle one, which is
//! closed) or closed. So an attacker holding or churning connections cannot leave a
//! scraper queueing in the kernel's backlog; see docs/SECURITY.md, "Metrics lockout".
//!
//! Each connection tells the table what it is doing: its socket reports the first bytes
//! of a request (`Reading`), the service the parsed request (`Responding`), and the
//! response body, when hyper drops it after writing it, the end (`Idle` again).

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue, VARY};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tracing::{debug, info};

use super::exposition::{self, Format};
use super::gauge;
use super::slots::{Admission, Cap, EndpointLimits, Phase, SlotId, SlotTable};

/// How long a client has to send its request headers, counted from connecting or from
/// its previous response (so it is also the keep-alive idle timeout). Idle and slow
/// connections give way to new ones when the endpoint is full, so this no longer decides
/// whether a scraper gets in; it only frees connections nobody needs. 5 s is far longer
/// than a real scraper takes, even over a slow link, and shorter than any scrape interval
/// worth keeping a connection for.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one metrics connection may stay open, however busy, so that nothing holds a
/// slot for ever (a client that never reads its response stays `Responding`).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// What the endpoint's connections share: the slot table (each entry holds the sender
/// that tells its connection to close) and the counts of connections closed early.
#[derive(Debug)]
struct Shared {
    table: Mutex<SlotTable<oneshot::Sender<()>>>,
    closed: Closed,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, SlotTable<oneshot::Sender<()>>> {
        // The table is consistent after every call, so a panic elsewhere cannot leave it
        // half-changed.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Connections closed before their client closed them, by reason.
#[derive(Debug, Default)]
struct Closed {
    /// New connections closed at once, by [`Cap`] (host, total).
    refused: [AtomicU64; 2],
    /// Connections closed for a newcomer, by [`Cap`], then [`Phase`] (idle, reading).
    evicted: [[AtomicU64; 2]; 2],
    /// No complete request head within [`HEADER_TIMEOUT`].
    header_timeout: AtomicU64,
    /// Open for [`CONNECTION_LIFETIME`].
    lifetime: AtomicU64,
}

const CAPS: [(Cap, &str); 2] = [(Cap::Host, "per_ip"), (Cap::Total, "full")];
/// What an evicted connection was doing, by the second index of [`Closed::evicted`].
const EVICTED_STATES: [&str; 2] = ["idle", "reading"];

fn cap_index(cap: Cap) -> usize {
    usize::from(cap == Cap::Total)
}

impl Closed {
    fn refused(&self, cap: Cap) {
        self.refused[cap_index(cap)].fetch_add(1, Relaxed);
    }

    fn evicted(&self, cap: Cap, phase: Phase) {
        // `Responding` connections are never evicted; counted as reading if ever.
        let phase = usize::from(phase != Phase::Idle);
        self.evicted[cap_index(cap)][phase].fetch_add(1, Relaxed);
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    mut registry: Registry,
    limits: EndpointLimits,
) -> io::Result<()> {
    info!(
        addr = %listener.local_addr()?,
        connections = limits.connections,
        per_ip = limits.connections_per_ip,
        "serving metrics"
    );
    let shared = Arc::new(Shared {
        table: Mutex::new(SlotTable::new(limits)),
        closed: Closed::default(),
    });
    registry.register_collector(Box::new(EndpointCollector(shared.clone())));
    let registry = Arc::new(registry);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // A peer that went away before we accepted it, or out of file descriptors:
            // neither ends the endpoint.
            Err(e) => {
                debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Some((id, evicted)) = admit(&shared, &stream, peer) {
            let tracker = Arc::new(Tracker {
                shared: shared.clone(),
                id,
                busy: AtomicBool::new(false),
                evicted: AtomicBool::new(false),
            });
            tokio::spawn(connection(stream, peer, tracker, evicted, registry.clone()));
        }
    }
}

/// Finds `peer` a slot, closing the connection it replaces; `None` if `stream` is to be
/// closed instead. Returns the slot and what tells the connection it was evicted.
fn admit(
    shared: &Shared,
    stream: &TcpStream,
    peer: SocketAddr,
) -> Option<(SlotId, oneshot::Receiver<()>)> {
    let (evict, evicted) = oneshot::channel();
    let admission = shared.table().admit(peer.ip(), Instant::now(), evict);
    match admission {
        Admission::Refused(cap) => {
            shared.closed.refused(cap);
            debug!(%peer, ?cap, "metrics connection refused: all it could replace are answering");
            // A reset, not a FIN: nothing was sent, and a peer that reconnects at once
            // leaves no TIME_WAIT behind.
            let _ = stream.set_zero_linger();
            None
        }
        Admission::Admitted { id, evicted: gone } => {
            if let Some(gone) = gone {
                shared.closed.evicted(gone.cap, gone.phase);
                debug!(newcomer = %peer, cap = ?gone.cap, phase = ?gone.phase, "metrics connection evicted");
                // Its task may have ended already; then there is nothing left to close.
                let _ = gone.handle.send(());
            }
            Some((id, evicted))
        }
    }
}

/// Serves one connection until it ends, times out or gives its slot to a newer one.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tracker: Arc<Tracker>,
    evicted: oneshot::Receiver<()>,
    registry: Arc<Registry>,
) {
    let io = TokioIo::new(Watched {
        stream,
        tracker: tracker.clone(),
    });
    let answering = tracker.clone();
    let service = hyper::service::service_fn(move |req| {
        answering.set(Phase::Responding);
        let response = respond(&registry, &req).map(|body| Tracked {
            body,
            tracker: answering.clone(),
        });
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    // Pinned here, so that it (and the socket) is dropped after `evicted` is recorded.
    let conn = pin!(tokio::time::timeout(
        CONNECTION_LIFETIME,
        builder.serve_connection(io, service)
    ));
    let closed = &tracker.shared.closed;
    tokio::select! {
        ended = conn => match ended {
            // Past its lifetime the connection is simply dropped; the scraper reconnects.
            Err(_) => {
                closed.lifetime.fetch_add(1, Relaxed);
            }
            Ok(Err(e)) if e.is_timeout() => {
                closed.header_timeout.fetch_add(1, Relaxed);
            }
            Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection failed"),
            Ok(Ok(())) => {}
        },
        // Counted by the accept loop, which gave the slot away.
        _ = evicted => tracker.evicted.store(true, Relaxed),
    }
}

/// One connection's slot, and whether a request is in progress on it; the slot is freed
/// when the connection is gone (socket, service and response body all dropped).
#[derive(Debug)]
struct Tracker {
    shared: Arc<Shared>,
    id: SlotId,
    /// A request has started arriving and its response is not finished.
    busy: AtomicBool,
    /// The slot was given to another connection: close with a reset.
    evicted: AtomicBool,
}

impl Tracker {
    fn set(&self, phase: Phase) {
        // One connection's reads, service and body all run in its one task, so these
        // updates arrive in order.
        self.busy.store(phase != Phase::Idle, Relaxed);
        self.shared
            .table()
            .set_phase(self.id, phase, Instant::now());
    }

    /// Bytes arrived: the start of a request, unless one is already in progress.
    fn bytes_arrived(&self) {
        if !self.busy.load(Relaxed) {
            self.set(Phase::Reading);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.shared.table().release(self.id);
    }
}

/// The connection's socket, reporting when a request starts arriving.
struct Watched {
    stream: TcpStream,
    tracker: Arc<Tracker>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.tracker.evicted.load(Relaxed) {
            // No response is cut off (only idle and reading connections are evicted), and
            // a reset leaves no TIME_WAIT for a peer that reconnects at once.
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.tracker.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A response body that marks its connection idle when hyper drops it, which it does once
/// the body is written (or, for `HEAD`, at once).
struct Tracked {
    body: Full<Bytes>,
    tracker: Arc<Tracker>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.tracker.set(Phase::Idle);
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // Passed on so that hyper sends a `content-length` rather than chunks.
        self.body.size_hint()
    }
}

fn respond(registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut text = String::with_capacity(8_192);
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return reply(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n");
    }
    let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    if format == Format::Text {
        text = exposition::to_text(&text);
    }
    let mut r = Response::new(Full::new(Bytes::from(text)));
    let headers = r.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    // Caches between a scraper and the endpoint must not give one format for the other.
    headers.insert(VARY, HeaderValue::from_static("accept"));
    r
}

/// The endpoint's own series: its connections, and those it closed early.
struct EndpointCollector(Arc<Shared>);

impl fmt::Debug for EndpointCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointCollector").finish_non_exhaustive()
    }
}

impl Collector for EndpointCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let closed = &self.0.closed;
        let open = self.0.table().len() as u64;
        gauge(
            &mut e,
            "mboard_metrics_connections",
            "Connections to the metrics endpoint open (this scrape's included).",
            open,
        )?;
        {
            let mut family = e.encode_descriptor(
                "mboard_metrics_connections_refused",
                "New metrics connections closed at once, by the cap they met (per_ip, full).",
                None,
                MetricType::Counter,
            )?;
            for (cap, reason) in CAPS {
                let n = closed.refused[cap_index(cap)].load(Relaxed);
                ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
            }
        }
        {
            let mut family = e.encode_descriptor(
                "mboard_metrics_connections_evicted",
                "Metrics connections closed to make room for a new one, by the cap it met and what the closed one was doing.",
                None,
                MetricType::Counter,
            )?;
            for (cap, reason) in CAPS {
                for (i, state) in EVICTED_STATES.into_iter().enumerate() {
                    let n = closed.evicted[cap_index(cap)][i].load(Relaxed);
                    let labels = [("reason", reason), ("state", state)];
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = e.encode_descriptor(
            "mboard_metrics_connections_timed_out",
            "Metrics connections closed by a timeout: header (no request within 5 s, idle keep-alive included) or lifetime (open 30 s).",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in [
            ("header", closed.header_timeout.load(Relaxed)),
            ("lifetime", closed.lifetime.load(Relaxed)),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;

    use super::*;

    /// An endpoint with nothing but its own series, on a runtime of its own.
    fn endpoint(limits: EndpointLimits) -> (tokio::runtime::Runtime, SocketAddr) {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("listener");
            serve_metrics(listener, Registry::default(), limits).await
        });
        (runtime, addr)
    }

    /// One keep-alive `GET /metrics`, read to the end of its body.
    fn keep_alive_get(stream: &mut StdStream) -> String {
        stream
            .write_all(
                b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\n\r\n",
            )
            .expect("send");
        let mut got = Vec::new();
        let mut buf = [0u8; 4_096];
        loop {
            let n = stream.read(&mut buf).expect("read");
            assert!(n > 0, "closed mid-response");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if text.ends_with("# EOF\n") {
                return text;
            }
        }
    }

    /// A scrape on a connection of its own, closed after it.
    fn scrape(addr: SocketAddr) -> String {
        let mut stream = StdStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read");
        text
    }

    /// Whether the server has closed `stream` (a reset counts).
    fn closed(stream: &mut StdStream) -> bool {
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        match stream.read(&mut [0u8; 64]) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        }
    }

    const ONE: EndpointLimits = EndpointLimits {
        connections: 1,
        connections_per_ip: 1,
    };

    #[test]
    fn an_idle_keep_alive_connection_gives_way_and_is_counted() {
        let (_runtime, addr) = endpoint(ONE);
        let mut idle = StdStream::connect(addr).expect("connect");
        let first = keep_alive_get(&mut idle);
        assert!(first.contains("mboard_metrics_connections 1\n"), "{first}");
        let text = scrape(addr);
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        let evicted =
            "mboard_metrics_connections_evicted_total{reason=\"per_ip\",state=\"idle\"} 1\n";
        assert!(text.contains(evicted), "{text}");
        assert!(closed(&mut idle));
    }

    #[test]
    fn a_connection_sending_its_request_slowly_gives_way_and_is_counted() {
        let (_runtime, addr) = endpoint(ONE);
        let mut slow = StdStream::connect(addr).expect("connect");
        slow.write_all(b"GET /metr").expect("send");
        // Until the server has read those bytes, the connection still looks idle.
        std::thread::sleep(Duration::from_millis(200));
        let text = scrape(addr);
        let evicted =
            "mboard_metrics_connections_evicted_total{reason=\"per_ip\",state=\"reading\"} 1\n";
        assert!(text.contains(evicted), "{text}");
        assert!(text.contains("mboard_metrics_connections_refused_total{reason=\"full\"} 0\n"));
        assert!(closed(&mut slow));
    }

    #[test]
    fn responses_keep_their_content_length_and_head_has_no_body() {
        let (_runtime, addr) = endpoint(EndpointLimits::default());
        let mut stream = StdStream::connect(addr).expect("connect");
        let text = keep_alive_get(&mut stream);
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        // The same connection is reused: the first response left it idle, not closed.
        stream
            .write_all(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut rest = String::new();
        stream.read_to_string(&mut rest).expect("read");
        assert!(rest.starts_with("HTTP/1.1 200 "), "{rest}");
        assert!(rest.ends_with("\r\n\r\n"), "{rest}");
    }
}

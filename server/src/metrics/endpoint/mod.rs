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
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue, VARY};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tracing::{debug, info};

mod closed;
#[cfg(test)]
mod tests;
mod watched;

use closed::{Closed, EndpointCollector};
use watched::{Tracked, Tracker, Watched};

use super::exposition::{self, Format};
use super::slots::{Admission, EndpointLimits, Phase, SlotId, SlotTable};

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

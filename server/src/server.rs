//! The UDP driver: receive loops sharing one socket, an expiry timer, clean shutdown.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::board::{Board, Journal, JournalError, MemoryBoard};
use crate::config::{Config, ConfigError, Store};
use crate::handler::{Answer, Handler};
use crate::limiter::{RateLimit, RateLimiter};
use crate::metrics::{DropReason, Metrics, ServerCollector, Shard, request_type, serve_metrics};

/// Requests handled in their own tasks at once (publishes waiting for the journal, large
/// replies being built); beyond this the receive loops wait, which pushes back on senders
/// instead of queueing without bound.
const DEFERRED_MAX: usize = 4_096;

/// Why the server stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The socket failed in a way that retrying cannot fix.
    #[error("socket error: {0}")]
    Socket(#[from] io::Error),
    /// The journal could not be opened.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Where the server listens: the board's UDP socket, and optionally a TCP listener for
/// the metrics endpoint (`--metrics`).
///
/// A bare [`UdpSocket`] converts into one without metrics.
#[derive(Debug)]
pub struct Listeners {
    /// The board's socket.
    pub udp: UdpSocket,
    /// Where `GET /metrics` is served, if anywhere.
    pub metrics: Option<TcpListener>,
}

impl From<UdpSocket> for Listeners {
    fn from(udp: UdpSocket) -> Self {
        Listeners { udp, metrics: None }
    }
}

/// Serves the board on `listeners` until `shutdown` resolves or the socket fails.
///
/// `main` and the tests both start the server through here.
pub async fn run(
    listeners: impl Into<Listeners>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let listeners = listeners.into();
    config.validate()?;
    match &config.store {
        Store::Memory => serve_board(listeners, MemoryBoard::new(), config, shutdown).await,
        Store::Journal(journal) => {
            // Replay reads the whole file: keep it off the async workers.
            let journal = journal.clone();
            let (board, _) = tokio::task::spawn_blocking(move || Journal::open(&journal))
                .await
                .map_err(io::Error::other)??;
            serve_board(listeners, board, config, shutdown).await
        }
    }
}

/// [`serve`] with a handler over `board` built from `config`.
async fn serve_board<B: Board>(
    listeners: Listeners,
    board: B,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let seed = config.seed.unwrap_or_else(rand::random);
    let handler = Arc::new(Handler::new(board, config.limits, seed));
    let workers = config.workers.max(1);
    serve(
        listeners,
        handler,
        workers,
        config.rate_limit,
        config.error_limit,
        shutdown,
    )
    .await
}

/// Serves an existing handler (and so any board) on `listeners`.
pub async fn serve<B: Board>(
    listeners: impl Into<Listeners>,
    handler: Arc<Handler<B>>,
    workers: usize,
    rate_limit: RateLimit,
    error_limit: RateLimit,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let Listeners { udp, metrics } = listeners.into();
    let socket = Arc::new(udp);
    info!(addr = %socket.local_addr()?, workers, "serving");
    let mut tasks = JoinSet::new();
    let deferred = Arc::new(Semaphore::new(DEFERRED_MAX));
    let limiter = Arc::new(RateLimiter::new(rate_limit));
    let errors = Arc::new(RateLimiter::new(error_limit));
    let counters = Arc::new(Metrics::new(workers));
    tasks.spawn(report_drops(limiter.clone()));
    if let Some(listener) = metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ServerCollector {
            metrics: counters.clone(),
            handler: handler.clone(),
            limiter: limiter.clone(),
            errors: errors.clone(),
            socket: socket.clone(),
        }));
        handler.board().register_metrics(&mut registry);
        tasks.spawn(serve_metrics(listener, registry));
    }
    for shard in 0..workers {
        tasks.spawn(receive_loop(
            socket.clone(),
            handler.clone(),
            deferred.clone(),
            limiter.clone(),
            Sending {
                metrics: counters.clone(),
                shard,
                errors: errors.clone(),
            },
        ));
    }
    tasks.spawn(expiry_loop(handler.clone()));
    let result = tokio::select! {
        () = shutdown => {
            info!("shutting down");
            Ok(())
        }
        Some(ended) = tasks.join_next() => match ended {
            Ok(Err(e)) => {
                error!(error = %e, "fatal socket error");
                Err(ServerError::Socket(e))
            }
            // The loops never end on their own, and a panic is a bug worth surfacing.
            Ok(Ok(())) => Ok(()),
            Err(join) => Err(ServerError::Socket(io::Error::other(join))),
        },
    };
    tasks.shutdown().await;
    result
}

/// Errors from `recv_from`/`send_to` that concern one peer, not the socket.
fn transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    // ICMP errors from earlier sends surface as refused/reset on some systems; a full
    // buffer or an unroutable destination affects one datagram.
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionReset | Interrupted | WouldBlock | HostUnreachable | NetworkUnreachable
    ) || e.raw_os_error() == Some(105) // ENOBUFS
        || e.raw_os_error() == Some(90) // EMSGSIZE
        || e.raw_os_error() == Some(22) // EINVAL (e.g. an address of the other family)
}

/// What a receive loop, and the tasks it detaches, need to send: the loop's own shard of
/// the metrics, and the per-destination limit on error replies.
#[derive(Debug, Clone)]
struct Sending {
    metrics: Arc<Metrics>,
    shard: usize,
    errors: Arc<RateLimiter>,
}

impl Sending {
    fn get(&self) -> &Shard {
        self.metrics.shard(self.shard)
    }
}

async fn receive_loop<B: Board>(
    socket: Arc<UdpSocket>,
    handler: Arc<Handler<B>>,
    deferred: Arc<Semaphore>,
    limiter: Arc<RateLimiter>,
    sending: Sending,
) -> io::Result<()> {
    // Room for the largest datagram the kernel can hand us, IPv6 included.
    let mut buf = vec![0u8; 65_536];
    let shard = sending.get();
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) if transient(&e) => {
                debug!(error = %e, "receive error ignored");
                shard.dropped(DropReason::ReceiveError);
                continue;
            }
            Err(e) => return Err(e),
        };
        // Over its source's limit: dropped without a reply (and counted), before any work.
        if !limiter.allow(from, Instant::now()) {
            continue;
        }
        // One copy per datagram: published text keeps exactly its own bytes alive.
        let datagram = Bytes::copy_from_slice(&buf[..len]);
        let request = Request {
            kind: request_type(&datagram),
            len,
            from,
        };
        // A publish (or a commit, which may be one) on a disk-backed board waits for its
        // group commit; run it as its own task so this loop keeps receiving, and so that
        // concurrent publishes can share one fsync.
        if handler.board().defers_publish() && matches!(datagram.first(), Some(b'1' | b'c')) {
            let handler = handler.clone();
            let work = async move { handler.handle(Instant::now(), from, datagram).await };
            detach(&deferred, &socket, request, &sending, work).await?;
            continue;
        }
        match handler.handle(Instant::now(), from, datagram).await {
            // A large reply is copied on a blocking thread and sent from its own task, so a
            // burst of them cannot occupy the receive loops. Each holds a reservation in
            // the session budget, which bounds how many can exist.
            build @ Answer::Build(_) => {
                let ready = std::future::ready(build);
                detach(&deferred, &socket, request, &sending, ready).await?
            }
            answer => deliver(&socket, answer, request, &sending).await?,
        }
    }
}

/// A request being answered: where its reply goes, and what metrics need to count it.
#[derive(Debug, Clone, Copy)]
struct Request {
    kind: usize,
    len: usize,
    from: std::net::SocketAddr,
}

/// Runs `work` in a task of its own, under a permit, and sends what it answers back.
///
/// Waits for a permit first, so that a flood of such requests slows the receive loop
/// rather than piling up tasks.
async fn detach(
    deferred: &Arc<Semaphore>,
    socket: &Arc<UdpSocket>,
    request: Request,
    sending: &Sending,
    work: impl Future<Output = Answer> + Send + 'static,
) -> io::Result<()> {
    let permit = deferred
        .clone()
        .acquire_owned()
        .await
        .map_err(io::Error::other)?;
    let socket = socket.clone();
    let sending = sending.clone();
    tokio::spawn(async move {
        // Only this reply is lost if sending fails; the loop reports fatal socket errors.
        let _ = deliver(&socket, work.await, request, &sending).await;
        drop(permit);
    });
    Ok(())
}

/// Sends an answer, building it on a blocking thread first if it is a large one.
async fn deliver(
    socket: &UdpSocket,
    answer: Answer,
    request: Request,
    sending: &Sending,
) -> io::Result<()> {
    let shard = sending.get();
    let reply = match answer {
        Answer::Silent => {
            shard.answered(request.kind, request.len, None);
            return Ok(());
        }
        Answer::Reply(reply) => reply,
        Answer::Build(build) => tokio::task::spawn_blocking(build)
            .await
            .map_err(io::Error::other)?,
    };
    shard.answered(request.kind, request.len, Some(&reply));
    reply_to(socket, &reply, request.from, sending).await
}

async fn reply_to(
    socket: &UdpSocket,
    reply: &[u8],
    to: std::net::SocketAddr,
    sending: &Sending,
) -> io::Result<()> {
    // Replies to malformed input (`1` bad format, `3` unknown request) are limited per
    // destination. Every reply of ours that another mboard (or an echo service) receives
    // makes it answer `1` or `3` or publish, so one spoofed datagram naming another
    // server's address could otherwise start a loop between the two that never ends; a
    // loop carries one datagram, and the first reply dropped ends it.
    if matches!(reply.first(), Some(b'1' | b'3')) && !sending.errors.allow(to, Instant::now()) {
        return Ok(());
    }
    let shard = sending.get();
    match socket.send_to(reply, to).await {
        Ok(sent) => {
            shard.sent(sent);
            Ok(())
        }
        Err(e) if transient(&e) => {
            debug!(%to, error = %e, "send failed");
            shard.dropped(DropReason::SendError);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Says, at most once a second, how many datagrams the rate limit dropped.
async fn report_drops(limiter: Arc<RateLimiter>) -> io::Result<()> {
    let mut reported = (0, 0);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = (limiter.dropped(), limiter.untracked());
        if now != reported {
            warn!(
                dropped = now.0 - reported.0,
                untracked = now.1 - reported.1,
                sources = limiter.sources(),
                "rate limit: datagrams dropped in the last second (untracked: let through, table full)"
            );
            reported = now;
        }
    }
}

async fn expiry_loop<B: Board>(handler: Arc<Handler<B>>) -> io::Result<()> {
    // New sessions expire no sooner than one timeout from now, so sleeping until the
    // earliest known deadline (or one timeout) never misses one.
    let idle = handler.session_timeout();
    loop {
        let now = Instant::now();
        let next = handler.expire(now).unwrap_or(now + idle);
        tokio::time::sleep_until(next.into()).await;
    }
}

//! The UDP driver: receive loops sharing one socket, an expiry timer, clean shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mboard_protocol::RequestKind;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::board::{Board, ClusterError, ClusteredBoard, Journal, JournalError, MemoryBoard};
use crate::config::{Config, ConfigError, Store};
use crate::handler::{Answer, Handler};
use crate::limiter::{RateLimit, RateLimiter};
use crate::metrics::{DropReason, Metrics, ServerCollector, Shard, serve_metrics};
use crate::reply::Reply;

/// Large replies being built in their own tasks at once; see [`Receiver::deferred`].
/// (Publishes waiting for the journal hold a place in the handler's own queue instead,
/// `--max-queued-publishes`, which never waits.)
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
    /// The clustered store could not start.
    #[error(transparent)]
    Clustered(#[from] ClusterError),
    /// The memory board's retention thread could not be started.
    #[error("cannot start the board: {0}")]
    Board(io::Error),
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
        Store::Memory => {
            let board = MemoryBoard::with_limits(config.limits.tokens, config.retention)
                .map_err(ServerError::Board)?;
            serve_board(listeners, board, config, shutdown).await
        }
        Store::Journal(journal) => {
            // Replay reads the whole file: keep it off the async workers.
            let (journal, tokens, retention) =
                (journal.clone(), config.limits.tokens, config.retention);
            let (board, _) =
                tokio::task::spawn_blocking(move || Journal::open(&journal, tokens, retention))
                    .await
                    .map_err(io::Error::other)??;
            serve_board(listeners, board, config, shutdown).await
        }
        Store::Clustered(cluster) => {
            let board = ClusteredBoard::connect(
                cluster,
                config.limits.max_request_size,
                config.limits.tokens,
                config.retention,
            )
            .await?;
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
        let limits = handler.limits().metrics;
        tasks.spawn(serve_metrics(listener, registry, limits));
    }
    tasks.spawn(follow_loop(
        handler.clone(),
        Sender {
            socket: socket.clone(),
            metrics: counters.clone(),
            shard: 0,
            errors: errors.clone(),
        },
    ));
    for shard in 0..workers {
        let receiver = Receiver {
            handler: handler.clone(),
            deferred: deferred.clone(),
            limiter: limiter.clone(),
            sender: Sender {
                socket: socket.clone(),
                metrics: counters.clone(),
                shard,
                errors: errors.clone(),
            },
        };
        tasks.spawn(receiver.run());
    }
    tasks.spawn(expiry_loop(handler.clone()));
    if let Some(arrivals) = handler.board().arrivals() {
        tasks.spawn(wake_on_arrivals(handler.clone(), arrivals));
    }
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

/// One receive loop: takes datagrams off the shared socket, hands each to the handler, and
/// sends what it answers, detaching work that would stall the loop.
struct Receiver<B> {
    /// Answers datagrams.
    handler: Arc<Handler<B>>,
    /// Permits for large replies being built off the loops; when none is left the loop
    /// waits, which pushes back on senders instead of queueing without bound.
    deferred: Arc<Semaphore>,
    /// Per-source rate limit, applied before any work.
    limiter: Arc<RateLimiter>,
    /// Where replies go out, shared with the tasks this loop detaches.
    sender: Sender,
}

/// What sending a reply needs: the socket, the loop's own shard of the metrics, and the
/// per-destination limit on error replies.
#[derive(Debug, Clone)]
struct Sender {
    socket: Arc<UdpSocket>,
    metrics: Arc<Metrics>,
    shard: usize,
    errors: Arc<RateLimiter>,
}

/// A request being answered: where its reply goes, and what metrics count of it.
#[derive(Debug, Clone, Copy)]
struct Source {
    kind: Option<RequestKind>,
    len: usize,
    from: SocketAddr,
}

impl<B: Board> Receiver<B> {
    async fn run(self) -> io::Result<()> {
        // Room for the largest datagram the kernel can hand us, IPv6 included.
        let mut buf = vec![0u8; 65_536];
        loop {
            let (len, from) = match self.sender.socket.recv_from(&mut buf).await {
                Ok(received) => received,
                Err(e) if transient(&e) => {
                    debug!(error = %e, "receive error ignored");
                    self.sender.shard().dropped(DropReason::ReceiveError);
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Over its source's limit: dropped without a reply (and counted), before any work.
            if !self.limiter.allow(from, Instant::now()) {
                continue;
            }
            // One copy per datagram: published text keeps exactly its own bytes alive.
            let datagram = Bytes::copy_from_slice(&buf[..len]);
            let handled = self.handler.handle(Instant::now(), from, datagram).await;
            let source = Source {
                kind: handled.kind,
                len,
                from,
            };
            match handled.answer {
                // A large reply is copied on a blocking thread, and a publish waits for its
                // group commit, in tasks of their own, so neither occupies the receive loop.
                // Each large reply holds a reservation in the session budget, which bounds
                // how many can exist; each publish holds a place in the handler's queue for
                // the disk, taken without waiting (a full queue is answered `4:busy`).
                answer @ Answer::Build(_) => self.detach(source, answer).await?,
                answer @ Answer::Wait(_) => {
                    let sender = self.sender.clone();
                    tokio::spawn(async move {
                        let _ = sender.deliver(answer, source).await;
                    });
                }
                answer => self.sender.deliver(answer, source).await?,
            }
        }
    }

    /// Sends `answer` from a task of its own, under a permit.
    ///
    /// Waits for a permit first, so that a flood of such requests slows the receive loop
    /// rather than piling up tasks.
    async fn detach(&self, source: Source, answer: Answer) -> io::Result<()> {
        let permit = self
            .deferred
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let sender = self.sender.clone();
        tokio::spawn(async move {
            // Only this reply is lost if sending fails; the loop reports fatal socket errors.
            let _ = sender.deliver(answer, source).await;
            drop(permit);
        });
        Ok(())
    }
}

impl Sender {
    fn shard(&self) -> &Shard {
        self.metrics.shard(self.shard)
    }

    /// Sends an answer, building it on a blocking thread, or awaiting it, first if need be.
    async fn deliver(&self, answer: Answer, source: Source) -> io::Result<()> {
        let reply = resolve(answer).await?;
        self.shard()
            .answered(source.kind, source.len, reply.as_ref().map(Reply::code));
        match reply {
            Some(reply) => self.send(&reply, source.from).await,
            None => Ok(()),
        }
    }

    /// Sends the answer to a held request (counted when it was received).
    async fn deliver_held(&self, answer: Answer, to: SocketAddr) -> io::Result<()> {
        match resolve(answer).await? {
            Some(reply) => self.send(&reply, to).await,
            None => Ok(()),
        }
    }

    async fn send(&self, reply: &Reply, to: SocketAddr) -> io::Result<()> {
        // Replies to malformed input (`1` bad format, `3` unknown request) are limited per
        // destination. Every reply of ours that another mboard (or an echo service)
        // receives makes it answer `1` or `3` or publish, so one spoofed datagram naming
        // another server's address could otherwise start a loop between the two that never
        // ends; a loop carries one datagram, and the first reply dropped ends it.
        if reply.code().is_refusal() && !self.errors.allow(to, Instant::now()) {
            return Ok(());
        }
        match self.socket.send_to(reply.bytes(), to).await {
            Ok(sent) => {
                self.shard().sent(sent);
                Ok(())
            }
            Err(e) if transient(&e) => {
                debug!(%to, error = %e, "send failed");
                self.shard().dropped(DropReason::SendError);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// The reply an answer stands for, built on a blocking thread or awaited if need be.
async fn resolve(answer: Answer) -> io::Result<Option<Reply>> {
    Ok(match answer {
        Answer::Silent => None,
        Answer::Reply(reply) => Some(reply),
        Answer::Build(build) => Some(
            tokio::task::spawn_blocking(build)
                .await
                .map_err(io::Error::other)?,
        ),
        Answer::Wait(wait) => Some(wait.await),
    })
}

/// Answers held `6:` requests as publishes wake them and as their waits run out.
async fn follow_loop<B: Board>(handler: Arc<Handler<B>>, sender: Sender) -> io::Result<()> {
    loop {
        let now = Instant::now();
        for wake in handler.follow_due(now) {
            match handler.answer_wake(now, wake) {
                // A large reply is built off this loop, as the receive loops do.
                build @ Answer::Build(_) => {
                    let sender = sender.clone();
                    tokio::spawn(async move { sender.deliver_held(build, wake.to).await });
                }
                answer => sender.deliver_held(answer, wake.to).await?,
            }
        }
        match handler.next_hold_deadline() {
            Some(deadline) => {
                tokio::select! {
                    () = handler.follow_signal() => {}
                    () = tokio::time::sleep_until(deadline.into()) => {}
                }
            }
            None => handler.follow_signal().await,
        }
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

/// Wakes held `6:` requests for messages that reach the board other than through this
/// server (the clustered store's replica).
async fn wake_on_arrivals<B: Board>(
    handler: Arc<Handler<B>>,
    mut arrivals: tokio::sync::watch::Receiver<mboard_protocol::MessageId>,
) -> io::Result<()> {
    while arrivals.changed().await.is_ok() {
        let newest = *arrivals.borrow_and_update();
        handler.arrived(newest);
    }
    // The board is gone: so is the server.
    Ok(())
}

//! The UDP driver: receive loops sharing one socket, an expiry timer, clean shutdown.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::access;
use crate::board::{Board, ClusterError, ClusteredBoard, Journal, JournalError, MemoryBoard};
use crate::config::{Config, ConfigError, Store};
use crate::handler::{Answer, Handler};
use crate::limiter::{RateLimit, RateLimiter};
use crate::metrics::{Metrics, ServerCollector, serve_metrics};
use crate::overload::{Overload, Shedding};
use crate::queue_watch::QueueWatch;
use crate::reload::{self, Reloadable, Reloads, Targets};

mod batch;
mod receiver;
mod sender;
mod waiting;

use receiver::Receiver;
use sender::Sender;

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
/// The tests start the server through here, and `main` through [`run_reloading`].
pub async fn run(
    listeners: impl Into<Listeners>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let reloads = reload::fixed(config.reloadable());
    run_reloading(listeners, config, reloads, shutdown).await
}

/// [`run`], taking on the settings sent on `reloads` while it serves (changes sent after
/// it started; its first settings are `config`'s).
pub async fn run_reloading(
    listeners: impl Into<Listeners>,
    config: Config,
    reloads: Reloads,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let listeners = listeners.into();
    config.validate()?;
    match &config.store {
        Store::Memory => {
            let board = MemoryBoard::with_limits(config.limits.tokens, config.retention)
                .map_err(ServerError::Board)?;
            serve_board(listeners, board, config, reloads, shutdown).await
        }
        Store::Journal(journal) => {
            // Replay reads the whole file: keep it off the async workers.
            let (journal, tokens, retention) =
                (journal.clone(), config.limits.tokens, config.retention);
            let (board, _) =
                tokio::task::spawn_blocking(move || Journal::open(&journal, tokens, retention))
                    .await
                    .map_err(io::Error::other)??;
            serve_board(listeners, board, config, reloads, shutdown).await
        }
        Store::Clustered(cluster) => {
            let board = ClusteredBoard::connect(
                cluster,
                config.limits.max_request_size,
                config.limits.tokens,
                config.retention,
            )
            .await?;
            serve_board(listeners, board, config, reloads, shutdown).await
        }
    }
}

/// [`serve`] with a handler over `board` built from `config`.
async fn serve_board<B: Board>(
    listeners: Listeners,
    board: B,
    config: Config,
    reloads: Reloads,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let seed = config.seed.unwrap_or_else(rand::random);
    let first = config.reloadable();
    let handler = Arc::new(Handler::new(board, config.limits, seed));
    let settings = Settings {
        workers: config.workers,
        io_batch: config.io_batch,
        shedding: config.shedding,
        first,
        reloads,
        summary_interval: config.summary_interval,
    };
    serve_with(listeners, handler, settings, shutdown).await
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
    let first = Reloadable {
        rate_limit,
        error_limit,
        // Never applied: nobody reloads this server, and the board keeps its own limits.
        retention: crate::board::Retention::UNLIMITED,
    };
    let settings = Settings {
        workers,
        io_batch: crate::config::IO_BATCH,
        shedding: Shedding::default(),
        reloads: reload::fixed(first.clone()),
        first,
        summary_interval: Config::default().summary_interval,
    };
    serve_with(listeners.into(), handler, settings, shutdown).await
}

/// How the driver runs, besides the handler.
struct Settings {
    workers: usize,
    io_batch: usize,
    shedding: Shedding,
    /// The reloadable settings to start with.
    first: Reloadable,
    reloads: Reloads,
    summary_interval: Option<Duration>,
}

async fn serve_with<B: Board>(
    listeners: Listeners,
    handler: Arc<Handler<B>>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let Listeners { udp, metrics } = listeners;
    let socket = Arc::new(udp);
    let workers = settings.workers.max(1);
    let io_batch = settings.io_batch.clamp(1, crate::config::IO_BATCH_MAX);
    info!(addr = %socket.local_addr()?, workers, io_batch, "serving");
    let shared = Shared {
        socket,
        metrics: Arc::new(Metrics::new(workers)),
        limiter: Arc::new(RateLimiter::new(settings.first.rate_limit)),
        errors: Arc::new(RateLimiter::new(settings.first.error_limit)),
        // Clamped like `workers`: a handler built from unvalidated limits must not get a
        // semaphore with no permit, which would park the first loop that builds a reply.
        deferred: Arc::new(Semaphore::new(
            handler
                .limits()
                .max_building_replies
                .clamp(1, Semaphore::MAX_PERMITS),
        )),
        io_batch,
    };
    let mut tasks = JoinSet::new();
    tasks.spawn(report_drops(shared.limiter.clone()));
    let board = handler.clone();
    let targets = Targets {
        limiter: shared.limiter.clone(),
        errors: shared.errors.clone(),
        retention: Box::new(move |retention| board.board().set_retention(retention)),
    };
    tasks.spawn(reload::apply_reloads(
        settings.reloads,
        settings.first.clone(),
        targets,
    ));
    if let Some(interval) = settings.summary_interval.filter(|i| !i.is_zero()) {
        tasks.spawn(access::summaries(shared.access_sources(&handler), interval));
    }
    if let Some(listener) = metrics {
        tasks.spawn(shared.serve_metrics(listener, &handler));
    }
    tasks.spawn(follow_loop(handler.clone(), shared.sender(0)));
    let queue = Arc::new(QueueWatch::new());
    // Read until this server stops, when the reading is dropped.
    let _reading = queue.start(&shared.socket)?;
    for shard in 0..workers {
        let receiver = Receiver {
            handler: handler.clone(),
            deferred: shared.deferred.clone(),
            limiter: shared.limiter.clone(),
            sender: shared.sender(shard),
            overload: Overload::new(settings.shedding, Instant::now()),
            queue: queue.clone(),
        };
        tasks.spawn(receiver.run());
    }
    tasks.spawn(expiry_loop(handler.clone()));
    if let Some(arrivals) = handler.board().arrivals() {
        tasks.spawn(wake_on_arrivals(handler.clone(), arrivals));
    }
    let result = until_stopped(&mut tasks, shutdown).await;
    tasks.shutdown().await;
    result
}

/// What the receive loops and the other tasks of one server share.
struct Shared {
    socket: Arc<UdpSocket>,
    metrics: Arc<Metrics>,
    limiter: Arc<RateLimiter>,
    errors: Arc<RateLimiter>,
    deferred: Arc<Semaphore>,
    io_batch: usize,
}

impl Shared {
    /// A sender counting into metrics shard `shard`.
    fn sender(&self, shard: usize) -> Sender {
        Sender {
            socket: self.socket.clone(),
            metrics: self.metrics.clone(),
            shard,
            errors: self.errors.clone(),
            batch: self.io_batch,
        }
    }

    /// What the access log's summaries read.
    fn access_sources<B: Board>(&self, handler: &Arc<Handler<B>>) -> access::Sources<B> {
        access::Sources {
            metrics: self.metrics.clone(),
            handler: handler.clone(),
            limiter: self.limiter.clone(),
            errors: self.errors.clone(),
            socket: self.socket.clone(),
        }
    }

    /// The metrics endpoint on `listener`, reading these counters and `handler`'s.
    fn serve_metrics<B: Board>(
        &self,
        listener: TcpListener,
        handler: &Arc<Handler<B>>,
    ) -> impl Future<Output = io::Result<()>> + use<B> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ServerCollector {
            metrics: self.metrics.clone(),
            handler: handler.clone(),
            limiter: self.limiter.clone(),
            errors: self.errors.clone(),
            socket: self.socket.clone(),
        }));
        handler.board().register_metrics(&mut registry);
        serve_metrics(listener, registry, handler.limits().metrics)
    }
}

/// Runs until `shutdown` resolves (`Ok`) or a task ends, which only a fatal socket error or
/// a panic makes one do.
async fn until_stopped(
    tasks: &mut JoinSet<io::Result<()>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    tokio::select! {
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
    }
}

/// Asks the kernel for a receive buffer of `bytes` on `socket` and returns the size it
/// granted, which the system may cap (on Linux at `net.core.rmem_max`).
///
/// The default buffer (about 200 KiB on Linux) holds only a few hundred small datagrams:
/// a thousand followers re-arming their `6:` requests at once after a publish overflow it,
/// and what is dropped (publishes among them) waits for its sender's resend.
pub fn set_receive_buffer(socket: &UdpSocket, bytes: usize) -> io::Result<usize> {
    let sock = socket2::SockRef::from(socket);
    sock.set_recv_buffer_size(bytes)?;
    let reported = sock.recv_buffer_size()?;
    // Linux reports twice what it grants, the other half being its bookkeeping.
    Ok(if cfg!(target_os = "linux") {
        reported / 2
    } else {
        reported
    })
}

/// Answers held `6:` requests as publishes wake them and as their waits run out.
async fn follow_loop<B: Board>(handler: Arc<Handler<B>>, sender: Sender) -> io::Result<()> {
    // One publish can wake every held request at once: their replies leave in batches.
    let (mut ready, mut outcome) = (Vec::new(), Vec::new());
    loop {
        let now = Instant::now();
        for wake in handler.follow_due(now) {
            match handler.answer_wake(now, wake) {
                Answer::Reply(reply) => ready.push((reply, wake.to)),
                // A large reply is built off this loop, as the receive loops do.
                build @ Answer::Build(_) => {
                    let sender = sender.clone();
                    tokio::spawn(async move { sender.deliver_held(build, wake.to).await });
                }
                answer => sender.deliver_held(answer, wake.to).await?,
            }
        }
        sender.deliver_held_all(&mut ready, &mut outcome).await?;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use bytes::Bytes;

    use super::*;
    use crate::config::Limits;
    use crate::handler::tests::Counting;

    #[test]
    fn a_loop_behind_a_queue_that_never_empties_lets_the_other_tasks_run() {
        // One thread for everything, as a loop shares a worker with the server's other
        // tasks. A queue full when the loop starts stands for a flood: it never has to
        // wait for the socket, so only giving way of its own lets anything else run.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            set_receive_buffer(&socket, 1 << 20).expect("buffer");
            let to = socket.local_addr().expect("addr");
            let board = Counting {
                inner: MemoryBoard::new(),
                gets: Default::default(),
            };
            board
                .inner
                .publish(to, Bytes::from_static(b"hello"))
                .await
                .expect("publish");
            let handler = Arc::new(Handler::new(board, Limits::default(), 1));
            // As many `3:0` as the smallest buffer a system grants holds; each is one read.
            const QUEUED: u32 = 400;
            let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            for _ in 0..QUEUED {
                client.send_to(b"3:0", to).expect("send");
            }
            let server = tokio::spawn(serve(
                socket,
                handler.clone(),
                1,
                RateLimit::default(),
                RateLimit::ERROR_REPLIES,
                std::future::pending(),
            ));
            let gets = || handler.board().gets.load(Relaxed);
            // The first moment another task runs once the loop has begun.
            while gets() == 0 {
                tokio::task::yield_now().await;
            }
            let seen = gets();
            assert!(
                seen < QUEUED,
                "the loop took all {seen} queued before giving way"
            );
            while gets() < QUEUED {
                tokio::task::yield_now().await;
            }
            server.abort();
        });
    }

    #[tokio::test]
    async fn the_receive_buffer_is_what_was_asked_within_the_system_cap() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let before = set_receive_buffer(&socket, 64 * 1024).expect("set");
        let asked = 1 << 20;
        let granted = set_receive_buffer(&socket, asked).expect("set");
        assert!(granted > before, "{granted} after {before}");
        #[cfg(target_os = "linux")]
        {
            let cap: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
                .expect("rmem_max")
                .trim()
                .parse()
                .expect("a number");
            assert_eq!(granted, asked.min(cap));
        }
    }
}

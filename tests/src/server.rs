//! The in-process server: one builder, one spawn path.

use std::future::Future;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;

use mboard_server::Board;
use mboard_server::Handler;
use mboard_server::{Config, Limits, Listeners, RateLimit, ServerError, Store};
use tokio::sync::oneshot;

/// Resolves when the [`TestServer`] is dropped.
type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What runs on the server's thread: `mboard_server::run`, or `serve` over a custom board.
type Serve = Box<
    dyn FnOnce(
            Listeners,
            Config,
            Shutdown,
        ) -> Pin<Box<dyn Future<Output = Result<(), ServerError>>>>
        + Send,
>;

/// A server started in-process, on its own runtime thread so that it runs independently of
/// whatever the test itself blocks on.
///
/// Dropping it shuts the server down and waits for it to return.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its metrics endpoint listens, if it has one.
    pub metrics: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// A builder for a server on 127.0.0.1:0 with a memory board, default limits and rate
    /// limits, two receive loops and a fixed seed.
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder {
            listen: "127.0.0.1:0".to_owned(),
            config: Config {
                store: Store::Memory,
                limits: Limits::default(),
                rate_limit: RateLimit::default(),
                error_limit: RateLimit::ERROR_REPLIES,
                shedding: mboard_server::Shedding::default(),
                workers: 2,
                io_batch: mboard_server::IO_BATCH,
                seed: Some(42),
                summary_interval: None,
                retention: mboard_server::Retention::UNLIMITED,
            },
            metrics: false,
            serve: Box::new(|listeners, config, shutdown| {
                Box::pin(mboard_server::run(listeners, config, shutdown))
            }),
        }
    }
}

/// How a [`TestServer`] is configured before it starts.
pub struct TestServerBuilder {
    listen: String,
    config: Config,
    metrics: bool,
    serve: Serve,
}

impl TestServerBuilder {
    /// Listens on `addr` (port 0 picks a free one).
    pub fn listen(mut self, addr: &str) -> Self {
        addr.clone_into(&mut self.listen);
        self
    }

    /// Session and datagram limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Where the board is kept.
    pub fn store(mut self, store: Store) -> Self {
        self.config.store = store;
        self
    }

    /// What the board keeps (everything, unless this is called).
    pub fn retention(mut self, retention: mboard_server::Retention) -> Self {
        self.config.retention = retention;
        self
    }

    /// Serves a metrics endpoint on 127.0.0.1:0 ([`TestServer::metrics`]).
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// The per-source limit on incoming datagrams.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.config.rate_limit = limit;
        self
    }

    /// Receive loops on the socket (`--workers`; the default here is 2). With one, the
    /// datagrams of different sockets are handled in the order they arrive.
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.workers = workers;
        self
    }

    /// Datagrams per system call (`--io-batch`; 1: one at a time).
    pub fn io_batch(mut self, batch: usize) -> Self {
        self.config.io_batch = batch;
        self
    }

    /// The per-destination limit on error replies.
    pub fn error_limit(mut self, limit: RateLimit) -> Self {
        self.config.error_limit = limit;
        self
    }

    /// Answers through `handler` (over any board) with `mboard_server::serve`, instead of
    /// building a board from the store and limits.
    pub fn serving<B: Board>(mut self, handler: Arc<Handler<B>>) -> Self {
        self.serve = Box::new(move |listeners, config, shutdown| {
            Box::pin(mboard_server::serve(
                listeners,
                handler,
                config.workers,
                config.rate_limit,
                config.error_limit,
                shutdown,
            ))
        });
        self
    }

    /// Binds the sockets here, so the addresses are known and served once this returns, and
    /// runs the server on a two-thread runtime of its own until the `TestServer` is dropped.
    pub fn start(self) -> TestServer {
        let TestServerBuilder {
            listen,
            config,
            metrics,
            serve,
        } = self;
        let udp = UdpSocket::bind(&listen).expect("bind test server");
        udp.set_nonblocking(true).expect("nonblocking");
        let addr = udp.local_addr().expect("local addr");
        let http = metrics.then(|| {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind metrics");
            listener.set_nonblocking(true).expect("nonblocking");
            listener
        });
        let metrics = http.as_ref().map(|l| l.local_addr().expect("metrics addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listeners = Listeners {
                    udp: tokio::net::UdpSocket::from_std(udp).expect("tokio socket"),
                    metrics: http
                        .map(|l| tokio::net::TcpListener::from_std(l).expect("tokio listener")),
                };
                let shutdown = Box::pin(async {
                    let _ = stopped.await;
                });
                serve(listeners, config, shutdown)
                    .await
                    .expect("server ran");
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

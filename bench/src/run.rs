//! Closed-loop load: clients started together, a warm-up, a measured window, a report.
//!
//! Each client has its own socket and sends one request, waits for its reply (resending
//! after a timeout, so a lost datagram cannot stall it), records the latency and sends the
//! next. Throughput is what the server sustains against that many clients.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mboard_client::{Client, ClientConfig};

use crate::follow::{self, FollowReport, FollowerTally};
use crate::report::{Report, Tally};
use crate::scenario::{Follow, Load, Scenario};
use crate::{datagram, session};

/// Prepares the board for a scenario (`get` needs messages, `download` one large one) and
/// returns the scenario with what it should read.
pub(crate) fn seed(load: &Load, scenario: &Scenario) -> io::Result<Scenario> {
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
        Scenario::Get { messages, .. } => seed_get(&mut client, *messages),
        Scenario::Download { size, .. } => seed_download(&mut client, *size),
        Scenario::Follow(spec) => seed_follow(&mut client, spec),
        other => Ok(other.clone()),
    }
}

/// Tops the board up to `messages` and reads over the newest that many.
fn seed_get(client: &mut Client, messages: u64) -> io::Result<Scenario> {
    let mut count = client.ids(0).map_err(io::Error::other)?.len() as u64;
    let mut published = None;
    while count < messages {
        let id = client
            .publish_datagram(format!("seed message {count}").as_bytes())
            .map_err(io::Error::other)?;
        published = Some(id.0);
        count += 1;
    }
    // A clustered server lists from its replica, which may not have the last publishes
    // yet: reads spread below a newest that lags would ask for ids before the first.
    let newest = newest(client)?.max(published).unwrap_or(0);
    Ok(Scenario::Get {
        messages,
        first: newest + 1 - messages.min(newest + 1),
    })
}

/// Publishes the one message every download reads.
fn seed_download(client: &mut Client, size: usize) -> io::Result<Scenario> {
    let id = client
        .publish(&vec![b'd'; size])
        .map_err(io::Error::other)?;
    Ok(Scenario::Download { size, id: id.0 })
}

/// Starts the followers at the newest message, publishing one if the board is empty.
fn seed_follow(client: &mut Client, spec: &Follow) -> io::Result<Scenario> {
    // `6:<after>` reads above `after`: followers start at the newest message, so the board
    // needs one.
    let newest = match newest(client)? {
        Some(id) => id,
        None => {
            client
                .publish_datagram(b"seed message")
                .map_err(io::Error::other)?
                .0
        }
    };
    Ok(Scenario::Follow(Follow {
        start: newest,
        ..spec.clone()
    }))
}

/// The newest message's id, if the board has any.
fn newest(client: &mut Client) -> io::Result<Option<u64>> {
    Ok(client
        .ids(1)
        .map_err(io::Error::other)?
        .first()
        .map(|id| id.0))
}

/// The phases of a run as the clients see them: warming up, measured, then stopped.
#[derive(Debug, Default)]
pub(crate) struct Window {
    measuring: AtomicBool,
    stopped: AtomicBool,
}

impl Window {
    /// Whether operations that end now count.
    pub(crate) fn is_measuring(&self) -> bool {
        self.measuring.load(Ordering::Relaxed)
    }

    /// Whether the clients should stop.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

/// A runtime of as many threads as cores. Datagram scenarios run as tasks on one: 32
/// blocking threads on two cores would measure the load generator's context switches
/// instead of the server.
pub(crate) fn small_runtime() -> io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
}

/// The clients of one run, whichever way they run.
struct Clients {
    runtime: tokio::runtime::Runtime,
    /// Followers run on a runtime of their own, so that a thousand of them woken at once
    /// do not queue in front of the publishers whose throughput is the measurement.
    follow_runtime: Option<tokio::runtime::Runtime>,
    tasks: Vec<tokio::task::JoinHandle<io::Result<Tally>>>,
    threads: Vec<std::thread::JoinHandle<io::Result<Tally>>>,
    followers: Vec<tokio::task::JoinHandle<io::Result<FollowerTally>>>,
    follow: Option<Arc<follow::Shared>>,
}

impl Clients {
    fn start(load: &Load, scenario: &Scenario, window: &Arc<Window>) -> io::Result<Self> {
        let runtime = small_runtime()?;
        let mut clients = Clients {
            runtime,
            follow_runtime: None,
            tasks: Vec::new(),
            threads: Vec::new(),
            followers: Vec::new(),
            follow: None,
        };
        if let Scenario::Follow(spec) = scenario {
            let shared = Arc::new(follow::Shared::new(spec.start));
            let follow_runtime = small_runtime()?;
            for _ in 0..spec.followers {
                let (load, spec) = (load.clone(), spec.clone());
                let (shared, window) = (shared.clone(), window.clone());
                clients.followers.push(
                    follow_runtime.spawn(async move {
                        follow::follower(&load, &spec, &shared, &window).await
                    }),
                );
            }
            clients.follow = Some(shared);
            clients.follow_runtime = Some(follow_runtime);
        }
        for c in 0..load.clients {
            let window = window.clone();
            let (load, scenario) = (load.clone(), scenario.clone());
            if scenario.payload().is_none() {
                let follow = clients.follow.clone();
                clients.tasks.push(clients.runtime.spawn(async move {
                    datagram::client(c, &load, &scenario, &window, follow.as_deref()).await
                }));
            } else {
                clients.threads.push(std::thread::spawn(move || {
                    session::client(c, &load, &scenario, &window)
                }));
            }
        }
        Ok(clients)
    }

    /// Waits for every client to stop and sums their tallies; then, in a follower run,
    /// lets the followers read what was published and joins their reads with the
    /// publishes.
    fn join(self, seconds: f64) -> io::Result<(Tally, Option<FollowReport>)> {
        let mut all = Tally::default();
        for t in self.threads {
            let tally = t
                .join()
                .map_err(|_| io::Error::other("client thread panicked"))??;
            all.merge(tally);
        }
        for t in self.tasks {
            all.merge(self.runtime.block_on(t).map_err(io::Error::other)??);
        }
        let (Some(shared), Some(runtime)) = (self.follow, self.follow_runtime) else {
            return Ok((all, None));
        };
        shared.publishers_done();
        let mut followers = Vec::with_capacity(self.followers.len());
        for f in self.followers {
            followers.push(runtime.block_on(f).map_err(io::Error::other)??);
        }
        let published = shared.take_published();
        Ok((all, Some(FollowReport::new(followers, &published, seconds))))
    }
}

/// Runs `scenario` against `load.server` and reports.
pub(crate) fn run(load: &Load, scenario: &Scenario) -> io::Result<Report> {
    let window = Arc::new(Window::default());
    let clients = Clients::start(load, scenario, &window)?;
    let seconds = windows(load, &window);
    let (tally, follow) = clients.join(seconds)?;
    let report = Report::new(load, scenario, seconds, tally);
    Ok(match follow {
        Some(follow) => report.with_follow(follow),
        None => report,
    })
}

/// Runs the warm-up, then the measured window, over clients started on `window`, then
/// stops them; returns the seconds measured.
pub(crate) fn windows(load: &Load, window: &Window) -> f64 {
    std::thread::sleep(load.warmup);
    window.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(load.duration);
    window.measuring.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    window.stopped.store(true, Ordering::Relaxed);
    seconds
}

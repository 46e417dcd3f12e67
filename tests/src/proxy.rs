//! A fault-injecting UDP proxy: drops, duplicates and delays datagrams each way.
//!
//! Each client address gets its own upstream socket, so the server sees one distinct source
//! per client, as it would without the proxy. Faults come from a seeded generator.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What happens to datagrams going one way.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram is sent twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back (and so overtaken by later ones).
    pub reorder: f64,
    /// How long a held-back datagram waits, at most.
    pub max_delay: Duration,
}

impl Faults {
    /// No faults: a plain relay.
    pub const NONE: Faults = Faults {
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        max_delay: Duration::ZERO,
    };

    /// The lossy network of the client tests: 10% loss, 5% duplication, 5% reordering.
    pub fn lossy() -> Faults {
        Faults {
            loss: 0.10,
            duplicate: 0.05,
            reorder: 0.05,
            max_delay: Duration::from_millis(5),
        }
    }
}

/// Counts of what the proxy did, per direction.
#[derive(Debug, Default)]
pub struct Counts {
    /// Datagrams that arrived at the proxy.
    pub seen: AtomicU64,
    /// Dropped at random.
    pub dropped: AtomicU64,
    /// Sent twice.
    pub duplicated: AtomicU64,
    /// Held back.
    pub delayed: AtomicU64,
    /// Dropped by a [`Proxy::drop_replies`] rule.
    pub targeted: AtomicU64,
}

type Rule = (fn(&[u8]) -> bool, u64);

/// Counts the datagrams one way that match.
type Tally = (fn(&[u8]) -> bool, Arc<AtomicU64>);

struct Shared {
    server: SocketAddr,
    up: Faults,
    down: Faults,
    rng: Mutex<StdRng>,
    stop: AtomicBool,
    upward: Counts,
    downward: Counts,
    rule: Mutex<Option<Rule>>,
    clients: AtomicU64,
    up_tallies: Mutex<Vec<Tally>>,
    down_tallies: Mutex<Vec<Tally>>,
}

/// A running proxy; dropping it stops its threads.
pub struct Proxy {
    /// Where clients send to.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// A proxy in front of `server` with these faults client→server (`up`) and back (`down`).
    pub fn start(server: SocketAddr, up: Faults, down: Faults, seed: u64) -> Proxy {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind proxy");
        front
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = front.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            server,
            up,
            down,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            stop: AtomicBool::new(false),
            upward: Counts::default(),
            downward: Counts::default(),
            rule: Mutex::new(None),
            clients: AtomicU64::new(0),
            up_tallies: Mutex::new(Vec::new()),
            down_tallies: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        std::thread::spawn(move || front_loop(front, s));
        Proxy { addr, shared }
    }

    /// Drops the next `count` server→client datagrams for which `matches` is true.
    pub fn drop_replies(&self, matches: fn(&[u8]) -> bool, count: u64) {
        *self.shared.rule.lock().expect("rule") = Some((matches, count));
    }

    /// Counts, from now on, the client→server datagrams for which `matches` is true (as
    /// they arrive, before any fault).
    pub fn count_requests(&self, matches: fn(&[u8]) -> bool) -> Arc<AtomicU64> {
        let count = Arc::new(AtomicU64::new(0));
        let tally = (matches, count.clone());
        self.shared.up_tallies.lock().expect("tallies").push(tally);
        count
    }

    /// Counts, from now on, the server→client datagrams for which `matches` is true (as
    /// they arrive, before any fault or rule).
    pub fn count_replies(&self, matches: fn(&[u8]) -> bool) -> Arc<AtomicU64> {
        let count = Arc::new(AtomicU64::new(0));
        let tally = (matches, count.clone());
        self.shared
            .down_tallies
            .lock()
            .expect("tallies")
            .push(tally);
        count
    }

    /// Distinct client addresses (IP and port) seen so far.
    pub fn clients(&self) -> u64 {
        self.shared.clients.load(Ordering::Relaxed)
    }

    /// What happened client→server.
    pub fn upward(&self) -> &Counts {
        &self.shared.upward
    }

    /// What happened server→client.
    pub fn downward(&self) -> &Counts {
        &self.shared.downward
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

fn front_loop(front: UdpSocket, shared: Arc<Shared>) {
    let front = Arc::new(front);
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((n, client)) = front.recv_from(&mut buf) else {
            continue;
        };
        let upstream = upstreams
            .entry(client)
            .or_insert_with(|| {
                shared.clients.fetch_add(1, Ordering::Relaxed);
                let up = UdpSocket::bind("127.0.0.1:0").expect("bind upstream");
                up.connect(shared.server).expect("connect upstream");
                up.set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                let up = Arc::new(up);
                let (up2, front2, s) = (up.clone(), front.clone(), shared.clone());
                std::thread::spawn(move || back_loop(up2, front2, client, s));
                up
            })
            .clone();
        let data = buf[..n].to_vec();
        tally(&shared.up_tallies, &data);
        deliver(&shared, &shared.up, &shared.upward, data, move |d| {
            let _ = upstream.send(d);
        });
    }
}

fn back_loop(
    upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok(n) = upstream.recv(&mut buf) else {
            continue;
        };
        let data = buf[..n].to_vec();
        tally(&shared.down_tallies, &data);
        {
            let mut rule = shared.rule.lock().expect("rule");
            if let Some((matches, left)) = rule.as_mut()
                && *left > 0
                && matches(&data)
            {
                *left -= 1;
                shared.downward.seen.fetch_add(1, Ordering::Relaxed);
                shared.downward.targeted.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
        let front = front.clone();
        deliver(&shared, &shared.down, &shared.downward, data, move |d| {
            let _ = front.send_to(d, client);
        });
    }
}

fn tally(tallies: &Mutex<Vec<Tally>>, data: &[u8]) {
    for (matches, count) in tallies.lock().expect("tallies").iter() {
        if matches(data) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Applies one direction's faults to a datagram and sends what survives.
fn deliver(
    shared: &Shared,
    faults: &Faults,
    counts: &Counts,
    data: Vec<u8>,
    send: impl Fn(&[u8]) + Send + 'static,
) {
    counts.seen.fetch_add(1, Ordering::Relaxed);
    let (drop, copies, delay) = {
        let mut rng = shared.rng.lock().expect("rng");
        let drop = rng.random_bool(faults.loss);
        let copies = if rng.random_bool(faults.duplicate) {
            2
        } else {
            1
        };
        let delay = if rng.random_bool(faults.reorder) && !faults.max_delay.is_zero() {
            Some(rng.random_range(Duration::from_micros(100)..=faults.max_delay))
        } else {
            None
        };
        (drop, copies, delay)
    };
    if drop {
        counts.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if copies == 2 {
        counts.duplicated.fetch_add(1, Ordering::Relaxed);
    }
    match delay {
        None => {
            for _ in 0..copies {
                send(&data);
            }
        }
        Some(delay) => {
            counts.delayed.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                for _ in 0..copies {
                    send(&data);
                }
            });
        }
    }
}

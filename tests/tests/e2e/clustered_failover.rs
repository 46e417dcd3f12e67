//! The clustered store through failures, against real `nats-server` processes: a NATS
//! outage, and a stream leader or an mboard server killed under load.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mboard_tests::nats::NatsCluster;
use mboard_tests::{Peer, ServerProcess, board_contents, gate};

use crate::clustered::{eventually, id_of, mboard, token};

#[test]
fn a_nats_outage_refuses_publishes_and_heals_by_itself() {
    let _gate = gate::timed();
    let mut nats = NatsCluster::start(1);
    let server = mboard(&nats, &["--nats-timeout", "1s", "--metrics", "127.0.0.1:0"]);
    let p = Peer::new(server.addr);
    assert_eq!(id_of(&p.ask_str("1:before")), 1);
    // Answered once the replica holds it (the reply to the publish does not wait for that).
    assert!(p.ask_str("3:1").ends_with(":before"));
    nats.kill(0);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let refused = p.ask_str(format!("5:{}:during", token(7)));
    assert_eq!(refused, "4:storage unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Reads go on from the replica.
    assert!(p.ask_str("3:1").ends_with(":before"));
    assert!(p.ask_str("4:0").starts_with("0:1:"));
    let connected = || {
        mboard_tests::scrape(server.metrics_addr().expect("metrics"))
            .expect("scrape")
            .value("mboard_nats_connected")
    };
    assert!(eventually(Duration::from_secs(3), || connected() == Some(0.0)));
    nats.start_node(0);
    // The same token goes through once NATS is back, without restarting mboard.
    let mut reply = String::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            reply = p.ask_str(format!("5:{}:during", token(7)));
            reply.starts_with("0:")
        }),
        "still {reply:?}: {}",
        server.log()
    );
    assert_eq!(id_of(&reply), 2);
    assert_eq!(p.ask_str(format!("5:{}:during", token(7))), "0:2");
    let read = p.ask_str("3:2");
    assert!(read.ends_with(":during"), "{read}: {}", server.log());
    assert!(eventually(Duration::from_secs(3), || connected() == Some(1.0)));
}

/// Every message acknowledged under load, by id, and when each acknowledgement came.
#[derive(Default)]
struct Acked {
    by_id: Mutex<BTreeMap<u64, String>>,
    times: Mutex<Vec<Instant>>,
}

impl Acked {
    fn len(&self) -> usize {
        self.by_id.lock().expect("acked").len()
    }

    /// The longest time without an acknowledgement from `from` on.
    fn longest_gap_after(&self, from: Instant) -> Duration {
        let mut times = self.times.lock().expect("times").clone();
        times.sort();
        let mut last = from;
        let mut gap = Duration::ZERO;
        for t in times.into_iter().filter(|&t| t >= from) {
            gap = gap.max(t - last);
            last = t;
        }
        gap
    }
}

/// Publishes `5:` messages until `stop`, each retried with its token until acknowledged,
/// moving to the next server when one does not answer or refuses.
fn publisher(servers: Vec<std::net::SocketAddr>, t: u64, acked: &Acked, stop: &AtomicBool) {
    let mut at = t as usize % servers.len();
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let n = t * 1_000_000 + i;
        let text = format!("load {t} {i}");
        loop {
            let peer = Peer::new(servers[at]);
            peer.send(format!("5:{}:{text}", token(n)).as_bytes());
            match peer.recv_within(Duration::from_millis(2_500)) {
                Some(reply) if reply.starts_with(b"0:") => {
                    let id = id_of(&String::from_utf8_lossy(&reply));
                    acked.times.lock().expect("times").push(Instant::now());
                    let mut by_id = acked.by_id.lock().expect("acked");
                    if let Some(old) = by_id.insert(id, text.clone()) {
                        panic!("id {id} acknowledged for {old:?} and {text:?}");
                    }
                    break;
                }
                _ => {
                    at = (at + 1) % servers.len();
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

fn check_nothing_lost(servers: &[std::net::SocketAddr], acked: &Acked) {
    let acked = acked.by_id.lock().expect("acked");
    for &server in servers {
        let mut board = Vec::new();
        assert!(
            eventually(Duration::from_secs(20), || {
                board = board_contents(server).unwrap_or_default();
                board.len() >= acked.len()
            }),
            "{server}: {} of {} acknowledged",
            board.len(),
            acked.len()
        );
        let texts: Vec<String> = board
            .iter()
            .map(|m| String::from_utf8_lossy(&m.entry.text).into_owned())
            .collect();
        let unique: HashSet<&String> = texts.iter().collect();
        assert_eq!(unique.len(), texts.len(), "{server}: a 5: stored twice");
        let by_id: BTreeMap<u64, &String> = board.iter().map(|m| m.id.0).zip(&texts).collect();
        for (id, text) in acked.iter() {
            assert_eq!(by_id.get(id).copied(), Some(text), "{server}: id {id}");
        }
    }
}

/// Six publishers over `addrs`, running until [`Load::finish`], and what they were
/// acknowledged; returns once 200 publishes are.
struct Load {
    addrs: Vec<std::net::SocketAddr>,
    acked: Arc<Acked>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addrs: Vec<std::net::SocketAddr>) -> Self {
        let acked = Arc::new(Acked::default());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..6)
            .map(|t| {
                let (addrs, acked, stop) = (addrs.clone(), acked.clone(), stop.clone());
                std::thread::spawn(move || publisher(addrs, t, &acked, &stop))
            })
            .collect();
        assert!(eventually(Duration::from_secs(20), || acked.len() > 200));
        Load {
            addrs,
            acked,
            stop,
            threads,
        }
    }

    /// Waits for `more` acknowledgements than now, at most `limit`.
    fn goes_on(&self, more: usize, limit: Duration) -> bool {
        let now = self.acked.len();
        eventually(limit, || self.acked.len() > now + more)
    }

    /// Stops the publishers and checks every acknowledged message on `alive` servers.
    fn finish(self, alive: &[std::net::SocketAddr]) -> Arc<Acked> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("publisher");
        }
        check_nothing_lost(alive, &self.acked);
        self.acked
    }
}

#[test]
fn killing_the_stream_leader_under_load_loses_nothing() {
    let _gate = gate::load();
    let mut nats = NatsCluster::start(3);
    let servers: Vec<ServerProcess> = (0..3)
        .map(|_| mboard(&nats, &["--nats-replicas", "3", "--nats-timeout", "1s"]))
        .collect();
    let load = Load::start(servers.iter().map(|s| s.addr).collect());
    let leader = nats.stream_leader(0, "mboard").expect("stream leader");
    let victim = nats.index_of(&leader).expect("leader node");
    nats.kill(victim);
    let killed = Instant::now();
    assert!(
        load.goes_on(200, Duration::from_secs(60)),
        "publishes did not resume after the leader {leader} was killed"
    );
    let addrs = load.addrs.clone();
    let acked = load.finish(&addrs);
    // The failover time, for docs/BENCHMARKS.md (`-- --nocapture` shows it).
    let gap = acked.longest_gap_after(killed);
    #[allow(clippy::print_stderr)]
    {
        eprintln!("leader failover: {gap:?} without an acknowledged publish after the kill");
    }
    assert!(gap < Duration::from_secs(60), "{gap:?}");
}

#[test]
fn killing_an_mboard_server_under_load_loses_nothing() {
    let _gate = gate::load();
    let nats = NatsCluster::start(1);
    let mut servers: Vec<ServerProcess> = (0..3)
        .map(|_| mboard(&nats, &["--nats-timeout", "1s"]))
        .collect();
    let load = Load::start(servers.iter().map(|s| s.addr).collect());
    servers.remove(0).kill();
    assert!(load.goes_on(300, Duration::from_secs(30)));
    let alive = load.addrs[1..].to_vec();
    load.finish(&alive);
}

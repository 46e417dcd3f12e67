//! Reading a clustered board: `mboard-client follow` on one server sees what every server
//! publishes, in id order, and given a list of servers moves on when its own dies; a `3:` that waited for the server's replica is held to the
//! anti-amplification rule like any reply.

use std::time::Duration;

use mboard_tests::nats::NatsCluster;
use mboard_tests::{CliProcess, Peer, ServerProcess, gate};

use crate::client_follow::{ids, interrupt};
use crate::clustered::{id_of, mboard, token};

/// Long enough for any line on a loaded machine; a test waits this long only on failure.
const LINE: Duration = Duration::from_secs(15);

#[test]
fn follow_on_one_server_prints_what_every_server_publishes_in_id_order() {
    let _gate = gate::load();
    let nats = NatsCluster::start(1);
    let servers: Vec<ServerProcess> = (0..3).map(|_| mboard(&nats, &[])).collect();
    let peers: Vec<Peer> = servers.iter().map(|s| Peer::new(s.addr)).collect();
    assert_eq!(id_of(&peers[0].ask_str("1:before")), 1);
    // One from the newest message, one from the very beginning (the stream's ids start
    // at 1: nothing was missed before it).
    let newest = CliProcess::start(servers[1].addr, &["follow", "-n", "1"]);
    let all = CliProcess::start(servers[2].addr, &["follow", "-n", "0"]);
    for f in [&newest, &all] {
        let first = f.lines(1, LINE);
        assert_eq!(ids(&first), [1]);
        assert!(first[0].ends_with("  before"), "{first:?}");
    }
    for i in 0..30u64 {
        let p = &peers[(i % 3) as usize];
        let reply = if i % 2 == 0 {
            p.ask_str(format!("1:m{i}"))
        } else {
            p.ask_str(format!("5:{}:m{i}", token(1_000 + i)))
        };
        assert_eq!(id_of(&reply), i + 2);
    }
    for f in [newest, all] {
        let lines = f.lines(30, LINE);
        assert_eq!(ids(&lines), (2..32).collect::<Vec<_>>());
        for (i, line) in lines.iter().enumerate() {
            assert!(line.ends_with(&format!("  m{i}")), "{line}");
        }
        let stderr = interrupt(f);
        assert!(!stderr.contains("warning"), "{stderr}");
    }
}

#[test]
fn follow_with_a_server_list_moves_on_when_its_server_dies_and_prints_each_message_once() {
    let _gate = gate::load();
    let nats = NatsCluster::start(1);
    let a = mboard(&nats, &[]);
    let b = mboard(&nats, &[]);
    let on_b = Peer::new(b.addr);
    assert_eq!(id_of(&on_b.ask_str("1:before")), 1);
    let list = format!("{},{}", a.addr, b.addr);
    let f = CliProcess::start_at(&list, &["--timeout", "700ms", "follow", "-n", "1"]);
    assert_eq!(ids(&f.lines(1, LINE)), [1]);
    assert_eq!(id_of(&on_b.ask_str("1:while a serves")), 2);
    assert_eq!(ids(&f.lines(1, LINE)), [2]);
    // The follower's server goes; it goes on on b from #2: nothing twice, nothing skipped.
    let dead = a.addr;
    drop(a);
    for i in 3..6u64 {
        assert_eq!(id_of(&on_b.ask_str(format!("1:after a died {i}"))), i);
    }
    let lines = f.lines(3, LINE);
    assert_eq!(ids(&lines), [3, 4, 5]);
    assert!(lines[2].ends_with("  after a died 5"), "{lines:?}");
    assert!(
        f.line_within(Duration::from_millis(500)).is_none(),
        "nothing printed twice"
    );
    let stderr = interrupt(f);
    assert!(
        stderr.contains(&format!("warning: {dead}: "))
            && stderr.contains("following on the next server"),
        "{stderr}"
    );
}

#[test]
fn a_get_that_waits_for_the_replica_obeys_the_amplification_rule() {
    let _gate = gate::load();
    let nats = NatsCluster::start(1);
    let a = mboard(&nats, &[]);
    let b = mboard(&nats, &["--amplification-loopback"]);
    let publisher = Peer::new(a.addr);
    let text = "x".repeat(400);
    for _ in 0..20 {
        let id = id_of(&publisher.ask_str(format!("1:{text}")));
        // At once, from an address b never validated: b's replica may not hold the
        // message yet, and then the reply waits for it; either way a 400-byte message is
        // more than the allowance of a short request, so it is offered, not sent.
        let reply = Peer::new(b.addr).ask_str(format!("3:{id}"));
        assert!(reply.starts_with("d:"), "3:{id}: {reply:.80}");
    }
    // A validated address, or a direct read on a server that exempts loopback, gets it.
    let direct = Peer::new(a.addr).ask_str("3:20");
    assert!(
        direct.starts_with("0:") && direct.ends_with(&text),
        "{direct:.80}"
    );
}

/// A `3:` above the replica's newest asks JetStream whether the stream has it: a burst of
/// such reads from many sockets shares the questions instead of making one each, and every
/// read is still answered, exactly.
#[test]
fn a_burst_of_reads_above_the_newest_shares_its_questions_to_jetstream() {
    let _gate = gate::load();
    let nats = NatsCluster::start(1);
    let server = mboard(&nats, &["--metrics", "127.0.0.1:0"]);
    assert_eq!(id_of(&Peer::new(server.addr).ask_str("1:only")), 1);
    let probes = || {
        mboard_tests::scrape(server.metrics_addr().expect("metrics"))
            .expect("scrape")
            .value("mboard_nats_stream_probes_total")
            .unwrap_or(-1.0)
    };
    let before = probes();
    assert!(before >= 0.0, "the probe counter is exported");
    const READS: usize = 200;
    let peers: Vec<Peer> = (0..READS).map(|_| Peer::new(server.addr)).collect();
    for (i, p) in peers.iter().enumerate() {
        p.send(format!("3:{}", 1_000_000 + i).as_bytes());
    }
    for (i, p) in peers.iter().enumerate() {
        let id = 1_000_000 + i;
        let reply = p.recv_within(Duration::from_secs(10)).expect("a reply");
        assert_eq!(
            String::from_utf8_lossy(&reply),
            format!("2:no message {id}")
        );
    }
    let asked = probes() - before;
    assert!(
        (1.0..=(READS / 4) as f64).contains(&asked),
        "{asked} questions to JetStream for {READS} reads"
    );
    // The message the stream has is still read, and a read just above it still asks.
    assert!(Peer::new(server.addr).ask_str("3:1").ends_with(":only"));
    assert_eq!(Peer::new(server.addr).ask_str("3:2"), "2:no message 2");
    assert!(probes() - before > asked);
}

//! `mboard-bench` against the clustered store and its peers on real `nats-server`
//! processes: `5:` spread over servers, the JetStream baseline, placement, and the bare
//! relay that is the clustered store's floor.

use std::process::Command;
use std::time::Duration;

use mboard_tests::nats::NatsCluster;
use mboard_tests::{Peer, ServerProcess, binary, board_contents, gate};

use crate::clustered::{eventually, id_of, mboard, token};

/// `mboard-bench`'s clustered scenarios, briefly: `5:` publishes spread over servers, the
/// JetStream baseline, and the replication lag, each reporting as JSON.
#[test]
fn the_bench_measures_the_clustered_store() {
    let _gate = gate::load();
    let nats = NatsCluster::start(1);
    let (a, b) = (mboard(&nats, &[]), mboard(&nats, &[]));
    let run = |args: &[&str]| crate::bench::bench(None, args);
    let number = crate::bench::field;
    let servers = format!("{},{}", a.addr, b.addr);
    let once = run(&["--server", &servers, "publish-once"]);
    assert!(
        number(&once, "operations") > 10.0 && number(&once, "errors") == 0.0,
        "{once}"
    );
    let stored = board_contents(b.addr).expect("board").len() as f64;
    assert!(
        stored >= number(&once, "operations"),
        "{stored} stored: {once}"
    );
    let baseline = run(&["jetstream", "--nats", &nats.urls()]);
    assert!(
        number(&baseline, "operations") > 10.0 && number(&baseline, "errors") == 0.0,
        "{baseline}"
    );
    let lag = run(&["--server", &servers, "lag"]);
    assert!(number(&lag, "samples") > 10.0, "{lag}");
    assert!(number(&lag, "p99_us") < 3e6, "{lag}");
    let get = run(&["--server", &a.addr.to_string(), "get"]);
    assert!(
        number(&get, "operations") > 10.0 && number(&get, "errors") == 0.0,
        "{get}"
    );
}

/// `mboard-bench place` and `jetstream --stream --leader --via`, the placement-controlled
/// baseline: streams led by the node asked for (checked over the NATS protocol here, not
/// by the bench), a board stream an mboard server takes as it is, and refusals, in one
/// line, of a leader, a connection or consumers elsewhere.
#[test]
fn the_bench_places_streams_and_refuses_a_mismatched_pair() {
    let _gate = gate::load();
    let nats = NatsCluster::start(3);
    let bench = |args: &[&str]| {
        crate::bench::run(
            std::process::Command::new(mboard_tests::binary("mboard-bench")),
            args,
        )
    };
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let (n1, n2) = (nats.url(0), nats.url(1));
    let place = |stream: &str, replicas: &str, leader: &str| {
        let out = bench(&[
            "place",
            "--nats",
            &n1,
            "--stream",
            stream,
            "--replicas",
            replicas,
            "--leader",
            leader,
        ]);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let r1 = place("placed1", "1", "n2");
    assert!(r1.starts_with("stream placed1 led by n2"), "{r1}");
    assert_eq!(nats.stream_leader(0, "placed1").as_deref(), Some("n2"));
    let r3 = place("placed3", "3", "n3");
    assert!(r3.starts_with("stream placed3 led by n3"), "{r3}");
    assert_eq!(nats.stream_leader(0, "placed3").as_deref(), Some("n3"));
    // Placed again where it is: nothing to do; an R1 stream elsewhere cannot move.
    assert!(place("placed3", "3", "n3").contains("led by n3"));
    let moved = bench(&[
        "place", "--nats", &n1, "--stream", "placed1", "--leader", "n1",
    ]);
    assert!(!moved.status.success());
    assert!(
        text(&moved).contains("an R1 stream cannot move"),
        "{}",
        text(&moved)
    );

    let baseline_on_placed3 = |leader: &str, via: &str| {
        bench(&[
            "jetstream",
            "--nats",
            &n1,
            "--stream",
            "placed3",
            "--leader",
            leader,
            "--via",
            via,
        ])
    };
    let baseline = baseline_on_placed3("n3", "n1");
    assert!(baseline.status.success(), "{}", text(&baseline));
    let report = String::from_utf8_lossy(&baseline.stdout).into_owned();
    assert!(
        crate::bench::field(&report, "operations") > 10.0,
        "{report}"
    );
    assert_eq!(crate::bench::field(&report, "errors"), 0.0, "{report}");
    let said = String::from_utf8_lossy(&baseline.stderr).into_owned();
    assert!(
        said.contains("jetstream before: stream placed3 led by n3")
            && said.contains("jetstream after: stream placed3 led by n3")
            && said.contains("connected to n1"),
        "{said}"
    );
    for ((leader, via), why) in [
        (
            ("n2", "n1"),
            "refusing to measure: stream placed3 led by n3",
        ),
        (("n3", "n2"), "refusing to measure: connected to n1"),
    ] {
        let out = baseline_on_placed3(leader, via);
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "--leader {leader} --via {via}");
        assert!(
            said.contains(why) && said.trim().lines().count() == 1,
            "{said}"
        );
        assert!(out.stdout.is_empty(), "no report for a refused pair");
    }

    // The board stream is one mboard-server uses as it is; its consumer is on the only
    // replica, so the check of one consumer on the leader passes, of two fails.
    let server = ServerProcess::must_start(&[
        "--nats",
        &n2,
        "--nats-stream",
        "placed1",
        "--nats-replicas",
        "1",
    ]);
    assert!(id_of(&Peer::new(server.addr).ask_str("1:placed")) >= 1);
    let check = |consumers: &str| {
        bench(&[
            "place",
            "--nats",
            &n2,
            "--stream",
            "placed1",
            "--leader",
            "n2",
            "--check",
            "--consumers",
            consumers,
        ])
    };
    assert!(eventually(Duration::from_secs(5), || check("1")
        .status
        .success()));
    let two = check("2");
    assert!(!two.status.success());
    assert!(
        text(&two).contains("not 2 consumers all on n2 as intended"),
        "{}",
        text(&two)
    );
}

/// `mboard-bench relay`, the floor the clustered store is measured against, with each of
/// its feeds: `5:` goes to JetStream exactly once (a resend gets the first id), `2:` lists
/// nothing, anything else is refused (but not its own refusal), `publish-once` runs through it without an error, and
/// its stream holds what it acknowledged until SIGTERM, which deletes it.
#[test]
fn the_bench_relay_is_a_bare_exactly_once_hop_to_jetstream() {
    let _gate = gate::load();
    let nats = NatsCluster::start(1);
    for feed in ["push", "pull"] {
        relay_publishes_exactly_once(&nats, feed);
    }
}

fn relay_publishes_exactly_once(nats: &NatsCluster, feed: &str) {
    let mut cmd = Command::new(binary("mboard-bench"));
    cmd.args(["relay", "--listen", "127.0.0.1:0", "--feed", feed, "--nats"])
        .arg(nats.urls());
    let mut relay = ServerProcess::start_command(cmd)
        .unwrap_or_else(|(code, log)| panic!("relay exit {code:?}: {log}"));
    let log = relay.log_until("stream=", Duration::from_secs(5));
    let stream = log
        .split("stream=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no stream in {log}"))
        .to_owned();
    let peer = Peer::new(relay.addr);
    assert_eq!(peer.ask_str(format!("5:{}:one", token(1))), "0:1", "{feed}");
    assert_eq!(peer.ask_str(format!("5:{}:two", token(2))), "0:2", "{feed}");
    assert_eq!(
        peer.ask_str(format!("5:{}:one, resent", token(1))),
        "0:1",
        "{feed}: a resend is the first publish"
    );
    assert_eq!(peer.ask_str("2:5"), "0:");
    let refusal = "1:the relay takes only 5:<token>:<text> and 2:<n>";
    assert_eq!(peer.ask_str("3:1"), refusal);
    // Its refusal sent back (by an echo service, or another relay) is not refused again.
    peer.send(refusal.as_bytes());
    assert_eq!(peer.recv_within(Duration::from_millis(300)), None, "{feed}");
    assert_eq!(peer.ask_str("2:5"), "0:");
    let once = crate::bench::bench(Some(relay.addr), &["publish-once"]);
    let number = |key| crate::bench::field(&once, key);
    assert!(number("operations") > 10.0, "{feed}: {once}");
    assert_eq!(number("errors"), 0.0, "{feed}: {once}");
    let info = |stream: &str| {
        nats.request(0, &format!("$JS.API.STREAM.INFO.{stream}"), "")
            .expect("stream info")
    };
    let held = info(&stream);
    let messages: f64 = held
        .split("\"messages\":")
        .nth(1)
        .and_then(|s| s.split([',', '}']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no message count in {held}"));
    assert!(
        messages >= 2.0 + number("operations"),
        "{feed}: {messages}: {once}"
    );
    relay.terminate();
    assert_eq!(
        relay.wait_timeout(Duration::from_secs(10)),
        Some(Some(0)),
        "{feed}"
    );
    let gone = info(&stream);
    assert!(gone.contains("stream not found"), "{feed}: {gone}");
}

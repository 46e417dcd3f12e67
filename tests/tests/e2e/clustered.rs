//! The clustered store against real `nats-server` processes: several mboard servers on one
//! stream, start-up against the stream, clients moving along a server list (outages and
//! kills under load are in `clustered_failover`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mboard_tests::nats::NatsCluster;
use mboard_tests::{Peer, ServerProcess, board_contents, gate};

pub(crate) fn token(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

pub(crate) fn mboard(nats: &NatsCluster, extra: &[&str]) -> ServerProcess {
    let urls = nats.urls();
    let mut args = vec!["--nats", urls.as_str()];
    args.extend_from_slice(extra);
    ServerProcess::must_start(&args)
}

/// The id in a `0:<id>` publish reply.
pub(crate) fn id_of(reply: &str) -> u64 {
    reply
        .strip_prefix("0:")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("not a publish reply: {reply:?}"))
}

/// Waits until `check` holds, at most `limit`.
pub(crate) fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

#[test]
fn servers_on_one_stream_give_one_board() {
    let _gate = gate::load();
    let nats = NatsCluster::start(1);
    let servers = [mboard(&nats, &[]), mboard(&nats, &[])];
    let peers = [Peer::new(servers[0].addr), Peer::new(servers[1].addr)];
    let mut last = 0;
    for i in 0..40u64 {
        let (on, other) = (&peers[(i % 2) as usize], &peers[1 - (i % 2) as usize]);
        let reply = if i % 3 == 0 {
            on.ask_str(format!("1:plain {i}"))
        } else {
            on.ask_str(format!("5:{}:once {i}", token(i)))
        };
        let id = id_of(&reply);
        assert!(id > last, "ids strictly increase: {id} after {last}");
        last = id;
        // The other server answers it at once: never "no message".
        let read = other.ask_str(format!("3:{id}"));
        assert!(
            read.starts_with("0:") && read.ends_with(&format!(" {i}")),
            "{read}"
        );
    }
    assert_eq!(last, 40, "ids are the stream's sequence, from 1");
    // A `5:` resent to the other server gets the same id, and stores nothing.
    for i in [1u64, 2, 4] {
        let again = peers[(1 + i % 2) as usize % 2].ask_str(format!("5:{}:again", token(i)));
        assert_eq!(id_of(&again), i + 1, "token {i}");
    }
    let a = board_contents(servers[0].addr).expect("board a");
    assert!(eventually(Duration::from_secs(3), || {
        board_contents(servers[1].addr).is_ok_and(|b| b == a)
    }));
    assert_eq!(a.len(), 40);
    assert!(a.iter().map(|m| m.id.0).eq(1..=40));
    // The publisher's address travels with the message: both servers show the peer's.
    let first = peers[0].ask_str("3:1");
    assert!(
        first.contains(&format!(":127.0.0.1:{}:", peers[0].addr().port())),
        "{first}"
    );
    assert_eq!(peers[1].ask_str("3:1"), first);
    // A server started later loads the stream before it serves: the same board at once.
    let late = mboard(&nats, &[]);
    assert_eq!(board_contents(late.addr).expect("late board"), a);
    assert_eq!(id_of(&Peer::new(late.addr).ask_str("1:late")), 41);
}

#[test]
fn a_held_read_wakes_for_publishes_through_another_server() {
    let _gate = gate::load();
    let nats = NatsCluster::start(1);
    let (a, b) = (mboard(&nats, &[]), mboard(&nats, &[]));
    let (pa, pb) = (Peer::new(a.addr), Peer::new(b.addr));
    assert_eq!(id_of(&pa.ask_str("1:first")), 1);
    for n in 0..3u64 {
        let after = 1 + n;
        // Held on b for up to 10 s; published on a.
        pb.send(format!("6:{after}:10:10000").as_bytes());
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        assert_eq!(id_of(&pa.ask_str(format!("1:woken {n}"))), after + 1);
        let reply = pb.recv_within(Duration::from_secs(5)).expect("woken");
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.starts_with("0:1:") && reply.ends_with(&format!("woken {n}")),
            "{reply}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_stream_that_cannot_hold_the_board_is_refused_at_start() {
    let _gate = gate::plain();
    let nats = NatsCluster::start(1);
    let first = mboard(&nats, &["--dedup-window", "30s"]);
    drop(first);
    let urls = nats.urls();
    let (code, log) = match ServerProcess::start(&["--nats", &urls, "--dedup-window", "10m"]) {
        Ok(_) => panic!("started on a stream with a 30 s duplicate window"),
        Err(failed) => failed,
    };
    assert_eq!(code, Some(1));
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("--dedup-window"),
        "{log}"
    );
}

#[test]
fn the_cli_moves_along_a_server_list() {
    let _gate = gate::load();
    let nats = NatsCluster::start(1);
    let (a, b) = (mboard(&nats, &[]), mboard(&nats, &[]));
    let dead = mboard_tests::vacant_addr();
    let list = format!("{dead},{},{}", a.addr, b.addr);
    let run = |args: &[&str], stdin: &[u8]| {
        let out = mboard_tests::cli_at(&list, &[&["--timeout", "700ms"], args].concat(), stdin);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        out.out()
    };
    assert_eq!(run(&["publish", "hello"], b""), "1\n");
    let big: Vec<u8> = (0..(5 << 20)).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(run(&["publish", "-"], &big), "2\n");
    drop(a);
    assert_eq!(run(&["publish", "after a died"], b""), "3\n");
    assert_eq!(run(&["get", "1"], b""), "hello");
    assert_eq!(run(&["get", "2"], b"").len(), 5 << 20);
    let last = run(&["last", "-n", "1"], b"");
    assert!(last.contains("after a died"), "{last}");
}

#[test]
fn a_publish_restarted_on_another_server_keeps_its_token() {
    let _gate = gate::load();
    let nats = NatsCluster::start(1);
    let (a, b) = (mboard(&nats, &[]), mboard(&nats, &[]));
    // A stores the publish, but its answer never reaches the client.
    let proxy = mboard_tests::proxy::Proxy::start(
        a.addr,
        mboard_tests::proxy::Faults::NONE,
        mboard_tests::proxy::Faults::NONE,
        7,
    );
    proxy.drop_replies(
        |d| d.len() > 2 && d.starts_with(b"0:") && d[2..].iter().all(u8::is_ascii_digit),
        u64::MAX,
    );
    let list = format!("{},{}", proxy.addr, b.addr);
    let out = mboard_tests::cli_at(&list, &["--timeout", "1s", "publish", "only once"], b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.out(), "1\n");
    assert!(
        proxy.downward().targeted.load(Ordering::Relaxed) > 0,
        "a's reply was dropped"
    );
    let board = board_contents(b.addr).expect("board");
    assert_eq!(board.len(), 1, "stored once: {board:?}");
}

#[test]
fn the_cli_works_through_an_nginx_balancer() {
    let _gate = gate::load();
    let nats = NatsCluster::start(1);
    let servers: Vec<ServerProcess> = (0..3).map(|_| mboard(&nats, &[])).collect();
    let addrs: Vec<_> = servers.iter().map(|s| s.addr).collect();
    let nginx = mboard_tests::nginx::Nginx::start(&addrs);
    let run = |args: &[&str], stdin: &[u8]| {
        let out = mboard_tests::cli(nginx.addr, args, stdin);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        out.stdout
    };
    assert_eq!(run(&["publish", "small"], b""), b"1\n");
    let big: Vec<u8> = (0..(5 << 20)).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(run(&["publish", "-"], &big), b"2\n");
    assert_eq!(run(&["get", "1"], b""), b"small");
    assert_eq!(run(&["get", "2"], b""), big);
    let last = String::from_utf8(run(&["last", "-n", "2"], b"")).expect("utf-8");
    assert!(last.starts_with("#1 ") && last.contains("small"), "{last}");
    // A follower through the balancer keeps one socket, so it sticks to one server, and
    // sees what is published through every one of them, in id order.
    let follower = mboard_tests::CliProcess::start(nginx.addr, &["follow", "--after", "2"]);
    std::thread::sleep(Duration::from_millis(300));
    for (i, addr) in addrs.iter().enumerate() {
        let id = id_of(&Peer::new(*addr).ask_str(format!("1:after {i}")));
        assert_eq!(id, 3 + i as u64);
    }
    let lines = follower.lines(3, Duration::from_secs(15));
    assert_eq!(crate::client_follow::ids(&lines), [3, 4, 5]);
    assert!(lines[2].ends_with("  after 2"), "{lines:?}");
    let stderr = crate::client_follow::interrupt(follower);
    assert!(!stderr.contains("warning"), "{stderr}");
    // Every server holds all five, whichever took them.
    for addr in addrs {
        let board = board_contents(addr).expect("board");
        assert_eq!(board.len(), 5, "{addr}");
        assert_eq!(board[1].entry.text.len(), 5 << 20);
    }
}

#[test]
fn servers_started_together_agree_on_one_new_stream() {
    let _gate = gate::load();
    let nats = NatsCluster::start(3);
    let urls = nats.urls();
    // All three race to create the R3 stream while JetStream is still settling.
    let servers: Vec<ServerProcess> = std::thread::scope(|s| {
        let starting: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| ServerProcess::must_start(&["--nats", &urls, "--nats-replicas", "3"]))
            })
            .collect();
        starting
            .into_iter()
            .map(|t| t.join().expect("start"))
            .collect()
    });
    let ids: Vec<u64> = servers
        .iter()
        .map(|s| id_of(&Peer::new(s.addr).ask_str("1:one of three")))
        .collect();
    assert_eq!(ids, [1, 2, 3]);
}

#[test]
fn credentials_for_nats_are_options_and_a_wrong_one_stops_start_up() {
    let _gate = gate::plain();
    let nats = NatsCluster::start_with(1, "authorization { user: mboard, password: s3cret }");
    let urls = nats.urls();
    let ok = ServerProcess::must_start(&[
        "--nats",
        &urls,
        "--nats-user",
        "mboard",
        "--nats-password",
        "s3cret",
    ]);
    assert_eq!(id_of(&Peer::new(ok.addr).ask_str("1:authenticated")), 1);
    let (code, log) = match ServerProcess::start(&[
        "--nats",
        &urls,
        "--nats-user",
        "mboard",
        "--nats-password",
        "wrong",
    ]) {
        Ok(_) => panic!("started with a wrong password"),
        Err(failed) => failed,
    };
    assert_eq!(code, Some(1));
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("cannot connect to NATS"),
        "{log}"
    );
    assert!(
        !log.contains("wrong"),
        "the password stays out of the log: {log}"
    );
    let tokens = NatsCluster::start_with(1, "authorization { token: t0k3n }");
    let with_token =
        ServerProcess::must_start(&["--nats", &tokens.urls(), "--nats-token", "t0k3n"]);
    assert_eq!(id_of(&Peer::new(with_token.addr).ask_str("1:by token")), 1);
}

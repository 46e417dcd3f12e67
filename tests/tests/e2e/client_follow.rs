//! `mboard-client follow`: the newest messages, then each new one once and in id order,
//! through a lossy network and server restarts, on one socket, until Ctrl+C or a closed
//! standard output.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use mboard_tests::proxy::{Faults, Proxy};
use mboard_tests::{CliProcess, DataDir, Peer, ServerProcess, TestServer, binary, gate};

/// Long enough for any line on a loaded machine; a test waits this long only on failure.
const LINE: Duration = Duration::from_secs(15);

/// The id of a `last`-format line: `#<id>  <time>  <ip>:<port>  <text>`.
fn id(line: &str) -> u64 {
    line.strip_prefix('#')
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a message line: {line:?}"))
}

pub(crate) fn ids(lines: &[String]) -> Vec<u64> {
    lines.iter().map(|l| id(l)).collect()
}

fn text(line: &str) -> &str {
    line.rsplit("  ").next().expect("text")
}

fn publish(p: &Peer, text: &str) -> u64 {
    let reply = p.ask_str(format!("1:{text}"));
    reply
        .strip_prefix("0:")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("publish: {reply}"))
}

/// Ctrl+C ends it with exit code 0.
pub(crate) fn interrupt(mut f: CliProcess) -> String {
    f.interrupt();
    assert_eq!(
        f.exit_within(Duration::from_secs(5)),
        Some(Some(0)),
        "{}",
        f.stderr()
    );
    f.stderr()
}

#[test]
fn follow_prints_the_newest_then_each_new_message_once_until_ctrl_c() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let p = Peer::new(server.addr);
    for i in 0..12 {
        publish(&p, &format!("m{i}"));
    }
    let f = CliProcess::start(server.addr, &["follow", "-n", "3"]);
    let start = f.lines(3, LINE);
    assert_eq!(ids(&start), [9, 10, 11]);
    assert_eq!(text(&start[0]), "m9");
    for i in 12..17 {
        publish(&p, &format!("m{i}"));
    }
    let new = f.lines(5, LINE);
    assert_eq!(ids(&new), [12, 13, 14, 15, 16]);
    assert_eq!(text(&new[4]), "m16");
    assert_eq!(
        f.line_within(Duration::from_millis(300)),
        None,
        "nothing twice"
    );
    assert_eq!(interrupt(f), "", "nothing on standard error");

    // JSON Lines, as `last --json` prints them.
    let f = CliProcess::start(server.addr, &["follow", "-n", "1", "--json"]);
    let line = f.lines(1, LINE).remove(0);
    assert!(line.starts_with("{\"id\":16,\"time\":\""), "{line}");
    assert!(line.ends_with(",\"text\":\"m16\"}"), "{line}");
    publish(&p, "two\nlines");
    let line = f.lines(1, LINE).remove(0);
    assert!(line.ends_with(",\"text\":\"two\\nlines\"}"), "{line}");
    interrupt(f);
}

#[test]
fn follow_from_an_empty_board_and_after_an_id() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let p = Peer::new(server.addr);
    // `-n 0`: everything, from message 0 (which `6:0` cannot ask for) on.
    let all = CliProcess::start(server.addr, &["follow", "-n", "0"]);
    std::thread::sleep(Duration::from_millis(300));
    for t in ["a", "b", "c"] {
        publish(&p, t);
    }
    let lines = all.lines(3, LINE);
    assert_eq!(ids(&lines), [0, 1, 2]);
    assert_eq!(text(&lines[0]), "a");
    let after = CliProcess::start(server.addr, &["follow", "--after", "1"]);
    assert_eq!(ids(&after.lines(1, LINE)), [2]);
    publish(&p, "d");
    assert_eq!(ids(&all.lines(1, LINE)), [3]);
    assert_eq!(ids(&after.lines(1, LINE)), [3]);
    // An id past the end: only what comes later.
    let ahead = CliProcess::start(server.addr, &["follow", "--after", "5"]);
    for t in ["e", "f", "g"] {
        publish(&p, t);
    }
    assert_eq!(ids(&ahead.lines(1, LINE)), [6]);
    for f in [all, after, ahead] {
        assert_eq!(interrupt(f), "");
    }
}

#[test]
fn follow_through_a_lossy_network_prints_each_id_once_in_order() {
    let _gate = gate::load();
    let server = TestServer::builder().start();
    let proxy = Proxy::start(server.addr, Faults::lossy(), Faults::lossy(), 11);
    // A short timeout renews held requests often: a lost reply costs that much.
    let f = CliProcess::start(proxy.addr, &["--timeout", "300ms", "follow", "-n", "0"]);
    let p = Peer::new(server.addr);
    let mut published = Vec::new();
    // One at a time, each waking a held request, until the follower has sent enough for
    // the faults to show (a lost reply stalls it for a renewal, and then it catches up).
    let mut i = 0;
    while proxy.upward().seen.load(Relaxed) < 150 && i < 2_000 {
        published.push(publish(&p, &format!("one by one {i}")));
        std::thread::sleep(Duration::from_millis(10));
        i += 1;
    }
    // A burst: many pages, some of them download offers.
    for i in 0..150 {
        published.push(publish(&p, &format!("burst {i}")));
    }
    for i in 0..3 {
        published.push(publish(&p, &"long ".repeat(600 + i)));
    }
    for i in 0..20 {
        published.push(publish(&p, &format!("late {i}")));
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = f.lines(published.len(), LINE);
    assert_eq!(ids(&lines), published, "each id once, in order");
    assert!(text(&lines[i + 150]).starts_with("long long"));
    assert_eq!(f.line_within(Duration::from_secs(1)), None, "nothing twice");
    let (up, down) = (proxy.upward(), proxy.downward());
    for counts in [up, down] {
        let (seen, dropped) = (counts.seen.load(Relaxed), counts.dropped.load(Relaxed));
        assert!(dropped > 0, "{dropped} of {seen} dropped");
    }
    assert!(up.duplicated.load(Relaxed) + down.duplicated.load(Relaxed) > 0);
    interrupt(f);
}

#[test]
fn follow_through_server_restarts_prints_each_id_once() {
    let _gate = gate::timed();
    let dir = DataDir::new();
    let mut server = ServerProcess::must_start(&["--data-dir", dir.arg()]);
    let addr = server.addr;
    let restart = |server: ServerProcess| -> ServerProcess {
        server.kill();
        ServerProcess::must_start_on(addr, &["--data-dir", dir.arg()])
    };
    let mut published: Vec<u64> = (0..3)
        .map(|i| publish(&Peer::new(addr), &format!("before {i}")))
        .collect();
    let f = CliProcess::start(addr, &["--timeout", "1s", "follow", "-n", "0"]);
    assert_eq!(ids(&f.lines(3, LINE)), published);

    // A quick restart, while the follower's request is held: its renewal is held by the
    // new server, which the next publish wakes.
    server = restart(server);
    let mut more: Vec<u64> = (0..3)
        .map(|i| publish(&Peer::new(addr), &format!("after {i}")))
        .collect();
    assert_eq!(ids(&f.lines(3, LINE)), more);
    published.append(&mut more);

    // A longer outage is said once, and so is its end; nothing published meanwhile is
    // lost (the journal keeps it) and nothing printed before is printed again.
    server.kill();
    assert!(
        f.stderr_has("warning: connection refused by", LINE),
        "{}",
        f.stderr()
    );
    std::thread::sleep(Duration::from_secs(2));
    let server = ServerProcess::must_start_on(addr, &["--data-dir", dir.arg()]);
    let mut late: Vec<u64> = (0..3)
        .map(|i| publish(&Peer::new(addr), &format!("late {i}")))
        .collect();
    assert_eq!(ids(&f.lines(3, LINE)), late);
    published.append(&mut late);
    assert!(
        f.stderr_has(
            &format!("note: {addr} answers again; resuming after #5"),
            LINE
        ),
        "{}",
        f.stderr()
    );
    assert_eq!(f.line_within(Duration::from_secs(1)), None, "nothing twice");
    let stderr = interrupt(f);
    assert_eq!(
        stderr.matches("retrying until it answers").count(),
        stderr.matches("answers again").count(),
        "each outage said once, with its end: {stderr}"
    );
    assert_eq!(published, (0..9).collect::<Vec<_>>());
    drop(server);
}

#[test]
fn a_follower_keeps_one_socket_for_its_requests() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let proxy = Proxy::start(server.addr, Faults::NONE, Faults::NONE, 3);
    let p = Peer::new(server.addr);
    publish(&p, "first");
    // `--after` needs nothing but `6:`; renewals every 300 ms.
    let f = CliProcess::start(
        proxy.addr,
        &["--timeout", "300ms", "follow", "--after", "0"],
    );
    for i in 1..=5 {
        publish(&p, &format!("m{i}"));
        assert_eq!(ids(&f.lines(1, LINE)), [i]);
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        proxy.clients(),
        1,
        "one source address for all its requests"
    );
    assert!(proxy.upward().seen.load(Relaxed) > 5, "renewed while held");
    interrupt(f);
}

/// Runs `follow` with its standard output on a pipe this test reads and then closes.
fn follow_into_a_pipe(server: SocketAddr, args: &[&str]) -> std::process::Child {
    Command::new(binary("mboard-client"))
        .arg("--server")
        .arg(server.to_string())
        .arg("follow")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mboard-client")
}

#[test]
fn follow_ends_quietly_when_its_reader_goes_away() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let p = Peer::new(server.addr);
    publish(&p, "only");
    // `follow | head -1`: head has its line and leaves, and no message is coming.
    let mut child = follow_into_a_pipe(server.addr, &["-n", "1"]);
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("a line");
    assert!(line.starts_with("#0  "), "{line}");
    drop(reader);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still following after its reader left"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert_eq!(stderr, "");
}

#[test]
fn programs_follow_a_board_with_the_library() {
    use mboard_client::{Client, ClientConfig, FollowEvent, Start};
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let p = Peer::new(server.addr);
    for i in 0..3 {
        publish(&p, &format!("old {i}"));
    }
    let config = ClientConfig {
        timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    let mut client = Client::new(server.addr, config).expect("client");
    // One `6:`: at once when there is something, held until a publish otherwise, and
    // empty when the wait runs out.
    let after = |client: &mut Client, id, wait| {
        let page = client
            .after(mboard_protocol::MessageId(id), 0, wait)
            .expect("after");
        page.iter().map(|m| m.id.0).collect::<Vec<_>>()
    };
    assert_eq!(after(&mut client, 0, Duration::from_secs(25)), [1, 2]);
    let started = Instant::now();
    assert_eq!(
        after(&mut client, 2, Duration::from_millis(300)),
        Vec::<u64>::new()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    let publisher = std::thread::spawn({
        let addr = server.addr;
        move || {
            std::thread::sleep(Duration::from_millis(200));
            publish(&Peer::new(addr), "woken")
        }
    });
    assert_eq!(after(&mut client, 2, Duration::from_secs(25)), [3]);
    assert_eq!(publisher.join().expect("publisher"), 3);

    // A follower is an iterator of events; this one stops after six messages.
    let publisher = std::thread::spawn({
        let addr = server.addr;
        move || {
            for i in 0..3 {
                std::thread::sleep(Duration::from_millis(50));
                publish(&Peer::new(addr), &format!("new {i}"));
            }
        }
    });
    let got: Vec<u64> = client
        .follow(Start::Newest(3))
        .expect("follow")
        .map(|event| match event.expect("event") {
            FollowEvent::Message(m) => m.id.0,
            other => panic!("{other:?}"),
        })
        .take(6)
        .collect();
    assert_eq!(got, [1, 2, 3, 4, 5, 6]);
    publisher.join().expect("publisher");
    // And pages for scripts.
    let pages: Vec<u64> = client
        .since(mboard_protocol::MessageId(4), 0)
        .flat_map(|page| page.expect("page").messages)
        .map(|m| m.id.0)
        .collect();
    assert_eq!(pages, [5, 6]);
}

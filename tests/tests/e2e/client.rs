//! The client over a lossy network, and every path of the `mboard-client` binary.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mboard_tests::proxy::{Faults, Proxy};
use mboard_tests::{Peer, TestServer, board_contents, cli, gate, vacant_addr};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Publishes every text with its own `mboard-client` run, `per_thread` texts a thread.
fn publish_each_with_the_cli(server: SocketAddr, texts: &[String], per_thread: usize) {
    std::thread::scope(|s| {
        for chunk in texts.chunks(per_thread) {
            s.spawn(move || {
                for text in chunk {
                    let out = cli(server, &["--timeout", "60s", "publish", text], b"");
                    assert_eq!(out.code, Some(0), "publishing {text:?}: {}", out.stderr);
                    assert!(
                        out.out().trim().parse::<u64>().is_ok(),
                        "an id alone: {:?}",
                        out.out()
                    );
                }
            });
        }
    });
}

/// Faults were really injected, both ways.
fn assert_faults_injected(proxy: &Proxy) {
    for (way, counts) in [("up", proxy.upward()), ("down", proxy.downward())] {
        let (seen, dropped) = (
            counts.seen.load(Ordering::Relaxed),
            counts.dropped.load(Ordering::Relaxed),
        );
        assert!(
            dropped * 20 > seen,
            "{way}: only {dropped} of {seen} dropped"
        );
        assert!(
            counts.duplicated.load(Ordering::Relaxed) > 0
                && counts.delayed.load(Ordering::Relaxed) > 0
        );
    }
}

#[test]
fn lossy_network_publishes_exactly_once_and_reads_back_identical() {
    // 5 MiB and 50 publishes through the proxy, whose delays are a thread each.
    let _gate = gate::load();
    let server = TestServer::builder().start();
    let proxy = Proxy::start(server.addr, Faults::lossy(), Faults::lossy(), 3);

    let mut rng = StdRng::seed_from_u64(5);
    let big: Vec<u8> = (0..5 << 20).map(|_| rng.random()).collect();
    let published = cli(proxy.addr, &["--timeout", "120s", "publish", "-"], &big);
    assert_eq!(published.code, Some(0), "{}", published.stderr);
    let big_id = published.out().trim().to_string();
    let got = cli(proxy.addr, &["--timeout", "120s", "get", &big_id], b"");
    assert_eq!(got.code, Some(0), "{}", got.stderr);
    assert!(
        got.stdout == big,
        "5 MiB read back differs ({} bytes)",
        got.stdout.len()
    );

    // 50 small publishes, from eight threads.
    let texts: Vec<String> = (0..50)
        .map(|i| format!("small message {i}: a:b\nc"))
        .collect();
    publish_each_with_the_cli(proxy.addr, &texts, 7);
    assert_faults_injected(&proxy);

    // Checked without the client: one copy of each, nothing else.
    let board = board_contents(server.addr).expect("board");
    assert_eq!(board.len(), 51, "exactly one copy of each publish");
    assert_eq!(board.iter().filter(|m| m.entry.text == big).count(), 1);
    for text in &texts {
        assert_eq!(
            board
                .iter()
                .filter(|m| m.entry.text == text.as_bytes())
                .count(),
            1,
            "{text:?}"
        );
    }
}

#[test]
fn lost_commit_replies_still_store_one_message() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let proxy = Proxy::start(server.addr, Faults::NONE, Faults::NONE, 1);
    // A commit of a publish is answered `0:<id>`; nothing else in a publish looks like that.
    proxy.drop_replies(
        |d| d.len() > 2 && d.starts_with(b"0:") && d[2..].iter().all(u8::is_ascii_digit),
        4,
    );
    let out = cli(
        proxy.addr,
        &["--timeout", "30s", "publish", "once only"],
        b"",
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.out(), "0\n");
    assert_eq!(
        proxy.downward().targeted.load(Ordering::Relaxed),
        4,
        "four commit replies were lost"
    );
    let p = Peer::new(server.addr);
    assert_eq!(p.ask_str("2:0"), "0:0", "stored once");
    assert!(p.ask_str("3:0").ends_with(":once only"));
}

#[test]
fn absent_server_exits_3_after_the_timeout() {
    // Gives up between 0.95 and 3 s.
    let _gate = gate::timed();
    let addr = vacant_addr();
    // Built before the clock starts: the first call may run cargo.
    mboard_tests::binary("mboard-client");
    let started = Instant::now();
    let out = cli(addr, &["--timeout", "1s", "ids"], b"");
    let elapsed = started.elapsed();
    assert_eq!(out.code, Some(3));
    assert_eq!(
        out.stderr,
        format!("error: no reply from {addr} within 1s\n")
    );
    assert!(out.stdout.is_empty());
    assert!(
        elapsed >= Duration::from_millis(950),
        "gave up early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "gave up late: {elapsed:?}"
    );
}

#[test]
fn cli_publish_paths() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let a = server.addr;
    let out = cli(a, &["publish", "hello"], b"");
    assert_eq!(
        (out.code, out.out().as_str(), out.stderr.as_str()),
        (Some(0), "0\n", "")
    );
    let out = cli(a, &["publish", "-"], b"from\nstdin\x00\xff");
    assert_eq!(out.out(), "1\n");
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), b"from a file:\n").expect("write");
    let path = file.path().to_str().expect("temp file paths are UTF-8");
    let out = cli(a, &["publish", "--file", path], b"");
    assert_eq!(out.out(), "2\n");
    // Stored byte for byte.
    assert_eq!(cli(a, &["get", "1"], b"").stdout, b"from\nstdin\x00\xff");
    assert_eq!(cli(a, &["get", "2"], b"").stdout, b"from a file:\n");
    // A text with a leading dash or colon is still a text.
    assert_eq!(
        cli(a, &["publish", "--", "-n 5: not an option"], b"").out(),
        "3\n"
    );

    let out = cli(a, &["publish", "-"], b"");
    assert_eq!(out.code, Some(2));
    assert_eq!(out.stderr, "error: cannot publish an empty text\n");
    let out = cli(a, &["publish", "--file", "/nonexistent/file"], b"");
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr
            .starts_with("error: cannot read /nonexistent/file: "),
        "{}",
        out.stderr
    );
    assert_eq!(cli(a, &["publish"], b"").code, Some(2));
    assert_eq!(cli(a, &["publish", "x", "--file", "y"], b"").code, Some(2));
    assert_eq!(
        Peer::new(a).ask_str("2:0"),
        "0:0:1:2:3",
        "no failed command published anything"
    );
}

#[test]
fn cli_read_paths() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let a = server.addr;
    for text in ["first", "two\nlines", "third"] {
        assert_eq!(cli(a, &["publish", text], b"").code, Some(0));
    }
    let last = cli(a, &["last", "-n", "2"], b"").out();
    let lines: Vec<&str> = last.lines().collect();
    assert_eq!(lines.len(), 2, "{last}");
    for (line, (id, text)) in lines.iter().zip([(1, "two\\nlines"), (2, "third")]) {
        let fields: Vec<&str> = line.split("  ").collect();
        assert_eq!(fields.len(), 4, "{line}");
        assert_eq!(fields[0], format!("#{id}"));
        assert!(humantime::parse_rfc3339(fields[1]).is_ok(), "{line}");
        assert!(fields[2].starts_with("127.0.0.1:"), "{line}");
        assert_eq!(fields[3], text);
    }
    assert_eq!(
        cli(a, &["last"], b"").out().lines().count(),
        3,
        "default n is 10"
    );
    let json = cli(a, &["--json", "last", "-n", "1"], b"").out();
    assert!(
        json.starts_with("{\"id\":2,\"time\":\"") && json.ends_with(",\"text\":\"third\"}\n"),
        "{json}"
    );
    assert!(json.contains("\"ip\":\"127.0.0.1\",\"port\":"), "{json}");
    let json = cli(a, &["--json", "get", "1"], b"").out();
    assert!(
        json.starts_with("{\"id\":1,") && json.ends_with("\"text\":\"two\\nlines\"}\n"),
        "{json}"
    );

    assert_eq!(cli(a, &["ids"], b"").out(), "0\n1\n2\n");
    assert_eq!(cli(a, &["ids", "-n", "2"], b"").out(), "1\n2\n");
    assert_eq!(cli(a, &["--json", "ids"], b"").out(), "[0,1,2]\n");

    let out = cli(a, &["get", "99"], b"");
    assert_eq!(
        (out.code, out.stdout.is_empty(), out.stderr.as_str()),
        (Some(1), true, "error: no message 99\n")
    );
    assert_eq!(cli(a, &["get", "x"], b"").code, Some(2));
    assert_eq!(cli(a, &["last", "-n", "-1"], b"").code, Some(2));
    assert_eq!(cli(a, &["nonsense"], b"").code, Some(2));
}

#[test]
fn cli_raw_prints_exactly_the_reply() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let a = server.addr;
    assert_eq!(cli(a, &["raw", "1:Hello world!"], b"").stdout, b"0:0");
    assert_eq!(cli(a, &["raw", "2:10"], b"").stdout, b"0:0");
    assert_eq!(cli(a, &["raw", "9:x"], b"").stdout, b"3:unknown request 9");
    assert_eq!(cli(a, &["raw", "x"], b"").stdout, b"1:too short");
    // A reply too big for a datagram is fetched through its offer and printed whole.
    let long = "y".repeat(5_000);
    assert_eq!(cli(a, &["publish", &long], b"").out(), "1\n");
    let out = cli(a, &["raw", "3:1"], b"");
    let reply = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        reply.starts_with("0:") && reply.ends_with(&format!(":{long}")),
        "{}",
        &reply[..60]
    );
    let big = cli(a, &["get", "1"], b"");
    assert_eq!(big.stdout, long.as_bytes());
}

#[test]
fn cli_finds_the_server_by_environment_and_name() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let out = std::process::Command::new(mboard_tests::binary("mboard-client"))
        .args(["publish", "via env"])
        .env("MBOARD_SERVER", format!("localhost:{}", server.addr.port()))
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"0\n");
}

#[test]
fn sessions_opened_by_duplicated_opens_are_closed() {
    let _gate = gate::plain();
    // Every datagram to the server arrives twice, so every `a:` opens two sessions. Unless
    // the client closes the one it does not use, 64 publishes from one address exhaust the
    // per-source limit and the next `a:` is answered `4:busy`.
    let server = TestServer::builder().start();
    let twice = Faults {
        duplicate: 1.0,
        ..Faults::NONE
    };
    let proxy = Proxy::start(server.addr, twice, Faults::NONE, 4);
    let config = mboard_client::ClientConfig {
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let mut client = mboard_client::Client::new(proxy.addr, config).expect("client");
    // Texts larger than a block, so that each publish is an upload.
    let padding = "p".repeat(2_000);
    for i in 0..80 {
        let id = client
            .publish(format!("publish {i} {padding}").as_bytes())
            .unwrap_or_else(|e| panic!("publish {i}: {e}"));
        assert_eq!(id.0, i);
    }
    assert!(proxy.upward().duplicated.load(Ordering::Relaxed) >= 80 * 3);
}

#[test]
fn a_reused_client_never_takes_an_earlier_reply_for_a_later_one() {
    // A datagram publish is resent when its reply is slower than the client's retransmit
    // timeout, which loopback replies bring down to its 5 ms floor; resent, it is stored
    // twice and the ids below skip.
    let _gate = gate::timed();
    // Every reply arrives twice. The second copy of one answer must not be read as the
    // answer to the next request, which layer-1 replies cannot tell apart.
    let server = TestServer::builder().start();
    let p = Peer::new(server.addr);
    for i in 0..10 {
        assert_eq!(p.ask_str(format!("1:m{i}")), format!("0:{i}"));
    }
    let twice = Faults {
        duplicate: 1.0,
        ..Faults::NONE
    };
    let proxy = Proxy::start(server.addr, Faults::NONE, twice, 5);
    let mut client = mboard_client::Client::new(proxy.addr, Default::default()).expect("client");
    for i in 0..10u64 {
        let entry = client.get(mboard_protocol::MessageId(i)).expect("get");
        assert_eq!(entry.text, format!("m{i}").as_bytes(), "get({i})");
    }
    assert_eq!(
        client
            .ids(3)
            .expect("ids")
            .iter()
            .map(|id| id.0)
            .collect::<Vec<_>>(),
        vec![7, 8, 9]
    );
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            client
                .publish_datagram(format!("d{i}").as_bytes())
                .expect("publish")
                .0,
        );
    }
    assert_eq!(
        ids,
        (10..20).collect::<Vec<_>>(),
        "each publish got its own id"
    );
}

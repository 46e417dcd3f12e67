//! `mboard-client` against classic servers (`1:` `2:` `3:` only, bare codes, short
//! timestamps), and what it makes of replies it cannot read.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mboard_tests::classic::ClassicServer;
use mboard_tests::proxy::{Faults, Proxy};
use mboard_tests::{Peer, TestServer, binary, cli, gate};

/// Every request the server got was one it knows, and none crashed it.
fn assert_only_classic_requests(server: &ClassicServer) {
    assert_eq!(
        server.crashed_on(),
        None,
        "a request crashed the classic server"
    );
    for r in server.requests() {
        assert!(
            [b"1:", b"2:", b"3:"].iter().any(|p| r.starts_with(*p)),
            "sent {:?}",
            String::from_utf8_lossy(&r)
        );
    }
}

#[test]
fn classic_mode_publishes_lists_and_reads_a_classic_board() {
    let _gate = gate::plain();
    let server = ClassicServer::start();
    let a = server.addr;
    let out = cli(a, &["--classic", "publish", "hello", "world"], b"");
    assert_eq!(
        (out.code, out.out(), out.stderr),
        (Some(0), "0\n".into(), "".into())
    );
    assert_eq!(
        cli(a, &["publish", "-", "--classic"], b"two\nlines").out(),
        "1\n"
    );
    // Seven messages in all: timestamps with one to seven decimals.
    for i in 2..7 {
        assert_eq!(
            cli(a, &["--classic", "publish", &format!("m{i}")], b"").out(),
            format!("{i}\n")
        );
    }
    let requests = server.requests();
    assert_eq!(requests.len(), 7, "one datagram per publish");
    assert_eq!(requests[0], b"1:hello world");

    let last = cli(a, &["--classic", "last", "-n", "0"], b"");
    assert_eq!(last.code, Some(0), "{}", last.stderr);
    let lines: Vec<String> = last.out().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 7, "{lines:?}");
    assert!(lines[0].starts_with("#0  ") && lines[0].ends_with("  hello world"));
    assert!(lines[1].ends_with("  two\\nlines"), "{}", lines[1]);
    for line in &lines {
        let time = line.split("  ").nth(1).expect("time");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{line}");
    }
    let json = cli(a, &["--classic", "--json", "last", "-n", "1"], b"").out();
    assert!(
        json.starts_with("{\"id\":6,") && json.ends_with("\"text\":\"m6\"}\n"),
        "{json}"
    );

    // `get` and `ids` need no --classic: they are classic requests in every mode.
    assert_eq!(cli(a, &["get", "1"], b"").stdout, b"two\nlines");
    assert_eq!(cli(a, &["ids", "-n", "2"], b"").out(), "5\n6\n");
    let missing = cli(a, &["--classic", "get", "99"], b"");
    assert_eq!(
        (missing.code, missing.stderr.as_str()),
        (Some(1), "error: no message 99\n"),
        "a bare 2 still names the message"
    );
    assert_only_classic_requests(&server);
}

#[test]
fn the_environment_turns_classic_mode_on() {
    let _gate = gate::plain();
    let server = ClassicServer::start();
    let run = |args: &[&str]| {
        Command::new(binary("mboard-client"))
            .args(["--server", &server.addr.to_string()])
            .args(args)
            .env("MBOARD_CLASSIC", "1")
            .output()
            .expect("run")
    };
    assert_eq!(run(&["publish", "via env"]).stdout, b"0\n");
    let last = run(&["last"]);
    let text = String::from_utf8_lossy(&last.stdout);
    assert!(
        text.starts_with("#0  ") && text.ends_with("  via env\n"),
        "{text}"
    );
    assert_only_classic_requests(&server);
}

#[test]
fn an_empty_classic_board_answers_a_bare_zero() {
    let _gate = gate::plain();
    let server = ClassicServer::start();
    let out = cli(server.addr, &["ids"], b"");
    assert_eq!(
        (out.code, out.out(), out.stderr),
        (Some(0), String::new(), String::new())
    );
    let out = cli(server.addr, &["--classic", "last"], b"");
    assert_eq!(
        (out.code, out.out(), out.stderr),
        (Some(0), String::new(), String::new())
    );
    assert_eq!(cli(server.addr, &["--json", "ids"], b"").out(), "[]\n");
    assert_only_classic_requests(&server);
}

#[test]
fn a_classic_publish_is_resent_only_on_silence_and_so_at_least_once() {
    let _gate = gate::timed();
    let server = ClassicServer::start();
    let proxy = Proxy::start(server.addr, Faults::NONE, Faults::NONE, 7);
    // The first publish reply is lost: the client hears nothing, and sends again.
    proxy.drop_replies(|d| d.starts_with(b"0:"), 1);
    let out = cli(proxy.addr, &["--classic", "publish", "twice?"], b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(proxy.downward().targeted.load(Ordering::Relaxed), 1);
    let publishes = server
        .requests()
        .iter()
        .filter(|r| r.starts_with(b"1:"))
        .count();
    assert_eq!(
        publishes, 2,
        "resent after the silence: stored twice, as --help says"
    );
    assert_eq!(out.out(), "1\n", "the id of the copy whose reply came");
    let help = cli(proxy.addr, &["--help"], b"").out();
    assert!(help.contains("at-least-once"), "{help}");
}

#[test]
fn a_classic_text_must_fit_one_datagram() {
    let _gate = gate::plain();
    let server = ClassicServer::start();
    let out = cli(
        server.addr,
        &["--classic", "publish", "-"],
        &vec![b'x'; 65_506],
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(
        out.stderr,
        "error: text too large for one datagram: 65506 bytes, at most 65505\n"
    );
    let out = cli(
        server.addr,
        &["--classic", "publish", "-"],
        &vec![b'x'; 65_505],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        server.requests().len() == 1,
        "the one that fits was sent, once"
    );
}

#[test]
fn classic_mode_against_this_server_does_not_follow_offers() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let a = server.addr;
    assert_eq!(cli(a, &["--classic", "publish", "short"], b"").out(), "0\n");
    let long = "y".repeat(5_000);
    assert_eq!(cli(a, &["--classic", "publish", &long], b"").out(), "1\n");
    let last = cli(a, &["--classic", "last", "-n", "1"], b"");
    // `3:1` does not fit in a datagram: this server offers a download, which classic
    // mode does not fetch.
    assert_eq!(last.code, Some(1));
    assert!(
        last.stderr.starts_with(&format!(
            "error: malformed reply from {a}: a download offer"
        )),
        "{}",
        last.stderr
    );
    let first = cli(a, &["--classic", "last", "-n", "0"], b"");
    assert_eq!(first.code, Some(1), "the long one is in all of them");
    assert_eq!(Peer::new(a).ask_str("2:0"), "0:0:1");
    let get = cli(a, &["--classic", "get", "0"], b"");
    assert_eq!(get.stdout, b"short");
}

#[test]
fn malformed_replies_are_reported_at_once_not_as_silence() {
    let _gate = gate::plain();
    let server = ClassicServer::answering(b"0:not a message");
    mboard_tests::binary("mboard-client");
    let started = Instant::now();
    let out = cli(server.addr, &["get", "0"], b"");
    assert_eq!(out.code, Some(1));
    assert_eq!(
        out.stderr,
        format!(
            "error: malformed reply from {}: expected a message, got \"0:not a message\"\n",
            server.addr
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    for args in [
        &["--classic", "last"][..],
        &["ids"],
        &["--classic", "publish", "x"],
    ] {
        let out = cli(server.addr, args, b"");
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.starts_with("error: malformed reply from "),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn unexpected_replies_are_described_in_words() {
    let _gate = gate::plain();
    // An offer where an upload session was expected: once reported as
    // `Offer(Offer { sid: SessionId(…) … })`.
    let server = ClassicServer::answering(b"d:3f2b8c1e-9a4d-4e6f-8b1a-2c3d4e5f6a7b:10:5");
    // Larger than a block, so that it opens an upload.
    let out = cli(server.addr, &["publish", "-"], &[b'x'; 2_000]);
    assert_eq!(out.code, Some(1));
    assert_eq!(
        out.stderr,
        format!(
            "error: malformed reply from {}: a download offer of 10 bytes where an upload \
             session was expected\n",
            server.addr
        )
    );
}

//! `5:<token>:<text>`: exactly once per token, over real sockets, in exact bytes.

use std::time::{Duration, Instant};

use mboard_server::{Fsync, JournalConfig, Limits, Store, TokenLimits};
use mboard_tests::{DataDir, Peer, ServerProcess, TestServer, board_contents, gate, scrape};

const TOKEN: &str = "0b7f5d2e-8c4a-4f1e-9d3b-6a2c1e0f9b8d";
const OTHER: &str = "5d1c9a7e-3b2f-4e8d-a6c0-9f1e2d3c4b5a";

/// A fresh token for each message (the n-th of a test).
fn token(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn once(token: &str, text: &str) -> String {
    format!("5:{token}:{text}")
}

/// Uploads `pdu` through a new session of `peer` in `block`-byte blocks and commits it
/// twice; returns the commit's reply (both commits must agree).
fn upload(peer: &Peer, pdu: &[u8], block: usize) -> String {
    let (sid, block) = peer.open(pdu.len(), block).expect("open");
    for (i, chunk) in pdu.chunks(block).enumerate() {
        let mut b = format!("b:{sid}:{i}:").into_bytes();
        b.extend_from_slice(chunk);
        let ack = peer.ask_str(&b);
        assert!(ack.starts_with(&format!("0:{sid}:{i}:")), "{ack}");
    }
    let reply = peer.ask_str(format!("c:{sid}"));
    assert_eq!(peer.ask_str(format!("c:{sid}")), reply, "commit replays");
    assert_eq!(peer.ask_str(format!("x:{sid}")), "0:");
    reply
}

fn journal(dir: &DataDir) -> Store {
    Store::Journal(JournalConfig {
        fsync: Fsync::Always,
        ..JournalConfig::new(dir.path().to_path_buf())
    })
}

fn with_tokens(tokens: TokenLimits) -> Limits {
    Limits {
        tokens,
        ..Limits::default()
    }
}

/// The examples and refusals of `5:`, on both stores.
fn examples(server: &TestServer) {
    let p = Peer::new(server.addr);
    assert_eq!(p.ask_str("1:before"), "0:0");
    assert_eq!(p.ask_str(once(TOKEN, "hi")), "0:1");
    assert_eq!(p.ask_str(once(TOKEN, "hi")), "0:1", "the same again");
    // The server does not compare texts: the token alone says it is a resend.
    assert_eq!(p.ask_str(once(TOKEN, "changed")), "0:1");
    assert_eq!(p.ask_str("2:0"), "0:0:1", "nothing stored by the resends");
    assert!(p.ask_str("3:1").ends_with(":hi"));
    // The text is the last field: colons and newlines are part of it.
    assert_eq!(p.ask_str(once(OTHER, "a:b\n")), "0:2");
    assert!(p.ask_str("3:2").ends_with(":a:b\n"));
    for (pdu, refusal) in [
        ("5:not-a-uuid:hi".to_owned(), "1:bad token"),
        (once(&TOKEN.to_uppercase(), "hi"), "1:bad token"),
        (once(&format!("{{{TOKEN}}}"), "hi"), "1:bad token"),
        (once(&TOKEN.replace('-', ""), "hi"), "1:bad token"),
        (once(&token(3), ""), "1:empty text"),
        (format!("5:{}", token(3)), "1:missing text"),
        ("5:".to_owned(), "1:missing text"),
    ] {
        assert_eq!(p.ask_str(&pdu), refusal, "{pdu:?}");
    }
    // A refused request claims nothing: the token is still new.
    assert_eq!(p.ask_str(once(&token(3), "now")), "0:3");
    assert_eq!(p.ask_str("2:0"), "0:0:1:2:3");
}

#[test]
fn examples_and_refusals_in_exact_bytes() {
    let _gate = gate::plain();
    examples(&TestServer::builder().start());
    let dir = DataDir::new();
    examples(&TestServer::builder().store(journal(&dir)).start());
}

#[test]
fn a_resend_from_another_port_gets_the_same_id() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let first = Peer::new(server.addr);
    let second = Peer::new(server.addr);
    assert_ne!(first.addr(), second.addr());
    assert_eq!(first.ask_str(once(TOKEN, "hello")), "0:0");
    assert_eq!(second.ask_str("1:in between"), "0:1");
    assert_eq!(second.ask_str(once(TOKEN, "hello")), "0:0");
    let board = board_contents(server.addr).expect("board");
    assert_eq!(board.len(), 2);
    assert_eq!(
        board[0].entry.from,
        first.addr(),
        "the first publisher's address"
    );
}

#[test]
fn a_token_is_new_again_once_its_window_has_passed() {
    let _gate = gate::timed();
    let server = TestServer::builder()
        .limits(with_tokens(TokenLimits {
            window: Duration::from_millis(300),
            ..TokenLimits::default()
        }))
        .start();
    let p = Peer::new(server.addr);
    assert_eq!(p.ask_str(once(TOKEN, "one")), "0:0");
    assert_eq!(p.ask_str(once(TOKEN, "one")), "0:0");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        p.ask_str(once(TOKEN, "one")),
        "0:1",
        "forgotten after 300 ms"
    );
    assert_eq!(p.ask_str(once(TOKEN, "one")), "0:1");
}

#[test]
fn a_full_table_forgets_the_oldest_early_and_counts_it() {
    let _gate = gate::plain();
    let limits = with_tokens(TokenLimits {
        max_tokens: 2,
        ..TokenLimits::default()
    });
    let server = TestServer::builder()
        .store(Store::Memory)
        .limits(limits)
        .metrics()
        .start();
    let p = Peer::new(server.addr);
    for n in 0..3 {
        assert_eq!(p.ask_str(once(&token(n), "t")), format!("0:{n}"));
    }
    // Token 0 was the oldest of three in a table of two.
    assert_eq!(p.ask_str(once(&token(0), "t")), "0:3");
    assert_eq!(p.ask_str(once(&token(2), "t")), "0:2");
    let s = scrape(server.metrics.expect("metrics")).expect("scrape");
    assert_eq!(s.value("mboard_tokens"), Some(2.0), "{}", s.body);
    assert_eq!(s.value("mboard_tokens_evicted_early_total"), Some(2.0));
    assert_eq!(s.value("mboard_token_duplicates_total"), Some(1.0));
    assert_eq!(s.value("mboard_publishes_total"), Some(4.0));
    let kind = |reply| format!("mboard_requests_total{{type=\"publish_once\",reply=\"{reply}\"}}");
    // The reply may reach us a moment before it is counted.
    let deadline = Instant::now() + Duration::from_secs(5);
    while scrape(server.metrics.expect("metrics"))
        .expect("scrape")
        .value(&kind("0"))
        != Some(5.0)
    {
        assert!(
            Instant::now() < deadline,
            "publish_once requests not counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_upload_publishes_once_within_and_across_sessions() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let text = "u".repeat(3_000);
    let pdu = once(TOKEN, &text);
    let (a, b) = (Peer::new(server.addr), Peer::new(server.addr));
    assert_eq!(upload(&a, pdu.as_bytes(), 1_400), "0:0");
    // A second session, from another port, with the same token: the same id.
    assert_eq!(upload(&b, pdu.as_bytes(), 700), "0:0");
    // And a datagram with the token, whatever its text.
    assert_eq!(b.ask_str(once(TOKEN, "short")), "0:0");
    // A new token through an upload is a new message; a refusal is the commit's reply.
    assert_eq!(upload(&a, once(OTHER, "small").as_bytes(), 10), "0:1");
    assert_eq!(upload(&a, b"5:not-a-uuid:x", 5), "1:bad token");
    let board = board_contents(server.addr).expect("board");
    assert_eq!(board.len(), 2);
    assert_eq!(board[0].entry.text, text.as_bytes());
}

#[test]
fn concurrent_resends_to_the_durable_board_store_once() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    let server = TestServer::builder()
        .store(journal(&dir))
        .limits(Limits::default())
        .start();
    let peers: Vec<Peer> = (0..16).map(|_| Peer::new(server.addr)).collect();
    // Every peer sends every token at once, so resends arrive while the first of each is
    // waiting for its group commit.
    for n in 0..8 {
        for p in &peers {
            p.send(once(&token(n), &format!("message {n}")).as_bytes());
        }
    }
    let mut ids = vec![Vec::new(); 8];
    for p in &peers {
        for _ in 0..8 {
            let reply = p.recv_within(Duration::from_secs(5)).expect("a reply");
            let reply = String::from_utf8(reply).expect("ascii");
            let id: u64 = reply.strip_prefix("0:").expect("ok").parse().expect("id");
            ids[id as usize].push(id);
        }
    }
    let board = board_contents(server.addr).expect("board");
    assert_eq!(board.len(), 8, "one message per token");
    for (id, answers) in ids.iter().enumerate() {
        assert_eq!(answers.len(), 16, "every peer got id {id} once");
        let n = board[id]
            .entry
            .text
            .strip_prefix(b"message ")
            .expect("text");
        let p = Peer::new(server.addr);
        let n: u32 = String::from_utf8_lossy(n).parse().expect("n");
        assert_eq!(p.ask_str(once(&token(n), "again")), format!("0:{id}"));
    }
}

fn start(dir: &DataDir) -> ServerProcess {
    ServerProcess::start(&["--data-dir", dir.arg()])
        .unwrap_or_else(|(code, log)| panic!("exit {code:?}: {log}"))
}

#[test]
fn tokens_are_remembered_across_sigkill_and_restart() {
    let _gate = gate::timed();
    let dir = DataDir::new();
    let server = start(&dir);
    assert!(server.log().contains("format=3"), "{}", server.log());
    let p = Peer::new(server.addr);
    assert_eq!(p.ask_str(once(TOKEN, "datagram")), "0:0");
    let big = once(OTHER, &"b".repeat(5_000));
    assert_eq!(upload(&p, big.as_bytes(), 1_400), "0:1");
    assert_eq!(p.ask_str("1:plain"), "0:2");
    server.kill();

    let server = start(&dir);
    let log = server.log();
    assert!(
        log.contains("tokens=2") && log.contains("messages=3"),
        "{log}"
    );
    let p = Peer::new(server.addr);
    assert_eq!(p.ask_str(once(TOKEN, "datagram")), "0:0");
    assert_eq!(upload(&p, big.as_bytes(), 1_000), "0:1");
    assert_eq!(p.ask_str(once(OTHER, "as a datagram")), "0:1");
    assert_eq!(p.ask_str(once(&token(1), "new")), "0:3");
    assert_eq!(board_contents(server.addr).expect("board").len(), 4);
    server.kill();

    // Restarted with a window that has passed, the tokens are new again.
    std::thread::sleep(Duration::from_millis(300));
    let server = ServerProcess::start(&["--data-dir", dir.arg(), "--dedup-window", "200ms"])
        .unwrap_or_else(|(code, log)| panic!("exit {code:?}: {log}"));
    assert!(server.log().contains("tokens=0"), "{}", server.log());
    assert_eq!(
        Peer::new(server.addr).ask_str(once(TOKEN, "datagram")),
        "0:4"
    );
}

#[test]
fn unworkable_token_options_are_refused_in_one_line() {
    let _gate = gate::plain();
    for (option, value, line) in [
        (
            "--dedup-window",
            "0s",
            "error: invalid configuration: dedup window must be longer than zero",
        ),
        (
            "--max-tokens",
            "0",
            "error: invalid configuration: max tokens must be at least 1",
        ),
    ] {
        let Err((code, log)) = ServerProcess::start(&["--in-memory", option, value]) else {
            panic!("{option} {value} must be refused")
        };
        assert_eq!(code, Some(1), "{log}");
        assert_eq!(log.lines().last(), Some(line), "{log}");
    }
}

//! The client's publish in protocol version 2: `5:` in one datagram when the request fits
//! in a block, an upload of the `5:` request when it does not, exactly once through loss
//! and across a server restart in the middle of the publish, an upload started over after
//! `4:unknown session`, and the version-1 path for servers without `5:`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mboard_client::{Client, ClientConfig};
use mboard_protocol::{Entry, Message, MessageId, PublishToken};
use mboard_server::Handler;
use mboard_server::Limits;
use mboard_server::{Board, BoardError, MemoryBoard, Span};
use mboard_tests::proxy::{Faults, Proxy};
use mboard_tests::{DataDir, Peer, ServerProcess, TestServer, board_contents, cli, gate};

/// The reply to a publish, `0:<id>`: nothing else in a publish looks like it (block
/// acknowledgements name their session).
fn is_published(d: &[u8]) -> bool {
    d.len() > 2 && d.starts_with(b"0:") && d[2..].iter().all(u8::is_ascii_digit)
}

fn config() -> ClientConfig {
    ClientConfig {
        timeout: Duration::from_secs(30),
        ..ClientConfig::default()
    }
}

#[test]
fn publish_hi_is_one_datagram_each_way() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let proxy = Proxy::start(server.addr, Faults::NONE, Faults::NONE, 1);
    let fives = proxy.count_requests(|d| d.starts_with(b"5:"));
    let out = cli(proxy.addr, &["publish", "hi"], b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!((out.out().as_str(), out.stderr.as_str()), ("0\n", ""));
    assert_eq!(proxy.upward().seen.load(Relaxed), 1, "one datagram sent");
    assert_eq!(fives.load(Relaxed), 1, "and it is a `5:`");
    assert_eq!(proxy.downward().seen.load(Relaxed), 1, "one received");
    let board = board_contents(server.addr).expect("board");
    assert_eq!(board.len(), 1);
    assert_eq!(board[0].entry.text, "hi");
}

#[test]
fn a_request_larger_than_a_block_is_uploaded_as_a_5_request() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let proxy = Proxy::start(server.addr, Faults::NONE, Faults::NONE, 2);
    let opens = proxy.count_requests(|d| d.starts_with(b"a:"));
    // `5:`, a 36-byte token and `:` take 39 bytes of the 1,400 of a block.
    let fits = "f".repeat(1_400 - 39);
    assert_eq!(cli(proxy.addr, &["publish", &fits], b"").out(), "0\n");
    assert_eq!(
        proxy.upward().seen.load(Relaxed),
        1,
        "exactly a block: one datagram"
    );
    assert_eq!(opens.load(Relaxed), 0);
    let over = "o".repeat(1_400 - 38);
    assert_eq!(cli(proxy.addr, &["publish", &over], b"").out(), "1\n");
    assert_eq!(opens.load(Relaxed), 1, "a byte more: an upload");
    // a:, two blocks, c:, x:. The close is sent as the CLI exits and may reach the proxy
    // a moment later.
    let seen = || proxy.upward().seen.load(Relaxed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while seen() < 1 + 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(seen(), 1 + 5);

    // The upload carries the token: a second upload of the same message commits to the
    // first one's id, as does the same token in one datagram.
    let mut client = Client::new(server.addr, config()).expect("client");
    let token = PublishToken(uuid_of(7));
    let big = vec![b'b'; 5_000];
    let id = client.publish_once_as(token, &big).expect("published");
    assert_eq!(id, MessageId(2));
    let mut other = Client::new(server.addr, config()).expect("client");
    assert_eq!(other.publish_once_as(token, &big).expect("again"), id);
    let small = PublishToken(uuid_of(8));
    let first = client.publish_once_as(small, b"s").expect("published");
    assert_eq!(other.publish_once_as(small, b"s").expect("again"), first);
    assert_eq!(board_contents(server.addr).expect("board").len(), 4);
}

fn uuid_of(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

#[test]
fn lossy_network_publishes_once_over_5() {
    let _gate = gate::load();
    let server = TestServer::builder().start();
    let proxy = Proxy::start(server.addr, Faults::lossy(), Faults::lossy(), 21);
    let published = proxy.count_replies(is_published);
    let mut client = Client::new(proxy.addr, config()).expect("client");
    let texts: Vec<Vec<u8>> = (0..80)
        .map(|i| format!("five {i}").into_bytes())
        .chain((0..2).map(|i| vec![b'a' + i; 6_000]))
        .collect();
    let mut ids = Vec::new();
    for text in &texts {
        ids.push(client.publish(text).expect("published").0);
    }
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..texts.len() as u64).collect::<Vec<_>>(),
        "one id each"
    );
    let board = board_contents(server.addr).expect("board");
    assert_eq!(board.len(), texts.len(), "one copy each");
    for text in &texts {
        assert_eq!(board.iter().filter(|m| m.entry.text == text[..]).count(), 1);
    }
    // Replies were lost and duplicated, and requests resent: more answers than messages.
    assert!(proxy.downward().dropped.load(Relaxed) > 0);
    assert!(proxy.upward().dropped.load(Relaxed) > 0);
    assert!(published.load(Relaxed) > texts.len() as u64);
}

/// Waits until the server at `addr` holds `n` messages.
fn wait_for_messages(addr: SocketAddr, n: usize) {
    let started = Instant::now();
    while board_contents(addr).map_or(0, |b| b.len()) < n {
        assert!(started.elapsed() < Duration::from_secs(10), "never stored");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A publish across a server restart, as [`publish_across_a_restart`] saw it.
struct Restarted {
    out: mboard_tests::CliOutput,
    board: Vec<Message>,
    /// Publish replies the proxy lost.
    lost_replies: u64,
    /// `4:unknown session` replies.
    lost_sessions: u64,
    /// Upload sessions opened.
    opens: u64,
}

/// Publishes `text` with the CLI through a proxy that loses every publish reply, kills the
/// durable server once it has stored the message, and restarts it where it was.
fn publish_across_a_restart(text: &[u8]) -> Restarted {
    let dir = DataDir::new();
    let server = ServerProcess::must_start(&["--data-dir", dir.arg()]);
    let addr = server.addr;
    let proxy = Proxy::start(addr, Faults::NONE, Faults::NONE, 5);
    proxy.drop_replies(is_published, u64::MAX);
    let lost_sessions = proxy.count_replies(|d| d.starts_with(b"4:unknown session"));
    let opens = proxy.count_requests(|d| d.starts_with(b"a:"));
    let front = proxy.addr;
    let text = text.to_vec();
    let publisher =
        std::thread::spawn(move || cli(front, &["--timeout", "30s", "publish", "-"], &text));
    // Written and made durable, but the client has not heard.
    wait_for_messages(addr, 1);
    server.kill();
    proxy.drop_replies(is_published, 0);
    let server = ServerProcess::must_start_on(addr, &["--data-dir", dir.arg()]);
    let out = publisher.join().expect("publisher");
    Restarted {
        out,
        board: board_contents(server.addr).expect("board"),
        lost_replies: proxy.downward().targeted.load(Relaxed),
        lost_sessions: lost_sessions.load(Relaxed),
        opens: opens.load(Relaxed),
    }
}

#[test]
fn a_server_killed_between_storing_and_replying_still_stores_once() {
    let _gate = gate::timed();
    let r = publish_across_a_restart(b"survivor");
    assert_eq!(r.out.code, Some(0), "{}", r.out.stderr);
    assert_eq!((r.out.out().as_str(), r.out.stderr.as_str()), ("0\n", ""));
    assert!(r.lost_replies >= 1, "the reply was lost");
    assert_eq!(r.opens, 0, "one datagram, resent as it was");
    assert_eq!(r.board.len(), 1, "the resend got the same id");
    assert_eq!(r.board[0].entry.text, "survivor");
}

#[test]
fn an_upload_whose_session_a_restart_forgot_starts_over_and_stores_once() {
    let _gate = gate::timed();
    let text = vec![b'u'; 4_000];
    let r = publish_across_a_restart(&text);
    assert_eq!(r.out.code, Some(0), "{}", r.out.stderr);
    assert_eq!((r.out.out().as_str(), r.out.stderr.as_str()), ("0\n", ""));
    assert!(r.lost_replies >= 1, "the commit's reply was lost");
    // The resent `c:` met a server that never heard of its session, and the upload
    // started over: its commit found the token, and the message it stored.
    assert!(r.lost_sessions >= 1, "never told the session was unknown");
    assert!(r.opens >= 2, "{} uploads", r.opens);
    assert_eq!(r.board.len(), 1, "one message");
    assert_eq!(r.board[0].entry.text, text);
}

/// A memory board without a token table: its server answers `5:` as a version-1 server
/// does, `3:unknown request 5`.
struct Version1(MemoryBoard);

impl Board for Version1 {
    async fn publish(&self, from: SocketAddr, text: Bytes) -> Result<MessageId, BoardError> {
        self.0.publish(from, text).await
    }
    fn get(&self, id: MessageId) -> Result<Option<Entry>, BoardError> {
        self.0.get(id)
    }
    fn span(&self, n: u64) -> Result<Span, BoardError> {
        self.0.span(n)
    }
    fn span_after(&self, after: MessageId, max: u64) -> Result<Span, BoardError> {
        self.0.span_after(after, max)
    }
    fn messages(&self, span: &Span) -> Result<Vec<Message>, BoardError> {
        self.0.messages(span)
    }
}

#[test]
fn a_server_without_5_gets_the_version_1_publish_and_one_warning() {
    let _gate = gate::plain();
    let handler = Handler::new(Version1(MemoryBoard::new()), Limits::default(), 1);
    let server = TestServer::builder().serving(Arc::new(handler)).start();
    let p = Peer::new(server.addr);
    assert!(
        p.ask_str(format!("5:{}:x", uuid_of(1)))
            .starts_with("3:unknown request 5")
    );

    let out = cli(server.addr, &["publish", "hi"], b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.out(), "0\n");
    assert_eq!(
        out.stderr,
        format!(
            "warning: {} does not know the exactly-once publish `5:` (protocol version 1); \
             publishing through an upload session instead\n",
            server.addr
        )
    );
    // A large one too, and the library warns once for all its publishes.
    let warnings = Rc::new(RefCell::new(Vec::new()));
    let mut client = Client::new(server.addr, config()).expect("client");
    let sink = warnings.clone();
    client.on_warning(Box::new(move |w| sink.borrow_mut().push(w.to_string())));
    assert_eq!(client.publish(&[b'L'; 5_000]).expect("large"), MessageId(1));
    assert_eq!(client.publish(b"again").expect("small"), MessageId(2));
    assert_eq!(warnings.borrow().len(), 1, "{:?}", warnings.borrow());
    // Asked for `5:` by name, it says the server does not know it.
    let err = client.publish_once(b"strict").expect_err("no 5:");
    assert!(err.to_string().starts_with("unknown request 5"), "{err}");
    let board = board_contents(server.addr).expect("board");
    assert_eq!(board.len(), 3);
    assert_eq!(board[0].entry.text, "hi");
}

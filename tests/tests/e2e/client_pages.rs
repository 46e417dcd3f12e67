//! Reading in pages of `6:`: `since` (and what retention removed), `last` past the
//! server's session budget, and what the client makes of a version-1 server.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use mboard_protocol::{Entry, Message, MessageId};
use mboard_server::Handler;
use mboard_server::Limits;
use mboard_server::{Board, BoardError, MemoryBoard, Span};
use mboard_tests::proxy::{Faults, Proxy};
use mboard_tests::{CliProcess, Peer, TestServer, cli, gate};

fn ids(out: &str) -> Vec<u64> {
    out.lines()
        .map(|l| {
            l.strip_prefix('#')
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a message line: {l:?}"))
        })
        .collect()
}

fn fill(addr: SocketAddr, n: usize, text: impl Fn(usize) -> String) {
    let p = Peer::new(addr);
    for i in 0..n {
        assert!(p.ask_str(format!("1:{}", text(i))).starts_with("0:"));
    }
}

#[test]
fn since_reads_the_board_in_pages_of_one_datagram() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    fill(server.addr, 300, |i| format!("message {i}"));
    let proxy = Proxy::start(server.addr, Faults::NONE, Faults::NONE, 4);
    let pages = proxy.count_requests(|d| d.starts_with(b"6:"));
    let offers = proxy.count_replies(|d| d.starts_with(b"d:"));
    let out = cli(proxy.addr, &["since", "0"], b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(ids(&out.out()), (1..300).collect::<Vec<_>>());
    assert!(out.out().ends_with("  message 299\n"));
    // Short texts: a few dozen a page, each page one datagram, and an empty one at the end.
    let asked = pages.load(Relaxed);
    assert!((6..=40).contains(&asked), "{asked} pages");
    assert_eq!(offers.load(Relaxed), 0, "every page fit in one datagram");

    let out = cli(server.addr, &["since", "10", "-n", "5"], b"");
    assert_eq!(ids(&out.out()), [11, 12, 13, 14, 15]);
    let out = cli(server.addr, &["since", "298", "--json"], b"");
    assert!(
        out.out().starts_with("{\"id\":299,") && out.out().lines().count() == 1,
        "{}",
        out.out()
    );
    let out = cli(server.addr, &["since", "299"], b"");
    assert_eq!(
        (out.code, out.out().as_str(), out.stderr.as_str()),
        (Some(0), "", "")
    );
}

#[test]
fn last_pages_when_one_reply_would_not_fit_the_session_budget() {
    let _gate = gate::plain();
    let limits = Limits {
        max_session_memory: 64 << 10,
        ..Limits::default()
    };
    let server = TestServer::builder().limits(limits.clone()).start();
    // 100 KiB of board: more than the 64 KiB all sessions together may hold.
    fill(server.addr, 100, |i| format!("{i:04}{}", "x".repeat(1_000)));
    let p = Peer::new(server.addr);
    assert_eq!(p.ask_str("4:0"), "4:busy", "one reply cannot be afforded");
    let out = cli(server.addr, &["last", "-n", "0"], b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(ids(&out.out()), (0..100).collect::<Vec<_>>());
    assert!(
        out.out()
            .contains(&format!("  0099{}\n", "x".repeat(1_000)))
    );
    assert_eq!(p.ask_str("4:80"), "4:busy");
    let out = cli(server.addr, &["last", "-n", "80", "--json"], b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.out().lines().count(), 80);
    assert!(out.out().starts_with("{\"id\":20,"), "{}", out.out());
    // What fits still comes in one reply.
    let out = cli(server.addr, &["last", "-n", "3"], b"");
    assert_eq!(ids(&out.out()), [97, 98, 99]);

    // Pages of large messages that the budget cannot take either are halved until it can:
    // the first page asks for 20 messages (160 KiB of them), then 10, then 5.
    let server = TestServer::builder().limits(limits).start();
    fill(server.addr, 30, |i| format!("{i:04}{}", "z".repeat(8_000)));
    assert_eq!(Peer::new(server.addr).ask_str("6:0:20:0"), "4:busy");
    for args in [
        &["last", "-n", "0"][..],
        &["since", "0"],
        &["follow", "--after", "0"],
    ] {
        let f = CliProcess::start(server.addr, args);
        let first = if args[0] == "last" { 0 } else { 1 };
        let lines = f.lines(30 - first, Duration::from_secs(15));
        assert_eq!(
            ids(&lines.join("\n")),
            (first as u64..30).collect::<Vec<_>>(),
            "{args:?}"
        );
        assert_eq!(f.stderr(), "", "{args:?}");
    }
}

/// A memory board whose oldest messages (below `floor`) retention has removed.
struct Trimmed {
    board: MemoryBoard,
    floor: u64,
}

impl Board for Trimmed {
    async fn publish(&self, from: SocketAddr, text: Bytes) -> Result<MessageId, BoardError> {
        self.board.publish(from, text).await
    }
    fn get(&self, id: MessageId) -> Result<Option<Entry>, BoardError> {
        match id.0 < self.floor {
            true => Ok(None),
            false => self.board.get(id),
        }
    }
    fn span(&self, n: u64) -> Result<Span, BoardError> {
        self.board.span(n)
    }
    fn span_after(&self, after: MessageId, max: u64) -> Result<Span, BoardError> {
        let kept = MessageId(after.0.max(self.floor - 1));
        self.board.span_after(kept, max)
    }
    fn messages(&self, span: &Span) -> Result<Vec<Message>, BoardError> {
        self.board.messages(span)
    }
}

#[test]
fn what_retention_removed_is_said_on_standard_error() {
    let _gate = gate::plain();
    let board = Trimmed {
        board: MemoryBoard::new(),
        floor: 5,
    };
    let handler = Handler::new(board, Limits::default(), 1);
    let server = TestServer::builder().serving(Arc::new(handler)).start();
    fill(server.addr, 10, |i| format!("m{i}"));
    let out = cli(server.addr, &["since", "1"], b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stderr,
        "warning: 3 messages no longer kept (#2 to #4)\n"
    );
    assert_eq!(ids(&out.out()), [5, 6, 7, 8, 9]);
    let out = cli(server.addr, &["since", "3"], b"");
    assert_eq!(out.stderr, "warning: 1 message no longer kept (#4)\n");
    // A follower says so too, and goes on.
    let f = CliProcess::start(server.addr, &["follow", "--after", "0"]);
    let lines = f.lines(5, Duration::from_secs(15));
    assert!(lines[0].starts_with("#5  "), "{lines:?}");
    assert!(f.stderr_has(
        "warning: 4 messages no longer kept (#1 to #4)",
        Duration::from_secs(5)
    ));
}

/// A version-1 server: `4:` and `3:` answered with one fixed message, `6:` unknown.
struct Version1 {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Version1 {
    fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let reply: &[u8] = match &buf[..n] {
                    [b'4', b':', ..] => b"0:1:0:1763743500.123456:127.0.0.1:9:2:hi",
                    b"3:0" => b"0:1763743500.123456:127.0.0.1:9:hi",
                    b"2:1" => b"0:0",
                    [code, b':', ..] => match code {
                        b'6' => b"3:unknown request 6",
                        _ => b"3:unknown request",
                    },
                    _ => b"1:too short",
                };
                let _ = socket.send_to(reply, from);
            }
        });
        Version1 { addr, stop }
    }
}

impl Drop for Version1 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_version_1_server_is_told_apart() {
    let _gate = gate::plain();
    let server = Version1::start();
    let unknown = format!(
        "error: {} does not know `6:` requests: it speaks protocol version 1, and reading \
         after an id needs version 2\n",
        server.addr
    );
    let out = cli(server.addr, &["since", "0"], b"");
    assert_eq!((out.code, out.stderr.as_str()), (Some(1), unknown.as_str()));
    let out = cli(server.addr, &["follow", "--after", "0"], b"");
    assert_eq!((out.code, out.stderr.as_str()), (Some(1), unknown.as_str()));
    // `last -n 0` asks `4:0` as it always did.
    let out = cli(server.addr, &["last", "-n", "0"], b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(ids(&out.out()), [0]);
    for args in [&["--classic", "follow"][..], &["since", "0", "--classic"]] {
        let out = cli(server.addr, args, b"");
        assert_eq!(out.code, Some(2), "{args:?}");
        assert!(
            out.stderr
                .ends_with("needs protocol version 2, which classic mode does not speak\n"),
            "{}",
            out.stderr
        );
    }
}

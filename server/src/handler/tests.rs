//! The handler on its own, without sockets: boards that fail, count reads or are small.

use mboard_protocol::{Entry, Expect, Message, MessageId};

use super::*;
use crate::board::{MemoryBoard, Span};

pub(super) fn from() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5000))
}

pub(super) fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn ask<B: Board>(h: &Arc<Handler<B>>, now: Instant, pdu: &[u8]) -> Option<Bytes> {
    let datagram = Bytes::copy_from_slice(pdu);
    run(async { h.handle(now, from(), datagram).await.answer.resolve().await })
        .map(Reply::into_bytes)
}

fn text(reply: Option<Bytes>) -> String {
    String::from_utf8_lossy(&reply.expect("a reply")).into_owned()
}

/// A board whose storage always fails.
struct Broken;

impl Board for Broken {
    async fn publish(&self, _: SocketAddr, _: Bytes) -> Result<MessageId, BoardError> {
        Err(BoardError::Storage("disk on fire".into()))
    }
    fn get(&self, _: MessageId) -> Result<Option<Entry>, BoardError> {
        Err(BoardError::Poisoned)
    }
    fn span(&self, _: u64) -> Result<Span, BoardError> {
        Ok(Span {
            start: 0,
            count: 1000,
            id_digits: mboard_protocol::digits_in_range(0, 1000),
            records: 100_000,
        })
    }

    fn span_after(&self, _: MessageId, _: u64) -> Result<Span, BoardError> {
        self.span(0)
    }

    fn messages(&self, _: &Span) -> Result<Vec<Message>, BoardError> {
        Err(BoardError::Poisoned)
    }
}

#[test]
fn storage_failures_are_answered_and_release_reservations() {
    let h = Arc::new(Handler::new(Broken, Limits::default(), 1));
    let now = Instant::now();
    assert_eq!(text(ask(&h, now, b"1:x")), "4:storage failure");
    // A store without a token table answers `5:` as a server without it would.
    let once = b"5:0b7f5d2e-8c4a-4f1e-9d3b-6a2c1e0f9b8d:x";
    assert_eq!(text(ask(&h, now, once)), "3:unknown request 5");
    assert_eq!(text(ask(&h, now, b"3:1")), "4:storage failure");
    // Sized as a download, then the read fails: the reservation is given back.
    assert_eq!(text(ask(&h, now, b"4:0")), "4:storage failure");
    assert_eq!(h.stats().sessions, 0);
    assert_eq!(h.stats().reserved, 0);
    // Ids come from the span alone, so listing them needs no read that could fail.
    assert!(text(ask(&h, now, b"2:0")).starts_with("d:"));
}

#[test]
fn assembled_requests_must_be_board_requests() {
    let h = Arc::new(Handler::new(MemoryBoard::new(), Limits::default(), 1));
    let now = Instant::now();
    for (pdu, want) in [
        (&b"a:1:1"[..], "3:not a board request"),
        (b"9:x", "3:unknown request 9"),
        (b"2:x", "1:bad number"),
        (b"1:", "1:empty text"),
    ] {
        let open = ask(&h, now, format!("a:{}:100", pdu.len()).as_bytes()).expect("open");
        let Ok(Response::Opened { sid, .. }) = Response::parse(open, Expect::Opened) else {
            panic!("open")
        };
        let mut block = format!("b:{sid}:0:").into_bytes();
        block.extend_from_slice(pdu);
        ask(&h, now, &block);
        assert_eq!(text(ask(&h, now, format!("c:{sid}").as_bytes())), want);
        // The refusal is the committed reply, replayed like any other.
        assert_eq!(text(ask(&h, now, format!("c:{sid}").as_bytes())), want);
    }
}

/// A board that counts full reads.
pub(crate) struct Counting {
    pub(crate) inner: MemoryBoard,
    pub(crate) gets: std::sync::atomic::AtomicU32,
}

impl Board for Counting {
    async fn publish(&self, from: SocketAddr, text: Bytes) -> Result<MessageId, BoardError> {
        self.inner.publish(from, text).await
    }
    fn get(&self, id: MessageId) -> Result<Option<Entry>, BoardError> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.get(id)
    }
    fn entry_len(&self, id: MessageId) -> Result<Option<usize>, BoardError> {
        self.inner.entry_len(id)
    }
    fn span(&self, n: u64) -> Result<Span, BoardError> {
        self.inner.span(n)
    }
    fn span_after(&self, after: MessageId, max: u64) -> Result<Span, BoardError> {
        self.inner.span_after(after, max)
    }
    fn messages(&self, span: &Span) -> Result<Vec<Message>, BoardError> {
        self.inner.messages(span)
    }
}

#[test]
fn a_large_get_is_sized_before_it_is_read() {
    let limits = Limits {
        max_session_memory: 3_000,
        ..Limits::default()
    };
    let board = Counting {
        inner: MemoryBoard::new(),
        gets: Default::default(),
    };
    let h = Arc::new(Handler::new(board, limits, 1));
    let now = Instant::now();
    assert_eq!(
        text(ask(&h, now, &[b"1:".as_slice(), &[b'x'; 5_000]].concat())),
        "0:0"
    );
    assert_eq!(text(ask(&h, now, b"3:0")), "4:busy");
    let gets = || h.board().gets.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(gets(), 0, "refused without reading the message");
    // A reply that fits is read once, when built.
    assert_eq!(text(ask(&h, now, b"1:small")), "0:1");
    assert!(text(ask(&h, now, b"3:1")).ends_with(":small"));
    assert_eq!(gets(), 1);
}

#[test]
fn large_replies_become_offers_or_busy() {
    let limits = Limits {
        max_session_memory: 10_000,
        ..Limits::default()
    };
    let h = Arc::new(Handler::new(MemoryBoard::new(), limits, 1));
    let now = Instant::now();
    assert_eq!(
        text(ask(&h, now, &[b"1:".as_slice(), &[b'x'; 2000]].concat())),
        "0:0"
    );
    let reply = ask(&h, now, b"3:0").expect("reply");
    let Ok(Response::Offer(offer)) = Response::parse(reply, Expect::Entry) else {
        panic!("offer")
    };
    assert!(offer.size > 2000 && offer.block_size == 1412, "{offer:?}");
    for _ in 0..4 {
        ask(&h, now, &[b"1:".as_slice(), &[b'y'; 2000]].concat());
    }
    // Five 2,000-byte messages exceed what is left of the 10,000-byte budget.
    assert_eq!(text(ask(&h, now, b"4:0")), "4:busy");
    assert_eq!(h.stats().sessions, 1);
}

/// A board whose reads come from a replica that has yet to receive what was published
/// elsewhere (as the clustered store's can be): `catch_up` delivers it.
struct Lagging {
    replica: Arc<MemoryBoard>,
    /// Published elsewhere, not received here yet.
    behind: Arc<Mutex<Vec<Bytes>>>,
}

impl Board for Lagging {
    async fn publish(&self, from: SocketAddr, text: Bytes) -> Result<MessageId, BoardError> {
        self.replica.publish(from, text).await
    }
    fn get(&self, id: MessageId) -> Result<Option<Entry>, BoardError> {
        self.replica.get(id)
    }
    fn entry_len(&self, id: MessageId) -> Result<Option<usize>, BoardError> {
        self.replica.entry_len(id)
    }
    fn span(&self, n: u64) -> Result<Span, BoardError> {
        self.replica.span(n)
    }
    fn span_after(&self, after: MessageId, max: u64) -> Result<Span, BoardError> {
        self.replica.span_after(after, max)
    }
    fn messages(&self, span: &Span) -> Result<Vec<Message>, BoardError> {
        self.replica.messages(span)
    }
    fn catch_up(&self, _: MessageId) -> Option<crate::board::CatchUp> {
        let (replica, behind) = (self.replica.clone(), self.behind.clone());
        Some(Box::pin(async move {
            let texts: Vec<Bytes> = std::mem::take(&mut *behind.lock().expect("behind"));
            for text in texts {
                replica.publish(from(), text).await?;
            }
            Ok(())
        }))
    }
}

#[test]
fn a_get_that_waited_for_the_replica_obeys_the_amplification_rule() {
    for loopback_checked in [false, true] {
        let limits = Limits {
            amplification_loopback: loopback_checked,
            ..Limits::default()
        };
        let board = Lagging {
            replica: Arc::new(MemoryBoard::new()),
            behind: Arc::new(Mutex::new(vec![Bytes::from(vec![b'x'; 300])])),
        };
        let h = Arc::new(Handler::new(board, limits, 1));
        let handled = run(h.handle(Instant::now(), from(), Bytes::from_static(b"3:0")));
        assert!(
            matches!(handled.answer, Answer::Wait(_)),
            "message 0 is not here yet: the get waits for it"
        );
        let reply = text(run(handled.answer.resolve()).map(Reply::into_bytes));
        // 300 bytes fit a datagram, but not the allowance of a 3-byte request from an
        // address that never echoed a session id.
        assert_eq!(reply.starts_with("d:"), loopback_checked, "{reply}");
        if !loopback_checked {
            assert!(reply.starts_with("0:") && reply.ends_with(&"x".repeat(300)));
        }
    }
}

#[test]
fn a_large_get_that_waited_for_the_replica_is_offered_as_a_download() {
    let board = Lagging {
        replica: Arc::new(MemoryBoard::new()),
        behind: Arc::new(Mutex::new(vec![Bytes::from(vec![b'y'; 100_000])])),
    };
    let h = Arc::new(Handler::new(board, Limits::default(), 1));
    let handled = run(h.handle(Instant::now(), from(), Bytes::from_static(b"3:0")));
    assert!(matches!(handled.answer, Answer::Wait(_)));
    // Built on the blocking pool once the replica has it, into a download of its own.
    let reply = text(run(handled.answer.resolve()).map(Reply::into_bytes));
    assert!(reply.starts_with("d:"), "{reply}");
    assert_eq!(h.stats().sessions, 1);
}

#[test]
fn reads_waiting_for_the_replica_are_bounded() {
    let limits = Limits::default();
    let max = limits.max_catching_up;
    // Never polled, the waits never end: as if the stream's server were unreachable.
    let board = Lagging {
        replica: Arc::new(MemoryBoard::new()),
        behind: Arc::default(),
    };
    let h = Arc::new(Handler::new(board, limits, 1));
    let now = Instant::now();
    // A flood of `3:<huge id>` from spoofed sources, each one a wait kept by a receive
    // loop until the replica answers.
    let mut waits = Vec::new();
    for port in 0..max {
        let from = SocketAddr::from(([10, 0, (port >> 8) as u8, port as u8], 7));
        let handled = run(h.handle(now, from, Bytes::from_static(b"3:123456789")));
        let Answer::Wait(wait) = handled.answer else {
            panic!("read {port} of {max} does not wait: {:?}", handled.answer);
        };
        waits.push(wait);
    }
    // Past the bound, a read is refused for now instead of kept.
    let refused = run(h.handle(now, from(), Bytes::from_static(b"3:123456789")));
    let Answer::Reply(reply) = refused.answer else {
        panic!("kept past the bound: {:?}", refused.answer);
    };
    assert_eq!(&reply.bytes()[..], b"4:busy");
    // A wait that ends (answered, or dropped with its loop) gives its place back.
    waits.pop();
    let handled = run(h.handle(now, from(), Bytes::from_static(b"3:123456789")));
    assert!(matches!(handled.answer, Answer::Wait(_)));
}

#[test]
fn caps_beyond_what_a_semaphore_holds_are_as_good_as_unlimited() {
    // Validation bounds these only from below: a huge cap must not panic the server.
    let limits = Limits {
        max_queued_publishes: usize::MAX,
        max_catching_up: usize::MAX,
        max_queued_bytes: u64::MAX,
        ..Limits::default()
    };
    limits.validate().expect("valid");
    let h = Arc::new(Handler::new(MemoryBoard::new(), limits, 1));
    assert_eq!(text(ask(&h, Instant::now(), b"1:hello")), "0:0");
}

//! A slow request never stalls the others: large replies are built off the receive loops,
//! and a loop out of permits to build them still answers the publishes it has waiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mboard_protocol::{Entry, Message, MessageId, Timestamp};
use mboard_server::Handler;
use mboard_server::Limits;
use mboard_server::{Board, BoardError, Span};
use mboard_tests::{Peer, TestServer, gate};

/// One message, whose bulk read (`4:`) takes two seconds, like a cold disk; with
/// `publish_wait`, a publish waits that long for its (pretend) group commit.
struct SlowBoard {
    message: Message,
    publish_wait: Option<Duration>,
}

impl SlowBoard {
    fn new() -> Self {
        let entry = Entry {
            time: Timestamp(1_763_743_500_000_000),
            from: "127.0.0.1:9".parse().expect("addr"),
            text: Bytes::from(vec![b's'; 5_000]),
        };
        SlowBoard {
            message: Message {
                id: MessageId(0),
                entry,
            },
            publish_wait: None,
        }
    }
}

impl Board for SlowBoard {
    fn defers_publish(&self) -> bool {
        self.publish_wait.is_some()
    }
    async fn publish(&self, _: SocketAddr, _: Bytes) -> Result<MessageId, BoardError> {
        if let Some(wait) = self.publish_wait {
            tokio::time::sleep(wait).await;
        }
        Ok(MessageId(1))
    }
    fn get(&self, id: MessageId) -> Result<Option<Entry>, BoardError> {
        Ok((id.0 == 0).then(|| self.message.entry.clone()))
    }
    fn span(&self, _: u64) -> Result<Span, BoardError> {
        Ok(Span {
            start: 0,
            count: 1,
            id_digits: 1,
            records: self.message.record_len() as u64,
        })
    }
    fn span_after(&self, _: MessageId, _: u64) -> Result<Span, BoardError> {
        self.span(0)
    }
    fn messages(&self, _: &Span) -> Result<Vec<Message>, BoardError> {
        std::thread::sleep(Duration::from_secs(2));
        Ok(vec![self.message.clone()])
    }
}

#[test]
fn slow_replies_do_not_hold_up_fast_ones() {
    // Fast replies must come within the 2 s a slow one takes.
    let _gate = gate::timed();
    // Two receive loops, so that six slow requests would occupy them all if they were
    // built inline.
    let handler = Handler::new(SlowBoard::new(), Limits::default(), 1);
    let server = TestServer::builder().serving(Arc::new(handler)).start();
    let addr = server.addr;

    let slow: Vec<Peer> = (0..6).map(|_| Peer::new(addr)).collect();
    for p in &slow {
        p.send(b"4:1");
    }
    // Let the slow requests reach the server and start building.
    std::thread::sleep(Duration::from_millis(200));
    let fast = Peer::new(addr);
    assert_eq!(fast.ask_str("2:1"), "0:0");
    assert_eq!(fast.ask_str("9:x"), "3:unknown request 9");
    for (i, p) in slow.iter().enumerate() {
        assert_eq!(
            p.recv_within(Duration::from_millis(1)),
            None,
            "slow request {i} answered before the fast ones"
        );
    }
    // The slow ones still get their download offers.
    for p in &slow {
        let reply = p
            .recv_within(Duration::from_secs(10))
            .expect("the slow reply comes");
        assert!(
            reply.starts_with(b"d:"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
    }
}

#[test]
fn a_loop_waiting_to_build_a_reply_still_answers_its_waiting_publishes() {
    let _gate = gate::timed();
    // One loop, and room to build one large reply at a time.
    let board = SlowBoard {
        publish_wait: Some(Duration::from_millis(300)),
        ..SlowBoard::new()
    };
    let limits = Limits {
        max_building_replies: 1,
        ..Limits::default()
    };
    let handler = Handler::new(board, limits, 1);
    let server = TestServer::builder()
        .workers(1)
        .serving(Arc::new(handler))
        .start();
    let publisher = Peer::new(server.addr);
    publisher.send(b"1:waits 300 ms for the board");
    std::thread::sleep(Duration::from_millis(50));
    // The first takes the only permit for 2 s; the loop waits for it on the second.
    let slow: Vec<Peer> = (0..2).map(|_| Peer::new(server.addr)).collect();
    for p in &slow {
        p.send(b"4:1");
    }
    let published = publisher
        .recv_within(Duration::from_millis(1_500))
        .expect("the publish is answered while the loop waits to build");
    assert_eq!(published, b"0:1");
    assert_eq!(
        slow[0].recv_within(Duration::from_millis(1)),
        None,
        "the first slow reply came first"
    );
    for p in &slow {
        let reply = p.recv_within(Duration::from_secs(10)).expect("slow reply");
        assert!(
            reply.starts_with(b"d:"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
    }
}

#[test]
fn a_handler_built_from_unvalidated_limits_still_builds_large_replies() {
    let _gate = gate::timed();
    // An embedder may build a handler without `Limits::validate`: no permit to build
    // would park the loop at the first large reply, and with it every client.
    let limits = Limits {
        max_building_replies: 0,
        ..Limits::default()
    };
    let handler = Handler::new(SlowBoard::new(), limits, 1);
    let server = TestServer::builder()
        .workers(1)
        .serving(Arc::new(handler))
        .start();
    let peer = Peer::new(server.addr);
    peer.send(b"4:1");
    let reply = peer
        .recv_within(Duration::from_secs(10))
        .expect("the large reply is built");
    assert!(
        reply.starts_with(b"d:"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    peer.send(b"3:0");
    assert!(peer.recv_within(Duration::from_secs(5)).is_some());
}

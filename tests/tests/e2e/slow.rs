//! A slow request never stalls the others: large replies are built off the receive loops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mboard_protocol::{Entry, Message, MessageId, Timestamp};
use mboard_server::Handler;
use mboard_server::Limits;
use mboard_server::{Board, BoardError, Span};
use mboard_tests::{Peer, TestServer, gate};

/// One message, whose bulk read (`4:`) takes two seconds, like a cold disk.
struct SlowBoard {
    message: Message,
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
        }
    }
}

impl Board for SlowBoard {
    async fn publish(&self, _: SocketAddr, _: Bytes) -> Result<MessageId, BoardError> {
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

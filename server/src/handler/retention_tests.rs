//! The handler's answers when the store trims messages or refuses publishes.

use std::time::SystemTime;

use mboard_protocol::{Entry, Expect, Message, MessageId, Timestamp};

use super::tests::{from, run};
use super::*;
use crate::board::{MemoryBoard, Retention, Span, TokenLimits};

fn handled<B: Board>(h: &Arc<Handler<B>>, pdu: &[u8]) -> Answer {
    let datagram = Bytes::copy_from_slice(pdu);
    run(h.handle(Instant::now(), from(), datagram)).answer
}

fn ask<B: Board>(h: &Arc<Handler<B>>, pdu: &[u8]) -> String {
    let reply = run(handled(h, pdu).resolve()).expect("a reply");
    String::from_utf8_lossy(reply.bytes()).into_owned()
}

fn keeping(n: u64) -> Arc<Handler<MemoryBoard>> {
    let retention = Retention {
        messages: Some(n),
        ..Retention::UNLIMITED
    };
    let board = MemoryBoard::unstarted(TokenLimits::default(), retention);
    Arc::new(Handler::new(board, Limits::default(), 1))
}

fn trim(h: &Handler<MemoryBoard>) {
    let now = Timestamp::from_system_time(SystemTime::now());
    h.board().trim(now).expect("trim");
}

#[test]
fn trimmed_ids_are_no_longer_kept_and_reads_start_at_the_oldest_kept() {
    let h = keeping(2);
    for i in 0..4 {
        assert_eq!(ask(&h, format!("1:m{i}").as_bytes()), format!("0:{i}"));
    }
    trim(&h);
    assert_eq!(ask(&h, b"3:0"), "2:no longer kept");
    assert_eq!(ask(&h, b"3:1"), "2:no longer kept");
    assert!(ask(&h, b"3:2").ends_with(":m2"));
    assert_eq!(ask(&h, b"3:9"), "2:no message 9");
    assert_eq!(ask(&h, b"2:0"), "0:2:3");
    assert_eq!(ask(&h, b"2:10"), "0:2:3");
    let last = ask(&h, b"4:0");
    assert!(
        last.starts_with("0:2:2:") && last.ends_with(":2:m3"),
        "{last}"
    );
    let after = ask(&h, b"6:0:1:0");
    assert!(
        after.starts_with("0:1:2:") && after.ends_with(":m2"),
        "{after}"
    );
    assert_eq!(ask(&h, b"1:next"), "0:4", "ids are never reused");
}

#[test]
fn a_download_whose_oldest_messages_go_while_it_is_built_is_offered_as_it_is() {
    let h = keeping(2);
    for i in 0..3 {
        let text = format!("{i}{}", "x".repeat(999));
        assert_eq!(ask(&h, format!("1:{text}").as_bytes()), format!("0:{i}"));
    }
    let Answer::Build(build) = handled(&h, b"4:0") else {
        panic!("three 1,000-byte messages are a download")
    };
    trim(&h);
    let reply = build();
    let Ok(Response::Offer(offer)) = Response::parse(reply.into_bytes(), Expect::Messages) else {
        panic!("an offer")
    };
    let mut whole = Vec::new();
    for i in 0..offer.blocks() {
        let block = run(h
            .handle(
                Instant::now(),
                from(),
                Bytes::from(format!("g:{}:{i}", offer.sid)),
            )
            .await_answer());
        let prefix = format!("0:{}:{i}:", offer.sid);
        assert!(block.starts_with(prefix.as_bytes()));
        whole.extend_from_slice(&block[prefix.len()..]);
    }
    assert_eq!(whole.len() as u64, offer.size);
    let Ok(Response::Messages(messages)) = Response::parse(Bytes::from(whole), Expect::Messages)
    else {
        panic!("the messages")
    };
    let ids: Vec<u64> = messages.iter().map(|m| m.id.0).collect();
    assert_eq!(ids, vec![1, 2], "what was still kept when it was built");
    assert_eq!(
        h.stats().reserved,
        offer.size,
        "the first reservation was given back"
    );
}

trait AwaitAnswer {
    async fn await_answer(self) -> Vec<u8>;
}

impl<F: std::future::Future<Output = Handled>> AwaitAnswer for F {
    async fn await_answer(self) -> Vec<u8> {
        let reply = self.await.answer.resolve().await.expect("a reply");
        reply.bytes().to_vec()
    }
}

/// A board whose publishes wait for a disk that never answers, or are refused.
struct Stalled {
    refusal: Option<Refusal>,
}

impl Board for Stalled {
    fn defers_publish(&self) -> bool {
        true
    }
    async fn publish(&self, _: SocketAddr, _: Bytes) -> Result<MessageId, BoardError> {
        match self.refusal {
            Some(why) => Err(BoardError::Refused(why)),
            None => std::future::pending().await,
        }
    }
    fn get(&self, _: MessageId) -> Result<Option<Entry>, BoardError> {
        Ok(None)
    }
    fn span(&self, _: u64) -> Result<Span, BoardError> {
        Ok(Span::default())
    }
    fn span_after(&self, _: MessageId, _: u64) -> Result<Span, BoardError> {
        Ok(Span::default())
    }
    fn messages(&self, _: &Span) -> Result<Vec<Message>, BoardError> {
        Ok(Vec::new())
    }
}

#[test]
fn a_full_queue_for_the_disk_is_answered_busy_at_once() {
    let limits = Limits {
        max_queued_publishes: 2,
        max_queued_bytes: 100,
        ..Limits::default()
    };
    let h = Arc::new(Handler::new(Stalled { refusal: None }, limits, 1));
    let first = handled(&h, b"1:one");
    let second = handled(&h, b"1:two");
    assert!(matches!(
        (&first, &second),
        (Answer::Wait(_), Answer::Wait(_))
    ));
    assert_eq!(ask(&h, b"1:three"), "4:busy", "two wait already");
    assert_eq!(
        ask(&h, b"5:0b7f5d2e-8c4a-4f1e-9d3b-6a2c1e0f9b8d:x"),
        "4:busy"
    );
    // Reads are not queued behind the disk.
    assert_eq!(ask(&h, b"2:0"), "0:");
    // A publish given up (its wait dropped) leaves the queue.
    drop(first);
    let third = handled(&h, b"1:three");
    assert!(matches!(third, Answer::Wait(_)));
    drop((second, third));
    // Bytes count too: 60 + 60 is over 100.
    let big = [b"1:".as_slice(), &[b'b'; 60]].concat();
    let held = handled(&h, &big);
    assert!(matches!(held, Answer::Wait(_)));
    assert_eq!(ask(&h, &big), "4:busy");
}

#[test]
fn a_refused_publish_says_why() {
    for (why, reply) in [
        (Refusal::Full, "4:storage full"),
        (Refusal::ReadOnly, "4:storage read-only"),
        (Refusal::Unavailable, "4:storage unavailable"),
        (Refusal::Busy, "4:busy"),
    ] {
        let h = Arc::new(Handler::new(
            Stalled { refusal: Some(why) },
            Limits::default(),
            1,
        ));
        assert_eq!(ask(&h, b"1:x"), reply);
        assert_eq!(h.publishes(), 0);
    }
}

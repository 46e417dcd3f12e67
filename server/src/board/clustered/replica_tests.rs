//! The replica: ids assigned by the stream, gaps, and trimming by the stream's first id.

use std::net::SocketAddr;

use bytes::Bytes;
use mboard_protocol::{Entry, MessageId, Timestamp};

use crate::board::{Board, MemoryBoard, Retention, TokenLimits};

fn entry(text: &'static str) -> Entry {
    Entry {
        time: Timestamp(1),
        from: SocketAddr::from(([127, 0, 0, 1], 9)),
        text: Bytes::from_static(text.as_bytes()),
    }
}

fn replica() -> MemoryBoard {
    let board = MemoryBoard::unstarted(TokenLimits::default(), Retention::UNLIMITED);
    board.trim_below(MessageId(1)).expect("trim");
    board
}

#[test]
fn ids_come_from_the_stream_and_redeliveries_are_ignored() {
    let r = replica();
    assert_eq!(
        r.oldest().expect("oldest"),
        MessageId(1),
        "a new stream starts at 1"
    );
    assert_eq!(r.span(0).expect("span").count, 0);
    for (id, text) in [(1, "a"), (2, "b"), (2, "b again"), (1, "a again"), (3, "c")] {
        assert!(!r.replicate(MessageId(id), entry(text)).expect("replicate"));
    }
    let span = r.span(0).expect("span");
    assert_eq!((span.start, span.count), (1, 3));
    assert_eq!(
        &r.get(MessageId(2)).expect("get").expect("2").text[..],
        b"b"
    );
}

#[test]
fn a_gap_or_the_streams_trimming_moves_the_oldest_id() {
    let r = replica();
    for id in 1..=5 {
        r.replicate(MessageId(id), entry("x")).expect("replicate");
    }
    assert_eq!(r.trim_below(MessageId(3)).expect("trim"), 2);
    assert_eq!(r.oldest().expect("oldest"), MessageId(3));
    assert!(r.get(MessageId(2)).expect("get").is_none());
    // A message past a gap: kept ids must stay consecutive, so the older ones go.
    assert!(
        r.replicate(MessageId(9), entry("after gap"))
            .expect("replicate")
    );
    assert_eq!(r.oldest().expect("oldest"), MessageId(9));
    assert_eq!(r.span(0).expect("span").count, 1);
    // A stream purged past everything held: the replica is empty, from the new first id.
    r.trim_below(MessageId(20)).expect("trim");
    assert_eq!(r.oldest().expect("oldest"), MessageId(20));
    assert_eq!(r.span_after(MessageId(0), 0).expect("span").count, 0);
    r.replicate(MessageId(20), entry("next"))
        .expect("replicate");
    assert_eq!(r.span(0).expect("span").start, 20);
}

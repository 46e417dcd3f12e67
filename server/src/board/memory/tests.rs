//! The memory board: ids, reads, spans, exactly-once publishes.

use std::sync::Arc;

use mboard_protocol::{encode_ids, encode_messages, ids_reply_len, messages_reply_len};

use super::*;

fn from() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000))
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn encoding_from_entries_matches_encoding_messages() {
    let board = MemoryBoard::new();
    block_on(async {
        for text in ["one", "two:with:colons", "", "four\n"] {
            board
                .publish(from(), Bytes::from(text))
                .await
                .expect("publish");
        }
    });
    for n in [0, 1, 3, 4, 9] {
        let span = board.span(n).expect("span");
        let mut direct = Vec::new();
        board.encode_messages(&span, &mut direct).expect("encode");
        let mut via_messages = Vec::new();
        encode_messages(
            board.messages(&span).expect("messages").iter(),
            &mut via_messages,
        );
        assert_eq!(direct, via_messages, "n = {n}");
        assert_eq!(
            direct.len() as u64,
            messages_reply_len(span.count, span.records)
        );
    }
}

#[test]
fn ids_increase_and_reads_see_publishes() {
    let board = MemoryBoard::new();
    block_on(async {
        for (i, text) in ["Hello world!", "a:b:c", "x"].into_iter().enumerate() {
            let id = board
                .publish(from(), Bytes::from(text))
                .await
                .expect("publish");
            assert_eq!(id, MessageId(i as u64));
        }
    });
    assert_eq!(
        board.get(MessageId(1)).expect("get").map(|e| e.text),
        Some(Bytes::from("a:b:c"))
    );
    assert_eq!(board.get(MessageId(3)).expect("get"), None);
    assert_eq!(board.get(MessageId(u64::MAX)).expect("get"), None);
    let entry = board.get(MessageId(0)).expect("get").expect("exists");
    assert_eq!(
        board.entry_len(MessageId(0)).expect("len"),
        Some(entry.encoded_len())
    );
    assert_eq!(board.entry_len(MessageId(3)).expect("len"), None);
    assert_eq!(board.entry_len(MessageId(u64::MAX)).expect("len"), None);
    let ids = |n| board.span(n).expect("span").ids().collect::<Vec<_>>();
    assert_eq!(ids(2), vec![MessageId(1), MessageId(2)]);
    assert_eq!(ids(0).len(), 3);
    assert_eq!(ids(100).len(), 3);
    let newest = board
        .messages(&board.span(2).expect("span"))
        .expect("newest");
    assert_eq!(
        newest.iter().map(|m| m.id.0).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let all = board.messages(&board.span(0).expect("span")).expect("all");
    let times: Vec<_> = all.iter().map(|m| m.entry.time).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn spans_match_the_encoded_replies() {
    let board = MemoryBoard::new();
    block_on(async {
        for i in 0..120 {
            board
                .publish(
                    from(),
                    Bytes::from(format!("message {i}: {}", "x".repeat(i))),
                )
                .await
                .expect("publish");
        }
    });
    for n in [0, 1, 2, 9, 10, 11, 119, 120, 121, 1000] {
        let span = board.span(n).expect("span");
        let mut ids = Vec::new();
        encode_ids(span.ids(), &mut ids);
        assert_eq!(
            ids_reply_len(span.count, span.id_digits),
            ids.len() as u64,
            "n={n}"
        );
        let mut messages = Vec::new();
        encode_messages(board.messages(&span).expect("newest").iter(), &mut messages);
        assert_eq!(
            messages_reply_len(span.count, span.records),
            messages.len() as u64,
            "n={n}"
        );
    }
    assert_eq!(MemoryBoard::new().span(0).expect("span"), Span::default());
}

#[test]
fn a_span_is_a_snapshot() {
    let board = MemoryBoard::new();
    block_on(async {
        board
            .publish(from(), Bytes::from("a"))
            .await
            .expect("publish");
        let span = board.span(1).expect("span");
        board
            .publish(from(), Bytes::from("b"))
            .await
            .expect("publish");
        let read = board.messages(&span).expect("read");
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].entry.text, Bytes::from("a"));
    });
}

#[test]
fn a_token_publishes_once_even_when_racing_itself() {
    let board = Arc::new(MemoryBoard::new());
    let token = PublishToken(uuid::Uuid::from_u128(7));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let board = board.clone();
            std::thread::spawn(move || {
                block_on(board.publish_once(from(), token, Bytes::from("once"))).expect("publish")
            })
        })
        .collect();
    let results: Vec<Published> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let stored = results
        .iter()
        .filter(|p| matches!(p, Published::Stored(_)))
        .count();
    assert_eq!(stored, 1, "{results:?}");
    assert!(results.iter().all(|p| p.id() == MessageId(0)));
    assert_eq!(board.span(0).expect("span").count, 1);
    assert_eq!(board.tokens().map(|c| c.held), Some(1));
}

#[test]
fn concurrent_publishers_get_distinct_increasing_ids() {
    let board = Arc::new(MemoryBoard::new());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let board = board.clone();
            std::thread::spawn(move || {
                block_on(async {
                    let mut ids = Vec::new();
                    for i in 0..500 {
                        ids.push(
                            board
                                .publish(from(), Bytes::from(format!("{t}/{i}")))
                                .await
                                .expect("publish"),
                        );
                    }
                    ids
                })
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        let ids = t.join().expect("thread");
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "each publisher sees increasing ids"
        );
        all.extend(ids);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4000);
    assert_eq!(all.last(), Some(&MessageId(3999)));
}

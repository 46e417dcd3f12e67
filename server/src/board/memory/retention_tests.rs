//! The memory board's retention: each limit, the thread, the busy margin.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;

fn from() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000))
}

fn publish(board: &MemoryBoard, text: &str) -> MessageId {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(board.publish(from(), Bytes::copy_from_slice(text.as_bytes())))
        .expect("publish")
}

fn manual(retention: Retention) -> MemoryBoard {
    MemoryBoard::unstarted(TokenLimits::default(), retention)
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

fn ids(board: &MemoryBoard) -> Vec<u64> {
    board.span(0).expect("span").ids().map(|id| id.0).collect()
}

#[test]
fn a_count_limit_keeps_the_newest_and_ids_go_on() {
    let board = manual(Retention {
        messages: Some(3),
        ..Retention::UNLIMITED
    });
    for i in 0..5 {
        publish(&board, &format!("m{i}"));
    }
    assert_eq!(
        ids(&board).len(),
        5,
        "nothing trimmed until the trimmer runs"
    );
    board.trim(now()).expect("trim");
    assert_eq!(ids(&board), vec![2, 3, 4]);
    assert_eq!(board.oldest().expect("oldest"), MessageId(2));
    assert_eq!(board.get(MessageId(1)).expect("get"), None);
    assert_eq!(board.entry_len(MessageId(1)).expect("len"), None);
    assert_eq!(
        board.get(MessageId(2)).expect("get").map(|e| e.text),
        Some(Bytes::from("m2"))
    );
    assert_eq!(publish(&board, "m5"), MessageId(5));
    let after: Vec<u64> = board
        .messages(&board.span_after(MessageId(0), 2).expect("span"))
        .expect("read")
        .iter()
        .map(|m| m.id.0)
        .collect();
    assert_eq!(
        after,
        vec![2, 3],
        "6: below the oldest starts at the oldest"
    );
    let status = board.status().expect("status");
    assert_eq!(
        (status.messages, status.oldest, status.trimmed),
        (4, MessageId(2), 2)
    );
}

#[test]
fn a_byte_limit_counts_texts_and_their_cost() {
    let board = manual(Retention {
        bytes: Some(3 * (100 + ENTRY_COST)),
        ..Retention::UNLIMITED
    });
    for _ in 0..4 {
        publish(&board, &"x".repeat(100));
    }
    board.trim(now()).expect("trim");
    assert_eq!(ids(&board), vec![1, 2, 3]);
    assert_eq!(
        board.status().expect("status").bytes,
        3 * (100 + ENTRY_COST)
    );
    // One larger message pushes out as many as it must, oldest first.
    publish(&board, &"y".repeat(250));
    board.trim(now()).expect("trim");
    assert_eq!(ids(&board), vec![3, 4]);
}

#[test]
fn an_age_limit_follows_the_clock_it_is_given() {
    let age = Duration::from_secs(60);
    let board = manual(Retention {
        age: Some(age),
        ..Retention::UNLIMITED
    });
    let start = now();
    for i in 0..3 {
        publish(&board, &format!("m{i}"));
    }
    let first = board.get(MessageId(0)).expect("get").expect("kept").time;
    let next = board.trim(start).expect("trim");
    assert_eq!(ids(&board).len(), 3);
    assert_eq!(next, Some(Timestamp(first.0 + 60_000_000)));
    // A minute after the last publish, all three are too old; ids continue.
    let last = board.get(MessageId(2)).expect("get").expect("kept").time;
    assert_eq!(
        board.trim(Timestamp(last.0 + 60_000_000)).expect("trim"),
        None
    );
    assert!(ids(&board).is_empty());
    assert_eq!(board.oldest().expect("oldest"), MessageId(3));
    assert_eq!(publish(&board, "later"), MessageId(3));
}

#[test]
fn limits_together_trim_until_every_one_holds() {
    let board = manual(Retention {
        messages: Some(4),
        bytes: Some(5 * (10 + ENTRY_COST)),
        age: Some(Duration::from_secs(3_600)),
    });
    for _ in 0..6 {
        publish(&board, &"z".repeat(10));
    }
    board.trim(now()).expect("trim");
    assert_eq!(
        ids(&board),
        vec![2, 3, 4, 5],
        "the count is the tighter limit"
    );
    publish(&board, &"w".repeat(300));
    board.trim(now()).expect("trim");
    assert_eq!(ids(&board), vec![5, 6], "now the byte limit is");
    let later = Timestamp(now().0 + 3_601_000_000);
    board.trim(later).expect("trim");
    assert!(ids(&board).is_empty(), "then age takes the rest");
}

#[test]
fn a_span_read_after_its_oldest_were_trimmed_gets_what_is_left() {
    let board = manual(Retention {
        messages: Some(2),
        ..Retention::UNLIMITED
    });
    for i in 0..4 {
        publish(&board, &format!("m{i}"));
    }
    let span = board.span(0).expect("span");
    board.trim(now()).expect("trim");
    let read: Vec<u64> = board
        .messages(&span)
        .expect("read")
        .iter()
        .map(|m| m.id.0)
        .collect();
    assert_eq!(read, vec![2, 3]);
    let mut out = Vec::new();
    board.encode_messages(&span, &mut out).expect("encode");
    let mut want = Vec::new();
    mboard_protocol::encode_messages(board.messages(&span).expect("read").iter(), &mut want);
    assert_eq!(out, want);
}

#[test]
fn the_thread_trims_by_itself_and_reads_racing_it_stay_whole() {
    let board = Arc::new(
        MemoryBoard::with_limits(
            TokenLimits::default(),
            Retention {
                messages: Some(100),
                ..Retention::UNLIMITED
            },
        )
        .expect("board"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (board, stop) = (board.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) || reads == 0 {
                    let span = if r == 0 {
                        board.span(0)
                    } else {
                        board.span_after(MessageId(reads), 50)
                    }
                    .expect("span");
                    for m in board.messages(&span).expect("read") {
                        assert!(m.id.0 >= span.start && m.id.0 < span.start + span.count);
                        assert_eq!(m.entry.text, format!("message {}", m.id.0).as_bytes());
                    }
                    let mut out = Vec::new();
                    board.encode_messages(&span, &mut out).expect("encode");
                    assert!(
                        out.len() as u64
                            <= mboard_protocol::messages_reply_len(span.count, span.records)
                    );
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for i in 0..20_000u64 {
        assert_eq!(publish(&board, &format!("message {i}")), MessageId(i));
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().expect("reader") > 0);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while board.span(0).expect("span").count > 100 {
        assert!(
            std::time::Instant::now() < deadline,
            "the thread did not trim"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(ids(&board), (19_900..20_000).collect::<Vec<_>>());
}

#[test]
fn a_board_far_over_its_byte_limit_refuses_publishes_as_busy() {
    let limit = 4 * (1_000 + ENTRY_COST);
    let board = manual(Retention {
        bytes: Some(limit),
        ..Retention::UNLIMITED
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let text = Bytes::from(vec![b'q'; 1_000]);
    let mut stored = 0;
    let refused = loop {
        match rt.block_on(board.publish(from(), text.clone())) {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(refused, BoardError::Refused(Refusal::Busy)),
        "{refused}"
    );
    assert_eq!(stored, 6, "up to a quarter over the limit, and one more");
    board.trim(now()).expect("trim");
    assert!(
        rt.block_on(board.publish(from(), text)).is_ok(),
        "trimmed: room again"
    );
}

#[test]
fn dropping_a_board_stops_its_thread() {
    let board = MemoryBoard::with_limits(
        TokenLimits::default(),
        Retention {
            age: Some(Duration::from_secs(86_400)),
            ..Retention::UNLIMITED
        },
    )
    .expect("board");
    publish(&board, "x");
    // Joins the thread, which waits a day for the message to age.
    let started = std::time::Instant::now();
    drop(board);
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Waits until the trimming thread has brought `board` to `want`.
fn until_ids(board: &MemoryBoard, want: &[u64]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ids(board) != want {
        assert!(
            std::time::Instant::now() < deadline,
            "kept {:?}, want {want:?}",
            ids(board)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_lower_limit_trims_and_a_higher_one_keeps_what_is_there() {
    let board = manual(Retention {
        messages: Some(5),
        ..Retention::UNLIMITED
    });
    for i in 0..5 {
        publish(&board, &format!("m{i}"));
    }
    board
        .set_retention(Retention {
            messages: Some(2),
            ..Retention::UNLIMITED
        })
        .expect("lower");
    assert_eq!(ids(&board).len(), 5, "the trimming does it, not the caller");
    board.trim(now()).expect("trim");
    assert_eq!(ids(&board), vec![3, 4]);
    board
        .set_retention(Retention {
            messages: Some(10),
            ..Retention::UNLIMITED
        })
        .expect("raise");
    for i in 5..9 {
        publish(&board, &format!("m{i}"));
    }
    board.trim(now()).expect("trim");
    assert_eq!(
        ids(&board),
        (3..9).collect::<Vec<_>>(),
        "nothing comes back"
    );
    assert_eq!(board.status().expect("status").trimmed, 3);
    board.set_retention(Retention::UNLIMITED).expect("none");
    board.trim(now()).expect("trim");
    assert_eq!(ids(&board).len(), 6);
}

#[test]
fn a_lower_byte_limit_moves_the_busy_margin_at_once() {
    let board = manual(Retention::UNLIMITED);
    for _ in 0..8 {
        publish(&board, &"q".repeat(1_000));
    }
    board
        .set_retention(Retention {
            bytes: Some(4 * (1_000 + ENTRY_COST)),
            ..Retention::UNLIMITED
        })
        .expect("lower");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let text = Bytes::from(vec![b'q'; 1_000]);
    let refused = rt.block_on(board.publish(from(), text.clone()));
    assert!(
        matches!(refused, Err(BoardError::Refused(Refusal::Busy))),
        "twice the new limit: {refused:?}"
    );
    board.trim(now()).expect("trim");
    assert_eq!(ids(&board), vec![4, 5, 6, 7]);
    assert_eq!(
        rt.block_on(board.publish(from(), text)).ok(),
        Some(MessageId(8))
    );
}

#[test]
fn new_limits_are_trimmed_to_by_the_thread_started_for_them() {
    let unlimited = MemoryBoard::with_limits(TokenLimits::default(), Retention::UNLIMITED);
    for board in [unlimited.expect("board"), MemoryBoard::new()] {
        for i in 0..10 {
            publish(&board, &format!("m{i}"));
        }
        board
            .set_retention(Retention {
                messages: Some(3),
                ..Retention::UNLIMITED
            })
            .expect("first limit");
        until_ids(&board, &[7, 8, 9]);
        // The thread slept until further notice; a new age limit wakes it.
        board
            .set_retention(Retention {
                messages: Some(3),
                age: Some(Duration::from_millis(1)),
                ..Retention::UNLIMITED
            })
            .expect("age");
        until_ids(&board, &[]);
        assert_eq!(board.oldest().expect("oldest"), MessageId(10));
    }
}

#[test]
fn a_running_thread_takes_a_lower_limit_at_once() {
    let board = MemoryBoard::with_limits(
        TokenLimits::default(),
        Retention {
            messages: Some(100),
            ..Retention::UNLIMITED
        },
    )
    .expect("board");
    for i in 0..50 {
        publish(&board, &format!("m{i}"));
    }
    board
        .set_retention(Retention {
            messages: Some(5),
            ..Retention::UNLIMITED
        })
        .expect("lower");
    until_ids(&board, &[45, 46, 47, 48, 49]);
    board
        .set_retention(Retention {
            messages: Some(100),
            ..Retention::UNLIMITED
        })
        .expect("raise");
    publish(&board, "m50");
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(ids(&board), (45..51).collect::<Vec<_>>());
}

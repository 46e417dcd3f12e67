use bytes::Bytes;
use mboard_protocol::{Entry, Timestamp};

use super::*;

fn message(id: u64, text: &str) -> Message {
    Message {
        id: MessageId(id),
        entry: Entry {
            time: Timestamp(1_763_743_500_123_456),
            from: "127.0.0.1:40154".parse().expect("addr"),
            text: Bytes::copy_from_slice(text.as_bytes()),
        },
    }
}

fn page(ids: impl IntoIterator<Item = u64>) -> Vec<Message> {
    ids.into_iter().map(|id| message(id, "hi")).collect()
}

fn ids(accepted: &Accepted) -> Vec<u64> {
    accepted.messages.iter().map(|m| m.id.0).collect()
}

#[test]
fn a_cursor_takes_each_message_once_in_order() {
    let mut c = Cursor::after(MessageId(4));
    assert_eq!(c.asks_after(), Some(MessageId(4)));
    let a = c.accept(page(5..8)).expect("ascending");
    assert_eq!((ids(&a), a.missed), (vec![5, 6, 7], None));
    assert_eq!(c.asks_after(), Some(MessageId(7)));
    // A duplicate of that reply, and a late reply to a resend that found one more.
    assert_eq!(c.accept(page(5..8)).expect("ok"), Accepted::default());
    let a = c.accept(page(5..9)).expect("ok");
    assert_eq!((ids(&a), a.missed), (vec![8], None));
    // An empty reply (a wait that ran out) changes nothing.
    assert_eq!(c.accept(Vec::new()).expect("ok"), Accepted::default());
    assert_eq!(c.next(), 9);
    assert_eq!(c.last(), Some(MessageId(8)));
}

#[test]
fn messages_no_longer_kept_are_counted_once() {
    let mut c = Cursor::after(MessageId(2));
    let a = c.accept(page(8..10)).expect("ok");
    assert_eq!(a.missed, Some((MessageId(3), 5)), "3 to 7 are gone");
    assert_eq!(ids(&a), vec![8, 9]);
    let a = c.accept(page(10..11)).expect("ok");
    assert_eq!(a.missed, None);
}

#[test]
fn the_beginning_wants_message_0_which_6_cannot_ask_for() {
    let mut c = Cursor::beginning();
    assert_eq!(c.asks_after(), None);
    assert_eq!(c.last(), None);
    let a = c.accept(page(0..3)).expect("ok");
    assert_eq!((ids(&a), a.missed), (vec![0, 1, 2], None));
    // Without message 0 (trimmed), the page from 1 reports it.
    let mut c = Cursor::beginning();
    let a = c.accept(page(1..3)).expect("ok");
    assert_eq!(a.missed, Some((MessageId(0), 1)));
}

#[test]
fn ids_that_do_not_go_up_are_refused() {
    let mut c = Cursor::beginning();
    let err = c.accept(page([3, 5, 5])).expect_err("repeated");
    assert_eq!((err.after, err.then), (MessageId(5), MessageId(5)));
    assert!(c.accept(page([7, 6])).is_err());
    assert_eq!(c.next(), 0, "nothing taken from a bad page");
    assert_eq!(
        OutOfOrder {
            after: MessageId(7),
            then: MessageId(6)
        }
        .to_string(),
        "message ids out of order (7 then 6)"
    );
}

#[test]
fn pages_are_sized_to_fit_a_datagram() {
    let mut p = Pager::new();
    assert_eq!(p.size(), Pager::FIRST);
    // Short texts: records of about 45 bytes.
    p.observe(&page(0..10));
    let record = message(0, "hi").record_len() as u64;
    assert_eq!(p.size(), Pager::TARGET / record);
    assert!(p.size() * record <= Pager::TARGET);
    // Long ones: one at a time, never none.
    p.observe(&[message(11, &"x".repeat(5_000))]);
    assert_eq!(p.size(), 1);
    // Tiny records are still capped, and an empty page teaches nothing.
    p.record = Some(1);
    assert_eq!(p.size(), Pager::MAX);
    p.observe(&[]);
    assert_eq!(p.size(), Pager::MAX);
}

#[test]
fn a_page_the_server_cannot_afford_is_halved_down_to_one_message() {
    let mut p = Pager::new();
    let sizes: Vec<u64> = std::iter::from_fn(|| p.refused().then(|| p.size())).collect();
    assert_eq!(sizes, [10, 5, 2, 1]);
    assert_eq!(p.size(), 1);
    assert!(!p.refused(), "one message cannot be halved");
    // The messages of a page that came size the next one again.
    p.observe(&page(0..4));
    assert!(p.size() > 1);
}

#[test]
fn offers_taken_are_remembered_for_a_while() {
    let sid = |n: u128| SessionId(uuid::Uuid::from_u128(n));
    let mut o = Offers::default();
    o.take(sid(1));
    assert!(o.taken(sid(1)) && !o.taken(sid(2)));
    for n in 2..=Offers::KEPT as u128 + 1 {
        o.take(sid(n));
    }
    assert!(!o.taken(sid(1)), "the oldest is forgotten");
    assert!(o.taken(sid(Offers::KEPT as u128 + 1)));
}

#[test]
fn an_outage_is_said_once_and_so_is_its_end() {
    let mut r = Reach::new();
    assert_eq!(
        r.failed(),
        Failed::GiveUp,
        "never answered: a wrong address?"
    );
    assert!(!r.answered(), "nothing to say on the first answer");
    let pauses: Vec<Failed> = (0..7).map(|_| r.failed()).collect();
    let ms = |n| Duration::from_millis(n);
    assert_eq!(
        pauses,
        vec![
            Failed::Retry {
                report: true,
                pause: ms(250)
            },
            Failed::Retry {
                report: false,
                pause: ms(500)
            },
            Failed::Retry {
                report: false,
                pause: ms(1_000)
            },
            Failed::Retry {
                report: false,
                pause: ms(2_000)
            },
            Failed::Retry {
                report: false,
                pause: ms(4_000)
            },
            Failed::Retry {
                report: false,
                pause: ms(4_000)
            },
            Failed::Retry {
                report: false,
                pause: ms(4_000)
            },
        ]
    );
    assert!(r.is_lost());
    assert!(r.answered(), "back: say so");
    assert!(!r.answered(), "once");
    assert_eq!(
        r.failed(),
        Failed::Retry {
            report: true,
            pause: ms(250)
        },
        "a new outage starts over"
    );
}

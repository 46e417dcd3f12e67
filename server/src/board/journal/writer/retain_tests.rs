//! Retention changed while the journal runs (a reload): lower limits are trimmed to by
//! the writer, higher ones keep what is there, and what cannot change is refused.

use std::time::{Duration, Instant};

use mboard_protocol::{MessageId, Timestamp};

use super::super::JournalError;
use super::super::testing::{TempDir, ids, open_with, publish_n, runtime};
use super::tests::{keep, now};
use crate::board::{Board, BoardError, Retention};

/// Waits until the writer has trimmed `j` to `want`, by itself.
fn until_ids(j: &super::super::Journal, want: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while ids(j) != want {
        assert!(
            Instant::now() < deadline,
            "kept {:?}, want {want:?}",
            ids(j)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_lower_limit_is_trimmed_to_by_the_writer_and_a_higher_one_keeps_what_is_there() {
    let dir = TempDir::new();
    {
        let (j, _) = open_with(&dir, 1_000, Retention::UNLIMITED).expect("open");
        publish_n(&j, 100, 100);
        let segments = dir.segments().len();
        j.set_retention(keep(10)).expect("lower");
        // No publish and no manual trim: the writer does it on its own.
        until_ids(&j, &(90..100).collect::<Vec<_>>());
        assert_eq!(j.oldest().expect("oldest"), MessageId(90));
        assert_eq!(j.get(MessageId(89)).expect("get"), None);
        let deadline = Instant::now() + Duration::from_secs(5);
        while dir.segments().len() >= segments {
            assert!(Instant::now() < deadline, "no segment was deleted");
            std::thread::sleep(Duration::from_millis(2));
        }
        j.set_retention(keep(50)).expect("raise");
        publish_n(&j, 20, 100);
        assert_eq!(ids(&j), (90..120).collect::<Vec<_>>(), "nothing came back");
        j.set_retention(Retention::UNLIMITED).expect("none");
        publish_n(&j, 30, 100);
        assert_eq!(ids(&j).len(), 60);
    }
    // What the lower limit trimmed stays trimmed after a restart.
    let (j, rec) = open_with(&dir, 1_000, Retention::UNLIMITED).expect("reopen");
    assert_eq!((rec.messages, rec.oldest), (60, 90));
    assert_eq!(ids(&j), (90..150).collect::<Vec<_>>());
}

#[test]
fn a_journal_started_with_an_age_limit_takes_a_shorter_one() {
    let dir = TempDir::new();
    let age = |secs| Retention {
        age: Some(Duration::from_secs(secs)),
        ..Retention::UNLIMITED
    };
    let (j, _) = open_with(&dir, 1_000, age(3_600)).expect("open");
    publish_n(&j, 20, 100);
    let rt = runtime();
    let in_two_minutes = Timestamp(now().0 + 120_000_000);
    rt.block_on(j.trim(in_two_minutes)).expect("trim");
    assert_eq!(ids(&j).len(), 20, "an hour is long");
    j.set_retention(age(60)).expect("shorter");
    rt.block_on(j.trim(in_two_minutes)).expect("trim");
    assert!(ids(&j).is_empty(), "a minute is not");
    // Off, then back on: the times are still kept.
    j.set_retention(Retention::UNLIMITED).expect("off");
    publish_n(&j, 3, 10);
    j.set_retention(age(60)).expect("on again");
    rt.block_on(j.trim(Timestamp(now().0 + 61_000_000)))
        .expect("trim");
    assert!(ids(&j).is_empty());
}

#[test]
fn an_age_limit_on_a_journal_started_without_one_is_refused_and_the_old_limits_hold() {
    let dir = TempDir::new();
    let (j, _) = open_with(&dir, 1_000, keep(5)).expect("open");
    let err = j
        .set_retention(Retention {
            messages: Some(2),
            age: Some(Duration::from_secs(60)),
            ..Retention::UNLIMITED
        })
        .expect_err("no publish times are kept");
    let BoardError::Storage(e) = &err else {
        panic!("{err}")
    };
    assert!(matches!(
        e.downcast_ref::<JournalError>(),
        Some(JournalError::AgeNeedsRestart)
    ));
    publish_n(&j, 10, 10);
    assert_eq!(ids(&j), vec![5, 6, 7, 8, 9], "still five, not two");
}

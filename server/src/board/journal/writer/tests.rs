//! The writer on a real filesystem: group commit, segments, retention, and disks that fail.

use std::fs;
use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use mboard_protocol::{MessageId, PublishToken, Timestamp};
use uuid::Uuid;

use super::super::testing::{
    TempDir, all, from, ids, open, open_with, publish_all, publish_n, runtime, text,
};
use super::super::{Fsync, Journal, JournalConfig};
use crate::board::{Board, BoardError, Published, Refusal, Retention, StoreState, TokenLimits};

pub(super) fn keep(messages: u64) -> Retention {
    Retention {
        messages: Some(messages),
        ..Retention::UNLIMITED
    }
}

pub(super) fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

fn try_publish(j: &Journal, t: &str) -> Result<MessageId, BoardError> {
    runtime().block_on(j.publish(from(1), Bytes::copy_from_slice(t.as_bytes())))
}

fn state(j: &Journal) -> StoreState {
    j.status().expect("status").state
}

#[test]
fn concurrent_publishes_share_commits_and_get_distinct_ids() {
    let dir = TempDir::new();
    let (j, _) = open(&dir, Fsync::Always).expect("open");
    let j = Arc::new(j);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("rt");
    let ids = rt.block_on(async {
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let j = j.clone();
                tokio::spawn(async move {
                    j.publish(from(i), Bytes::from(format!("message {i}")))
                        .await
                })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.expect("task").expect("publish"));
        }
        ids
    });
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, (0..200).map(MessageId).collect::<Vec<_>>());
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            j.get(*id).expect("get").map(|e| e.text),
            Some(Bytes::from(format!("message {i}")))
        );
    }
}

#[test]
fn segments_roll_at_their_size_and_reads_cross_them() {
    let dir = TempDir::new();
    {
        let (j, _) = open_with(&dir, 1_000, Retention::UNLIMITED).expect("open");
        assert_eq!(publish_n(&j, 60, 100).len(), 60);
        let segments = dir.segments();
        assert!(segments.len() >= 6, "{segments:?}");
        assert_eq!(segments[0], 0);
        let read: Vec<Vec<u8>> = all(&j).iter().map(|m| m.entry.text.to_vec()).collect();
        assert_eq!(read, (0..60).map(|i| text(i, 100)).collect::<Vec<_>>());
        // A span that starts and ends in the middle of segments.
        let span = j.span_after(MessageId(5), 30).expect("span");
        let got: Vec<u64> = j
            .messages(&span)
            .expect("read")
            .iter()
            .map(|m| m.id.0)
            .collect();
        assert_eq!(got, (6..36).collect::<Vec<_>>());
        for id in [0, 9, 10, 59] {
            let entry = j.get(MessageId(id)).expect("get").expect("kept");
            assert_eq!(
                j.entry_len(MessageId(id)).expect("len"),
                Some(entry.encoded_len())
            );
        }
        assert_eq!(j.status().expect("status").bytes, {
            segments
                .iter()
                .map(|&s| fs::metadata(dir.segment(s)).expect("segment").len())
                .sum::<u64>()
                - 40
        });
    }
    let (j, rec) = open_with(&dir, 1_000, Retention::UNLIMITED).expect("reopen");
    assert_eq!((rec.messages, rec.segments), (60, dir.segments().len()));
    assert_eq!(publish_n(&j, 1, 10), vec![MessageId(60)]);
}

#[test]
fn a_record_larger_than_a_segment_fits_in_one_of_its_own() {
    let dir = TempDir::new();
    let (j, _) = open_with(&dir, 1_000, Retention::UNLIMITED).expect("open");
    let big = vec![b'b'; 50_000];
    let ids = publish_all(&j, &[b"small", &big, b"after"]);
    assert_eq!(ids, vec![MessageId(0), MessageId(1), MessageId(2)]);
    assert_eq!(
        j.get(MessageId(1)).expect("get").expect("kept").text.len(),
        50_000
    );
    // The large one went into the first segment, which it took past the size: the next
    // message starts a segment.
    assert_eq!(dir.segments(), vec![0, 2]);
}

#[test]
fn retention_deletes_whole_segments_and_a_restart_keeps_what_was_trimmed() {
    let dir = TempDir::new();
    {
        let (j, _) = open_with(&dir, 1_000, keep(10)).expect("open");
        publish_n(&j, 100, 100);
        assert_eq!(ids(&j), (90..100).collect::<Vec<_>>());
        assert_eq!(j.oldest().expect("oldest"), MessageId(90));
        assert_eq!(j.get(MessageId(89)).expect("get"), None);
        assert!(
            dir.segments()[0] > 70,
            "old segments are deleted: {:?}",
            dir.segments()
        );
        let status = j.status().expect("status");
        assert_eq!((status.messages, status.trimmed), (10, 90));
    }
    // Without limits now, and still nothing trimmed comes back: a kept note says so.
    let (j, rec) = open_with(&dir, 1_000, Retention::UNLIMITED).expect("reopen");
    assert_eq!((rec.messages, rec.oldest), (10, 90));
    assert_eq!(ids(&j), (90..100).collect::<Vec<_>>());
    assert_eq!(publish_n(&j, 1, 10), vec![MessageId(100)]);
}

#[test]
fn each_limit_alone_and_together_on_a_manual_clock() {
    let dir = TempDir::new();
    let hour = Duration::from_secs(3_600);
    let all_limits = Retention {
        messages: Some(8),
        bytes: Some(5 * 180),
        age: Some(hour),
    };
    let (j, _) = open_with(&dir, 64 * 1024, all_limits).expect("open");
    let rt = runtime();
    let start = now();
    publish_n(&j, 10, 100);
    // Records of 100-byte texts are 152 bytes on disk, and kept notes ride along.
    let kept = ids(&j).len();
    assert!((4..=5).contains(&kept), "{kept}");
    let held = j.status().expect("status").bytes;
    assert!(held <= 5 * 180, "{held}");
    rt.block_on(j.trim(Timestamp(start.0 + 3_599_000_000)))
        .expect("trim");
    assert_eq!(ids(&j).len(), kept, "not an hour old yet");
    rt.block_on(j.trim(Timestamp(now().0 + 3_601_000_000)))
        .expect("trim");
    assert!(ids(&j).is_empty(), "an hour later, all are too old");
    assert_eq!(publish_n(&j, 1, 10), vec![MessageId(10)]);
    drop(j);
    // Alone: the count.
    let dir = TempDir::new();
    let (j, _) = open_with(&dir, 64 * 1024, keep(3)).expect("open");
    publish_n(&j, 7, 10);
    assert_eq!(ids(&j), vec![4, 5, 6]);
}

#[test]
fn everything_trimmed_then_a_restart_goes_on_with_the_next_id() {
    let dir = TempDir::new();
    let age = Retention {
        age: Some(Duration::from_secs(60)),
        ..Retention::UNLIMITED
    };
    {
        let (j, _) = open_with(&dir, 1_000, age).expect("open");
        publish_n(&j, 30, 100);
        runtime()
            .block_on(j.trim(Timestamp(now().0 + 61_000_000)))
            .expect("trim");
        assert!(ids(&j).is_empty());
        assert_eq!(
            dir.segments().len(),
            1,
            "only the segment being written stays"
        );
    }
    let (j, rec) = open(&dir, Fsync::Always).expect("reopen");
    assert_eq!((rec.messages, rec.oldest), (0, 30));
    assert_eq!(j.get(MessageId(29)).expect("get"), None);
    assert_eq!(j.oldest().expect("oldest"), MessageId(30));
    assert_eq!(publish_n(&j, 1, 10), vec![MessageId(30)], "no id is reused");
}

#[test]
fn tokens_of_deleted_segments_are_kept_across_a_restart() {
    let dir = TempDir::new();
    let token = |n: u128| PublishToken(Uuid::from_u128(n));
    {
        let (j, _) = open_with(&dir, 1_000, keep(2)).expect("open");
        let rt = runtime();
        for n in 0..20u128 {
            let text = Bytes::from(text(n as usize, 100));
            let published = rt
                .block_on(j.publish_once(from(1), token(n), text))
                .expect("once");
            assert_eq!(published, Published::Stored(MessageId(n as u64)));
        }
        assert_eq!(ids(&j), vec![18, 19]);
        assert!(dir.segments()[0] > 10, "{:?}", dir.segments());
    }
    let (j, rec) = open_with(&dir, 1_000, keep(2)).expect("reopen");
    assert_eq!(rec.tokens, 20, "token notes outlived their segments");
    let rt = runtime();
    let again = rt
        .block_on(j.publish_once(from(2), token(3), Bytes::from_static(b"resend")))
        .expect("once");
    assert_eq!(
        again,
        Published::Duplicate(MessageId(3)),
        "a trimmed message's token"
    );
    assert_eq!(ids(&j), vec![18, 19], "the resend stored nothing");
}

#[test]
fn reads_racing_trimming_get_messages_or_nothing() {
    let dir = TempDir::new();
    // Segments of about 200 messages: a few are deleted while the readers read.
    let config = JournalConfig {
        segment_size: 16 * 1024,
        ..dir.config(Fsync::Never)
    };
    let (j, _) = Journal::open(&config, TokenLimits::default(), keep(50)).expect("open");
    let j = Arc::new(j);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (j, stop) = (j.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) || reads == 0 {
                    let span = if r == 0 {
                        j.span(0)
                    } else {
                        j.span_after(MessageId(reads * 3), 20)
                    }
                    .expect("span");
                    for m in j.messages(&span).expect("read") {
                        assert!(m.id.0 >= span.start && m.id.0 < span.start + span.count);
                        assert_eq!(m.entry.text, text(m.id.0 as usize, 64).as_slice());
                    }
                    let id = MessageId(span.start);
                    match (j.entry_len(id).expect("len"), j.get(id).expect("get")) {
                        (_, None) => {}
                        (Some(len), Some(e)) => assert_eq!(len, e.encoded_len()),
                        (None, Some(_)) => {}
                    }
                    reads += 1;
                    std::thread::yield_now();
                }
                reads
            })
        })
        .collect();
    publish_n(&j, 1_000, 64);
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().expect("reader") > 0);
    }
    assert_eq!(ids(&j), (950..1_000).collect::<Vec<_>>());
    assert!(dir.segments()[0] > 0, "segments were deleted");
}

#[test]
fn a_full_disk_refuses_and_publishing_resumes_by_itself() {
    let dir = TempDir::new();
    let (j, _) = open(&dir, Fsync::Always).expect("open");
    assert_eq!(try_publish(&j, "before").expect("publish"), MessageId(0));
    j.writer().inject(vec![ErrorKind::StorageFull]);
    let refused = try_publish(&j, "refused").expect_err("full");
    assert!(
        matches!(refused, BoardError::Refused(Refusal::Full)),
        "{refused}"
    );
    assert_eq!(state(&j), StoreState::Full);
    // Within the backoff, refused without trying the disk.
    assert!(matches!(
        try_publish(&j, "again"),
        Err(BoardError::Refused(Refusal::Full))
    ));
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(try_publish(&j, "after").expect("room again"), MessageId(1));
    assert_eq!(state(&j), StoreState::Writable);
    let texts: Vec<Bytes> = all(&j).into_iter().map(|m| m.entry.text).collect();
    assert_eq!(
        texts,
        vec![Bytes::from("before"), Bytes::from("after")],
        "nothing half-written"
    );
    drop(j);
    let (j, rec) = open(&dir, Fsync::Always).expect("reopen");
    assert_eq!((rec.messages, rec.torn), (2, None));
    drop(j);
}

#[test]
fn a_read_only_filesystem_is_retried_with_backoff_until_writable() {
    let dir = TempDir::new();
    let (j, _) = open(&dir, Fsync::Always).expect("open");
    j.writer().inject(vec![ErrorKind::ReadOnlyFilesystem; 3]);
    let started = Instant::now();
    let mut refusals = 0;
    let id = loop {
        match try_publish(&j, "eventually") {
            Ok(id) => break id,
            Err(BoardError::Refused(Refusal::ReadOnly)) => refusals += 1,
            Err(e) => panic!("{e}"),
        }
        assert_eq!(j.span(0).expect("span").count, 0, "reads go on");
        std::thread::sleep(Duration::from_millis(5));
    };
    // Three failed tries, 50 + 100 + 200 ms apart.
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
    assert!(refusals >= 3, "{refusals}");
    assert_eq!((id, state(&j)), (MessageId(0), StoreState::Writable));
}

#[test]
fn a_removed_segment_stops_the_writer_and_no_id_is_reused() {
    let dir = TempDir::new();
    {
        let (j, _) = open(&dir, Fsync::Always).expect("open");
        publish_n(&j, 5, 10);
        fs::remove_file(dir.segment(0)).expect("rm");
        let refused = try_publish(&j, "into an unlinked file").expect_err("lost");
        assert!(
            matches!(refused, BoardError::Refused(Refusal::Unavailable)),
            "{refused}"
        );
        assert_eq!(state(&j), StoreState::Lost);
        // Reads of what was stored go on, from the open file.
        assert_eq!(all(&j).len(), 5);
        assert!(matches!(
            try_publish(&j, "later"),
            Err(BoardError::Refused(Refusal::Unavailable))
        ));
        assert_eq!(
            dir.segments(),
            vec![5],
            "an empty segment says where ids go on"
        );
    }
    let (j, rec) = open(&dir, Fsync::Always).expect("restart");
    assert_eq!((rec.messages, rec.oldest), (0, 5));
    assert_eq!(publish_n(&j, 1, 10), vec![MessageId(5)]);
}

#[test]
fn a_removed_data_directory_is_made_again_holding_the_next_id() {
    let dir = TempDir::new();
    {
        let (j, _) = open(&dir, Fsync::Always).expect("open");
        publish_n(&j, 3, 10);
        fs::remove_dir_all(&dir.0).expect("rm -r");
        let refused = try_publish(&j, "gone").expect_err("lost");
        assert!(
            matches!(refused, BoardError::Refused(Refusal::Unavailable)),
            "{refused}"
        );
        assert_eq!(all(&j).len(), 3, "reads go on");
        // Made again and locked by this server: a second one is refused.
        let second = open(&dir, Fsync::Always).expect_err("locked");
        assert!(second.to_string().contains("in use"), "{second}");
    }
    let (j, rec) = open(&dir, Fsync::Always).expect("restart");
    assert_eq!((rec.messages, rec.oldest), (0, 3));
    assert_eq!(
        publish_n(&j, 1, 10),
        vec![MessageId(3)],
        "acknowledged ids are not reused"
    );
}

#[test]
fn a_removed_lock_file_stops_the_writer_and_writes_nothing() {
    let dir = TempDir::new();
    let (j, _) = open(&dir, Fsync::Always).expect("open");
    publish_n(&j, 2, 10);
    fs::remove_file(dir.0.join("LOCK")).expect("rm LOCK");
    let refused = try_publish(&j, "two writers").expect_err("lost");
    assert!(
        matches!(refused, BoardError::Refused(Refusal::Unavailable)),
        "{refused}"
    );
    assert_eq!(
        dir.segments(),
        vec![0],
        "nothing written: another server may be here"
    );
    assert!(!dir.0.join("LOCK").exists());
    // A second server may now open it; the first never writes again.
    let (second, _) = open(&dir, Fsync::Always).expect("the second server");
    assert_eq!(publish_n(&second, 1, 10), vec![MessageId(2)]);
    assert!(try_publish(&j, "still lost").is_err());
    drop((j, second));
}

#[test]
fn an_idle_writer_notices_a_lost_directory_by_itself() {
    let dir = TempDir::new();
    let (j, _) = open(&dir, Fsync::Always).expect("open");
    fs::remove_file(dir.0.join("LOCK")).expect("rm LOCK");
    let deadline = Instant::now() + Duration::from_secs(5);
    while state(&j) != StoreState::Lost {
        assert!(Instant::now() < deadline, "not noticed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stalled_writer_holds_no_reader_and_shutdown_waits_only_its_grace() {
    let dir = TempDir::new();
    let config = JournalConfig {
        shutdown_grace: Duration::from_millis(300),
        ..dir.config(Fsync::Always)
    };
    let (j, _) =
        Journal::open(&config, TokenLimits::default(), Retention::UNLIMITED).expect("open");
    publish_n(&j, 2, 10);
    let release = j.writer().stall();
    let mut answer = j
        .writer()
        .enqueue(from(1), Bytes::from_static(b"waits for the disk"));
    std::thread::sleep(Duration::from_millis(50));
    assert!(answer.try_recv().is_err(), "not stored yet");
    assert_eq!(all(&j).len(), 2, "reads are answered");
    assert_eq!(j.status().expect("status").messages, 2);
    // Shut down while the disk is stalled: wait the grace, then leave without an answer.
    let started = Instant::now();
    drop(j);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert!(
        matches!(
            answer.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ),
        "never acknowledged"
    );
    drop(release);
}

#[test]
fn shutdown_writes_what_is_queued_when_the_disk_keeps_up() {
    let dir = TempDir::new();
    let (j, _) = open(&dir, Fsync::Always).expect("open");
    let answers: Vec<_> = (0..50)
        .map(|i| j.writer().enqueue(from(1), Bytes::from(text(i, 10))))
        .collect();
    drop(j);
    let rt = runtime();
    for (i, a) in answers.into_iter().enumerate() {
        assert_eq!(
            rt.block_on(a).expect("answered").expect("stored"),
            MessageId(i as u64)
        );
    }
    let (j, rec) = open(&dir, Fsync::Always).expect("reopen");
    assert_eq!(rec.messages, 50);
    drop(j);
}

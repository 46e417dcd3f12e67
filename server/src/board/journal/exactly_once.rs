//! `5:` on the journal: tokens in records, rebuilt at start-up within the window (also
//! from journals of older formats, upgraded into segments).

use std::fs;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use mboard_protocol::{MessageId, PublishToken, Timestamp};
use uuid::Uuid;

use super::format;
use super::legacy::{self, encode_record, encode_record_v1};
use super::testing::{TempDir, all, from, open, runtime};
use super::{Fsync, Journal};
use crate::board::{Board, Published, Retention, TokenLimits};

fn token(n: u128) -> PublishToken {
    PublishToken(Uuid::from_u128(n))
}

fn once(j: &Journal, t: PublishToken, text: &'static [u8]) -> Published {
    runtime()
        .block_on(j.publish_once(from(1), t, Bytes::from_static(text)))
        .expect("publish")
}

fn ago(d: Duration) -> Timestamp {
    Timestamp::from_system_time(SystemTime::now() - d)
}

/// Writes a single-file journal of format `version` holding `records`, as the servers
/// before segments did.
fn write_journal(dir: &TempDir, version: u32, records: &[u8]) {
    fs::create_dir_all(&dir.0).expect("dir");
    let mut bytes = legacy::file_header().to_vec();
    bytes[8..12].copy_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(records);
    fs::write(dir.journal(), bytes).expect("write");
}

fn header_version(dir: &TempDir) -> u32 {
    let bytes = fs::read(dir.journal()).expect("read");
    format::declared_version(&bytes).expect("a journal")
}

#[test]
fn a_token_publishes_once_and_is_remembered_across_a_restart() {
    let dir = TempDir::new();
    {
        let (j, _) = open(&dir, Fsync::Always).expect("open");
        assert_eq!(once(&j, token(1), b"hi"), Published::Stored(MessageId(0)));
        assert_eq!(
            once(&j, token(1), b"hi"),
            Published::Duplicate(MessageId(0))
        );
        assert_eq!(
            once(&j, token(2), b"other"),
            Published::Stored(MessageId(1))
        );
        assert_eq!(j.tokens().map(|c| c.held), Some(2));
    }
    let (j, rec) = open(&dir, Fsync::Always).expect("reopen");
    assert_eq!((rec.messages, rec.tokens, rec.format), (2, 2, 3));
    assert_eq!(
        once(&j, token(1), b"hi"),
        Published::Duplicate(MessageId(0))
    );
    assert_eq!(once(&j, token(2), b"x"), Published::Duplicate(MessageId(1)));
    assert_eq!(once(&j, token(3), b"new"), Published::Stored(MessageId(2)));
    assert_eq!(all(&j).len(), 3, "the duplicates stored nothing");
}

#[test]
fn start_up_remembers_only_the_records_inside_the_window() {
    let dir = TempDir::new();
    let mut records = Vec::new();
    let (old, recent) = (ago(Duration::from_secs(180)), ago(Duration::from_secs(60)));
    encode_record(
        &mut records,
        MessageId(0),
        old,
        from(1),
        Some(token(1)),
        b"old",
    );
    encode_record(&mut records, MessageId(1), recent, from(1), None, b"plain");
    encode_record(
        &mut records,
        MessageId(2),
        recent,
        from(1),
        Some(token(2)),
        b"recent",
    );
    write_journal(&dir, 2, &records);
    let (j, rec) = open(&dir, Fsync::Always).expect("open");
    assert_eq!((rec.messages, rec.tokens, rec.format), (3, 1, 2));
    assert_eq!(once(&j, token(2), b"x"), Published::Duplicate(MessageId(2)));
    assert_eq!(once(&j, token(1), b"old"), Published::Stored(MessageId(3)));
}

#[test]
fn a_full_table_at_start_up_keeps_the_newest() {
    let dir = TempDir::new();
    let mut records = Vec::new();
    for n in 0..5u64 {
        let at = ago(Duration::from_secs(50 - n));
        encode_record(
            &mut records,
            MessageId(n),
            at,
            from(1),
            Some(token(n.into())),
            b"t",
        );
    }
    write_journal(&dir, 2, &records);
    let limits = TokenLimits {
        max_tokens: 2,
        ..TokenLimits::default()
    };
    let (j, rec) =
        Journal::open(&dir.config(Fsync::Always), limits, Retention::UNLIMITED).expect("open");
    assert_eq!(rec.tokens, 2);
    assert_eq!(j.tokens().map(|c| c.evicted_early), Some(3));
    assert_eq!(once(&j, token(4), b"t"), Published::Duplicate(MessageId(4)));
    assert_eq!(once(&j, token(3), b"t"), Published::Duplicate(MessageId(3)));
}

#[test]
fn a_version_1_journal_is_upgraded_into_segments() {
    let dir = TempDir::new();
    let mut records = Vec::new();
    let at = ago(Duration::from_secs(1));
    encode_record_v1(&mut records, MessageId(0), at, from(7), b"written by v1");
    encode_record_v1(&mut records, MessageId(1), at, from(8), b"also v1");
    write_journal(&dir, 1, &records);
    {
        let (j, rec) = open(&dir, Fsync::Always).expect("open");
        assert_eq!((rec.format, rec.messages, rec.torn), (1, 2, None));
        assert_eq!(header_version(&dir), 3, "the old file is now the stub");
        assert_eq!(dir.segments(), vec![0]);
        assert_eq!(once(&j, token(9), b"v3"), Published::Stored(MessageId(2)));
    }
    let (j, rec) = open(&dir, Fsync::Always).expect("reopen");
    assert_eq!((rec.format, rec.messages, rec.tokens), (3, 3, 1));
    let texts: Vec<Bytes> = all(&j).into_iter().map(|m| m.entry.text).collect();
    let want: [&[u8]; 3] = [b"written by v1", b"also v1", b"v3"];
    assert_eq!(texts, want.map(Bytes::from_static));
    assert_eq!(all(&j)[1].entry.from, from(8));
    assert_eq!(all(&j)[0].entry.time, at, "times are kept");
    assert_eq!(
        once(&j, token(9), b"v3"),
        Published::Duplicate(MessageId(2))
    );
}

#[test]
fn concurrent_publishes_of_one_token_under_group_commit_store_once() {
    let dir = TempDir::new();
    let (j, _) = open(&dir, Fsync::Always).expect("open");
    let j = Arc::new(j);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .expect("rt");
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let j = j.clone();
                // Eight tokens, each sent eight times at once, with other publishes mixed in.
                tokio::spawn(async move {
                    let t = token(i % 8);
                    let text = Bytes::from(format!("token {}", i % 8));
                    let _ = j.publish(from(2), Bytes::from_static(b"noise")).await;
                    (t, j.publish_once(from(1), t, text).await.expect("publish"))
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.expect("task"));
        }
        results
    });
    let messages = all(&j);
    for n in 0..8 {
        let ids: Vec<Published> = results
            .iter()
            .filter(|(t, _)| *t == token(n))
            .map(|(_, p)| *p)
            .collect();
        let stored = ids
            .iter()
            .filter(|p| matches!(p, Published::Stored(_)))
            .count();
        assert_eq!(stored, 1, "token {n}: {ids:?}");
        let id = ids[0].id();
        assert!(ids.iter().all(|p| p.id() == id), "token {n}: {ids:?}");
        assert_eq!(
            messages[id.0 as usize].entry.text,
            format!("token {n}").as_bytes()
        );
    }
    assert_eq!(messages.len(), 64 + 8);
}

//! Start-up against journals that crashes, disks and people have been at.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use mboard_protocol::{MessageId, Timestamp};

use super::format::{Body, Place, RECORD_HEADER, SEGMENT_HEADER, Salt, Stub, encode};
use super::legacy::{self, encode_record};
use super::testing::{
    TEXTS, TempDir, all, from, ids, open, open_with, publish_all, publish_n, published,
};
use super::{Fsync, JournalError};
use crate::board::Retention;

/// Every file under `dir` with its bytes (but the lock, which start-up makes), to show
/// that nothing changed.
fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("dir") {
            let path = e.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n != "LOCK") {
                files.push((path.display().to_string(), fs::read(&path).expect("file")));
            }
        }
    }
    files.sort();
    files
}

fn refused_unchanged(dir: &TempDir) -> JournalError {
    let before = listing(&dir.0);
    let err = open(dir, Fsync::Always).expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("nothing was changed"), "{text}");
    assert_eq!(listing(&dir.0), before, "the directory is unchanged");
    err
}

fn salt(dir: &TempDir) -> Salt {
    Stub::decode(&fs::read(dir.journal()).expect("stub"))
        .expect("a stub")
        .salt
}

fn cut(path: &Path, len: u64) {
    let f = OpenOptions::new().write(true).open(path).expect("open");
    f.set_len(len).expect("cut");
}

fn flip(path: &Path, at: u64) {
    let mut bytes = fs::read(path).expect("read");
    bytes[at as usize] ^= 0x20;
    fs::write(path, bytes).expect("write");
}

#[test]
fn appended_garbage_is_a_torn_tail() {
    let dir = TempDir::new();
    let len = published(&dir);
    let mut f = OpenOptions::new()
        .append(true)
        .open(dir.segment(0))
        .expect("open");
    f.write_all(b"MBR3 half a record from a dying server")
        .expect("append");
    drop(f);
    let (j, rec) = open(&dir, Fsync::Always).expect("repaired");
    let torn = rec.torn.expect("torn");
    assert_eq!(
        (torn.segment, torn.offset, torn.dropped),
        (Some(0), len, 38)
    );
    assert_eq!(fs::metadata(dir.segment(0)).expect("meta").len(), len);
    assert_eq!(all(&j).len(), 4);
    assert_eq!(publish_all(&j, &[b"after repair"]), vec![MessageId(4)]);
}

#[test]
fn a_record_cut_short_is_a_torn_tail() {
    let dir = TempDir::new();
    let len = published(&dir);
    // Header, kind, batch, id, time, family, IPv4 address, port, "last".
    let last = (RECORD_HEADER + 1 + 4 + 8 + 8 + 1 + 4 + 2 + 4) as u64;
    for at in [len - 1, len - 10, len - last + 3] {
        cut(&dir.segment(0), at);
        let (j, rec) = open(&dir, Fsync::Always).expect("repaired");
        let torn = rec.torn.expect("torn");
        assert_eq!(
            (rec.messages, torn.offset, torn.dropped),
            (3, len - last, at - (len - last))
        );
        let texts: Vec<Bytes> = all(&j).into_iter().map(|m| m.entry.text).collect();
        assert_eq!(
            texts,
            TEXTS[..3]
                .iter()
                .map(|t| Bytes::from_static(t))
                .collect::<Vec<_>>()
        );
        // Put the fourth back for the next cut.
        publish_all(&j, &[b"last"]);
    }
}

#[test]
fn a_text_full_of_forged_records_cut_mid_record_is_a_torn_tail() {
    let dir = TempDir::new();
    let (j, _) = open(&dir, Fsync::Always).expect("open");
    publish_all(&j, &TEXTS);
    let salt = salt(&dir);
    // Copies of this journal's own records (salt and all), records of another journal,
    // and records forged at every offset they could land on: none is at its place.
    let own = fs::read(dir.segment(0)).expect("segment")[SEGMENT_HEADER as usize..].to_vec();
    let mut text = Vec::new();
    for i in 0..200u64 {
        text.extend_from_slice(&own);
        let body = Body::Message {
            from: from(9),
            token: None,
            text: b"forged",
        };
        let foreign = Place {
            salt: Salt(salt.0 ^ (i + 1)),
            segment: 0,
            offset: 0,
        };
        encode(&mut text, foreign, 0, MessageId(4 + i), Timestamp(1), body);
        let guessed = Place {
            salt,
            segment: 0,
            offset: i,
        };
        encode(&mut text, guessed, 0, MessageId(4 + i), Timestamp(1), body);
    }
    let big = publish_all(&j, &[&text]);
    assert_eq!(big, vec![MessageId(4)]);
    drop(j);
    let len = fs::metadata(dir.segment(0)).expect("meta").len();
    // The server died in the middle of writing that text.
    cut(&dir.segment(0), len - (text.len() as u64) / 2);
    let (j, rec) = open(&dir, Fsync::Always).expect("a torn tail, not corruption");
    assert_eq!(rec.messages, 4);
    assert!(rec.torn.is_some());
    assert_eq!(ids(&j), vec![0, 1, 2, 3]);
}

#[test]
fn damage_in_an_older_segment_stops_start_up_and_deletes_nothing() {
    let dir = TempDir::new();
    {
        let (j, _) = open_with(&dir, 1_000, Retention::UNLIMITED).expect("open");
        publish_n(&j, 40, 100);
    }
    assert!(dir.segments().len() > 3);
    // The last byte of the first segment: a torn tail, were it the newest.
    let first = dir.segment(0);
    let len = fs::metadata(&first).expect("meta").len();
    flip(&first, len - 1);
    let err = refused_unchanged(&dir);
    assert!(
        matches!(&err, JournalError::Corrupt { path, .. } if *path == first),
        "{err}"
    );
    assert!(err.to_string().contains("not the newest"), "{err}");
}

#[test]
fn a_flipped_byte_before_a_later_write_is_corruption() {
    let dir = TempDir::new();
    let len = published(&dir);
    // Byte 1 of the first record's length: the record now claims to run past the end.
    flip(&dir.segment(0), SEGMENT_HEADER + 5);
    let err = refused_unchanged(&dir);
    assert!(
        matches!(
            err,
            JournalError::Corrupt {
                offset: SEGMENT_HEADER,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("a record of a later write"),
        "{err}"
    );
    let _ = len;
    // A text byte of the first record, likewise.
    let dir = TempDir::new();
    published(&dir);
    flip(&dir.segment(0), SEGMENT_HEADER + RECORD_HEADER as u64 + 30);
    refused_unchanged(&dir);
}

/// A segment written by hand: commit one is record 0, commit two records 1 to 3.
fn two_commits(dir: &TempDir) -> Vec<u64> {
    let (j, _) = open(dir, Fsync::Always).expect("open");
    drop(j);
    let salt = salt(dir);
    let mut bytes = fs::read(dir.segment(0)).expect("segment");
    let mut starts = Vec::new();
    let mut commit = |bytes: &mut Vec<u8>, ids: std::ops::Range<u64>| {
        let mut out = Vec::new();
        let at = Place {
            salt,
            segment: 0,
            offset: bytes.len() as u64,
        };
        for id in ids {
            starts.push(bytes.len() as u64 + out.len() as u64);
            let text = format!("record {id}");
            let body = Body::Message {
                from: from(1),
                token: None,
                text: text.as_bytes(),
            };
            encode(&mut out, at, 0, MessageId(id), Timestamp(1), body);
        }
        bytes.extend_from_slice(&out);
    };
    commit(&mut bytes, 0..1);
    commit(&mut bytes, 1..4);
    fs::write(dir.segment(0), &bytes).expect("write");
    starts
}

#[test]
fn records_of_the_same_write_after_the_damage_are_torn_with_it() {
    let dir = TempDir::new();
    let starts = two_commits(&dir);
    assert_eq!(open(&dir, Fsync::Always).expect("intact").1.messages, 4);
    // The first record of the last write is damaged; its other two made it to the disk
    // (pages written out of order): a torn write all the same.
    flip(&dir.segment(0), starts[1] + RECORD_HEADER as u64 + 2);
    let (j, rec) = open(&dir, Fsync::Always).expect("torn");
    assert_eq!(rec.torn.map(|t| t.offset), Some(starts[1]));
    assert_eq!(ids(&j), vec![0]);
}

#[test]
fn damage_to_an_earlier_write_is_corruption() {
    let dir = TempDir::new();
    let starts = two_commits(&dir);
    flip(&dir.segment(0), starts[0] + RECORD_HEADER as u64 + 2);
    let err = refused_unchanged(&dir);
    assert!(
        matches!(err, JournalError::Corrupt { offset, .. } if offset == starts[0]),
        "{err}"
    );
}

#[test]
fn a_missing_segment_is_corruption_and_a_missing_newest_one_too() {
    let dir = TempDir::new();
    {
        let (j, _) = open_with(&dir, 1_000, Retention::UNLIMITED).expect("open");
        publish_n(&j, 40, 100);
    }
    let segments = dir.segments();
    fs::remove_file(dir.segment(segments[2])).expect("rm");
    let err = refused_unchanged(&dir);
    assert!(
        err.to_string().contains("segments are missing before it"),
        "{err}"
    );
    // Older segments may go (retention deletes them): only a gap is refused.
    for &s in &segments[..3] {
        let _ = fs::remove_file(dir.segment(s));
    }
    assert!(open(&dir, Fsync::Always).is_ok());
    let newest = *segments.last().expect("segments");
    fs::remove_file(dir.segment(newest)).expect("rm");
    let err = refused_unchanged(&dir);
    assert!(
        matches!(&err, JournalError::Incomplete { path, .. } if *path == dir.segment(newest)),
        "{err}"
    );
}

#[test]
fn a_segment_of_another_journal_is_refused() {
    let dir = TempDir::new();
    let other = TempDir::new();
    {
        let (j, _) = open_with(&dir, 1_000, Retention::UNLIMITED).expect("open");
        publish_n(&j, 20, 100);
        let (k, _) = open_with(&other, 1_000, Retention::UNLIMITED).expect("open");
        publish_n(&k, 20, 100);
    }
    let s = dir.segments()[1];
    fs::copy(other.segment(s), dir.segment(s)).expect("copy");
    let err = refused_unchanged(&dir);
    assert!(
        err.to_string().contains("belongs to another journal"),
        "{err}"
    );
}

#[test]
fn a_missing_stub_is_rebuilt_from_the_segments() {
    let dir = TempDir::new();
    published(&dir);
    let stub = fs::read(dir.journal()).expect("stub");
    fs::remove_file(dir.journal()).expect("rm");
    let (j, rec) = open(&dir, Fsync::Always).expect("open");
    assert_eq!(rec.messages, 4);
    assert_eq!(fs::read(dir.journal()).expect("stub"), stub);
    drop(j);
    fs::write(dir.journal(), b"MBOARD\0J\x03\0\0\0 damaged").expect("write");
    let err = refused_unchanged(&dir);
    assert!(err.to_string().contains("the stub is damaged"), "{err}");
}

/// Writes a single-file journal of format 2 holding `n` messages, as older servers did.
fn legacy_journal(dir: &TempDir, n: u64) -> Vec<u8> {
    fs::create_dir_all(&dir.0).expect("dir");
    let mut bytes = legacy::file_header().to_vec();
    for id in 0..n {
        let text = format!("old message {id}");
        encode_record(
            &mut bytes,
            MessageId(id),
            Timestamp(1_700_000_000_000_000 + id),
            from(3),
            None,
            text.as_bytes(),
        );
    }
    fs::write(dir.journal(), &bytes).expect("write");
    bytes
}

#[test]
fn a_single_file_journal_with_a_torn_tail_is_upgraded_without_it() {
    let dir = TempDir::new();
    let mut bytes = legacy_journal(&dir, 5);
    bytes.extend_from_slice(b"MBR2\x10\x00\x00\x00torn");
    fs::write(dir.journal(), &bytes).expect("write");
    let (j, rec) = open_with(&dir, 1_000, Retention::UNLIMITED).expect("upgraded");
    assert_eq!((rec.format, rec.messages), (2, 5));
    assert_eq!(rec.torn.map(|t| (t.segment, t.dropped)), Some((None, 12)));
    let texts: Vec<String> = all(&j)
        .iter()
        .map(|m| String::from_utf8_lossy(&m.entry.text).into_owned())
        .collect();
    assert_eq!(
        texts,
        (0..5)
            .map(|i| format!("old message {i}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(all(&j)[4].entry.time, Timestamp(1_700_000_000_000_004));
    assert!(!dir.0.join("segments.new").exists());
}

#[test]
fn a_corrupt_single_file_journal_is_refused_and_left_as_it_was() {
    let dir = TempDir::new();
    legacy_journal(&dir, 20);
    flip(&dir.journal(), 16 + 30);
    let err = refused_unchanged(&dir);
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
    assert!(!dir.0.join("segments").exists() && !dir.0.join("segments.new").exists());
}

#[test]
fn an_upgrade_interrupted_is_redone_or_finished() {
    // Before its rename: the half-made segments are removed and the upgrade redone.
    let dir = TempDir::new();
    let old = legacy_journal(&dir, 30);
    fs::create_dir_all(dir.0.join("segments.new")).expect("dir");
    fs::write(dir.0.join("segments.new/00000000000000000000.seg"), b"half").expect("write");
    let (j, rec) = open(&dir, Fsync::Always).expect("redone");
    assert_eq!((rec.format, rec.messages), (2, 30));
    drop(j);
    // After its rename, before the stub replaced the old file: finished, once the
    // segments are found to hold every message.
    fs::write(dir.journal(), &old).expect("the old file back");
    let (j, rec) = open(&dir, Fsync::Always).expect("finished");
    assert_eq!((rec.format, rec.messages), (2, 30));
    assert_eq!(ids(&j).len(), 30);
    drop(j);
    assert!(Stub::decode(&fs::read(dir.journal()).expect("stub")).is_some());
    // An old file that holds more than the segments is not overwritten.
    let mut more = old.clone();
    encode_record(
        &mut more,
        MessageId(30),
        Timestamp(1),
        from(3),
        None,
        b"written after",
    );
    fs::write(dir.journal(), &more).expect("write");
    let err = refused_unchanged(&dir);
    assert!(
        err.to_string()
            .contains("holds 31 messages and the segments 30"),
        "{err}"
    );
}

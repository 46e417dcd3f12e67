//! Start-up: every record is read once to rebuild the index, and the token table from the
//! records whose publish is still inside the deduplication window.
//!
//! At the first damaged record the rest of the file is searched for an intact record: if
//! there is one, the damage is corruption and start-up stops with the offset, writing
//! nothing; if there is none, the damage is a torn tail (the server died mid-write) and it
//! is cut off with a warning.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use mboard_protocol::Timestamp;
use tracing::warn;

use super::Index;
use super::error::{JournalError, io_at};
use super::format::{
    self, Check, FILE_HEADER, OLDEST_VERSION, RECORD_HEADER, VERSION, Window, record_at,
};
use crate::board::tokens::TokenTable;

/// Start-up reads the file this many bytes at a time.
const CHUNK: usize = 1 << 20;

/// A torn tail that start-up cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Torn {
    /// Where the damaged record began (the new end of the file).
    pub offset: u64,
    /// Bytes removed.
    pub dropped: u64,
}

/// What start-up found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Messages in the journal.
    pub messages: u64,
    /// The torn tail that was cut off, if any.
    pub torn: Option<Torn>,
    /// The format version the file declared when it was opened (it is upgraded to the
    /// current one before anything is written).
    pub format: u32,
    /// Publish tokens remembered from records inside the deduplication window.
    pub tokens: usize,
}

/// What [`recover`] rebuilt.
pub(super) struct Recovered {
    pub(super) index: Index,
    pub(super) torn: Option<Torn>,
    pub(super) format: u32,
}

/// Reads the whole journal into an index, cutting off a torn tail and refusing corruption;
/// tokens of records within the window at `now` go into `tokens`.
pub(super) fn recover(
    file: &File,
    path: &Path,
    tokens: &mut TokenTable,
    now: Timestamp,
) -> Result<Recovered, JournalError> {
    let len = file.metadata().map_err(io_at(path))?.len();
    let format = check_file_header(file, len, path)?;
    let (index, damaged) = index_records(file, len, path, &mut |record| {
        if let Some(token) = record.token {
            tokens.restore(token, record.id, record.time, now);
        }
    })?;
    let Some(at) = damaged else {
        return Ok(Recovered {
            index,
            torn: None,
            format,
        });
    };
    if let Some(valid) = find_record_after(file, at + 1, len).map_err(io_at(path))? {
        return Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            offset: at,
            reason: format!(
                "damaged record (checksum mismatch) followed by a valid record at offset {valid}"
            ),
        });
    }
    let torn = Torn {
        offset: at,
        dropped: len - at,
    };
    cut(file, path, torn)?;
    Ok(Recovered {
        index,
        torn: Some(torn),
        format,
    })
}

/// The file's format version; refuses a file that is not a journal of a format this
/// server reads.
fn check_file_header(file: &File, len: u64, path: &Path) -> Result<u32, JournalError> {
    let mut header = [0u8; FILE_HEADER as usize];
    let version = if len < FILE_HEADER || file.read_exact_at(&mut header, 0).is_err() {
        None
    } else {
        format::file_version(&header)
    };
    match version {
        Some(v) if (OLDEST_VERSION..=VERSION).contains(&v) => Ok(v),
        Some(found) => Err(JournalError::Version {
            path: path.to_path_buf(),
            found,
        }),
        None => Err(JournalError::NotAJournal {
            path: path.to_path_buf(),
        }),
    }
}

/// Indexes the records in order, up to the first damaged one, whose offset it returns;
/// `each` sees every record indexed.
///
/// A record that is intact but does not fit (an undecodable body, an id out of order) was
/// written whole by something other than this server, so it is corruption, not a torn tail.
fn index_records(
    file: &File,
    len: u64,
    path: &Path,
    each: &mut dyn FnMut(&format::Record),
) -> Result<(Index, Option<u64>), JournalError> {
    let corrupt = |offset, reason| JournalError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let mut window = Window::new(file, len, CHUNK);
    let mut index = Index::default();
    let mut offset = FILE_HEADER;
    while offset < len {
        let record = match record_at(&mut window, offset).map_err(io_at(path))? {
            Check::Valid(record) => record,
            Check::Malformed => return Err(corrupt(offset, "malformed record body".into())),
            Check::Damaged => {
                index.end = offset;
                return Ok((index, Some(offset)));
            }
        };
        let expected = index.sums.len();
        if record.id.0 != expected {
            let reason = format!("expected message id {expected}, found {}", record.id);
            return Err(corrupt(offset, reason));
        }
        index.push(offset, record.reply_len());
        each(&record);
        offset += record.len as u64;
    }
    index.end = offset;
    Ok((index, None))
}

/// The offset of the first intact record starting in `from..len`, if any.
fn find_record_after(file: &File, from: u64, len: u64) -> io::Result<Option<u64>> {
    let mut window = Window::new(file, len, CHUNK);
    let last = len.saturating_sub(RECORD_HEADER as u64);
    for at in from..=last {
        if record_at(&mut window, at)?.is_intact() {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

/// Cuts `torn` off the end of the file, durably, before anything is appended after it.
fn cut(file: &File, path: &Path, torn: Torn) -> Result<(), JournalError> {
    warn!(
        journal = %path.display(),
        offset = torn.offset,
        dropped = torn.dropped,
        "torn final record cut off: dropped {} bytes at offset {}",
        torn.dropped,
        torn.offset
    );
    file.set_len(torn.offset).map_err(io_at(path))?;
    file.sync_all().map_err(io_at(path))
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::io::Write;

    use mboard_protocol::MessageId;

    use super::super::Fsync;
    use super::super::testing::{TEXTS, TempDir, all, open, publish_all, published};
    use super::*;

    #[test]
    fn appended_garbage_is_a_torn_tail() {
        let dir = TempDir::new();
        let len = published(&dir);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.journal())
            .expect("open");
        f.write_all(b"MBR1 half a record from a dying server")
            .expect("append");
        drop(f);
        let (j, rec) = open(&dir, Fsync::Always).expect("repaired");
        assert_eq!(
            rec,
            Recovery {
                messages: 4,
                torn: Some(Torn {
                    offset: len,
                    dropped: 38
                }),
                format: 2,
                tokens: 0
            }
        );
        assert_eq!(
            fs::metadata(dir.journal()).expect("meta").len(),
            len,
            "cut back"
        );
        assert_eq!(all(&j).len(), 4);
        assert_eq!(publish_all(&j, &[b"after repair"]), vec![MessageId(4)]);
    }

    #[test]
    fn a_record_cut_short_is_a_torn_tail() {
        let dir = TempDir::new();
        let len = published(&dir);
        // Header, id, time, flags, family, IPv4 address, port, "last".
        let last_record = (RECORD_HEADER + 8 + 8 + 1 + 1 + 4 + 2 + 4) as u64;
        for cut in [len - 1, len - 10, len - last_record + 3] {
            let f = OpenOptions::new()
                .write(true)
                .open(dir.journal())
                .expect("open");
            f.set_len(cut).expect("cut");
            drop(f);
            let (j, rec) = open(&dir, Fsync::Always).expect("repaired");
            let torn = rec.torn.expect("torn");
            assert_eq!(
                (rec.messages, torn.offset, torn.dropped),
                (3, len - last_record, cut - (len - last_record))
            );
            assert_eq!(
                all(&j)
                    .iter()
                    .map(|m| m.entry.text.clone())
                    .collect::<Vec<_>>(),
                TEXTS[..3].to_vec()
            );
            drop(j);
            // Put the fourth back for the next cut.
            let (j, _) = open(&dir, Fsync::Always).expect("open");
            publish_all(&j, &[b"last"]);
        }
    }

    fn flipped_byte_is_refused(at: impl Fn(u64) -> u64) {
        let dir = TempDir::new();
        let len = published(&dir);
        let mut bytes = fs::read(dir.journal()).expect("read");
        let i = at(len) as usize;
        bytes[i] ^= 0x20;
        fs::write(dir.journal(), &bytes).expect("write");
        let listing = |d: &Path| {
            let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(d)
                .expect("dir")
                .map(|e| {
                    let e = e.expect("entry");
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        fs::read(e.path()).expect("file"),
                    )
                })
                .collect();
            v.sort();
            v
        };
        let before = listing(&dir.0);
        let err = open(&dir, Fsync::Always).expect_err("corruption");
        let JournalError::Corrupt { path, offset, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(path, &dir.journal());
        assert!(*offset <= i as u64, "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("at offset {offset}")) && text.contains("nothing was changed"),
            "{text}"
        );
        assert_eq!(listing(&dir.0), before, "the directory is unchanged");
    }

    #[test]
    fn a_flipped_text_byte_in_the_middle_stops_start_up() {
        // The first record's text starts 16 + 8 + 8 + 1 + 1 + 4 + 2 bytes after the file header.
        flipped_byte_is_refused(|_| FILE_HEADER + 16 + 24 + 3);
    }

    #[test]
    fn a_flipped_length_byte_is_not_mistaken_for_a_torn_tail() {
        // Byte 1 of the first record's length: the record now claims to run past the end.
        flipped_byte_is_refused(|_| FILE_HEADER + 5);
    }

    #[test]
    fn foreign_files_are_refused() {
        let dir = TempDir::new();
        fs::create_dir_all(&dir.0).expect("dir");
        fs::write(dir.journal(), b"not a journal at all").expect("write");
        assert!(matches!(
            open(&dir, Fsync::Always),
            Err(JournalError::NotAJournal { .. })
        ));
        // A journal's header but for the version.
        let mut header = format::file_header();
        header[8..12].copy_from_slice(&3u32.to_le_bytes());
        fs::write(dir.journal(), header).expect("write");
        let err = open(&dir, Fsync::Always).expect_err("version");
        assert!(
            matches!(err, JournalError::Version { found: 3, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with("this server reads versions 1 to 2"),
            "{err}"
        );
    }

    /// Texts that straddle and exceed the start-up chunk, so replay reads past its buffer.
    fn publish_across_chunks(dir: &TempDir) -> Vec<Vec<u8>> {
        let texts: Vec<Vec<u8>> = [CHUNK - 100, 300, 2 * CHUNK + 5, 7]
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![b'a' + i as u8; n])
            .collect();
        let (j, _) = open(dir, Fsync::Never).expect("open");
        let refs: Vec<&[u8]> = texts.iter().map(Vec::as_slice).collect();
        publish_all(&j, &refs);
        texts
    }

    #[test]
    fn records_larger_than_a_chunk_replay_whole() {
        let dir = TempDir::new();
        let texts = publish_across_chunks(&dir);
        let (j, rec) = open(&dir, Fsync::Never).expect("reopen");
        assert_eq!(
            rec,
            Recovery {
                messages: 4,
                torn: None,
                format: 2,
                tokens: 0
            }
        );
        let read: Vec<Vec<u8>> = all(&j).iter().map(|m| m.entry.text.to_vec()).collect();
        assert_eq!(read, texts);
    }

    #[test]
    fn the_forward_search_finds_a_record_chunks_past_the_damage() {
        let dir = TempDir::new();
        publish_across_chunks(&dir);
        let mut bytes = fs::read(dir.journal()).expect("read");
        // The first record's text: the next intact record starts about a chunk later.
        bytes[FILE_HEADER as usize + 40] ^= 0x20;
        fs::write(dir.journal(), &bytes).expect("write");
        let err = open(&dir, Fsync::Always).expect_err("corruption");
        assert!(
            matches!(
                err,
                JournalError::Corrupt {
                    offset: FILE_HEADER,
                    ..
                }
            ),
            "{err}"
        );
    }
}

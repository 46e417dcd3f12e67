//! Start-up: every segment is read once to rebuild the index, and the token table from the
//! records whose publish is still inside the deduplication window.
//!
//! What may be wrong, and what start-up does about it:
//!
//! - Damage at the end of the newest segment, with no record of a later group commit
//!   after it, is a **torn tail**: the server died during its last write, which was
//!   never acknowledged. It is cut off, with a warning. Records of the same group commit
//!   after the damage (a write whose pages reached the disk out of order) are cut with it.
//! - Damage anywhere else — in an older segment, or followed by a record of a later group
//!   commit — is **corruption**: start-up stops, naming the file and offset, and changes
//!   and deletes nothing.
//! - A segment missing between two others, or the newest one missing, is corruption too.
//!
//! Only this journal's records count (their salt and place, see [`super::format`]), so a
//! text holding copies of records cannot make a torn tail look like corruption.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mboard_protocol::Timestamp;
use tracing::warn;

use super::error::{JournalError, io_at};
use super::format::{
    Check, Kind, Place, RECORD_HEADER, SEGMENT_HEADER, Stub, looks_like_record,
    read_segment_header, record_at,
};
use super::index::{Index, Segment};
use super::layout::{Layout, list_segments};
use super::window::Window;
use crate::board::tokens::TokenTable;

/// Start-up reads a segment this many bytes at a time.
const CHUNK: usize = 1 << 20;

/// A torn tail that start-up cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Torn {
    /// The first id of the segment it was in (`None`: the single file of a journal of an
    /// older format, before it was upgraded).
    pub segment: Option<u64>,
    /// Where the damaged record began in that segment (the segment's new end).
    pub offset: u64,
    /// Bytes removed.
    pub dropped: u64,
}

/// What start-up found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Messages kept.
    pub messages: u64,
    /// The torn tail that was cut off, if any.
    pub torn: Option<Torn>,
    /// The format version the journal had when it was opened (an older one is upgraded
    /// before anything is written).
    pub format: u32,
    /// Publish tokens remembered from records inside the deduplication window.
    pub tokens: usize,
    /// Segment files.
    pub segments: usize,
    /// The oldest id kept (the next id, if none is).
    pub oldest: u64,
}

/// What [`recover`] rebuilt.
pub(super) struct Recovered {
    pub(super) index: Index,
    pub(super) torn: Option<Torn>,
    /// The id the newest segment's next message record must have (below the index's next
    /// id if a kept note says records were lost, and then a new segment is started).
    pub(super) next_in_newest: u64,
    /// Segments whose messages a kept note says were all trimmed, to delete.
    pub(super) trimmed: Vec<Segment>,
}

fn corrupt(path: &Path, offset: u64, reason: String) -> JournalError {
    JournalError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    }
}

/// Reads every segment of the journal `stub` describes into an index (keeping publish
/// times if `times`), cutting off a torn tail and refusing corruption; tokens of records
/// within the window at `now` go into `tokens`.
pub(super) fn recover(
    layout: &Layout,
    stub: Stub,
    tokens: &mut TokenTable,
    now: Timestamp,
    times: bool,
) -> Result<Recovered, JournalError> {
    let listed = segments(layout, stub)?;
    let first = listed.first().map_or(stub.newest, |(first, _)| *first);
    let mut index = Index::new(first, times, now);
    let mut kept = 0;
    let mut torn = None;
    let last = listed.len() - 1;
    for (i, (first, path)) in listed.into_iter().enumerate() {
        follows(&path, first, index.next())?;
        let file = Arc::new(open_segment(&path, stub, first)?);
        let scan = Scan {
            file: &file,
            path: &path,
            place: Place {
                salt: stub.salt,
                segment: first,
                offset: SEGMENT_HEADER,
            },
            newest: i == last,
        };
        let len = file.metadata().map_err(io_at(&path))?.len();
        index.add_segment(Segment::new(
            first,
            file.clone(),
            path.clone(),
            SEGMENT_HEADER,
        ));
        let end = scan.records(len, &mut index, &mut kept, tokens, now)?;
        if end < len {
            torn = Some(scan.cut(end, len)?);
        }
        index.grow(end);
    }
    let next_in_newest = index.next();
    let trimmed = index.trim_below(kept);
    Ok(Recovered {
        index,
        torn,
        next_in_newest,
        trimmed,
    })
}

/// The segments of the journal `stub` describes, by first id, up to its newest one
/// (files in the directory that are not segments are left alone, with a warning).
fn segments(layout: &Layout, stub: Stub) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let dir = layout.segments();
    let (listed, strangers) = list_segments(&dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => JournalError::Incomplete {
            path: dir.clone(),
            reason: "the segments directory is missing".into(),
        },
        _ => io_at(&dir)(e),
    })?;
    for path in strangers {
        warn!(file = %path.display(), "not a journal segment: left alone");
    }
    let newest = listed.last().map(|(first, _)| *first);
    if newest.is_none_or(|n| n < stub.newest) {
        return Err(JournalError::Incomplete {
            path: layout.segment(stub.newest),
            reason: "the newest segment is missing".into(),
        });
    }
    Ok(listed)
}

/// Checks that the segment at `path`, starting at id `first`, follows on from the one
/// before it, which ends before id `next`: no gap, no overlap.
fn follows(path: &Path, first: u64, next: u64) -> Result<(), JournalError> {
    if next == first {
        return Ok(());
    }
    let reason = if first > next {
        format!(
            "segments are missing before it: ids {} to {} are nowhere",
            next,
            first - 1
        )
    } else {
        format!("it overlaps the segment before it (which ends at id {next})")
    };
    Err(corrupt(path, 0, reason))
}

/// Opens a segment and checks its header: this journal's salt, and the first id its name
/// says.
fn open_segment(path: &Path, stub: Stub, first: u64) -> Result<File, JournalError> {
    let file = File::open(path).map_err(io_at(path))?;
    let mut header = [0u8; SEGMENT_HEADER as usize];
    let read = file.read_at(&mut header, 0).map_err(io_at(path))?;
    let (salt, declared) = read_segment_header(&header[..read]).map_err(|r| corrupt(path, 0, r))?;
    if salt != stub.salt {
        return Err(corrupt(
            path,
            0,
            "the segment belongs to another journal (its salt differs)".into(),
        ));
    }
    if declared != first {
        return Err(corrupt(
            path,
            0,
            format!("the header says the first id is {declared}, the name says {first}"),
        ));
    }
    Ok(file)
}

/// One segment being read.
struct Scan<'a> {
    file: &'a File,
    path: &'a PathBuf,
    /// Where its first record is.
    place: Place,
    /// Whether it is the newest segment, the only one that may end torn.
    newest: bool,
}

impl Scan<'_> {
    /// Indexes the records up to the first damaged one (or the end), whose offset it
    /// returns; a damaged record that is not a torn tail is refused.
    fn records(
        &self,
        len: u64,
        index: &mut Index,
        kept: &mut u64,
        tokens: &mut TokenTable,
        now: Timestamp,
    ) -> Result<u64, JournalError> {
        let mut window = Window::new(self.file, len, CHUNK);
        let mut offset = self.place.offset;
        while offset < len {
            let place = Place {
                offset,
                ..self.place
            };
            let record = match record_at(&mut window, place).map_err(io_at(self.path))? {
                Check::Valid(record) => record,
                Check::Malformed => {
                    return Err(corrupt(self.path, offset, "malformed record body".into()));
                }
                Check::Damaged => {
                    self.judge(offset, len)?;
                    return Ok(offset);
                }
            };
            match record.kind {
                Kind::Message { token, .. } => {
                    let expected = index.next();
                    if record.id.0 != expected {
                        let reason = format!("expected message id {expected}, found {}", record.id);
                        return Err(corrupt(self.path, offset, reason));
                    }
                    index.push(offset, record.reply_len().unwrap_or(0), record.time);
                    if let Some(token) = token {
                        tokens.restore(token, record.id, record.time, now);
                    }
                }
                Kind::TokenNote { token } => {
                    tokens.restore(token, record.id, record.time, now);
                    index.noted([token]);
                }
                Kind::KeptNote => *kept = (*kept).max(record.id.0),
            }
            offset += record.len as u64;
        }
        Ok(offset)
    }

    /// Decides what the damage at `at` is: a torn tail only at the end of the newest
    /// segment with no record of a later group commit after it.
    fn judge(&self, at: u64, len: u64) -> Result<(), JournalError> {
        if !self.newest {
            return Err(corrupt(
                self.path,
                at,
                "damaged record (checksum mismatch) in a segment that is not the newest".into(),
            ));
        }
        match self.later_commit(at, len).map_err(io_at(self.path))? {
            Some(valid) => Err(corrupt(
                self.path,
                at,
                format!(
                    "damaged record (checksum mismatch) followed by a record of a later write at offset {valid}"
                ),
            )),
            None => Ok(()),
        }
    }

    /// The offset of a record after `at` written by a later group commit than the one
    /// `at` belongs to (or one that is intact but does not decode), if there is one.
    fn later_commit(&self, at: u64, len: u64) -> io::Result<Option<u64>> {
        let mut window = Window::new(self.file, len, CHUNK);
        let last = len.saturating_sub(RECORD_HEADER as u64);
        for c in at + 1..=last {
            if !looks_like_record(window.bytes(c, 4)?) {
                continue;
            }
            let place = Place {
                offset: c,
                ..self.place
            };
            match record_at(&mut window, place)? {
                // Its commit began after the damaged record: that write had completed.
                Check::Valid(r) if c.checked_sub(u64::from(r.batch)).is_none_or(|s| s > at) => {
                    return Ok(Some(c));
                }
                Check::Malformed => return Ok(Some(c)),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Cuts the torn tail `at..len` off, durably, before anything is appended after it.
    fn cut(&self, at: u64, len: u64) -> Result<Torn, JournalError> {
        let torn = Torn {
            segment: Some(self.place.segment),
            offset: at,
            dropped: len - at,
        };
        warn!(
            segment = %self.path.display(),
            offset = torn.offset,
            dropped = torn.dropped,
            "torn final record cut off: dropped {} bytes at offset {}",
            torn.dropped,
            torn.offset
        );
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path)
            .map_err(io_at(self.path))?;
        file.set_len(at)
            .and_then(|()| file.sync_all())
            .map_err(io_at(self.path))?;
        Ok(torn)
    }
}

//! The journal's failures: why it would not open, and why it could not serve a request.

use std::io;
use std::path::{Path, PathBuf};

use super::format::VERSION;
use super::layout::LOCK_FILE;
use super::legacy::OLDEST_VERSION;
use crate::board::{BoardError, Refusal};

/// Why the journal could not be opened, or could not store or read a message.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another server holds the data directory's lock.
    #[error("data directory {} is in use by another mboard-server (lock held on {})", .dir.display(), .dir.join(LOCK_FILE).display())]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// A damaged record with valid records after it: not a torn tail.
    #[error("journal {} is corrupt at offset {offset}: {reason}; start-up refused, nothing was changed", .path.display())]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// Byte offset of the damaged record.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// A part of the journal is missing: a segment, or the segments directory.
    #[error("journal {} is incomplete: {reason}; start-up refused, nothing was changed", .path.display())]
    Incomplete {
        /// What is missing.
        path: PathBuf,
        /// What that means.
        reason: String,
    },
    /// The file does not start with the journal magic.
    #[error("{} is not an mboard journal", .path.display())]
    NotAJournal {
        /// The file.
        path: PathBuf,
    },
    /// A journal of a format this server does not read.
    #[error("journal {} has format version {found}; this server reads versions {OLDEST_VERSION} to {VERSION}", .path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Reading, writing or creating a file failed while opening the journal.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the journal failed while serving.
    #[error("storage failure: {0}")]
    Storage(#[source] io::Error),
    /// The journal cannot take a publish now (full, read-only, lost, busy).
    #[error("{0}")]
    Refused(Refusal),
    /// A stored record failed its check when read back.
    #[error("record at offset {offset} of {} failed its checksum", .path.display())]
    Damaged {
        /// The segment.
        path: PathBuf,
        /// Byte offset of the record in the segment.
        offset: u64,
    },
    /// The text is larger than a journal record can hold (4 GiB).
    #[error("text too large to store")]
    TooLarge,
    /// The journal writer has stopped (the server is shutting down).
    #[error("journal closed")]
    Closed,
    /// An age limit asked of a running journal that started without one: its index keeps
    /// no publish times to weigh.
    #[error("a retain age takes a restart on a journal started without one")]
    AgeNeedsRestart,
}

impl From<JournalError> for BoardError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::Refused(why) => BoardError::Refused(why),
            e => BoardError::Storage(Box::new(e)),
        }
    }
}

/// Wraps an I/O failure on `path` while opening.
pub(super) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handler logs a board failure by its text: these are the lines operators see.
    #[test]
    fn serving_failures_read_as_board_failures_always_have() {
        let as_board = |e: JournalError| BoardError::from(e).to_string();
        assert_eq!(
            as_board(JournalError::Storage(io::Error::other("disk on fire"))),
            "storage failure: disk on fire"
        );
        assert_eq!(
            as_board(JournalError::Damaged {
                path: "data/segments/00000000000000000000.seg".into(),
                offset: 40
            }),
            "record at offset 40 of data/segments/00000000000000000000.seg failed its checksum"
        );
        assert!(matches!(
            BoardError::from(JournalError::Refused(Refusal::Full)),
            BoardError::Refused(Refusal::Full)
        ));
        assert_eq!(as_board(JournalError::TooLarge), "text too large to store");
        assert_eq!(as_board(JournalError::Closed), "journal closed");
    }
}

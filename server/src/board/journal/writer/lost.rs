//! Whether the data directory is still ours, and what is done when it is not.
//!
//! Before a batch is written, the writer checks that the lock file is still the one it
//! holds (`stat` of its path: the same device and inode), so that it never writes where
//! another server may; before acknowledging it, that the lock is still its own and the
//! segment it wrote to still linked (`fstat`: a link count above 0), so that it never
//! acknowledges into a file nobody can read again. Three calls, about 3 µs a batch. If not
//! — the directory or the segment was removed, or the lock file was removed or replaced,
//! so another server may be writing here — the batch just written is cut off again (so a
//! refused publish is stored nowhere), publishes are refused from then on, once logged, and
//! reads of what was stored go on from the files already open.
//!
//! So that no id is ever handed out again, the writer then leaves behind the one thing a
//! later server needs: where the ids go on. If the directory is still ours (only segments
//! were removed), it writes an empty segment named after the next id; if the whole
//! directory is gone, it makes it again, locks it, and writes the same. A directory that
//! another server has taken is left alone.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;

use tracing::error;

use super::commit::Writer;
use crate::board::journal::format::Stub;
use crate::board::journal::layout::{create_segment, identity_of, still_names};
use crate::board::journal::try_lock;

/// Whether `file` still has a name (a link count above 0); a failing `fstat` leaves that to
/// the write that follows.
fn linked(file: &File) -> bool {
    file.metadata().map_or(true, |m| m.nlink() > 0)
}

impl Writer {
    /// Whether the lock file is still the one this server holds.
    pub(super) fn lock_ours(&self) -> bool {
        still_names(&self.lock_path, self.lock_ident)
    }

    /// Whether the lock file is still ours and the segment being written still linked.
    pub(super) fn owned(&self) -> bool {
        self.lock_ours() && linked(&self.active.file)
    }

    /// The directory is no longer ours: stop writing, say so once, and leave a segment
    /// saying the next id is `next` where that is safe.
    pub(super) fn lose(&mut self, next: u64) {
        if self.health.lost().is_none() {
            return;
        }
        self.metrics.failed(super::metrics::Cause::Lost);
        let dir = self.layout.dir().to_path_buf();
        let why = if !still_names(&self.lock_path, self.lock_ident) {
            "its lock file was removed or replaced"
        } else {
            "the segment being written was removed"
        };
        let left = match self.tombstone(next) {
            Ok(Some(what)) => what,
            Ok(None) => {
                "its lock is not ours, so another server may be writing there: nothing was written there"
                    .to_owned()
            }
            Err(e) => format!("the next id could not be written there ({e})"),
        };
        error!(
            journal = %dir.display(),
            next_id = next,
            "journal: the data directory is no longer this server's ({why}): publishes are answered 4:storage unavailable until a restart, reads of what was stored go on; {left}"
        );
    }

    /// Writes an empty segment for `next` where the directory is ours (or gone, and made
    /// again); `None` where another server has it.
    fn tombstone(&mut self, next: u64) -> io::Result<Option<String>> {
        let dir = self.layout.dir().to_path_buf();
        let recreated = match fs::metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&dir)?;
                let lock = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(self.layout.lock())?;
                if !try_lock(&lock)? {
                    return Ok(None);
                }
                self.lock_ident = identity_of(&lock)?;
                self.tomb_lock = Some(lock);
                true
            }
            Err(e) => return Err(e),
            Ok(_) if still_names(&self.lock_path, self.lock_ident) => false,
            Ok(_) => return Ok(None),
        };
        let segments = self.layout.segments();
        fs::create_dir_all(&segments)?;
        if !self.layout.segment(next).exists() {
            create_segment(&segments, self.salt, next)?;
        }
        self.layout.write_stub(Stub {
            salt: self.salt,
            newest: next,
        })?;
        Ok(Some(if recreated {
            format!(
                "{} was made again, holding only the next id, so that a server started on it goes on from there",
                dir.display()
            )
        } else {
            "an empty segment holding only the next id was written, so that a server started here goes on from there (it refuses to start while older segments are missing in between)".to_owned()
        }))
    }
}

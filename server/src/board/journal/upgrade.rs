//! Upgrading a single-file journal (formats 1 and 2) into segments (format 3).
//!
//! The old file is replayed as the servers that wrote it did (cutting a torn tail, refusing
//! corruption) and every record is copied, token and time and address included, into new
//! segments under `segments.new/`, each synced. The step that commits the upgrade is the
//! rename of that directory to `segments/`; then the stub replaces the old file. A crash
//! before the rename leaves the old file as it was (the half-made directory is removed at
//! the next start); a crash after it is finished at the next start, once the segments are
//! found to hold as many messages as the old file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use mboard_protocol::MessageId;
use tracing::info;

use super::error::{JournalError, io_at};
use super::format::{Body, Place, SEGMENT_HEADER, Salt, Stub, encode, segment_header};
use super::layout::{Layout, segment_path, sync_dir};
use super::legacy::{self, Replayed};

/// What an upgrade did.
#[derive(Debug, Clone, Copy)]
pub(super) struct Upgraded {
    pub(super) replayed: Replayed,
    pub(super) stub: Stub,
}

/// Upgrades the single-file journal at `layout.stub()` into segments of about
/// `segment_size` bytes.
pub(super) fn upgrade(layout: &Layout, segment_size: u64) -> Result<Upgraded, JournalError> {
    let old = layout.stub();
    let staging = layout.upgrade_dir();
    remove_dir(&staging)?;
    fs::create_dir(&staging).map_err(io_at(&staging))?;
    let salt = Salt::random();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&old)
        .map_err(io_at(&old))?;
    let mut out = Segments::new(&staging, salt, segment_size);
    let replayed = legacy::replay(&file, &old, &mut |record, text| {
        let body = Body::Message {
            from: record.from,
            token: record.token,
            text,
        };
        out.append(record.id, record.time, body)
            .map_err(|e| io_at(&staging)(e))
    });
    let newest = match replayed.and_then(|r| out.finish().map(|n| (r, n)).map_err(io_at(&staging)))
    {
        Ok(done) => done,
        Err(e) => {
            // Nothing of the upgrade stays behind: the old file is the journal still.
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let (replayed, newest) = newest;
    let segments = layout.segments();
    fs::rename(&staging, &segments).map_err(io_at(&segments))?;
    sync_dir(layout.dir()).map_err(io_at(layout.dir()))?;
    let stub = Stub { salt, newest };
    layout.write_stub(stub).map_err(io_at(&old))?;
    info!(
        journal = %old.display(),
        from = replayed.format,
        to = super::format::VERSION,
        messages = replayed.messages,
        "journal upgraded into segments: every record was copied to {}; servers before format 3 will refuse this directory",
        segments.display()
    );
    Ok(Upgraded { replayed, stub })
}

/// Replays the old file without changing it and says how many messages it holds: to
/// check, when an upgrade was interrupted after its segments were renamed in, that they
/// hold as many.
pub(super) fn count_legacy(layout: &Layout) -> Result<u64, JournalError> {
    let old = layout.stub();
    let file = File::open(&old).map_err(io_at(&old))?;
    let mut n = 0;
    legacy::replay(&file, &old, &mut |_, _| {
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

fn remove_dir(path: &Path) -> Result<(), JournalError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_at(path)(e)),
        _ => Ok(()),
    }
}

/// Segments being written by an upgrade: each record a commit of its own (batch 0), so
/// that damage in them is never taken for a torn write.
struct Segments<'d> {
    dir: &'d Path,
    salt: Salt,
    segment_size: u64,
    /// The segment being written, its first id and its length.
    current: Option<(io::BufWriter<File>, u64, u64)>,
    buf: Vec<u8>,
}

impl<'d> Segments<'d> {
    fn new(dir: &'d Path, salt: Salt, segment_size: u64) -> Self {
        Segments {
            dir,
            salt,
            segment_size,
            current: None,
            buf: Vec::new(),
        }
    }

    fn append(
        &mut self,
        id: MessageId,
        time: mboard_protocol::Timestamp,
        body: Body<'_>,
    ) -> io::Result<()> {
        if self
            .current
            .as_ref()
            .is_none_or(|(_, _, len)| *len >= self.segment_size)
        {
            self.close()?;
            let path = segment_path(self.dir, id.0);
            let mut file = io::BufWriter::with_capacity(1 << 20, File::create(&path)?);
            file.write_all(&segment_header(self.salt, id.0))?;
            self.current = Some((file, id.0, SEGMENT_HEADER));
        }
        let Some((file, first, len)) = &mut self.current else {
            return Err(io::Error::other("no segment to write to"));
        };
        self.buf.clear();
        let at = Place {
            salt: self.salt,
            segment: *first,
            offset: *len,
        };
        encode(&mut self.buf, at, 0, id, time, body);
        file.write_all(&self.buf)?;
        *len += self.buf.len() as u64;
        Ok(())
    }

    fn close(&mut self) -> io::Result<()> {
        if let Some((file, _, _)) = self.current.take() {
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        Ok(())
    }

    /// Closes the last segment (making an empty one if there were no messages) and syncs
    /// the directory; returns the newest segment's first id.
    fn finish(mut self) -> io::Result<u64> {
        let newest = match &self.current {
            Some((_, first, _)) => *first,
            None => {
                let path = segment_path(self.dir, 0);
                let mut file = File::create(&path)?;
                file.write_all(&segment_header(self.salt, 0))?;
                file.sync_all()?;
                0
            }
        };
        self.close()?;
        sync_dir(self.dir)?;
        Ok(newest)
    }
}

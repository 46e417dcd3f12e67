//! Opening the journal: the lock, the layout found (new, current, or a single file to
//! upgrade), start-up's replay, retention as it stands, and the writer.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use mboard_protocol::Timestamp;
use tracing::{info, warn};

use super::error::{JournalError, io_at};
use super::format::{self, SEGMENT_HEADER, Salt, Stub, VERSION};
use super::index::{Index, Segment};
use super::layout::{Layout, create_segment, identity_of, list_segments, sync_dir};
use super::recovery::{self, Recovery};
use super::upgrade;
use super::writer::{self, Start};
use super::{Journal, JournalConfig};
use crate::board::retention::Retention;
use crate::board::tokens::{TokenLimits, Tokens};

/// Takes `file`'s exclusive lock without waiting: `false` if another process holds it.
pub(in crate::board) fn try_lock(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Takes the data directory's lock, or says who holds it.
fn lock(layout: &Layout) -> Result<File, JournalError> {
    let path = layout.lock();
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_at(&path))?;
    if try_lock(&lock).map_err(io_at(&path))? {
        Ok(lock)
    } else {
        Err(JournalError::Locked {
            dir: layout.dir().to_path_buf(),
        })
    }
}

/// What was found in the data directory before replaying it.
struct Found {
    stub: Stub,
    /// The format the journal had (older ones were upgraded just now).
    format: u32,
    /// An upgrade was interrupted after its segments were renamed in: check they hold
    /// as many messages as the old file, then write the stub.
    unfinished_upgrade: bool,
    /// The torn tail an upgrade cut off the old file.
    torn: Option<recovery::Torn>,
}

impl Journal {
    /// Opens (or creates) the journal in `config.dir`, replays it (upgrading an older
    /// format), rebuilds the token table within `limits`, trims what `retention` does not
    /// keep and starts the writer.
    pub(crate) fn open(
        config: &JournalConfig,
        limits: TokenLimits,
        retention: Retention,
    ) -> Result<(Journal, Recovery), JournalError> {
        let started = Instant::now();
        let layout = Layout::new(&config.dir);
        fs::create_dir_all(layout.dir()).map_err(io_at(layout.dir()))?;
        let lock = lock(&layout)?;
        let lock_ident = identity_of(&lock).map_err(io_at(&layout.lock()))?;
        let found = find(&layout, config)?;
        let tokens = Tokens::new(limits);
        let now = Timestamp::from_system_time(SystemTime::now());
        let times = retention.age.is_some();
        let mut recovered =
            recovery::recover(&layout, found.stub, &mut tokens.table(), now, times)?;
        if found.unfinished_upgrade {
            finish_upgrade(&layout, found.stub, recovered.index.next())?;
        }
        name_newest(&layout, found.stub, &recovered.index)?;
        let (trimmed, gone) = recovered.index.trim(&retention, now, u64::MAX);
        recovered.trimmed.extend(gone);
        // What start-up trimmed is noted like anything the writer trims.
        let kept = (trimmed > 0).then(|| recovered.index.sums().first());
        let index = &recovered.index;
        let recovery = Recovery {
            messages: index.sums().len(),
            torn: recovered.torn.or(found.torn),
            format: found.format,
            tokens: tokens.table().counts().held,
            segments: index.segments().len(),
            oldest: index.sums().first(),
        };
        replayed(&layout, config, index, &recovery, started);
        let (file, segment) = open_newest(&layout, index)?;
        let start = Start {
            file,
            segment,
            next_in_file: recovered.next_in_newest,
            lock,
            lock_ident,
            doomed: recovered.trimmed,
            kept,
        };
        let journal = Journal::start(
            config,
            found.stub.salt,
            start,
            recovered.index,
            tokens,
            retention,
        )
        .map_err(io_at(layout.dir()))?;
        Ok((journal, recovery))
    }

    /// The journal over `index`, its writer started from `start`.
    fn start(
        config: &JournalConfig,
        salt: Salt,
        start: Start,
        index: Index,
        tokens: Tokens,
        retention: Retention,
    ) -> io::Result<Journal> {
        let index = Arc::new(RwLock::new(index));
        let state = Arc::default();
        let writer = writer::Handle::start(
            config,
            salt,
            start,
            index.clone(),
            tokens.clone(),
            retention,
            Arc::clone(&state),
        )?;
        Ok(Journal {
            index,
            salt,
            tokens,
            state,
            writer,
        })
    }
}

/// Names the newest segment of `index` in the stub if it does not already: after a crash
/// between making a segment and naming it in the stub.
fn name_newest(layout: &Layout, stub: Stub, index: &Index) -> Result<(), JournalError> {
    let newest = index.active().map_or(stub.newest, |s| s.first);
    if newest != stub.newest {
        let stub = Stub { newest, ..stub };
        layout.write_stub(stub).map_err(io_at(&layout.stub()))?;
    }
    Ok(())
}

/// Logs what start-up found, once it has replayed the journal.
fn replayed(
    layout: &Layout,
    config: &JournalConfig,
    index: &Index,
    recovery: &Recovery,
    started: Instant,
) {
    info!(
        journal = %layout.dir().display(),
        format = recovery.format,
        messages = recovery.messages,
        oldest = recovery.oldest,
        next = index.next(),
        segments = recovery.segments,
        tokens = recovery.tokens,
        bytes = index.bytes(),
        fsync = %config.fsync,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "journal replayed"
    );
}

/// The newest segment, opened for the writer to append to.
fn open_newest(layout: &Layout, index: &Index) -> Result<(File, Segment), JournalError> {
    let Some(active) = index.active().cloned() else {
        return Err(JournalError::Incomplete {
            path: layout.segments(),
            reason: "no segment to write to".into(),
        });
    };
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(&active.path)
        .map_err(io_at(&active.path))?;
    Ok((file, active))
}

/// Reads the stub (or the single file, upgrading it), or makes a new journal.
fn find(layout: &Layout, config: &JournalConfig) -> Result<Found, JournalError> {
    let path = layout.stub();
    let segments = layout.segments();
    let has_segments = segments.exists();
    let head = match fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_at(&path)(e)),
    };
    // Leftovers of an upgrade that did not reach its rename.
    if layout.upgrade_dir().exists() {
        fs::remove_dir_all(layout.upgrade_dir()).map_err(io_at(&layout.upgrade_dir()))?;
    }
    let Some(head) = head else {
        if has_segments {
            let found = rebuild_stub(layout)?;
            warn!(journal = %path.display(), "journal stub missing: rebuilt from the segments");
            layout.write_stub(found.stub).map_err(io_at(&path))?;
            return Ok(found);
        }
        return create(layout);
    };
    match format::declared_version(&head) {
        Some(VERSION) => match Stub::decode(&head) {
            Some(stub) => Ok(Found {
                stub,
                format: VERSION,
                unfinished_upgrade: false,
                torn: None,
            }),
            None => Err(JournalError::Corrupt {
                path,
                offset: 0,
                reason:
                    "the stub is damaged (remove it, and the server rebuilds it from the segments)"
                        .into(),
            }),
        },
        Some(old @ (1 | 2)) if has_segments => {
            let found = rebuild_stub(layout)?;
            Ok(Found {
                format: old,
                unfinished_upgrade: true,
                ..found
            })
        }
        Some(1 | 2) => {
            let upgraded = upgrade::upgrade(layout, config.segment_size)?;
            Ok(Found {
                stub: upgraded.stub,
                format: upgraded.replayed.format,
                unfinished_upgrade: false,
                torn: upgraded.replayed.torn,
            })
        }
        Some(found) => Err(JournalError::Version { path, found }),
        None => Err(JournalError::NotAJournal { path }),
    }
}

/// A new, empty journal: a segment for id 0 and the stub naming it.
fn create(layout: &Layout) -> Result<Found, JournalError> {
    let segments = layout.segments();
    fs::create_dir_all(&segments).map_err(io_at(&segments))?;
    sync_dir(layout.dir()).map_err(io_at(layout.dir()))?;
    let stub = Stub {
        salt: Salt::random(),
        newest: 0,
    };
    create_segment(&segments, stub.salt, 0).map_err(io_at(&segments))?;
    layout.write_stub(stub).map_err(io_at(&layout.stub()))?;
    Ok(Found {
        stub,
        format: VERSION,
        unfinished_upgrade: false,
        torn: None,
    })
}

/// The stub as the segments say it was: their salt, the newest first id (not written).
fn rebuild_stub(layout: &Layout) -> Result<Found, JournalError> {
    let segments = layout.segments();
    let (listed, _) = list_segments(&segments).map_err(io_at(&segments))?;
    let Some((newest, path)) = listed.last() else {
        return Err(JournalError::Incomplete {
            path: segments,
            reason: "the stub and every segment are missing".into(),
        });
    };
    let mut header = [0u8; SEGMENT_HEADER as usize];
    let file = File::open(path).map_err(io_at(path))?;
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut header, 0).map_err(io_at(path))?;
    let (salt, _) =
        format::read_segment_header(&header).map_err(|reason| JournalError::Corrupt {
            path: path.clone(),
            offset: 0,
            reason,
        })?;
    let stub = Stub {
        salt,
        newest: *newest,
    };
    Ok(Found {
        stub,
        format: VERSION,
        unfinished_upgrade: false,
        torn: None,
    })
}

/// Completes an upgrade interrupted after its segments were renamed in: they must hold
/// what the old file does.
fn finish_upgrade(layout: &Layout, stub: Stub, messages: u64) -> Result<(), JournalError> {
    let old = upgrade::count_legacy(layout)?;
    if old != messages {
        return Err(JournalError::Incomplete {
            path: layout.stub(),
            reason: format!(
                "an upgrade was interrupted: the old journal holds {old} messages and the segments {messages}; move one of them away"
            ),
        });
    }
    layout.write_stub(stub).map_err(io_at(&layout.stub()))?;
    info!(journal = %layout.stub().display(), messages, "journal upgrade finished");
    Ok(())
}

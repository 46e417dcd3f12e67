//! The data directory: which file is where, and the steps that create them crash-safely.
//!
//! ```text
//! <dir>/LOCK                       held (flock) by the running server
//! <dir>/journal                    the stub: format 3, the salt, the newest segment
//! <dir>/segments/<first id>.seg    the records, oldest segment first (20-digit names)
//! ```
//!
//! A file is created under a temporary name, synced, renamed into place and its directory
//! synced, so a crash leaves it whole or absent; start-up removes what such a crash left.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::format::{Salt, Stub, segment_header};

/// The lock file inside the data directory.
pub(super) const LOCK_FILE: &str = "LOCK";
/// The stub (before format 3: the whole journal).
pub(super) const STUB_FILE: &str = "journal";
/// The directory of segments.
pub(super) const SEGMENTS_DIR: &str = "segments";
/// Where an upgrade from the single file writes its segments before they are renamed in.
pub(super) const UPGRADE_DIR: &str = "segments.new";
const SEGMENT_EXT: &str = ".seg";
const TMP_EXT: &str = ".tmp";

/// The paths inside one data directory.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    dir: PathBuf,
}

impl Layout {
    pub(super) fn new(dir: &Path) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn lock(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }

    pub(super) fn stub(&self) -> PathBuf {
        self.dir.join(STUB_FILE)
    }

    pub(super) fn segments(&self) -> PathBuf {
        self.dir.join(SEGMENTS_DIR)
    }

    pub(super) fn upgrade_dir(&self) -> PathBuf {
        self.dir.join(UPGRADE_DIR)
    }

    /// The segment whose first id is `first`.
    pub(super) fn segment(&self, first: u64) -> PathBuf {
        segment_path(&self.segments(), first)
    }

    /// Writes the stub, replacing what the file `journal` held (durably).
    pub(super) fn write_stub(&self, stub: Stub) -> io::Result<()> {
        write_atomically(&self.dir, STUB_FILE, &stub.encode())
    }
}

/// The segment in `dir` whose first id is `first`.
pub(super) fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}{SEGMENT_EXT}"))
}

/// The first id a segment's file name declares, if it is a segment's name.
pub(super) fn segment_first(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_EXT)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The segment files of a directory, oldest first, with their first ids; and the other
/// files in it.
pub(super) type Listing = (Vec<(u64, PathBuf)>, Vec<PathBuf>);

/// The segments in `dir`, oldest first, with their first ids; what a crash left half made
/// (temporary files) is removed. Other files are left alone and named in the returned list
/// of strangers.
pub(super) fn list_segments(dir: &Path) -> io::Result<Listing> {
    let mut segments = Vec::new();
    let mut strangers = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(first) = segment_first(&name) {
            segments.push((first, entry.path()));
        } else if name.ends_with(TMP_EXT) {
            fs::remove_file(entry.path())?;
        } else {
            strangers.push(entry.path());
        }
    }
    segments.sort();
    Ok((segments, strangers))
}

/// Creates segment `first` of `salt`'s journal in `dir`, durably, and opens it for
/// appending.
pub(super) fn create_segment(dir: &Path, salt: Salt, first: u64) -> io::Result<File> {
    let path = segment_path(dir, first);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    write_atomically(dir, &name, &segment_header(salt, first))?;
    OpenOptions::new().read(true).append(true).open(&path)
}

/// Writes `bytes` to `dir/name` through a temporary file, renamed into place, with the file
/// and the directory synced.
pub(super) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}{TMP_EXT}"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Makes the directory's entries (a file created, renamed or removed) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A file's identity: its device and inode.
pub(super) type Identity = (u64, u64);

/// The identity of the open file `f`.
pub(super) fn identity_of(f: &File) -> io::Result<Identity> {
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

/// Whether `path` still names the file whose identity is `ident`. Only a path that is
/// gone or names another file says no: other failures (a disk error) leave that to the
/// write that follows.
pub(super) fn still_names(path: &Path, ident: Identity) -> bool {
    match fs::metadata(path) {
        Ok(m) => (m.dev(), m.ino()) == ident,
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_by_first_id() {
        let dir = Path::new("/d");
        assert_eq!(
            segment_path(dir, 42),
            PathBuf::from("/d/00000000000000000042.seg")
        );
        assert_eq!(segment_first("00000000000000000042.seg"), Some(42));
        assert_eq!(segment_first("18446744073709551615.seg"), Some(u64::MAX));
        for bad in [
            "42.seg",
            "00000000000000000042.seg.tmp",
            "0000000000000000004x.seg",
            "99999999999999999999.seg",
        ] {
            assert_eq!(segment_first(bad), None, "{bad}");
        }
    }
}

//! Filesystems the disk-accident tests make and break: a small tmpfs that fills up, and an
//! ext4 image on a loop device that can be frozen or made to fail read-only.
//!
//! Mounting needs root, as CI runs. Without it (or without `mount`, `mkfs.ext4`,
//! `fsfreeze`, loop devices) these panic saying what is missing: a disk test never passes by
//! not running.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cmd`; panics with its output, and with what the test needs, if it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?} (disk tests need util-linux and e2fsprogs): {e}")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed (disk tests need root, as CI runs them): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory for a mount point, unique to this call, removed on drop.
fn mount_point(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("mboard-{what}-"))
        .tempdir()
        .expect("mount point")
}

/// A tmpfs of a fixed size, unmounted on drop.
pub struct Tmpfs {
    point: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `8m`).
    pub fn mount(size: &str) -> Tmpfs {
        let point = mount_point("tmpfs");
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "mboard-test"])
            .arg(point.path()));
        Tmpfs { point }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.point.path()
    }

    /// Writes a file at `name` until the filesystem is full; returns its path.
    pub fn fill(&self, name: &str) -> PathBuf {
        fill(&self.path().join(name))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount(self.point.path());
    }
}

/// Writes `path` until the disk is full (`ENOSPC`); returns it.
pub fn fill(path: &Path) -> PathBuf {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let block = vec![0xf1u8; 64 * 1024];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // What a partial block could not take, in smaller pieces.
    let mut small = vec![0xf1u8; 512];
    while f.write_all(&small).is_ok() {}
    small.clear();
    path.to_path_buf()
}

fn unmount(point: &Path) {
    // Lazily: a server that was killed may not have let go of its files yet.
    let _ = Command::new("umount").arg("-l").arg(point).status();
}

/// An ext4 filesystem in an image file on a loop device, mounted with
/// `errors=remount-ro`; thawed and unmounted on drop.
pub struct Ext4 {
    point: tempfile::TempDir,
    _image: tempfile::TempDir,
    device: String,
}

impl Ext4 {
    /// Makes and mounts an ext4 image of `megabytes`.
    pub fn mount(megabytes: u64) -> Ext4 {
        let image_dir = mount_point("image");
        let image = image_dir.path().join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(megabytes << 20))
            .expect("image");
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        let point = mount_point("ext4");
        run(Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(&image)
            .arg(point.path()));
        let source = run(Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(point.path()));
        let device = source
            .trim()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(
            device.starts_with("loop"),
            "not on a loop device: {source:?}"
        );
        Ext4 {
            point,
            _image: image_dir,
            device,
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.point.path()
    }

    /// Stops every write to it (`fsfreeze -f`), a stalled disk, until the guard is
    /// dropped or [`Frozen::thaw`]. Take the guard after starting the server: it is
    /// dropped before the server then, so a failing test thaws before it waits for a
    /// server whose stuck write cannot end while the disk is frozen.
    pub fn freeze(&self) -> Frozen<'_> {
        run(Command::new("fsfreeze").arg("-f").arg(self.path()));
        Frozen { fs: self }
    }

    /// Lets writes through again.
    fn thaw(&self) {
        // Thawing what is not frozen fails, harmlessly: drop thaws whatever the state.
        let _ = Command::new("fsfreeze")
            .arg("-u")
            .arg(self.path())
            .stderr(std::process::Stdio::null())
            .status();
    }

    /// Makes ext4 report an error, which with `errors=remount-ro` turns it read-only, as
    /// a failing disk does.
    pub fn fail_read_only(&self) {
        let trigger = format!("/sys/fs/ext4/{}/trigger_fs_error", self.device);
        std::fs::write(&trigger, "mboard disk test\n")
            .unwrap_or_else(|e| panic!("cannot write {trigger} (needs root): {e}"));
        let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
        let point = self.path().display().to_string();
        let line = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(point.as_str()))
            .unwrap_or_default();
        assert!(
            line.contains("emergency_ro")
                || line
                    .split_whitespace()
                    .nth(3)
                    .is_some_and(|o| o.starts_with("ro")),
            "ext4 did not turn read-only: {line}"
        );
    }
}

/// A frozen [`Ext4`], thawed on drop.
pub struct Frozen<'a> {
    fs: &'a Ext4,
}

impl Frozen<'_> {
    /// Lets writes through again.
    pub fn thaw(self) {}
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.fs.thaw();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        self.thaw();
        unmount(self.point.path());
    }
}

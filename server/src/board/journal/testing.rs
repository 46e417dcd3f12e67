//! Helpers the journal's tests share: a scratch data directory and quick publishes.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use mboard_protocol::{Message, MessageId};

use super::layout::{SEGMENTS_DIR, STUB_FILE, segment_path};
use super::recovery::Recovery;
use super::{Fsync, Journal, JournalConfig, JournalError};
use crate::board::{Board, Retention, TokenLimits};

/// A fresh directory under the system temp dir, removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mboard-journal-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    pub(super) fn config(&self, fsync: Fsync) -> JournalConfig {
        JournalConfig {
            fsync,
            ..JournalConfig::new(self.0.clone())
        }
    }

    /// The file `journal`: the stub, or the whole journal of an older format.
    pub(super) fn journal(&self) -> PathBuf {
        self.0.join(STUB_FILE)
    }

    /// The segment whose first id is `first`.
    pub(super) fn segment(&self, first: u64) -> PathBuf {
        segment_path(&self.0.join(SEGMENTS_DIR), first)
    }

    /// The segments' first ids, oldest first.
    pub(super) fn segments(&self) -> Vec<u64> {
        let (listed, _) =
            super::layout::list_segments(&self.0.join(SEGMENTS_DIR)).expect("segments");
        listed.into_iter().map(|(first, _)| first).collect()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Opens the journal in `dir` with the default token limits, keeping everything.
pub(super) fn open(dir: &TempDir, fsync: Fsync) -> Result<(Journal, Recovery), JournalError> {
    Journal::open(
        &dir.config(fsync),
        TokenLimits::default(),
        Retention::UNLIMITED,
    )
}

/// Opens the journal in `dir` with `segment_size` and `retention`.
pub(super) fn open_with(
    dir: &TempDir,
    segment_size: u64,
    retention: Retention,
) -> Result<(Journal, Recovery), JournalError> {
    let config = JournalConfig {
        segment_size,
        ..dir.config(Fsync::Always)
    };
    Journal::open(&config, TokenLimits::default(), retention)
}

pub(super) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

pub(super) fn from(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 1, 2, 3], port))
}

/// Publishes `texts` and returns the ids.
pub(super) fn publish_all(j: &Journal, texts: &[&[u8]]) -> Vec<MessageId> {
    runtime().block_on(async {
        let mut ids = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            ids.push(
                j.publish(from(i as u16), Bytes::copy_from_slice(t))
                    .await
                    .expect("publish"),
            );
        }
        ids
    })
}

/// Publishes `n` texts `"message <i>"` padded to `len` bytes; returns the ids.
pub(super) fn publish_n(j: &Journal, n: usize, len: usize) -> Vec<MessageId> {
    let texts: Vec<Vec<u8>> = (0..n).map(|i| text(i, len)).collect();
    let refs: Vec<&[u8]> = texts.iter().map(Vec::as_slice).collect();
    publish_all(j, &refs)
}

/// `"message <i>"` padded with dots to `len` bytes.
pub(super) fn text(i: usize, len: usize) -> Vec<u8> {
    let mut t = format!("message {i}").into_bytes();
    t.resize(len.max(t.len()), b'.');
    t
}

pub(super) fn all(j: &Journal) -> Vec<Message> {
    j.messages(&j.span(0).expect("span")).expect("read")
}

/// The ids kept, oldest first.
pub(super) fn ids(j: &Journal) -> Vec<u64> {
    j.span(0).expect("span").ids().map(|id| id.0).collect()
}

pub(super) const TEXTS: [&[u8]; 4] = [b"Hello world!", b"a:b:c", b"\x00\xff binary \n", b"last"];

/// A journal in `dir` holding [`TEXTS`], closed again; returns its segment's length.
pub(super) fn published(dir: &TempDir) -> u64 {
    let (j, _) = open(dir, Fsync::Always).expect("open");
    publish_all(&j, &TEXTS);
    drop(j);
    fs::metadata(dir.segment(0)).expect("meta").len()
}

//! Helpers the journal's tests share: a scratch data directory and quick publishes.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use mboard_protocol::{Message, MessageId};

use super::{Fsync, JOURNAL_FILE, Journal, JournalConfig, JournalError, Recovery};
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

    pub(super) fn journal(&self) -> PathBuf {
        self.0.join(JOURNAL_FILE)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Opens the journal in `dir` with the default token limits.
pub(super) fn open(dir: &TempDir, fsync: Fsync) -> Result<(Journal, Recovery), JournalError> {
    Journal::open(
        &dir.config(fsync),
        TokenLimits::default(),
        Retention::UNLIMITED,
    )
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

pub(super) fn all(j: &Journal) -> Vec<Message> {
    j.messages(&j.span(0).expect("span")).expect("read")
}

pub(super) const TEXTS: [&[u8]; 4] = [b"Hello world!", b"a:b:c", b"\x00\xff binary \n", b"last"];

/// A journal in `dir` holding [`TEXTS`], closed again; returns the file's length.
pub(super) fn published(dir: &TempDir) -> u64 {
    let (j, _) = open(dir, Fsync::Always).expect("open");
    publish_all(&j, &TEXTS);
    fs::metadata(dir.journal()).expect("meta").len()
}

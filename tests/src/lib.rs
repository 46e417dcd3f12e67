//! Support for the end-to-end tests: servers on port 0, raw UDP peers, the real binaries,
//! metrics scrapes, and a fault-injecting proxy.

pub mod certs;
pub mod classic;
pub mod disk;
pub mod gate;
pub mod nats;
pub mod nginx;
mod peer;
mod process;
pub mod proxy;
pub mod redis;
mod scrape;
mod server;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

pub use peer::{Peer, Upload, board_contents};
pub use process::{CliOutput, CliProcess, ServerProcess, binary, cli, cli_at};
pub use scrape::{PROMETHEUS_ACCEPT, Scrape, http, http_accepting, scrape};
pub use server::{TestServer, TestServerBuilder};

/// A data directory for a server: a path that does not exist yet, so that the server
/// creates it as it would in production, inside a fresh temp dir removed on drop.
pub struct DataDir {
    // Held for its removal on drop.
    _root: tempfile::TempDir,
    path: PathBuf,
}

impl DataDir {
    /// A new one, unique to this call.
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("mboard-")
            .tempdir()
            .expect("temp dir");
        let path = root.path().join("data");
        DataDir { _root: root, path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory as a command-line argument.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("temp dir paths are UTF-8")
    }

    /// The file `journal` in it: the stub naming the journal's segments (before format 3,
    /// the whole journal).
    pub fn journal(&self) -> PathBuf {
        self.path.join("journal")
    }

    /// The segment file whose first message id is `first`.
    pub fn segment(&self, first: u64) -> PathBuf {
        self.path.join("segments").join(format!("{first:020}.seg"))
    }

    /// The first ids of the segment files there are, oldest first.
    pub fn segments(&self) -> Vec<u64> {
        let mut firsts: Vec<u64> = std::fs::read_dir(self.path.join("segments"))
            .map(|entries| {
                entries
                    .filter_map(|e| {
                        e.ok()?
                            .file_name()
                            .to_str()?
                            .strip_suffix(".seg")?
                            .parse()
                            .ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        firsts.sort_unstable();
        firsts
    }
}

impl Default for DataDir {
    fn default() -> Self {
        Self::new()
    }
}

/// A loopback address where nothing answers: a UDP port that was free a moment ago. (Another
/// test may bind it again meanwhile; the kernel picks ports at random, so that is rare.)
pub fn vacant_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
}

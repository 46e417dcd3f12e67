//! The kernel's count of datagrams it dropped for the board's socket, kept fresh for the
//! receive loops: they shed load only while it rises (`overload`).
//!
//! Reading it means reading `/proc/net/udp` (Linux), which the kernel writes out for every
//! UDP socket of the machine, so it is read on the blocking pool (never on a receive
//! loop's thread), once a second while every loop keeps up, and every 50 ms — once a
//! window — while one is behind.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Notify;

use crate::metrics::{drops_of, socket_inode};

/// How often the count is read while every loop keeps up.
const CALM: Duration = Duration::from_secs(1);
/// How often while a loop is behind.
const WATCHFUL: Duration = Duration::from_millis(50);
/// What `total` holds while the count is unknown.
const UNKNOWN: u64 = u64::MAX;

/// The last reading, shared by the loops and the task that takes it.
#[derive(Debug)]
pub(crate) struct DropWatch {
    total: AtomicU64,
    wanted: AtomicBool,
    wake: Notify,
}

impl DropWatch {
    /// A watch with no reading yet.
    pub(crate) fn new() -> Self {
        DropWatch {
            total: AtomicU64::new(UNKNOWN),
            wanted: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// The count as last read; `None` where it cannot be read (or before the first read).
    pub(crate) fn get(&self) -> Option<u64> {
        Some(self.total.load(Relaxed)).filter(|&n| n != UNKNOWN)
    }

    /// A loop is behind: read often until none says so.
    pub(crate) fn want(&self) {
        // A load first: while behind, every datagram asks, and a store each would bounce
        // the cache line between the loops.
        if !self.wanted.load(Relaxed) && !self.wanted.swap(true, Relaxed) {
            self.wake.notify_one();
        }
    }

    /// Reads the count for `socket` until the server stops.
    pub(crate) async fn run(self: Arc<Self>, socket: Arc<UdpSocket>) -> io::Result<()> {
        let inode = socket_inode(&socket);
        loop {
            let total = match inode.clone() {
                Some(inode) => tokio::task::spawn_blocking(move || drops_of(&inode))
                    .await
                    .ok()
                    .flatten(),
                None => None,
            }
            .unwrap_or(UNKNOWN);
            self.total.store(total, Relaxed);
            if self.wanted.swap(false, Relaxed) {
                tokio::time::sleep(WATCHFUL).await;
            } else {
                tokio::select! {
                    () = tokio::time::sleep(CALM) => {}
                    () = self.wake.notified() => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_count_is_read_at_once_and_again_soon_when_wanted() {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let watch = Arc::new(DropWatch::new());
        assert_eq!(watch.get(), None, "nothing read yet");
        let task = tokio::spawn(watch.clone().run(socket.clone()));
        let read = || async {
            for _ in 0..200 {
                if watch.get().is_some() {
                    return watch.get();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None
        };
        if cfg!(target_os = "linux") {
            assert_eq!(read().await, Some(0), "a quiet socket dropped nothing");
            // Overflow its queue; asked for, the new count arrives well before a second.
            let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            let to = socket.local_addr().expect("addr");
            for _ in 0..20_000 {
                let _ = sender.send_to(&[0u8; 1_000], to);
            }
            let asked = std::time::Instant::now();
            watch.want();
            while watch.get() == Some(0) && asked.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(watch.get().is_some_and(|n| n > 0), "{:?}", watch.get());
        }
        task.abort();
    }
}

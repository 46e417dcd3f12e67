//! The kernel's view of the board's socket, kept fresh for the receive loops: how many
//! datagrams it dropped because the queue was full, and whether the queue is crowded. The
//! loops shed load only while one of them says harm is being done (`overload`).
//!
//! Reading it means reading `/proc/net/udp` (Linux), which the kernel writes out for every
//! UDP socket of the machine, so it is read on a thread of its own (never on a receive
//! loop's), once a second while every loop keeps up, and every 50 ms — once a window —
//! while one is behind. A thread rather than a task: the moments it matters are those when
//! the receive loops keep the runtime's workers busiest, and the system schedules a thread
//! however busy they are.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::metrics::{KernelQueue, queue_of, socket_inode};
use crate::overload::QueueState;

/// How often the queue is read while every loop keeps up.
const CALM: Duration = Duration::from_secs(1);
/// How often while a loop is behind.
const WATCHFUL: Duration = Duration::from_millis(50);
/// What `drops` holds while the count is unknown.
const UNKNOWN: u64 = u64::MAX;
/// A queue holding more than this part of the receive buffer is crowded. A full queue
/// drops at random, an honest client's datagram as likely as a flood's, but long before
/// that every datagram waits behind the queue: with the 4 MiB buffer, a quarter is some
/// 2,500 small datagrams, tens of milliseconds of a release build's work and more than a
/// hundred of a debug build's on a busy machine — as long as a client's first resend. A
/// closed-loop client with hundreds of requests in flight fills less than a tenth.
const CROWDED_DIVISOR: u64 = 4;

/// The last reading, shared by the loops and the thread that takes it.
#[derive(Debug)]
pub(crate) struct QueueWatch {
    drops: AtomicU64,
    crowded: AtomicBool,
    wanted: AtomicBool,
    stopped: AtomicBool,
    /// The thread that reads, to wake when a loop wants a reading soon.
    reader: OnceLock<Thread>,
}

impl QueueWatch {
    /// A watch with no reading yet.
    pub(crate) fn new() -> Self {
        QueueWatch {
            drops: AtomicU64::new(UNKNOWN),
            crowded: AtomicBool::new(false),
            wanted: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            reader: OnceLock::new(),
        }
    }

    /// The queue as last read (unknown drops where they cannot be read, or before the
    /// first read).
    pub(crate) fn get(&self) -> QueueState {
        QueueState {
            drops: Some(self.drops.load(Relaxed)).filter(|&n| n != UNKNOWN),
            crowded: self.crowded.load(Relaxed),
        }
    }

    /// A loop is behind: read often until none says so.
    pub(crate) fn want(&self) {
        // A load first: while behind, every datagram asks, and a store each would bounce
        // the cache line between the loops.
        if !self.wanted.load(Relaxed)
            && !self.wanted.swap(true, Relaxed)
            && let Some(reader) = self.reader.get()
        {
            reader.unpark();
        }
    }

    /// Starts reading the queue of `socket` on a thread of its own, until the returned
    /// [`Reading`] is dropped. Where the queue cannot be read, nothing starts and the
    /// drops stay unknown.
    pub(crate) fn start(self: &Arc<Self>, socket: &UdpSocket) -> io::Result<Reading> {
        // The size the kernel holds the queue against: on Linux twice what was asked for,
        // as `queued` counts the bookkeeping too.
        let buffer = socket2::SockRef::from(socket).recv_buffer_size()? as u64;
        if let Some(inode) = socket_inode(socket) {
            let watch = self.clone();
            // Not joined: it ends by itself once the reading is dropped.
            let thread = std::thread::Builder::new()
                .name("mboard-queue".into())
                .spawn(move || watch.read_until_stopped(&inode, buffer))?;
            // The one setter: a watch is started once.
            let _ = self.reader.set(thread.thread().clone());
        }
        Ok(Reading {
            watch: self.clone(),
        })
    }

    fn read_until_stopped(&self, inode: &str, buffer: u64) {
        while !self.stopped.load(Relaxed) {
            self.store(queue_of(inode), buffer);
            if self.wanted.swap(false, Relaxed) {
                // Not woken early: loops that want a reading ask at every datagram.
                std::thread::sleep(WATCHFUL);
            } else {
                // Woken early by the first loop that wants one.
                std::thread::park_timeout(CALM);
            }
        }
    }

    fn store(&self, queue: Option<KernelQueue>, buffer: u64) {
        let (drops, crowded) = queue.map_or((UNKNOWN, false), |q| {
            (q.drops, q.queued > buffer / CROWDED_DIVISOR)
        });
        self.drops.store(drops, Relaxed);
        self.crowded.store(crowded, Relaxed);
    }
}

/// The reading thread of a [`QueueWatch`], stopped when this is dropped.
#[derive(Debug)]
pub(crate) struct Reading {
    watch: Arc<QueueWatch>,
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.watch.stopped.store(true, Relaxed);
        // Woken from its pause; a read under way ends by itself, and nobody waits for it.
        if let Some(reader) = self.watch.reader.get() {
            reader.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits up to 5 s for the watch to read what `fits`.
    async fn until(watch: &QueueWatch, fits: impl Fn(QueueState) -> bool) -> QueueState {
        let asked = std::time::Instant::now();
        watch.want();
        while !fits(watch.get()) && asked.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        watch.get()
    }

    #[tokio::test]
    async fn the_queue_is_read_at_once_and_again_soon_when_wanted() {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let watch = Arc::new(QueueWatch::new());
        let unknown = QueueState {
            drops: None,
            crowded: false,
        };
        assert_eq!(watch.get(), unknown, "nothing read yet");
        let reading = watch.start(&socket).expect("start");
        if cfg!(target_os = "linux") {
            let quiet = QueueState {
                drops: Some(0),
                crowded: false,
            };
            assert_eq!(until(&watch, |q| q.drops.is_some()).await, quiet);
            // Overflow its queue; asked for, the new count arrives well before a second.
            let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            let to = socket.local_addr().expect("addr");
            for _ in 0..20_000 {
                let _ = sender.send_to(&[0u8; 1_000], to);
            }
            let full = until(&watch, |q| q.drops.is_some_and(|n| n > 0)).await;
            assert!(
                full.drops.is_some_and(|n| n > 0) && full.crowded,
                "{full:?}"
            );
            // Read empty, it is no longer crowded; what it dropped stays counted.
            let mut buf = [0u8; 2_048];
            while tokio::time::timeout(Duration::from_millis(100), socket.readable())
                .await
                .is_ok()
            {
                while socket.try_recv_from(&mut buf).is_ok() {}
            }
            let drained = until(&watch, |q| !q.crowded).await;
            // (The reading above may have been taken while the datagrams still came.)
            assert!(
                !drained.crowded && drained.drops >= full.drops,
                "{drained:?} after {full:?}"
            );
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(watch.get(), unknown, "nothing to read here");
        }
        drop(reading);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_queue_can_be_crowded_before_anything_is_dropped() {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let inode = socket_inode(&socket).expect("inode");
        let watch = Arc::new(QueueWatch::new());
        let _reading = watch.start(&socket).expect("start");
        let buffer = socket2::SockRef::from(&*socket)
            .recv_buffer_size()
            .expect("size") as u64;
        // Half the buffer, read back from the kernel as it fills.
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = socket.local_addr().expect("addr");
        while queue_of(&inode).expect("ours").queued <= buffer / 2 {
            for _ in 0..10 {
                sender.send_to(&[0u8; 100], to).expect("send");
            }
        }
        let crowded = until(&watch, |q| q.crowded).await;
        assert_eq!(
            crowded,
            QueueState {
                drops: Some(0),
                crowded: true
            }
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn dropping_the_reading_stops_its_thread() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let watch = Arc::new(QueueWatch::new());
        let reading = watch.start(&socket).expect("start");
        assert_eq!(
            Arc::strong_count(&watch),
            3,
            "the thread's and the reading's"
        );
        drop(reading);
        // Woken from its pause, it sees the flag and lets its clone go.
        let asked = std::time::Instant::now();
        while Arc::strong_count(&watch) > 1 && asked.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(Arc::strong_count(&watch), 1);
    }
}

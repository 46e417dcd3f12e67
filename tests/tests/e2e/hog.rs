//! A hogging host: sessions opened from many ports of one loopback address (127.0.0.2 and
//! up, so the server sees another host than the victim on 127.0.0.1), each given its
//! first block so that it is claimed, then kept alive by sending that block again.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mboard_protocol::{Expect, Response, SessionId};

/// No keeper outlives this, even if the test that started it panics before stopping it.
const KEEP_MAX: Duration = Duration::from_secs(300);

/// A session held, and the datagram that keeps it alive (its first block, again).
pub(crate) struct Held {
    socket: usize,
    pub(crate) sid: SessionId,
    keepalive: Vec<u8>,
    /// Held by [`Hog::hold_memory`].
    large: bool,
}

/// The sessions one host holds.
pub(crate) struct Hog {
    server: SocketAddr,
    ip: Ipv4Addr,
    sockets: Vec<UdpSocket>,
    pub(crate) held: Vec<Held>,
    /// Opens or first blocks answered `4:busy`.
    pub(crate) refused: usize,
}

impl Hog {
    pub(crate) fn new(server: SocketAddr, ip: Ipv4Addr) -> Self {
        Hog {
            server,
            ip,
            sockets: Vec::new(),
            held: Vec::new(),
            refused: 0,
        }
    }

    fn socket(&mut self) -> usize {
        let s = UdpSocket::bind((self.ip, 0)).expect("bind a hog port");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        self.sockets.push(s);
        self.sockets.len() - 1
    }

    /// The session-table lockout: `n` uploads of 3 bytes in blocks of 2 (`a:3:2`), 63 on
    /// each new port (one fewer than the per-source limit), each with its first block.
    /// Returns the sessions held in all.
    pub(crate) fn hold_table(&mut self, n: usize) -> usize {
        self.hold_many(n, 3, 2)
    }

    /// `n` uploads of `size` bytes in blocks of `block_size`, 63 on each new port, each
    /// with its first block. Returns the sessions held in all.
    pub(crate) fn hold_many(&mut self, n: usize, size: u64, block_size: u64) -> usize {
        const PER_PORT: usize = 63;
        const THREADS: usize = 3;
        let first = self.sockets.len();
        for _ in 0..n.div_ceil(PER_PORT) {
            self.socket();
        }
        let server = self.server;
        // A few threads, each with its own ports: one socket at a time keeps the server's
        // receive queue from overflowing.
        let chunks: Vec<Vec<usize>> = (0..THREADS)
            .map(|t| (first + t..self.sockets.len()).step_by(THREADS).collect())
            .collect();
        let sockets = &self.sockets;
        let results: Vec<(Vec<Held>, usize)> = std::thread::scope(|s| {
            let workers: Vec<_> = chunks
                .into_iter()
                .map(|indices| {
                    s.spawn(move || {
                        let (mut held, mut refused) = (Vec::new(), 0);
                        for i in indices {
                            let count = PER_PORT.min(n - (i - first) * PER_PORT);
                            let open = format!("a:{size}:{block_size}").into_bytes();
                            let opens = vec![open; count];
                            let (sids, busy) = open_all(&sockets[i], server, &opens);
                            refused += busy;
                            let first = block_size.min(size) as usize;
                            let (mine, busy) =
                                claim_all(&sockets[i], server, i, &sids, first, false);
                            held.extend(mine);
                            refused += busy;
                        }
                        (held, refused)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("hog thread"))
                .collect()
        });
        for (held, refused) in results {
            self.held.extend(held);
            self.refused += refused;
        }
        self.held.len()
    }

    /// The memory lockout: an upload of each size in blocks of 65,000, each with its
    /// first block, 63 on a port (the first port a new one). Returns the sessions held in
    /// all.
    pub(crate) fn hold_memory(&mut self, sizes: &[u64]) -> usize {
        for (k, &size) in sizes.iter().enumerate() {
            if k % 63 == 0 {
                self.socket();
            }
            let i = self.sockets.len() - 1;
            let open = format!("a:{size}:65000").into_bytes();
            let (sids, busy) = open_all(&self.sockets[i], self.server, &[open]);
            let first = size.min(65_000) as usize;
            let (held, refused) = claim_all(&self.sockets[i], self.server, i, &sids, first, true);
            self.held.extend(held);
            self.refused += busy + refused;
        }
        self.held.len()
    }

    /// Sends every held session's keepalive once, spread over `over`.
    fn keep_alive(&self, over: Duration, stop: &AtomicBool) {
        let started = Instant::now();
        let n = self.held.len().max(1) as u32;
        for (k, h) in self.held.iter().enumerate() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let _ = self.sockets[h.socket].send_to(&h.keepalive, self.server);
            if k % 256 == 255 {
                let due = started + over * (k as u32 + 1) / n;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
    }

    /// Keeps every session alive, a round every `every`, until [`Keeper::stop`].
    pub(crate) fn keep(self, every: Duration) -> Keeper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !flag.load(Ordering::Relaxed) && started.elapsed() < KEEP_MAX {
                let round = Instant::now();
                self.keep_alive(every / 2, &flag);
                while round.elapsed() < every && !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            self
        });
        Keeper {
            stop,
            thread: Some(thread),
        }
    }

    /// Asks each session held by [`Hog::hold_memory`] (with a commit) and returns how
    /// many answer `expired`.
    pub(crate) fn expired(&self) -> usize {
        for s in &self.sockets {
            drain(s);
        }
        let mut expired = 0;
        for h in self.held.iter().filter(|h| h.large) {
            let s = &self.sockets[h.socket];
            let _ = s.send_to(format!("c:{}", h.sid).as_bytes(), self.server);
            let mut buf = [0u8; 256];
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                expired += usize::from(buf[..n].starts_with(b"4:expired"));
            }
        }
        expired
    }
}

/// A thread keeping a hog's sessions alive.
pub(crate) struct Keeper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Hog>>,
}

impl Keeper {
    /// Stops keeping, and hands the hog back.
    pub(crate) fn stop(mut self) -> Hog {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("running");
        thread.join().expect("keeper")
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn drain(s: &UdpSocket) {
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 2048];
    while s.recv_from(&mut buf).is_ok() {}
    s.set_nonblocking(false).expect("blocking");
}

/// Receives up to `n` replies, each within the socket's timeout.
fn replies(s: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    let mut got = Vec::new();
    while got.len() < n {
        match s.recv_from(&mut buf) {
            Ok((len, _)) => got.push(buf[..len].to_vec()),
            Err(_) => break,
        }
    }
    got
}

/// At most this many datagrams of one socket in flight: three threads' worth must fit in
/// the server's receive queue (208 KB by default), blocks of 1,400 bytes included.
const WINDOW: usize = 16;

/// Sends the opens, a window at a time; returns the sessions opened and how many were
/// busy (or unanswered).
fn open_all(s: &UdpSocket, server: SocketAddr, opens: &[Vec<u8>]) -> (Vec<SessionId>, usize) {
    let (mut sids, mut busy) = (Vec::new(), 0);
    for window in opens.chunks(WINDOW) {
        for open in window {
            s.send_to(open, server).expect("send open");
        }
        let got = replies(s, window.len());
        busy += window.len() - got.len();
        for r in got {
            match Response::parse(Bytes::from(r), Expect::Opened) {
                Ok(Response::Opened { sid, .. }) => sids.push(sid),
                _ => busy += 1,
            }
        }
    }
    (sids, busy)
}

/// Sends each session its first block of `len` bytes, a window at a time; returns those
/// acknowledged and how many were refused (or unanswered).
fn claim_all(
    s: &UdpSocket,
    server: SocketAddr,
    socket: usize,
    sids: &[SessionId],
    len: usize,
    large: bool,
) -> (Vec<Held>, usize) {
    let (mut held, mut refused) = (Vec::new(), 0);
    for window in sids.chunks(WINDOW) {
        let blocks: Vec<(SessionId, Vec<u8>)> = window
            .iter()
            .map(|&sid| {
                let mut pdu = format!("b:{sid}:0:").into_bytes();
                pdu.resize(pdu.len() + len, b'h');
                (sid, pdu)
            })
            .collect();
        for (_, pdu) in &blocks {
            s.send_to(pdu, server).expect("send block");
        }
        let acked: Vec<SessionId> = replies(s, blocks.len())
            .into_iter()
            .filter_map(|r| match Response::parse(Bytes::from(r), Expect::Acked) {
                Ok(Response::Acked { sid, .. }) => Some(sid),
                _ => None,
            })
            .collect();
        refused += blocks.len() - acked.len();
        held.extend(
            blocks
                .into_iter()
                .filter(|(sid, _)| acked.contains(sid))
                .map(|(sid, keepalive)| Held {
                    socket,
                    sid,
                    keepalive,
                    large,
                }),
        );
    }
    (held, refused)
}

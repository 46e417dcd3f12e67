//! A classic board server, behaving on the wire as the seed's reference implementation
//! does: it knows `1:` `2:` `3:` and nothing else (no sessions, no `4:`), answers errors
//! and empty lists with bare codes (`2`, `0`), writes timestamps with one to seven
//! decimals, and crashes — stops serving, its port closed — on a request it does not know.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the server saw.
#[derive(Debug, Default)]
struct Log {
    requests: Vec<Vec<u8>>,
    crashed_on: Option<Vec<u8>>,
}

/// How it answers.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Board,
    /// The same datagram to every request.
    Fixed(&'static [u8]),
}

/// A classic server on 127.0.0.1:0, on a thread of its own; stopped on drop.
pub struct ClassicServer {
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One stored message.
struct Stored {
    time: String,
    from: SocketAddr,
    text: Vec<u8>,
}

impl ClassicServer {
    /// A classic board, empty.
    pub fn start() -> Self {
        Self::spawn(Mode::Board)
    }

    /// A server that answers every datagram with `reply` (to test what the client makes of
    /// replies it cannot read).
    pub fn answering(reply: &'static [u8]) -> Self {
        Self::spawn(Mode::Fixed(reply))
    }

    fn spawn(mode: Mode) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind classic server");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || serve(socket, mode, &l, &s));
        ClassicServer {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// Every request datagram it received, in order.
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.log.lock().expect("log").requests.clone()
    }

    /// The request that crashed it, if one did.
    pub fn crashed_on(&self) -> Option<Vec<u8>> {
        self.log.lock().expect("log").crashed_on.clone()
    }
}

impl Drop for ClassicServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: UdpSocket, mode: Mode, log: &Mutex<Log>, stop: &AtomicBool) {
    let mut board: Vec<Stored> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let request = buf[..n].to_vec();
        log.lock().expect("log").requests.push(request.clone());
        let reply = match mode {
            Mode::Fixed(reply) => Some(reply.to_vec()),
            Mode::Board => answer(&mut board, &request, from),
        };
        match reply {
            Some(reply) => {
                let _ = socket.send_to(&reply, from);
            }
            None => {
                // The reference implementation dies here; its port closes with it.
                log.lock().expect("log").crashed_on = Some(request);
                return;
            }
        }
    }
}

/// The reply to one request, or `None` for one the classic server does not know.
fn answer(board: &mut Vec<Stored>, request: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    let (code, payload) = match request {
        [code, b':', payload @ ..] => (*code, payload),
        _ => return None,
    };
    let number = || std::str::from_utf8(payload).ok()?.parse::<usize>().ok();
    Some(match code {
        b'1' if payload.is_empty() => b"1".to_vec(),
        b'1' => {
            let time = classic_time(board.len());
            board.push(Stored {
                time,
                from,
                text: payload.to_vec(),
            });
            format!("0:{}", board.len() - 1).into_bytes()
        }
        b'2' => match number() {
            None => b"1".to_vec(),
            Some(n) => {
                let first = if n == 0 {
                    0
                } else {
                    board.len().saturating_sub(n)
                };
                let ids: Vec<String> = (first..board.len()).map(|i| i.to_string()).collect();
                // An empty list is a bare `0`.
                if ids.is_empty() {
                    b"0".to_vec()
                } else {
                    format!("0:{}", ids.join(":")).into_bytes()
                }
            }
        },
        b'3' => match number().and_then(|i| board.get(i)) {
            None if number().is_none() => b"1".to_vec(),
            None => b"2".to_vec(),
            Some(m) => {
                let mut reply =
                    format!("0:{}:{}:{}:", m.time, m.from.ip(), m.from.port()).into_bytes();
                reply.extend_from_slice(&m.text);
                reply
            }
        },
        _ => return None,
    })
}

/// A timestamp as a float's shortest form prints it: message `i` gets `i % 7 + 1`
/// decimals (`1795301705.0`, `1795301705.09`, … `1795301705.0912345`).
fn classic_time(i: usize) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let fraction = format!("{:07}", now.subsec_nanos() / 100);
    format!("{}.{}", now.as_secs(), &fraction[..i % 7 + 1])
}

//! The sockets of one operation, and which of the server's addresses answers.
//!
//! A name may resolve to several addresses (`localhost` → `::1` and `127.0.0.1`), and the
//! server may listen on only one. Until one answers, the link tries them in the Happy
//! Eyeballs manner (RFC 8305): the first at once, the next when every address tried so far
//! has refused or after [`STAGGER`] without a reply, each on its own connected socket,
//! resending to every one tried. The first address that answers is the server from then on.
//!
//! Sockets are connected, so the kernel drops datagrams from anyone else and reports ICMP
//! "port unreachable" as `ECONNREFUSED`, which the link passes up as [`Event::Refused`].

use std::io;
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::target::Target;

/// How long an address gets to answer before the next one is tried as well (RFC 8305's
/// recommended connection attempt delay).
pub(crate) const STAGGER: Duration = Duration::from_millis(250);

/// How often the sockets are looked at while several addresses are being tried. Only the
/// first exchange with a many-address name polls; everything after it blocks on one socket.
const POLL_STEP: Duration = Duration::from_millis(1);

/// What waiting on the link produced.
#[derive(Debug)]
pub(crate) enum Event {
    /// A datagram from the server.
    Datagram(Bytes),
    /// Every address tried refused a datagram.
    Refused,
    /// Nothing until the time given.
    Idle,
}

struct Candidate {
    addr: SocketAddr,
    socket: UdpSocket,
    refused: bool,
}

pub(crate) struct Link {
    target: Target,
    chosen: Option<SocketAddr>,
    tried: Vec<Candidate>,
    /// Index in `target.addrs` of the next address to try.
    next: usize,
    last_tried_at: Instant,
    /// The datagram to send to an address as it joins the race.
    last_sent: Option<Bytes>,
    /// A send reported a refusal of an earlier datagram; the next wait returns it.
    refusal_pending: bool,
    buf: Vec<u8>,
}

/// A new ephemeral socket connected to `server`.
fn connect(server: SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(server)?;
    Ok(socket)
}

/// What an error on a connected UDP socket means here.
enum Failure {
    /// ICMP port unreachable (Windows reports it as a reset).
    Refused,
    /// Try again: a signal, or nothing there yet.
    Again,
    /// The socket itself failed.
    Fatal,
}

fn classify(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => Failure::Refused,
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            Failure::Again
        }
        _ => Failure::Fatal,
    }
}

impl Link {
    /// A link to `target`, with the sockets of a first operation.
    pub(crate) fn new(target: Target) -> io::Result<Self> {
        Self::open(target, None)
    }

    fn open(target: Target, chosen: Option<SocketAddr>) -> io::Result<Self> {
        let mut link = Link {
            target,
            chosen,
            tried: Vec::new(),
            next: 0,
            last_tried_at: Instant::now(),
            last_sent: None,
            refusal_pending: false,
            buf: vec![0; 65_536],
        };
        link.fresh()?;
        Ok(link)
    }

    /// A second link to the same server, with sockets of its own (an address already
    /// chosen stays chosen).
    pub(crate) fn sibling(&self) -> io::Result<Self> {
        Self::open(self.target.clone(), self.chosen)
    }

    /// New sockets (new source ports) for a new operation, where no reply to an earlier
    /// one can arrive.
    pub(crate) fn fresh(&mut self) -> io::Result<()> {
        self.tried.clear();
        self.last_sent = None;
        self.refusal_pending = false;
        match self.chosen {
            Some(addr) => self.try_addr(addr).map(|_| ()),
            None => {
                self.next = 0;
                self.try_next()
            }
        }
    }

    /// Adds the next untried address; one that cannot even get a socket (no IPv6 here,
    /// say) is skipped while others remain.
    fn try_next(&mut self) -> io::Result<()> {
        loop {
            let addr = self.target.addrs[self.next];
            self.next += 1;
            match self.try_addr(addr) {
                Ok(()) => return Ok(()),
                Err(_) if self.next < self.target.addrs.len() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn try_addr(&mut self, addr: SocketAddr) -> io::Result<()> {
        let socket = connect(addr)?;
        let racing = self.chosen.is_none() && self.target.addrs.len() > 1;
        socket.set_nonblocking(racing)?;
        if let Some(pdu) = &self.last_sent {
            // Its first datagram; a refusal shows up on the next read.
            let _ = socket.send(pdu);
        }
        self.tried.push(Candidate {
            addr,
            socket,
            refused: false,
        });
        self.last_tried_at = Instant::now();
        Ok(())
    }

    fn racing(&self) -> bool {
        self.chosen.is_none() && self.target.addrs.len() > 1
    }

    fn untried(&self) -> bool {
        self.chosen.is_none() && self.next < self.target.addrs.len()
    }

    /// The server: the address that answered, else the first one.
    pub(crate) fn server(&self) -> SocketAddr {
        self.chosen.unwrap_or(self.target.addrs[0])
    }

    /// The server for messages: `127.0.0.1:7777`, or `localhost:7777 ([::1]:7777,
    /// 127.0.0.1:7777)` while no address of a name has answered.
    pub(crate) fn name(&self) -> String {
        if self.chosen.is_some() || self.target.addrs.len() == 1 {
            return self.server().to_string();
        }
        let addrs: Vec<String> = self.target.addrs.iter().map(|a| a.to_string()).collect();
        format!("{} ({})", self.target.name, addrs.join(", "))
    }

    /// The local address of the (first) socket of the current operation.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        match self.tried.first() {
            Some(c) => c.socket.local_addr(),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "no socket")),
        }
    }

    /// Sends `pdu` to the server, or to every address tried while none has answered.
    pub(crate) fn send(&mut self, pdu: &[u8]) -> io::Result<()> {
        if self.racing() {
            self.last_sent = Some(Bytes::copy_from_slice(pdu));
        }
        // While other addresses remain, one that cannot be reached (no route to it, say)
        // is as good as refused: the race moves on to the next.
        let others = self.tried.len() > 1 || self.untried();
        for c in &mut self.tried {
            match c.socket.send(pdu) {
                Ok(_) => {}
                // An earlier datagram was refused, which this send reports instead of
                // sending; the error is cleared, so send again.
                Err(e) if matches!(classify(&e), Failure::Refused) => {
                    c.refused = true;
                    self.refusal_pending = true;
                    let _ = c.socket.send(pdu);
                }
                Err(e) if matches!(classify(&e), Failure::Again) => {}
                Err(_) if others => c.refused = true,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits until `until` for a datagram or a refusal.
    pub(crate) fn recv(&mut self, until: Instant) -> io::Result<Event> {
        if std::mem::take(&mut self.refusal_pending) && self.all_refused() {
            return Ok(Event::Refused);
        }
        if self.tried.len() == 1 && !self.untried() {
            return self.recv_one(until);
        }
        self.recv_racing(until)
    }

    fn all_refused(&self) -> bool {
        !self.untried() && self.tried.iter().all(|c| c.refused)
    }

    /// Blocks on the one socket of the operation.
    fn recv_one(&mut self, until: Instant) -> io::Result<Event> {
        let c = &mut self.tried[0];
        loop {
            let wait = until.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return Ok(Event::Idle);
            }
            c.socket.set_read_timeout(Some(wait))?;
            match c.socket.recv(&mut self.buf) {
                Ok(n) => return Ok(Event::Datagram(Bytes::copy_from_slice(&self.buf[..n]))),
                Err(e) => match classify(&e) {
                    Failure::Refused => return Ok(Event::Refused),
                    Failure::Again if e.kind() == io::ErrorKind::Interrupted => continue,
                    Failure::Again => return Ok(Event::Idle),
                    Failure::Fatal => return Err(e),
                },
            }
        }
    }

    /// Polls every address tried, adding the next as each runs out of luck or time.
    fn recv_racing(&mut self, until: Instant) -> io::Result<Event> {
        loop {
            if let Some(event) = self.poll_once()? {
                return Ok(event);
            }
            let now = Instant::now();
            if self.untried()
                && (self.tried.iter().all(|c| c.refused) || now >= self.last_tried_at + STAGGER)
            {
                self.try_next()?;
                continue;
            }
            if now >= until {
                return Ok(Event::Idle);
            }
            let mut wake = until;
            if self.untried() {
                wake = wake.min(self.last_tried_at + STAGGER);
            }
            std::thread::sleep(wake.saturating_duration_since(now).min(POLL_STEP));
        }
    }

    /// One look at every socket: a datagram chooses its address; refusals are noted.
    fn poll_once(&mut self) -> io::Result<Option<Event>> {
        let mut refused = false;
        for i in 0..self.tried.len() {
            let c = &mut self.tried[i];
            match c.socket.recv(&mut self.buf) {
                Ok(n) => {
                    let datagram = Bytes::copy_from_slice(&self.buf[..n]);
                    self.choose(i)?;
                    return Ok(Some(Event::Datagram(datagram)));
                }
                Err(e) => match classify(&e) {
                    Failure::Again => {}
                    Failure::Refused | Failure::Fatal => {
                        c.refused = true;
                        refused = true;
                    }
                },
            }
        }
        Ok((refused && self.all_refused()).then_some(Event::Refused))
    }

    /// Address `i` answered: it is the server from now on, on a blocking socket.
    fn choose(&mut self, i: usize) -> io::Result<()> {
        let c = self.tried.swap_remove(i);
        c.socket.set_nonblocking(false)?;
        self.chosen = Some(c.addr);
        self.tried = vec![c];
        self.last_sent = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::{Client, ClientConfig, ClientError};

    /// A socket that answers every datagram with `0:7` (one id), until dropped.
    fn answering() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicBool>) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(b"0:7", from);
                }
            }
        });
        (addr, stop)
    }

    fn closed_port() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.local_addr().expect("addr")
    }

    fn config() -> ClientConfig {
        ClientConfig {
            refusal_grace: Some(Duration::from_secs(1)),
            ..ClientConfig::default()
        }
    }

    #[test]
    fn every_address_is_tried_until_one_answers() {
        let (live, stop) = answering();
        let quiet = UdpSocket::bind("127.0.0.1:0").expect("bind");
        // The first address refuses (the next is tried at once), or stays silent (the
        // next is tried after the stagger): either way the live one answers.
        for dead in [closed_port(), quiet.local_addr().expect("addr")] {
            let target = Target {
                name: "board.test".into(),
                addrs: vec![dead, live],
            };
            let started = Instant::now();
            let mut client = Client::for_target(target, config()).expect("client");
            assert_eq!(client.ids(0).expect("ids").len(), 1, "via {dead}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
            assert_eq!(client.server(), live, "it is the server from now on");
            let started = Instant::now();
            client.ids(0).expect("ids");
            assert!(
                started.elapsed() < STAGGER,
                "straight to it: {:?}",
                started.elapsed()
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    #[test]
    fn when_every_address_refuses_the_error_names_them_all() {
        let target = Target {
            name: "nowhere.test:9".into(),
            addrs: vec![closed_port(), closed_port()],
        };
        let started = Instant::now();
        let err = Client::for_target(target.clone(), config())
            .expect("client")
            .ids(1)
            .expect_err("all refused");
        assert!(matches!(err, ClientError::Refused { .. }), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("connection refused by nowhere.test:9 ("),
            "{msg}"
        );
        for a in &target.addrs {
            assert!(msg.contains(&a.to_string()), "{msg}");
        }
    }
}

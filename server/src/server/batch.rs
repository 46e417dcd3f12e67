//! Datagrams in batches: one system call receives, or sends, many of them (`recvmmsg` and
//! `sendmmsg` on Linux). Entering the kernel is a large part of what a small request costs
//! the server, and a loop that is behind finds many datagrams queued at once.
//!
//! A batch of one uses plain `recv_from` and `send_to`, on every system.

use std::io;
use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::config::IO_BATCH_MAX;

/// Room for the largest datagram the kernel can hand us, IPv6 included.
const DATAGRAM_MAX: usize = 65_536;

/// Buffers for up to a batch of received datagrams, and what the last receive put there.
pub(super) struct Inbox {
    /// One buffer per datagram of a batch. Their pages are touched only as far as the
    /// datagrams received reach, so small requests keep memory small.
    bufs: Vec<Vec<u8>>,
    /// The buffer, length and source of each datagram received, in order.
    got: Vec<Got>,
    /// Whether the last receive found the queue empty when it returned.
    drained: bool,
}

impl Inbox {
    /// Room for `batch` datagrams (at least one).
    pub(super) fn new(batch: usize) -> Self {
        let batch = batch.clamp(1, IO_BATCH_MAX);
        Inbox {
            bufs: (0..batch).map(|_| vec![0u8; DATAGRAM_MAX]).collect(),
            got: Vec::with_capacity(batch),
            drained: false,
        }
    }

    /// Takes the datagrams queued on `socket`, up to a batch, without waiting; `WouldBlock`
    /// when there are none. Returns how many it took.
    pub(super) fn try_receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.got.clear();
        self.drained = false;
        let (bufs, got) = (&mut self.bufs, &mut self.got);
        if bufs.len() == 1 {
            receive_one(socket, bufs, got)?;
            return Ok(got.len());
        }
        let drained = &mut self.drained;
        let tried = socket.try_io(Interest::READABLE, || {
            *drained = sys::receive(socket, bufs, got)?;
            // The queue was empty when the call returned. Saying so clears the socket's
            // readiness, so that the loop waits for the next datagram rather than entering
            // the kernel once more to learn that there is none. One that arrived since has
            // set it again (tokio clears only the readiness it saw before the call).
            if *drained {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match tried {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.drained => Ok(got.len()),
            Err(e) => Err(e),
            Ok(()) => Ok(got.len()),
        }
    }

    /// Whether the last receive that took datagrams also found the queue empty after them
    /// (never known of a batch of one): the loop keeps up as surely as if the next call
    /// had found nothing.
    pub(super) fn drained(&self) -> bool {
        self.drained
    }

    /// The datagrams the last receive took: their bytes and sources, in order.
    pub(super) fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.got
            .iter()
            .map(|got| (&self.bufs[got.buf][..got.len], got.from))
    }
}

/// Where one received datagram is: its buffer, its length, and its source.
#[derive(Debug, Clone, Copy)]
struct Got {
    buf: usize,
    len: usize,
    from: SocketAddr,
}

/// What became of one datagram given to [`send_all`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    /// Handed to the kernel, this many bytes.
    Bytes(usize),
    /// Refused for reasons of its own destination (see [`transient`]); the others went on.
    Dropped,
}

/// Sends each datagram to its destination, `batch` per system call, waiting while the
/// socket's buffer is full. An error that concerns one destination drops only that
/// datagram; any other error is the socket's, and is returned. Returns the number of
/// system calls that sent or refused datagrams.
pub(super) async fn send_all(
    socket: &UdpSocket,
    datagrams: &[(&[u8], SocketAddr)],
    batch: usize,
    outcome: &mut Vec<Sent>,
) -> io::Result<usize> {
    outcome.clear();
    let mut calls = 0;
    let batch = batch.clamp(1, IO_BATCH_MAX);
    while outcome.len() < datagrams.len() {
        let rest = &datagrams[outcome.len()..];
        let chunk = &rest[..rest.len().min(batch)];
        let tried = if batch == 1 {
            send_one(socket, chunk, outcome)
        } else {
            socket.try_io(Interest::WRITABLE, || sys::send(socket, chunk, outcome))
        };
        match tried {
            Ok(()) => calls += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.writable().await?,
            // A signal interrupted the call before it sent anything: it is tried again.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The kernel stops at the first datagram it refuses, and reports that
            // datagram's error only when it is the first of the call.
            // A call that sent nothing is not counted as a sending one.
            Err(e) if transient(&e) => outcome.push(Sent::Dropped),
            Err(e) => return Err(e),
        }
    }
    Ok(calls)
}

/// One `recv_from` into the first of `bufs`, noted in `got`.
fn receive_one(socket: &UdpSocket, bufs: &mut [Vec<u8>], got: &mut Vec<Got>) -> io::Result<()> {
    let (len, from) = socket.try_recv_from(&mut bufs[0])?;
    got.push(Got { buf: 0, len, from });
    Ok(())
}

/// One `send_to` of the first of `chunk`, noted in `outcome`.
fn send_one(
    socket: &UdpSocket,
    chunk: &[(&[u8], SocketAddr)],
    outcome: &mut Vec<Sent>,
) -> io::Result<()> {
    let (bytes, to) = chunk[0];
    outcome.push(Sent::Bytes(socket.try_send_to(bytes, to)?));
    Ok(())
}

/// Errors from receiving or sending that concern one peer, not the socket.
pub(super) fn transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    // ICMP errors from earlier sends surface as refused/reset on some systems; a full
    // buffer or an unroutable destination affects one datagram.
    // A destination the system will not send to (a broadcast address, one a firewall
    // rule blocks) is refused with EACCES or EPERM: a spoofed source must cost only its
    // own reply, never the socket.
    matches!(
        e.kind(),
        ConnectionRefused
            | ConnectionReset
            | HostUnreachable
            | NetworkUnreachable
            | PermissionDenied
    ) || e.raw_os_error().is_some_and(refused_datagram)
}

/// Error numbers that refuse one datagram: no buffer for it now, too large for its
/// path, an address the call cannot take (EINVAL), or one of the other family. Named
/// through nix, since the numbers differ between systems (ENOBUFS is 105 on most Linux
/// architectures, 132 on MIPS, 55 on the BSDs).
#[cfg(unix)]
fn refused_datagram(code: i32) -> bool {
    use nix::errno::Errno;
    matches!(
        Errno::from_raw(code),
        Errno::ENOBUFS | Errno::EMSGSIZE | Errno::EINVAL | Errno::EAFNOSUPPORT
    )
}

/// Elsewhere only the kinds above are known to concern one datagram.
#[cfg(not(unix))]
fn refused_datagram(_: i32) -> bool {
    false
}

#[cfg(target_os = "linux")]
mod sys {
    use std::io::{self, IoSlice, IoSliceMut};
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
    use tokio::net::UdpSocket;

    use super::{Got, Sent};

    /// One `recvmmsg` into `bufs`, noting each datagram's buffer, length and source in
    /// `got`; says whether it emptied the socket's queue.
    pub(super) fn receive(
        socket: &UdpSocket,
        bufs: &mut [Vec<u8>],
        got: &mut Vec<Got>,
    ) -> io::Result<bool> {
        // The headers hold raw pointers, which would make the receive loop's future not
        // `Send` if they lived across its awaits; building them per call is two small
        // allocations per batch.
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(bufs.len(), None);
        let mut slices: Vec<[IoSliceMut<'_>; 1]> =
            bufs.iter_mut().map(|buf| [IoSliceMut::new(buf)]).collect();
        let received = recvmmsg(
            socket.as_raw_fd(),
            &mut headers,
            slices.iter_mut(),
            MsgFlags::empty(),
            None,
        )
        .map_err(io::Error::from)?;
        let mut taken = 0;
        for (buf, message) in received.enumerate() {
            taken += 1;
            // A datagram without an IP source cannot come to a UDP/IP socket; were one to,
            // it could not be answered, and is passed over.
            if let Some(from) = message.address.and_then(|a| socket_addr(&a)) {
                got.push(Got {
                    buf,
                    len: message.bytes,
                    from,
                });
            }
        }
        // Fewer than a batch: the kernel stopped because nothing more was queued.
        Ok(taken < bufs.len())
    }

    /// One `sendmmsg` of `chunk`, noting in `outcome` what each datagram it sent carried.
    pub(super) fn send(
        socket: &UdpSocket,
        chunk: &[(&[u8], SocketAddr)],
        outcome: &mut Vec<Sent>,
    ) -> io::Result<()> {
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
        let slices: Vec<[IoSlice<'_>; 1]> = chunk
            .iter()
            .map(|(bytes, _)| [IoSlice::new(bytes)])
            .collect();
        let addrs: Vec<Option<SockaddrStorage>> = chunk
            .iter()
            .map(|&(_, to)| Some(SockaddrStorage::from(to)))
            .collect();
        let sent = sendmmsg(
            socket.as_raw_fd(),
            &mut headers,
            &slices,
            &addrs,
            [],
            MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        let before = outcome.len();
        outcome.extend(sent.map(|message| Sent::Bytes(message.bytes)));
        if outcome.len() == before {
            // Nothing sent and no error: not seen from Linux, but were it to happen the
            // caller would retry forever; the first datagram gives way instead.
            outcome.push(Sent::Dropped);
        }
        Ok(())
    }

    fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
        if let Some(v4) = addr.as_sockaddr_in() {
            Some(SocketAddr::from(*v4))
        } else {
            addr.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
        }
    }
}

/// Elsewhere each system call takes or gives one datagram, whatever the batch.
#[cfg(not(target_os = "linux"))]
mod sys {
    use std::io;

    use tokio::net::UdpSocket;

    pub(super) use super::send_one as send;
    use super::{Got, receive_one};

    /// One datagram, which says nothing of what else is queued (never drained).
    pub(super) fn receive(
        socket: &UdpSocket,
        bufs: &mut [Vec<u8>],
        got: &mut Vec<Got>,
    ) -> io::Result<bool> {
        receive_one(socket, bufs, got).map(|()| false)
    }
}

#[cfg(test)]
mod tests;

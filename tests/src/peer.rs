//! Raw UDP peers: one socket (and so one source address) each, speaking datagrams.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use mboard_protocol::{Expect, Message, Offer, Response, SessionId};
use rand::Rng;
use rand::seq::SliceRandom;

/// How long [`Peer::ask`] waits: loopback does not lose datagrams, so only a server that
/// is not answering takes this long.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// A raw UDP peer with its own socket (and so its own source address).
pub struct Peer {
    socket: UdpSocket,
    server: SocketAddr,
}

/// An upload session that was opened, filled and committed.
#[derive(Debug)]
pub struct Upload {
    /// Its session id, still open after the commit (a commit may be repeated).
    pub sid: SessionId,
    /// The block size the server granted.
    pub block_size: usize,
    /// The reply to the first `c:<sid>`, as text.
    pub commit: String,
}

impl Peer {
    /// A peer on a fresh ephemeral port, talking to `server`.
    pub fn new(server: SocketAddr) -> Self {
        let bind = if server.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        let socket = UdpSocket::bind(bind).expect("bind peer");
        socket.set_read_timeout(Some(ASK_TIMEOUT)).expect("timeout");
        Peer { socket, server }
    }

    /// This peer's address as the server sees it.
    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("peer addr")
    }

    /// Sends one datagram without waiting.
    pub fn send(&self, pdu: &[u8]) {
        self.socket.send_to(pdu, self.server).expect("send");
    }

    /// Waits up to `timeout` for one datagram.
    pub fn recv_within(&self, timeout: Duration) -> Option<Vec<u8>> {
        // A zero timeout would mean "block forever" to the socket (and is refused).
        if timeout.is_zero() {
            return None;
        }
        self.socket
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        let mut buf = vec![0u8; 65_536];
        let got = self
            .socket
            .recv_from(&mut buf)
            .ok()
            .map(|(n, _)| buf[..n].to_vec());
        self.socket
            .set_read_timeout(Some(ASK_TIMEOUT))
            .expect("timeout");
        got
    }

    /// Sends one datagram and returns the reply.
    pub fn ask(&self, pdu: impl AsRef<[u8]>) -> Vec<u8> {
        self.send(pdu.as_ref());
        let mut buf = vec![0u8; 65_536];
        let (n, _) = self.socket.recv_from(&mut buf).expect("reply within 5 s");
        buf.truncate(n);
        buf
    }

    /// [`Peer::ask`], as text (lossy) for readable assertions.
    pub fn ask_str(&self, pdu: impl AsRef<[u8]>) -> String {
        String::from_utf8_lossy(&self.ask(pdu)).into_owned()
    }

    /// [`Peer::ask`], with a download offer followed: the whole reply, however large.
    pub fn ask_whole(&self, pdu: impl AsRef<[u8]>) -> Vec<u8> {
        let reply = self.ask(pdu);
        match Response::parse(Bytes::from(reply.clone()), Expect::Closed) {
            Ok(Response::Offer(offer)) => self.fetch(&offer, 0..offer.blocks()).expect("fetch"),
            _ => reply,
        }
    }

    /// Opens an upload session and returns its id and block size.
    pub fn open(&self, size: usize, block_size: usize) -> Result<(SessionId, usize)> {
        let reply = self.ask(format!("a:{size}:{block_size}"));
        match Response::parse(Bytes::from(reply), Expect::Opened)? {
            Response::Opened { sid, block_size } => Ok((sid, block_size as usize)),
            other => bail!("open refused: {other:?}"),
        }
    }

    /// Uploads `pdu` through a session: opens it, sends every block once in order, and
    /// commits. Each block must be acknowledged with one more block received.
    pub fn upload(&self, pdu: &[u8], block_size: usize) -> Result<Upload> {
        self.upload_in(pdu, block_size, |blocks| (0..blocks).collect())
    }

    /// [`Peer::upload`] with every `duplicate_every`-th block sent twice, and all of them in
    /// an order shuffled by `rng`: a duplicate must not count as a block received.
    pub fn upload_shuffled(
        &self,
        pdu: &[u8],
        block_size: usize,
        duplicate_every: usize,
        rng: &mut impl Rng,
    ) -> Result<Upload> {
        self.upload_in(pdu, block_size, |blocks| {
            let mut order: Vec<usize> = (0..blocks).collect();
            order.extend((0..blocks).step_by(duplicate_every));
            order.shuffle(rng);
            order
        })
    }

    /// Opens, sends the blocks in the order `order` gives for the block count, commits.
    fn upload_in(
        &self,
        pdu: &[u8],
        block_size: usize,
        order: impl FnOnce(usize) -> Vec<usize>,
    ) -> Result<Upload> {
        let (sid, block_size) = self.open(pdu.len(), block_size)?;
        let blocks: Vec<&[u8]> = pdu.chunks(block_size).collect();
        let mut distinct = HashSet::new();
        for i in order(blocks.len()) {
            distinct.insert(i);
            let mut block = format!("b:{sid}:{i}:").into_bytes();
            block.extend_from_slice(blocks[i]);
            let reply = self.ask_str(&block);
            let want = format!("0:{sid}:{i}:{}", distinct.len());
            ensure!(reply == want, "block {i} answered {reply:?}, not {want:?}");
        }
        let commit = self.ask_str(format!("c:{sid}"));
        Ok(Upload {
            sid,
            block_size,
            commit,
        })
    }

    /// Fetches every block of a download offer, in the given index order, and assembles it.
    pub fn fetch(&self, offer: &Offer, order: impl IntoIterator<Item = u64>) -> Result<Vec<u8>> {
        let mut blocks = vec![None; offer.blocks() as usize];
        for index in order {
            let reply = self.ask(format!("g:{}:{index}", offer.sid));
            match Response::parse(Bytes::from(reply), Expect::Data)? {
                Response::Data {
                    sid,
                    index: got,
                    data,
                } if sid == offer.sid && got == index => {
                    blocks[index as usize] = Some(data);
                }
                other => bail!("bad block reply {other:?}"),
            }
        }
        let mut out = Vec::with_capacity(offer.size as usize);
        for (i, b) in blocks.into_iter().enumerate() {
            out.extend_from_slice(&b.with_context(|| format!("block {i} never fetched"))?);
        }
        Ok(out)
    }
}

/// Every message on the board, read with raw datagrams (`4:0`, following the offer).
pub fn board_contents(server: SocketAddr) -> Result<Vec<Message>> {
    let peer = Peer::new(server);
    let reply = match Response::parse(Bytes::from(peer.ask("4:0")), Expect::Messages)? {
        Response::Offer(offer) => {
            let whole = peer.fetch(&offer, 0..offer.blocks())?;
            peer.send(format!("x:{}", offer.sid).as_bytes());
            Response::parse(Bytes::from(whole), Expect::Messages)?
        }
        direct => direct,
    };
    match reply {
        Response::Messages(messages) => Ok(messages),
        other => bail!("unexpected reply to 4:0: {other:?}"),
    }
}

//! The blocking client: one connected UDP socket driving the transfer engine.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mboard_protocol::{
    BoardRequest, Entry, ErrorCode, Expect, Message, MessageId, Offer, Response, SessionId,
    SessionRequest,
};

use crate::engine::Transfer;
use crate::rtt::Rtt;

/// Transfers above this size report progress.
pub const PROGRESS_THRESHOLD: u64 = 1 << 20;

/// How a [`Client`] behaves on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Overall deadline of each operation.
    pub timeout: Duration,
    /// Upload block size; 1,400 bytes crosses an Ethernet path without IP fragmentation.
    pub block_size: usize,
    /// Blocks (or block requests) in flight at once.
    pub window: usize,
    /// Retransmission timeout before any round trip has been measured.
    pub initial_rto: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(5),
            block_size: 1_400,
            window: 64,
            initial_rto: Duration::from_millis(200),
        }
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing usable came back before the deadline.
    #[error("no reply from {server} within {}", humantime::format_duration(*.after))]
    Timeout {
        /// The server asked.
        server: SocketAddr,
        /// The deadline that passed.
        after: Duration,
    },
    /// The server answered with an error code.
    #[error("{}", server_reason(*.code, .reason))]
    Server {
        /// The code it sent.
        code: ErrorCode,
        /// Its reason, as sent.
        reason: Bytes,
    },
    /// The server sent something the protocol does not allow here.
    #[error("unexpected reply from server: {0}")]
    Protocol(String),
    /// The server address could not be resolved.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// The local socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

fn server_reason(code: ErrorCode, reason: &[u8]) -> String {
    if reason.is_empty() {
        let name = match code {
            ErrorCode::BadFormat => "bad format",
            ErrorCode::MsgNotFound => "no such message",
            ErrorCode::UnknownControl => "unknown request",
            ErrorCode::ErrTransm => "transmission error",
        };
        name.to_string()
    } else {
        String::from_utf8_lossy(reason).into_owned()
    }
}

/// Progress of a large transfer: bytes done and total.
pub type Progress = Box<dyn FnMut(u64, u64)>;

/// A client of one mboard server.
pub struct Client {
    socket: UdpSocket,
    server: SocketAddr,
    config: ClientConfig,
    rtt: Rtt,
    buf: Vec<u8>,
    progress: Option<Progress>,
    /// The upload session in progress: any other session a late `a:` reply names is a
    /// stray opened by a resend, and is closed on sight.
    uploading: Option<SessionId>,
    /// Whether `socket` has carried an operation (the next one gets a fresh socket).
    used: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .field("config", &self.config)
            .finish()
    }
}

/// What a reply means to the transfer in progress.
enum Verdict<T> {
    /// It answers item `index`, with this value.
    Answer(u64, T),
    /// It matches nothing outstanding: ignore it.
    Ignore,
}

/// A new ephemeral socket connected to `server`: the kernel drops datagrams from anyone else.
fn connect(server: SocketAddr) -> Result<UdpSocket, ClientError> {
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(server)?;
    Ok(socket)
}

/// Resolves `server` (`host:port`, names included) to its first address.
pub fn resolve(server: &str) -> Result<SocketAddr, ClientError> {
    server
        .to_socket_addrs()
        .map_err(|e| ClientError::Resolve(format!("{server}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Resolve(server.to_string()))
}

impl Client {
    /// A client of `server`.
    pub fn new(server: SocketAddr, config: ClientConfig) -> Result<Self, ClientError> {
        let rtt = Rtt::new(config.initial_rto);
        Ok(Client {
            socket: connect(server)?,
            server,
            config,
            rtt,
            buf: vec![0; 65_536],
            progress: None,
            uploading: None,
            used: false,
        })
    }

    /// Starts an operation: on a fresh socket, and with its deadline.
    ///
    /// Layer-1 replies name nothing of their request, so a late reply to an earlier
    /// operation (resent after a timeout, or duplicated by the network) would be taken for
    /// this one's: `get(6)` could return message 5. A new socket has a new port, where no
    /// earlier reply can arrive.
    fn begin(&mut self) -> Result<Instant, ClientError> {
        if self.used {
            self.socket = connect(self.server)?;
        }
        self.used = true;
        Ok(Instant::now() + self.config.timeout)
    }

    /// Reports progress of transfers larger than [`PROGRESS_THRESHOLD`] to `progress`.
    pub fn on_progress(&mut self, progress: Progress) {
        self.progress = Some(progress);
    }

    /// Publishes `text` through an upload session: stored exactly once, whatever is lost.
    pub fn publish(&mut self, text: &[u8]) -> Result<MessageId, ClientError> {
        let deadline = self.begin()?;
        let mut pdu = Vec::with_capacity(text.len() + 2);
        pdu.extend_from_slice(b"1:");
        pdu.extend_from_slice(text);
        match self.upload(deadline, Bytes::from(pdu), Expect::Published)? {
            Response::Published(id) => Ok(id),
            other => Err(unexpected(&other)),
        }
    }

    /// Publishes `text` as one `1:` datagram: one round trip, but at-least-once (a resend
    /// after a lost reply may store it twice). For texts that fit in a datagram.
    pub fn publish_datagram(&mut self, text: &[u8]) -> Result<MessageId, ClientError> {
        match self.board(BoardRequest::Publish(Bytes::copy_from_slice(text)))? {
            Response::Published(id) => Ok(id),
            other => Err(unexpected(&other)),
        }
    }

    /// One message.
    pub fn get(&mut self, id: MessageId) -> Result<Entry, ClientError> {
        match self.board(BoardRequest::Get(id))? {
            Response::Entry(entry) => Ok(entry),
            other => Err(unexpected(&other)),
        }
    }

    /// The newest `n` messages, oldest first (`n` = 0: all).
    pub fn last(&mut self, n: u64) -> Result<Vec<Message>, ClientError> {
        match self.board(BoardRequest::Last(n))? {
            Response::Messages(messages) => Ok(messages),
            other => Err(unexpected(&other)),
        }
    }

    /// The ids of the newest `n` messages, oldest first (`n` = 0: all).
    pub fn ids(&mut self, n: u64) -> Result<Vec<MessageId>, ClientError> {
        match self.board(BoardRequest::Ids(n))? {
            Response::Ids(ids) => Ok(ids),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends one raw datagram (resent until answered) and returns the reply exactly; a
    /// download offer is followed and the assembled response returned instead.
    pub fn raw(&mut self, pdu: &[u8]) -> Result<Bytes, ClientError> {
        let deadline = self.begin()?;
        let reply = self.exchange(deadline, Bytes::copy_from_slice(pdu), |r| {
            Verdict::Answer(0, r)
        })?;
        match Response::parse(reply.clone(), Expect::Closed) {
            Ok(Response::Offer(offer)) => self.download(deadline, offer),
            _ => Ok(reply),
        }
    }

    /// Runs a layer-1 request in one datagram, following a download offer if one comes.
    fn board(&mut self, req: BoardRequest) -> Result<Response, ClientError> {
        let deadline = self.begin()?;
        let expect = req.expect();
        let pdu = req.to_bytes();
        let reply = self.exchange(deadline, pdu, |r| match Response::parse(r, expect) {
            Ok(resp) => Verdict::Answer(0, resp),
            Err(_) => Verdict::Ignore,
        })?;
        self.settle(deadline, reply, expect)
    }

    /// Turns a reply into the final response: errors become [`ClientError::Server`] and
    /// offers are downloaded and parsed as `expect`.
    fn settle(
        &mut self,
        deadline: Instant,
        reply: Response,
        expect: Expect,
    ) -> Result<Response, ClientError> {
        match reply {
            Response::Error { code, reason } => Err(ClientError::Server { code, reason }),
            Response::Offer(offer) => {
                let whole = self.download(deadline, offer)?;
                match Response::parse(whole, expect) {
                    Ok(Response::Error { code, reason }) => {
                        Err(ClientError::Server { code, reason })
                    }
                    Ok(Response::Offer(_)) => Err(ClientError::Protocol(
                        "a download offer inside a download".into(),
                    )),
                    Ok(resp) => Ok(resp),
                    Err(e) => Err(ClientError::Protocol(e.to_string())),
                }
            }
            resp => Ok(resp),
        }
    }

    /// Uploads a request PDU through a session, commits it, and returns its response.
    fn upload(
        &mut self,
        deadline: Instant,
        pdu: Bytes,
        expect: Expect,
    ) -> Result<Response, ClientError> {
        let open = SessionRequest::Open {
            size: pdu.len() as u64,
            block_size: self.config.block_size as u64,
        };
        let (sid, block_size) = match self.exchange(deadline, open.to_bytes(), |r| {
            match Response::parse(r, Expect::Opened) {
                Ok(resp) => Verdict::Answer(0, resp),
                Err(_) => Verdict::Ignore,
            }
        })? {
            Response::Opened { sid, block_size }
                if block_size > 0 && block_size <= self.config.block_size as u64 =>
            {
                (sid, block_size as usize)
            }
            Response::Error { code, reason } => return Err(ClientError::Server { code, reason }),
            other => return Err(unexpected(&other)),
        };
        self.uploading = Some(sid);
        let result = self
            .upload_blocks(deadline, sid, &pdu, block_size)
            .and_then(|()| {
                let commit = SessionRequest::Commit(sid).to_bytes();
                // Stray acknowledgements of late duplicate blocks do not parse as `expect`.
                let reply =
                    self.exchange(deadline, commit, |r| match Response::parse(r, expect) {
                        Ok(resp) => Verdict::Answer(0, resp),
                        Err(_) => Verdict::Ignore,
                    })?;
                self.settle(deadline, reply, expect)
            });
        self.uploading = None;
        // Free the server's state now rather than at expiry; if this is lost, expiry does it.
        self.close(sid);
        result
    }

    fn upload_blocks(
        &mut self,
        deadline: Instant,
        sid: SessionId,
        pdu: &Bytes,
        block_size: usize,
    ) -> Result<(), ClientError> {
        let blocks = pdu.len().div_ceil(block_size) as u64;
        let total = pdu.len() as u64;
        let mut t = Transfer::new(blocks, self.config.window, deadline, self.rtt.clone());
        let make = |i: u64| {
            let start = i as usize * block_size;
            let data = pdu.slice(start..(start + block_size).min(pdu.len()));
            SessionRequest::Block {
                sid,
                index: i,
                data,
            }
            .to_bytes()
        };
        let mut done = 0u64;
        let result = self.drive(
            &mut t,
            make,
            |_, r| {
                match Response::parse(r.clone(), Expect::Acked) {
                    Ok(Response::Acked { sid: s, index, .. }) if s == sid => {
                        return Ok(Verdict::Answer(index, ()));
                    }
                    Ok(Response::Error { code, reason }) => {
                        return Err(ClientError::Server { code, reason });
                    }
                    _ => {}
                }
                Ok(Verdict::Ignore)
            },
            |client, acked| {
                done = (acked * block_size as u64).min(total);
                client.report(done, total);
            },
        );
        self.rtt = t.rtt().clone();
        result
    }

    /// Fetches every block of a download offer and returns the assembled response.
    fn download(&mut self, deadline: Instant, offer: Offer) -> Result<Bytes, ClientError> {
        let size = usize::try_from(offer.size)
            .map_err(|_| ClientError::Protocol("offer too large".into()))?;
        let block_size = usize::try_from(offer.block_size)
            .map_err(|_| ClientError::Protocol("bad block size".into()))?;
        // A client bounds what a server can make it allocate: nothing in the protocol needs
        // more than the largest request plus framing, and 1 GiB is far beyond that.
        if size > 1 << 30 || block_size == 0 {
            return Err(ClientError::Protocol(format!(
                "implausible offer of {size} bytes"
            )));
        }
        let mut out = vec![0u8; size];
        let mut t = Transfer::new(
            offer.blocks(),
            self.config.window,
            deadline,
            self.rtt.clone(),
        );
        let sid = offer.sid;
        let make = |i: u64| SessionRequest::Fetch { sid, index: i }.to_bytes();
        let result = self.drive(
            &mut t,
            make,
            |_, r| match Response::parse(r, Expect::Data) {
                Ok(Response::Data {
                    sid: s,
                    index,
                    data,
                }) if s == sid => {
                    let start = index.saturating_mul(offer.block_size);
                    let want = offer.block_size.min(offer.size.saturating_sub(start));
                    if start >= offer.size || data.len() as u64 != want {
                        return Err(ClientError::Protocol(format!(
                            "block {index} has the wrong length"
                        )));
                    }
                    out[start as usize..start as usize + data.len()].copy_from_slice(&data);
                    Ok(Verdict::Answer(index, ()))
                }
                Ok(Response::Error { code, reason }) => Err(ClientError::Server { code, reason }),
                _ => Ok(Verdict::Ignore),
            },
            |client, acked| client.report((acked * offer.block_size).min(offer.size), offer.size),
        );
        self.rtt = t.rtt().clone();
        self.close(sid);
        result.map(|()| Bytes::from(out))
    }

    /// Sends one request until a reply `verdict` accepts arrives; returns that reply.
    fn exchange<T>(
        &mut self,
        deadline: Instant,
        pdu: Bytes,
        mut verdict: impl FnMut(Bytes) -> Verdict<T>,
    ) -> Result<T, ClientError> {
        let mut t = Transfer::new(1, 1, deadline, self.rtt.clone());
        let mut answer = None;
        let result = self.drive(
            &mut t,
            |_| pdu.clone(),
            |_, r| {
                Ok(match verdict(r) {
                    Verdict::Answer(_, value) => {
                        answer = Some(value);
                        Verdict::Answer(0, ())
                    }
                    Verdict::Ignore => Verdict::Ignore,
                })
            },
            |_, _| {},
        );
        self.rtt = t.rtt().clone();
        result?;
        answer.ok_or_else(|| ClientError::Protocol("no answer recorded".into()))
    }

    /// The I/O loop around a [`Transfer`]: send what it says, feed it replies and timeouts.
    fn drive(
        &mut self,
        t: &mut Transfer,
        make: impl Fn(u64) -> Bytes,
        mut on_reply: impl FnMut(&mut Self, Bytes) -> Result<Verdict<()>, ClientError>,
        mut on_ack: impl FnMut(&mut Self, u64),
    ) -> Result<(), ClientError> {
        loop {
            let now = Instant::now();
            while let Some(i) = t.poll_transmit(now) {
                self.send(&make(i))?;
            }
            if t.is_done() {
                return Ok(());
            }
            let wait = t.poll_timeout().saturating_duration_since(Instant::now());
            match self.recv(wait)? {
                Some(reply) => match on_reply(self, reply.clone())? {
                    Verdict::Answer(index, ()) => {
                        if t.on_ack(Instant::now(), index) {
                            on_ack(self, t.acked());
                        }
                    }
                    Verdict::Ignore => {
                        if let Some(ours) = self.uploading {
                            self.close_stray_open(reply, ours);
                        }
                    }
                },
                None => {
                    t.handle_timeout(Instant::now())
                        .map_err(|_| ClientError::Timeout {
                            server: self.server,
                            after: self.config.timeout,
                        })?;
                }
            }
        }
    }

    fn send(&self, pdu: &[u8]) -> Result<(), ClientError> {
        match self.socket.send(pdu) {
            Ok(_) => Ok(()),
            // An ICMP error from an earlier datagram (nobody listening yet): keep trying
            // until the deadline, as for a lost datagram.
            Err(e) if transient(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits up to `wait` for a datagram; `None` on timeout.
    fn recv(&mut self, wait: Duration) -> Result<Option<Bytes>, ClientError> {
        if wait.is_zero() {
            return Ok(None);
        }
        self.socket.set_read_timeout(Some(wait))?;
        match self.socket.recv(&mut self.buf) {
            Ok(n) => Ok(Some(Bytes::copy_from_slice(&self.buf[..n]))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) if transient(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Best-effort close: one datagram, no wait.
    fn close(&mut self, sid: SessionId) {
        let _ = self.send(&SessionRequest::Close(sid).to_bytes());
    }

    /// A resent `a:` can open a second session; close it instead of leaving it to expire.
    fn close_stray_open(&mut self, reply: Bytes, ours: SessionId) {
        if let Ok(Response::Opened { sid, .. }) = Response::parse(reply, Expect::Opened)
            && sid != ours
        {
            self.close(sid);
        }
    }

    fn report(&mut self, done: u64, total: u64) {
        if total > PROGRESS_THRESHOLD
            && let Some(progress) = &mut self.progress
        {
            progress(done, total);
        }
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

fn unexpected(resp: &Response) -> ClientError {
    match resp {
        Response::Error { code, reason } => ClientError::Server {
            code: *code,
            reason: reason.clone(),
        },
        other => ClientError::Protocol(format!("{other:?}")),
    }
}

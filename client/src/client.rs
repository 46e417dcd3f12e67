//! The blocking client: connected UDP sockets driving the transfer engine.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mboard_protocol::{
    BoardRequest, Entry, ErrorCode, Expect, MAX_DATAGRAM, Message, MessageId, PublishToken,
    Response, SessionId,
};

use crate::deadline::Deadline;
use crate::error::{ClientError, excerpt, unexpected_detail};
use crate::link::Link;
use crate::rtt::Rtt;
use crate::target::{Target, resolve_all};

mod session;

/// Transfers above this size report progress.
pub const PROGRESS_THRESHOLD: u64 = 1 << 20;

/// How a [`Client`] behaves on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The longest silence tolerated: an operation fails when nothing has come from the
    /// server for this long, however long the operation has run.
    pub timeout: Duration,
    /// A deadline for each operation as a whole, however lively the server (off if `None`).
    pub max_time: Option<Duration>,
    /// How long refusals (ICMP port unreachable) are retried through before giving up
    /// with [`ClientError::Refused`]; `None` (the default) retries through them until the
    /// timeout, as through silence. The CLI uses [`crate::deadline::REFUSAL_GRACE`].
    pub refusal_grace: Option<Duration>,
    /// Speak only what classic servers know: `1:` `2:` `3:`, no sessions, no offers.
    pub classic: bool,
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
            max_time: None,
            refusal_grace: None,
            classic: false,
            block_size: 1_400,
            window: 64,
            initial_rto: Duration::from_millis(200),
        }
    }
}

/// Progress of a large transfer: bytes done and total.
pub type Progress = Box<dyn FnMut(u64, u64)>;

/// A client of one mboard server.
pub struct Client {
    link: Link,
    config: ClientConfig,
    rtt: Rtt,
    /// The clocks of the operation in progress.
    deadline: Deadline,
    progress: Option<Progress>,
    /// The upload session in progress: any other session a late `a:` reply names is a
    /// stray opened by a resend, and is closed on sight.
    uploading: Option<SessionId>,
    /// Whether the link's sockets have carried an operation (the next one gets new ones).
    used: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.link.name())
            .field("config", &self.config)
            .finish()
    }
}

/// The largest text a `1:` datagram carries.
const MAX_DATAGRAM_TEXT: usize = MAX_DATAGRAM - 2;

impl Client {
    /// A client of the server at `server`.
    pub fn new(server: SocketAddr, config: ClientConfig) -> Result<Self, ClientError> {
        Self::for_target(Target::addr(server), config)
    }

    /// A client of `server` as people write it (`host:port`, or `host` for port 7777),
    /// trying every address the name resolves to until one answers.
    pub fn connect(server: &str, config: ClientConfig) -> Result<Self, ClientError> {
        Self::for_target(resolve_all(server)?, config)
    }

    /// A client of whichever of `target`'s addresses answers first.
    pub fn for_target(target: Target, config: ClientConfig) -> Result<Self, ClientError> {
        let deadline = Deadline::new(Instant::now(), config.timeout, config.max_time);
        Ok(Client {
            link: Link::new(target)?,
            rtt: Rtt::new(config.initial_rto),
            config,
            deadline,
            progress: None,
            uploading: None,
            used: false,
        })
    }

    /// Starts an operation: on fresh sockets, and with fresh clocks.
    ///
    /// Layer-1 replies name nothing of their request, so a late reply to an earlier
    /// operation (resent after a timeout, or duplicated by the network) would be taken for
    /// this one's: `get(6)` could return message 5. A new socket has a new port, where no
    /// earlier reply can arrive.
    fn begin(&mut self) -> Result<(), ClientError> {
        self.fresh_socket()?;
        self.deadline = Deadline::new(Instant::now(), self.config.timeout, self.config.max_time)
            .with_refusal_grace(self.config.refusal_grace);
        Ok(())
    }

    /// New sockets for the next request of an operation made of several layer-1 requests.
    fn fresh_socket(&mut self) -> io::Result<()> {
        if self.used {
            self.link.fresh()?;
        }
        self.used = true;
        Ok(())
    }

    /// Reports progress of transfers larger than [`PROGRESS_THRESHOLD`] to `progress`.
    pub fn on_progress(&mut self, progress: Progress) {
        self.progress = Some(progress);
    }

    /// The server this client talks to (the address that answered, once one has).
    pub fn server(&self) -> SocketAddr {
        self.link.server()
    }

    /// The local address replies to the current (or last) operation come to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.link.local_addr()
    }

    /// Publishes `text`: through an upload session, stored exactly once whatever is lost;
    /// in classic mode as one `1:` datagram ([`Client::publish_datagram`]).
    ///
    /// A text over the server's size limit is refused with the server's own words, which
    /// count the request (`too large: max 16777216 bytes`); [`ClientError::for_text`]
    /// restates that for the text.
    pub fn publish(&mut self, text: &[u8]) -> Result<MessageId, ClientError> {
        if self.config.classic {
            return self.publish_datagram(text);
        }
        self.begin()?;
        let mut pdu = Vec::with_capacity(text.len() + 2);
        pdu.extend_from_slice(b"1:");
        pdu.extend_from_slice(text);
        match self.upload(Bytes::from(pdu), Expect::Published)? {
            Response::Published(id) => Ok(id),
            other => Err(self.unexpected(&other, Expect::Published)),
        }
    }

    /// Publishes `text` under `token` (`5:<token>:<text>`, through an upload session):
    /// the server stores it once per token, so the same token resent to any server of a
    /// cluster — after a timeout, or after that server died — gets the same id. Classic
    /// mode has no tokens: it publishes one `1:` datagram.
    pub fn publish_once(
        &mut self,
        token: PublishToken,
        text: &[u8],
    ) -> Result<MessageId, ClientError> {
        if self.config.classic {
            return self.publish_datagram(text);
        }
        self.begin()?;
        let mut pdu = Vec::with_capacity(text.len() + PublishToken::LEN + 3);
        pdu.extend_from_slice(b"5:");
        token.encode(&mut pdu);
        pdu.push(b':');
        pdu.extend_from_slice(text);
        match self.upload(Bytes::from(pdu), Expect::Published)? {
            Response::Published(id) => Ok(id),
            other => Err(self.unexpected(&other, Expect::Published)),
        }
    }

    /// Publishes `text` as one `1:` datagram: one round trip, but at-least-once (resent
    /// only when no reply comes, and then it may be stored twice). For texts that fit.
    pub fn publish_datagram(&mut self, text: &[u8]) -> Result<MessageId, ClientError> {
        if text.len() > MAX_DATAGRAM_TEXT {
            return Err(ClientError::DatagramTooLarge {
                what: "text",
                size: text.len(),
                max: MAX_DATAGRAM_TEXT,
            });
        }
        match self.board(BoardRequest::Publish(Bytes::copy_from_slice(text)))? {
            Response::Published(id) => Ok(id),
            other => Err(self.unexpected(&other, Expect::Published)),
        }
    }

    /// One message.
    pub fn get(&mut self, id: MessageId) -> Result<Entry, ClientError> {
        self.begin()?;
        self.get_on_this_socket(id)
    }

    fn get_on_this_socket(&mut self, id: MessageId) -> Result<Entry, ClientError> {
        match self.request(BoardRequest::Get(id)) {
            Ok(Response::Entry(entry)) => Ok(entry),
            Ok(other) => Err(self.unexpected(&other, Expect::Entry)),
            // Classic servers send a bare `2`; say which message.
            Err(ClientError::Server {
                code: ErrorCode::MsgNotFound,
                reason,
            }) if reason.is_empty() => Err(ClientError::Server {
                code: ErrorCode::MsgNotFound,
                reason: Bytes::from(format!("no message {id}")),
            }),
            Err(e) => Err(e),
        }
    }

    /// The newest `n` messages, oldest first (`n` = 0: all). In classic mode, `2:` then a
    /// `3:` per id, each on a socket of its own, all under the operation's deadlines.
    pub fn last(&mut self, n: u64) -> Result<Vec<Message>, ClientError> {
        if !self.config.classic {
            return match self.board(BoardRequest::Last(n))? {
                Response::Messages(messages) => Ok(messages),
                other => Err(self.unexpected(&other, Expect::Messages)),
            };
        }
        let ids = self.ids(n)?;
        let mut messages = Vec::with_capacity(ids.len());
        for id in ids {
            self.fresh_socket()?;
            let entry = self.get_on_this_socket(id)?;
            messages.push(Message { id, entry });
        }
        Ok(messages)
    }

    /// The ids of the newest `n` messages, oldest first (`n` = 0: all).
    pub fn ids(&mut self, n: u64) -> Result<Vec<MessageId>, ClientError> {
        match self.board(BoardRequest::Ids(n))? {
            Response::Ids(ids) => Ok(ids),
            other => Err(self.unexpected(&other, Expect::Ids)),
        }
    }

    /// Sends one raw datagram (resent until answered) and returns the reply exactly; a
    /// download offer is followed (except in classic mode) and the assembled response
    /// returned instead.
    pub fn raw(&mut self, pdu: &[u8]) -> Result<Bytes, ClientError> {
        if pdu.len() > MAX_DATAGRAM {
            return Err(ClientError::DatagramTooLarge {
                what: "PDU",
                size: pdu.len(),
                max: MAX_DATAGRAM,
            });
        }
        self.begin()?;
        let reply = self.exchange(Bytes::copy_from_slice(pdu), |r| {
            Ok(session::Verdict::Answer(0, r))
        })?;
        match Response::parse(reply.clone(), Expect::Closed) {
            Ok(Response::Offer(offer)) if !self.config.classic => self.download(offer),
            _ => Ok(reply),
        }
    }

    /// Runs a layer-1 request as a new operation.
    fn board(&mut self, req: BoardRequest) -> Result<Response, ClientError> {
        self.begin()?;
        self.request(req)
    }

    /// Runs a layer-1 request in one datagram on the current sockets, following a download
    /// offer if one comes. Any reply is its answer (the socket is new): one that cannot be
    /// read is reported, not waited past.
    fn request(&mut self, req: BoardRequest) -> Result<Response, ClientError> {
        let expect = req.expect();
        let reply = self.exchange(req.to_bytes(), |r| {
            match Response::parse(r.clone(), expect) {
                Ok(resp) => Ok(session::Verdict::Answer(0, resp)),
                Err(e) => Err(format!("{e}, got {}", excerpt(&r))),
            }
        })?;
        self.settle(reply, expect)
    }

    /// Turns a reply into the final response: errors become [`ClientError::Server`] and
    /// offers are downloaded and parsed as `expect`.
    fn settle(&mut self, reply: Response, expect: Expect) -> Result<Response, ClientError> {
        match reply {
            Response::Error { code, reason } => Err(ClientError::Server { code, reason }),
            Response::Offer(_) if self.config.classic => Err(self.malformed(
                "a download offer, which classic mode does not follow (the reply is too \
                 large for one datagram)",
            )),
            Response::Offer(offer) => {
                let whole = self.download(offer)?;
                match Response::parse(whole.clone(), expect) {
                    Ok(Response::Error { code, reason }) => {
                        Err(ClientError::Server { code, reason })
                    }
                    Ok(Response::Offer(_)) => {
                        Err(self.malformed("a download offer inside a download"))
                    }
                    Ok(resp) => Ok(resp),
                    Err(e) => Err(self.malformed(format!("{e}, got {}", excerpt(&whole)))),
                }
            }
            resp => Ok(resp),
        }
    }

    fn malformed(&self, detail: impl Into<String>) -> ClientError {
        ClientError::Malformed {
            server: self.link.name(),
            detail: detail.into(),
        }
    }

    fn unexpected(&self, resp: &Response, want: Expect) -> ClientError {
        match resp {
            Response::Error { code, reason } => ClientError::Server {
                code: *code,
                reason: reason.clone(),
            },
            other => self.malformed(unexpected_detail(other, want)),
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

//! The blocking client: connected UDP sockets driving the transfer engine.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mboard_protocol::{
    BoardRequest, Entry, ErrorCode, Expect, MAX_DATAGRAM, Message, MessageId, Response, SessionId,
};

use crate::deadline::Deadline;
use crate::error::{ClientError, excerpt, unexpected_detail};
use crate::link::Link;
use crate::rtt::Rtt;
use crate::target::{Target, resolve_all};

mod after;
mod follow;
mod publish;
mod session;

pub use after::{Page, Pages};
pub(crate) use follow::passing;
pub use follow::{Follow, FollowEvent, Start, WAIT};

/// Offers whose sessions vanish before they are fetched, in a row, before a read gives up.
const MAX_OFFERS_LOST: u32 = 4;
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
    /// timeout, as through silence. The CLI uses one second (`deadline::REFUSAL_GRACE`).
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

/// Something a person should know that is no error (one line, without a prefix).
pub type Warn = Box<dyn FnMut(&str)>;

/// Asked at least every [`INTERRUPT_CHECK`] while an operation waits: true ends it with
/// [`ClientError::Interrupted`].
pub type Interrupt = Box<dyn FnMut() -> bool>;

/// How often an operation that may be interrupted looks at its [`Interrupt`].
pub const INTERRUPT_CHECK: Duration = Duration::from_millis(100);

/// A client of one mboard server.
pub struct Client {
    link: Link,
    config: ClientConfig,
    rtt: Rtt,
    /// The clocks of the operation in progress.
    deadline: Deadline,
    progress: Option<Progress>,
    warn: Option<Warn>,
    interrupt: Option<Interrupt>,
    /// The upload session in progress: any other session a late `a:` reply names is a
    /// stray opened by a resend, and is closed on sight.
    uploading: Option<SessionId>,
    /// Whether the link's sockets have carried an operation (the next one gets new ones).
    used: bool,
    /// The sockets are a follower's, which carry many `6:` requests: replies to earlier
    /// ones may arrive at any time and are not taken for anything else.
    following: bool,
    /// The server answered `5:` as unknown: it speaks protocol version 1.
    without_publish_once: bool,
    /// When the longer operation this client is part of (a follower) runs out of
    /// `--max-time`: its operations end then at the latest.
    within: Option<Instant>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.link.name())
            .field("config", &self.config)
            .finish()
    }
}

/// What `3:0` found.
enum Zero {
    /// Message 0.
    Here(Entry),
    /// Trimmed by retention: a reader from the beginning missed it.
    Trimmed,
    /// Not there: not published yet, or never a message (the clustered store's ids
    /// start at 1). Once a later id exists, it never will be.
    Absent,
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
            warn: None,
            interrupt: None,
            uploading: None,
            used: false,
            following: false,
            without_publish_once: false,
            within: None,
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
        self.deadline = self.fresh_deadline(self.within);
        Ok(())
    }

    /// The clocks of an operation starting now; `end` is when a longer one that it is part
    /// of (a follower) runs out of `--max-time`, if it does.
    fn fresh_deadline(&self, end: Option<Instant>) -> Deadline {
        let now = Instant::now();
        let deadline = match (end, self.config.max_time) {
            (Some(end), Some(max_time)) => {
                Deadline::new(now, self.config.timeout, None).ending_at(end, max_time)
            }
            _ => Deadline::new(now, self.config.timeout, self.config.max_time),
        };
        deadline.with_refusal_grace(self.config.refusal_grace)
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

    /// Tells `warn` what a person should know although nothing failed (a server without
    /// `5:`, met by [`Client::publish`], which then publishes the version-1 way).
    pub fn on_warning(&mut self, warn: Warn) {
        self.warn = Some(warn);
    }

    /// Ends any operation, while it waits, as soon as `interrupt` says so (it is asked at
    /// least every [`INTERRUPT_CHECK`]): with [`ClientError::Interrupted`], or the end of
    /// a [`Follow`].
    pub fn interrupt_when(&mut self, interrupt: Interrupt) {
        self.interrupt = Some(interrupt);
    }

    fn interrupted(&mut self) -> bool {
        self.interrupt.as_mut().is_some_and(|stop| stop())
    }

    fn warning(&mut self, text: &str) {
        if let Some(warn) = &mut self.warn {
            warn(text);
        }
    }

    /// The server this client talks to (the address that answered, once one has).
    pub fn server(&self) -> SocketAddr {
        self.link.server()
    }

    /// The local address replies to the current (or last) operation come to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.link.local_addr()
    }

    /// One message.
    pub fn get(&mut self, id: MessageId) -> Result<Entry, ClientError> {
        self.begin()?;
        self.get_on_this_socket(id)
    }

    /// One message on the current sockets, or `None` if there is no such message.
    /// Message 0, read with `3:0` on the sockets in use: a reader from the very beginning
    /// needs it, since `6:0` leaves it out.
    fn zero_on_this_socket(&mut self) -> Result<Zero, ClientError> {
        match self.get_on_this_socket(MessageId(0)) {
            Ok(entry) => Ok(Zero::Here(entry)),
            Err(ClientError::Server {
                code: ErrorCode::MsgNotFound,
                reason,
            }) if reason.starts_with(b"no longer kept") => Ok(Zero::Trimmed),
            Err(ClientError::Server {
                code: ErrorCode::MsgNotFound,
                ..
            }) => Ok(Zero::Absent),
            Err(e) => Err(e),
        }
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

    /// The newest `n` messages, oldest first (`n` = 0: all), all at once: see
    /// [`Client::last_pages`], which this collects, for a board too large to hold.
    pub fn last(&mut self, n: u64) -> Result<Vec<Message>, ClientError> {
        let mut all = Vec::new();
        for page in self.last_pages(n) {
            all.extend(page?.messages);
        }
        Ok(all)
    }

    /// In classic mode: `2:` then a `3:` per id, each on a socket of its own, all under
    /// the operation's deadlines.
    fn last_classic(&mut self, n: u64) -> Result<Vec<Message>, ClientError> {
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
    /// read is reported, not waited past, unless it is the late reply of a session step.
    fn request(&mut self, req: BoardRequest) -> Result<Response, ClientError> {
        self.request_pdu(req.to_bytes(), req.expect())
    }

    /// [`Client::request`] of a request already encoded, its reply read as `expect`.
    fn request_pdu(&mut self, pdu: Bytes, expect: Expect) -> Result<Response, ClientError> {
        let mut offers_lost = 0;
        loop {
            let reply =
                self.exchange(pdu.clone(), |r| match Response::parse(r.clone(), expect) {
                    Ok(resp) => Ok(session::Verdict::Answer(0, resp)),
                    Err(_) if session::late(&r) => Ok(session::Verdict::Ignore),
                    Err(e) => Err(format!("{e}, got {}", excerpt(&r))),
                })?;
            match self.settle(reply, expect) {
                // Only fetching a download offer can meet `4:unknown session` here: its
                // session was dropped before it was fetched (a full server gave its room
                // to a newcomer, or it expired). A board request is a read, so ask again.
                Err(e) if e.is_lost_session() && offers_lost < MAX_OFFERS_LOST => {
                    offers_lost += 1;
                }
                settled => return settled,
            }
        }
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

//! The request handler: one datagram in, at most one datagram out.
//!
//! [`Handler::handle`] is the one entry point of the datagram path: it parses each datagram
//! once into a [`Request`], runs layer-1 requests against the board and routes layer-2
//! requests through the session manager, and says in typed values what the driver needs
//! (the request's kind, the reply and its code, whether the work must leave the receive
//! loop). Time comes in as an argument, so the handler runs the same under the UDP driver
//! and in tests without sockets.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mboard_protocol::{
    BoardRequest, ErrorCode, PublishToken, Request, RequestKind, Response, SessionId, encode_ids,
    ids_reply_len, messages_reply_len,
};
use tracing::{debug, warn};

use crate::board::{Board, BoardError, Published};
use crate::config::Limits;
use crate::reply::Reply;
use crate::session::{Outcome, SessionManager, Stats};

/// Answers datagrams for one board.
#[derive(Debug)]
pub struct Handler<B> {
    board: B,
    /// Held only for table operations, never across an await or a board call.
    sessions: Mutex<SessionManager>,
    limits: Limits,
    /// Messages published through this handler, for metrics.
    publishes: AtomicU64,
    /// `5:` publishes answered with the id their token already had, storing nothing.
    duplicates: AtomicU64,
}

/// What [`Handler::handle`] made of one datagram.
#[derive(Debug)]
pub struct Handled {
    /// The request it was, or claimed to be (`None`: not a request at all).
    pub kind: Option<RequestKind>,
    /// What to send back.
    pub answer: Answer,
}

fn storage_failure(e: &BoardError) -> Reply {
    warn!(error = %e, "board failure");
    Reply::error(ErrorCode::ErrTransm, "storage failure")
}

impl<B: Board> Handler<B> {
    /// A handler over `board` with these limits; `seed` seeds session ids.
    pub fn new(board: B, limits: Limits, seed: u64) -> Self {
        Handler {
            board,
            sessions: Mutex::new(SessionManager::new(limits.clone(), seed)),
            limits,
            publishes: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Messages published (acknowledged) through this handler.
    pub fn publishes(&self) -> u64 {
        self.publishes.load(Ordering::Relaxed)
    }

    /// `5:` publishes answered from the token table, storing nothing.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// How long an idle session lives.
    pub fn session_timeout(&self) -> Duration {
        self.limits.session_timeout
    }

    /// The board this handler serves.
    pub fn board(&self) -> &B {
        &self.board
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, SessionManager> {
        // A panic elsewhere must not take the whole server down with it; the table is
        // consistent between calls, so keep using it.
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Session counters.
    pub fn stats(&self) -> Stats {
        self.sessions().stats()
    }

    /// Drops idle sessions; returns the next instant worth calling again, if any.
    pub fn expire(&self, now: Instant) -> Option<Instant> {
        let mut sessions = self.sessions();
        let expired = sessions.expire(now);
        if expired > 0 {
            debug!(expired, "sessions expired");
        }
        sessions.next_expiry()
    }

    /// Answers one datagram from `from`: the datagram path's one entry point.
    ///
    /// Takes the handler by `Arc` because work that must leave the receive loop (a large
    /// reply to build, a publish waiting for the disk) comes back as an [`Answer`] that
    /// outlives this call.
    pub async fn handle(
        self: &Arc<Self>,
        now: Instant,
        from: SocketAddr,
        datagram: Bytes,
    ) -> Handled {
        let request_len = datagram.len();
        let request = match Request::parse_classified(datagram) {
            Ok(request) => request,
            Err(rejected) => {
                debug!(%from, error = %rejected.error, "refused datagram");
                let reply = Reply::error(rejected.error.code(), rejected.error.to_string());
                return Handled {
                    kind: rejected.kind,
                    answer: Answer::Reply(reply),
                };
            }
        };
        let kind = Some(request.kind());
        let answer = match request {
            Request::Board(req) => self.execute(now, from, req).await,
            Request::Session(req) => self.session(now, from, req).await,
        };
        let answer = self.limit_amplification(now, from, request_len, answer);
        Handled { kind, answer }
    }

    /// Keeps what an unvalidated address is sent within the amplification allowance.
    ///
    /// A spoofed request makes us send to its victim; until an address has echoed a
    /// session id we sent it, a direct reply larger than the allowance goes out as a
    /// download offer instead, which only the real requester will follow. Offers, errors,
    /// session opens and acknowledgements fit in the allowance's 64-byte floor.
    fn limit_amplification(
        &self,
        now: Instant,
        from: SocketAddr,
        request_len: usize,
        answer: Answer,
    ) -> Answer {
        let Answer::Reply(reply) = answer else {
            return answer;
        };
        match self.limits.amplification_allowance(from, request_len) {
            Some(allowance) if reply.len() > allowance => {
                let mut sessions = self.sessions();
                if sessions.is_validated(from, now) {
                    Answer::Reply(reply)
                } else {
                    Answer::Reply(legacy(sessions.offer(now, from, reply.into_bytes())))
                }
            }
            _ => Answer::Reply(reply),
        }
    }

    /// A layer-2 request: the session manager answers it, or hands back an assembled
    /// request to execute.
    async fn session(
        self: &Arc<Self>,
        now: Instant,
        from: SocketAddr,
        req: mboard_protocol::SessionRequest,
    ) -> Answer {
        let outcome = self.sessions().handle(now, from, req);
        match outcome {
            Outcome::Reply(reply) => Answer::Reply(legacy(reply)),
            Outcome::Nothing => Answer::Silent,
            Outcome::Execute { sid, request } => self.commit(now, from, sid, request).await,
        }
    }

    /// Executes a committed upload; whenever its reply is ready, it becomes what every
    /// later commit of the session replays.
    async fn commit(
        self: &Arc<Self>,
        now: Instant,
        from: SocketAddr,
        sid: SessionId,
        request: Bytes,
    ) -> Answer {
        let answer = match Request::parse(request) {
            Ok(Request::Board(req)) => self.execute(now, from, req).await,
            Ok(Request::Session(_)) => Answer::Reply(Reply::error(
                ErrorCode::UnknownControl,
                "not a board request",
            )),
            Err(e) => Answer::Reply(Reply::error(e.code(), e.to_string())),
        };
        let this = self.clone();
        answer.then(move |reply| {
            this.sessions().finish(sid, reply.bytes().clone());
            reply
        })
    }

    /// Runs a layer-1 request; a reply too large for a datagram becomes a download.
    async fn execute(
        self: &Arc<Self>,
        now: Instant,
        from: SocketAddr,
        req: BoardRequest,
    ) -> Answer {
        match req {
            // A disk-backed board makes a publish wait for its group commit: that leaves the
            // receive loop, so the loop keeps receiving and concurrent publishes share a sync.
            BoardRequest::Publish(text) if self.board.defers_publish() => {
                let this = self.clone();
                Answer::Wait(Box::pin(async move { this.publish(from, text).await }))
            }
            BoardRequest::Publish(text) => Answer::Reply(self.publish(from, text).await),
            BoardRequest::PublishOnce { token, text } if self.board.defers_publish() => {
                let this = self.clone();
                Answer::Wait(Box::pin(async move {
                    this.publish_once(from, token, text).await
                }))
            }
            BoardRequest::PublishOnce { token, text } => {
                Answer::Reply(self.publish_once(from, token, text).await)
            }
            BoardRequest::After { .. } => {
                Answer::Reply(Reply::error(ErrorCode::UnknownControl, "unknown request 6"))
            }
            BoardRequest::Get(id) => self.get(now, from, id),
            BoardRequest::Ids(n) => match self.board.span(n) {
                Ok(span) => self.sized(
                    now,
                    from,
                    ids_reply_len(span.count, span.id_digits),
                    move |_, out| {
                        encode_ids(span.ids(), out);
                        Ok(())
                    },
                ),
                Err(e) => Answer::Reply(storage_failure(&e)),
            },
            BoardRequest::Last(n) => match self.board.span(n) {
                Ok(span) => self.sized(
                    now,
                    from,
                    messages_reply_len(span.count, span.records),
                    move |board, out| board.encode_messages(&span, out),
                ),
                Err(e) => Answer::Reply(storage_failure(&e)),
            },
        }
    }

    async fn publish(&self, from: SocketAddr, text: Bytes) -> Reply {
        match self.board.publish(from, text).await {
            Ok(id) => {
                self.publishes.fetch_add(1, Ordering::Relaxed);
                Reply::new(&Response::Published(id))
            }
            Err(e) => storage_failure(&e),
        }
    }

    /// `5:<token>:<text>`: the store decides, atomically, whether the token is new.
    async fn publish_once(&self, from: SocketAddr, token: PublishToken, text: Bytes) -> Reply {
        match self.board.publish_once(from, token, text).await {
            Ok(published) => {
                let counter = match published {
                    Published::Stored(_) => &self.publishes,
                    Published::Duplicate(_) => &self.duplicates,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Reply::new(&Response::Published(published.id()))
            }
            // A store without a token table answers as a server without `5:` would.
            Err(BoardError::Unsupported(_)) => {
                Reply::error(ErrorCode::UnknownControl, "unknown request 5")
            }
            Err(e) => storage_failure(&e),
        }
    }

    /// `3:<id>`, sized first and read when built: a large text is read off the receive
    /// loop, and not at all if the reply is refused as busy.
    fn get(
        self: &Arc<Self>,
        now: Instant,
        from: SocketAddr,
        id: mboard_protocol::MessageId,
    ) -> Answer {
        match self.board.entry_len(id) {
            Ok(Some(len)) => {
                let size = 2 + len as u64;
                self.sized(now, from, size, move |board, out| {
                    // Boards only grow, so a message that had a length still exists.
                    let entry = board.get(id)?.ok_or_else(|| {
                        BoardError::Storage(
                            format!("storage failure: message {id} vanished").into(),
                        )
                    })?;
                    Response::Entry(entry).encode(out);
                    Ok(())
                })
            }
            Ok(None) => Answer::Reply(Reply::error(
                ErrorCode::MsgNotFound,
                format!("no message {id}"),
            )),
            Err(e) => Answer::Reply(storage_failure(&e)),
        }
    }

    /// A reply of a known `size`: built now if it fits a datagram; otherwise a download,
    /// reserved now (so an oversized reply is refused before anything is copied) and built
    /// later, off the receive loop.
    fn sized<F>(self: &Arc<Self>, now: Instant, from: SocketAddr, size: u64, encode: F) -> Answer
    where
        F: FnOnce(&B, &mut Vec<u8>) -> Result<(), BoardError> + Send + 'static,
    {
        if size <= self.limits.max_datagram as u64 {
            let mut out = Vec::with_capacity(size as usize);
            return Answer::Reply(match encode(&self.board, &mut out) {
                Ok(()) => Reply::ok(Bytes::from(out)),
                Err(e) => storage_failure(&e),
            });
        }
        let reservation = match self.sessions().reserve(now, from, size) {
            Ok(r) => r,
            Err(busy) => return Answer::Reply(legacy(busy)),
        };
        let this = self.clone();
        Answer::Build(Box::new(move || {
            let mut out = Vec::with_capacity(size as usize);
            match encode(&this.board, &mut out) {
                Ok(()) => {
                    debug_assert_eq!(out.len() as u64, size, "span disagrees with reply");
                    legacy(this.sessions().fill(reservation, Bytes::from(out)))
                }
                Err(e) => {
                    this.sessions().cancel(reservation);
                    storage_failure(&e)
                }
            }
        }))
    }
}

/// A reply the session manager encoded (until it answers in typed values).
fn legacy(bytes: Bytes) -> Reply {
    match bytes.first().copied().and_then(ErrorCode::from_byte) {
        Some(code) => Reply::error(code, bytes.slice(2..)),
        None if bytes.first() == Some(&b'd') => {
            match Response::parse(bytes.clone(), mboard_protocol::Expect::Closed) {
                Ok(r) => Reply::new(&r),
                Err(_) => Reply::ok(bytes),
            }
        }
        None => Reply::ok(bytes),
    }
}

/// A reply that waits for the board (a publish waiting for its group commit).
pub type Waiting = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// What to send back for one datagram.
pub enum Answer {
    /// Nothing (a commit that is already executing: the client's resend gets the reply).
    Silent,
    /// This reply, now.
    Reply(Reply),
    /// A reply that takes a while to build (a large download): run this away from the
    /// receive loop, such as on a blocking thread, then send what it returns.
    Build(Box<dyn FnOnce() -> Reply + Send>),
    /// A reply that waits for the board: await it in a task of its own, then send it.
    Wait(Waiting),
}

impl Answer {
    /// The reply to send, building or awaiting it here if need be.
    pub async fn resolve(self) -> Option<Reply> {
        match self {
            Answer::Silent => None,
            Answer::Reply(reply) => Some(reply),
            Answer::Build(build) => Some(build()),
            Answer::Wait(wait) => Some(wait.await),
        }
    }

    /// The same answer, with `f` applied to its reply whenever that is ready.
    fn then(self, f: impl FnOnce(Reply) -> Reply + Send + 'static) -> Answer {
        match self {
            Answer::Silent => Answer::Silent,
            Answer::Reply(reply) => Answer::Reply(f(reply)),
            Answer::Build(build) => Answer::Build(Box::new(move || f(build()))),
            Answer::Wait(wait) => Answer::Wait(Box::pin(async move { f(wait.await) })),
        }
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Silent => f.write_str("Silent"),
            Answer::Reply(reply) => f.debug_tuple("Reply").field(reply).finish(),
            Answer::Build(_) => f.write_str("Build(..)"),
            Answer::Wait(_) => f.write_str("Wait(..)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use mboard_protocol::{Entry, Expect, Message, MessageId};

    use super::*;
    use crate::board::{MemoryBoard, Span};

    fn from() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 5000))
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    fn ask<B: Board>(h: &Arc<Handler<B>>, now: Instant, pdu: &[u8]) -> Option<Bytes> {
        let datagram = Bytes::copy_from_slice(pdu);
        run(async { h.handle(now, from(), datagram).await.answer.resolve().await })
            .map(Reply::into_bytes)
    }

    fn text(reply: Option<Bytes>) -> String {
        String::from_utf8_lossy(&reply.expect("a reply")).into_owned()
    }

    /// A board whose storage always fails.
    struct Broken;

    impl Board for Broken {
        async fn publish(&self, _: SocketAddr, _: Bytes) -> Result<MessageId, BoardError> {
            Err(BoardError::Storage("disk on fire".into()))
        }
        fn get(&self, _: MessageId) -> Result<Option<Entry>, BoardError> {
            Err(BoardError::Poisoned)
        }
        fn span(&self, _: u64) -> Result<Span, BoardError> {
            Ok(Span {
                start: 0,
                count: 1000,
                id_digits: mboard_protocol::digits_in_range(0, 1000),
                records: 100_000,
            })
        }

        fn messages(&self, _: &Span) -> Result<Vec<Message>, BoardError> {
            Err(BoardError::Poisoned)
        }
    }

    #[test]
    fn storage_failures_are_answered_and_release_reservations() {
        let h = Arc::new(Handler::new(Broken, Limits::default(), 1));
        let now = Instant::now();
        assert_eq!(text(ask(&h, now, b"1:x")), "4:storage failure");
        // A store without a token table answers `5:` as a server without it would.
        let once = b"5:0b7f5d2e-8c4a-4f1e-9d3b-6a2c1e0f9b8d:x";
        assert_eq!(text(ask(&h, now, once)), "3:unknown request 5");
        assert_eq!(text(ask(&h, now, b"3:1")), "4:storage failure");
        // Sized as a download, then the read fails: the reservation is given back.
        assert_eq!(text(ask(&h, now, b"4:0")), "4:storage failure");
        assert_eq!(h.stats().sessions, 0);
        assert_eq!(h.stats().reserved, 0);
        // Ids come from the span alone, so listing them needs no read that could fail.
        assert!(text(ask(&h, now, b"2:0")).starts_with("d:"));
    }

    #[test]
    fn assembled_requests_must_be_board_requests() {
        let h = Arc::new(Handler::new(MemoryBoard::new(), Limits::default(), 1));
        let now = Instant::now();
        for (pdu, want) in [
            (&b"a:1:1"[..], "3:not a board request"),
            (b"9:x", "3:unknown request 9"),
            (b"2:x", "1:bad number"),
            (b"1:", "1:empty text"),
        ] {
            let open = ask(&h, now, format!("a:{}:100", pdu.len()).as_bytes()).expect("open");
            let Ok(Response::Opened { sid, .. }) = Response::parse(open, Expect::Opened) else {
                panic!("open")
            };
            let mut block = format!("b:{sid}:0:").into_bytes();
            block.extend_from_slice(pdu);
            ask(&h, now, &block);
            assert_eq!(text(ask(&h, now, format!("c:{sid}").as_bytes())), want);
            // The refusal is the committed reply, replayed like any other.
            assert_eq!(text(ask(&h, now, format!("c:{sid}").as_bytes())), want);
        }
    }

    /// A board that counts full reads.
    struct Counting {
        inner: MemoryBoard,
        gets: std::sync::atomic::AtomicU32,
    }

    impl Board for Counting {
        async fn publish(&self, from: SocketAddr, text: Bytes) -> Result<MessageId, BoardError> {
            self.inner.publish(from, text).await
        }
        fn get(&self, id: MessageId) -> Result<Option<Entry>, BoardError> {
            self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.get(id)
        }
        fn entry_len(&self, id: MessageId) -> Result<Option<usize>, BoardError> {
            self.inner.entry_len(id)
        }
        fn span(&self, n: u64) -> Result<Span, BoardError> {
            self.inner.span(n)
        }
        fn messages(&self, span: &Span) -> Result<Vec<Message>, BoardError> {
            self.inner.messages(span)
        }
    }

    #[test]
    fn a_large_get_is_sized_before_it_is_read() {
        let limits = Limits {
            max_session_memory: 3_000,
            ..Limits::default()
        };
        let board = Counting {
            inner: MemoryBoard::new(),
            gets: Default::default(),
        };
        let h = Arc::new(Handler::new(board, limits, 1));
        let now = Instant::now();
        assert_eq!(
            text(ask(&h, now, &[b"1:".as_slice(), &[b'x'; 5_000]].concat())),
            "0:0"
        );
        assert_eq!(text(ask(&h, now, b"3:0")), "4:busy");
        let gets = || h.board().gets.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(gets(), 0, "refused without reading the message");
        // A reply that fits is read once, when built.
        assert_eq!(text(ask(&h, now, b"1:small")), "0:1");
        assert!(text(ask(&h, now, b"3:1")).ends_with(":small"));
        assert_eq!(gets(), 1);
    }

    #[test]
    fn large_replies_become_offers_or_busy() {
        let limits = Limits {
            max_session_memory: 10_000,
            ..Limits::default()
        };
        let h = Arc::new(Handler::new(MemoryBoard::new(), limits, 1));
        let now = Instant::now();
        assert_eq!(
            text(ask(&h, now, &[b"1:".as_slice(), &[b'x'; 2000]].concat())),
            "0:0"
        );
        let reply = ask(&h, now, b"3:0").expect("reply");
        let Ok(Response::Offer(offer)) = Response::parse(reply, Expect::Entry) else {
            panic!("offer")
        };
        assert!(offer.size > 2000 && offer.block_size == 1412, "{offer:?}");
        for _ in 0..4 {
            ask(&h, now, &[b"1:".as_slice(), &[b'y'; 2000]].concat());
        }
        // Five 2,000-byte messages exceed what is left of the 10,000-byte budget.
        assert_eq!(text(ask(&h, now, b"4:0")), "4:busy");
        assert_eq!(h.stats().sessions, 1);
    }
}

//! The request handler: one datagram in, at most one datagram out.
//!
//! [`Handler::handle`] is the one entry point of the datagram path: it parses each datagram
//! once into a [`Request`], runs layer-1 requests against the board and routes layer-2
//! requests through the session manager, and says in typed values what the driver needs
//! (the request's kind, the reply and its code, whether the work must leave the receive
//! loop). Time comes in as an argument, so the handler runs the same under the UDP driver
//! and in tests without sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mboard_protocol::{
    BoardRequest, ErrorCode, PublishToken, Request, Response, SessionId, encode_ids, ids_reply_len,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::board::warnings::Warnings;
use crate::board::{Board, BoardError, Published, Refusal};
use crate::config::Limits;
use crate::reply::Reply;
use crate::session::{Outcome, SessionManager, Stats};

mod answer;
mod follow;
#[cfg(test)]
mod follow_tests;
mod read;
#[cfg(test)]
mod retention_tests;
#[cfg(test)]
pub(crate) mod tests;

use answer::offered;
pub(crate) use answer::{Answer, Handled, Pending};

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
    /// Held `6:` requests, and those a publish or a deadline has made due.
    follow: follow::Followers,
    /// Publishes waiting for the disk (`--max-queued-publishes`), and their bytes
    /// (`--max-queued-bytes`): taken without waiting, so that a stalled disk is answered
    /// `4:busy` instead of holding up a receive loop.
    queued: Arc<Semaphore>,
    queued_bytes: Arc<Semaphore>,
    /// `3:` reads waiting for the store to catch up (`--max-catching-up`): taken without
    /// waiting, so that a flood of reads above the replica's newest, while the stream is
    /// slow to answer, is answered `4:busy` instead of piling up in the receive loops.
    catching_up: Arc<Semaphore>,
    /// Board failures are logged once per interval each, with a count of the rest.
    warnings: Warnings,
    /// Whether a publish wakes held `6:` requests itself: not on a board that reports its
    /// arrivals ([`Board::arrivals`]), where the message may be readable only later.
    wakes_on_publish: bool,
}

/// A publish's place in the queue for the disk, held until it is answered.
struct Queued {
    _slot: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

fn busy() -> Reply {
    Reply::error(ErrorCode::ErrTransm, Refusal::Busy.to_string())
}

impl<B: Board> Handler<B> {
    /// A handler over `board` with these limits; `seed` seeds session ids.
    pub fn new(board: B, limits: Limits, seed: u64) -> Self {
        Handler {
            wakes_on_publish: board.arrivals().is_none(),
            board,
            sessions: Mutex::new(SessionManager::new(limits.clone(), seed)),
            follow: follow::Followers::new(&limits),
            queued: Arc::new(Semaphore::new(
                limits.max_queued_publishes.min(Semaphore::MAX_PERMITS),
            )),
            queued_bytes: Arc::new(Semaphore::new(
                usize::try_from(limits.max_queued_bytes)
                    .unwrap_or(usize::MAX)
                    .min(Semaphore::MAX_PERMITS),
            )),
            catching_up: Arc::new(Semaphore::new(
                limits.max_catching_up.min(Semaphore::MAX_PERMITS),
            )),
            limits,
            publishes: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            warnings: Warnings::default(),
        }
    }

    /// The reply for a failure of the board: a trimmed message is `2:no longer kept`; a
    /// publish the store refused says why (the store logs that itself, once); anything
    /// else is `4:storage failure`, logged once per interval with a count of repeats.
    fn board_failure(&self, e: &BoardError) -> Reply {
        match e {
            BoardError::NotKept => Reply::error(ErrorCode::MsgNotFound, "no longer kept"),
            BoardError::Refused(why) => Reply::error(ErrorCode::ErrTransm, why.to_string()),
            e => {
                let text = e.to_string();
                if let Some(line) = self.warnings.admit(&text, Instant::now()) {
                    let repeats = line.suffix(self.warnings.interval());
                    warn!(error = %text, "board failure{repeats}");
                }
                Reply::error(ErrorCode::ErrTransm, "storage failure")
            }
        }
    }

    /// A place in the queue for the disk for a publish of `len` bytes, or `None` when the
    /// queue is full.
    fn queue(&self, len: usize) -> Option<Queued> {
        let slot = self.queued.clone().try_acquire_owned().ok()?;
        let bytes = u32::try_from(len).unwrap_or(u32::MAX);
        let bytes = self
            .queued_bytes
            .clone()
            .try_acquire_many_owned(bytes)
            .ok()?;
        Some(Queued {
            _slot: slot,
            _bytes: bytes,
        })
    }

    /// The limits in force.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Messages published (acknowledged) through this handler.
    pub(crate) fn publishes(&self) -> u64 {
        self.publishes.load(Ordering::Relaxed)
    }

    /// `5:` publishes answered from the token table, storing nothing.
    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// How long an idle session lives.
    pub(crate) fn session_timeout(&self) -> Duration {
        self.limits.session_timeout
    }

    /// The board this handler serves.
    pub(crate) fn board(&self) -> &B {
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
    pub(crate) fn stats(&self) -> Stats {
        self.sessions().stats()
    }

    /// Drops idle sessions; returns the next instant worth calling again, if any. Also
    /// reports the board failures kept quiet in intervals that have ended.
    pub(crate) fn expire(&self, now: Instant) -> Option<Instant> {
        for (error, n) in self.warnings.flush(now) {
            let n = crate::board::warnings::thousands(n);
            warn!(%error, "board failure: {n} more like it were not logged");
        }
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
    pub(crate) async fn handle(
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
            Request::Board(req) => self.execute(now, from, req, Some(request_len)).await,
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
        self: &Arc<Self>,
        now: Instant,
        from: SocketAddr,
        request_len: usize,
        answer: Answer,
    ) -> Answer {
        match answer {
            Answer::Reply(reply) => Answer::Reply(self.limit_reply(now, from, request_len, reply)),
            // A reply that waited for the board (a `3:` of an id a replica had yet to
            // receive) is held to the same rule, once it is ready.
            Answer::Wait(wait) => {
                let this = self.clone();
                Answer::Wait(Box::pin(async move {
                    let reply = wait.await;
                    this.limit_reply(Instant::now(), from, request_len, reply)
                }))
            }
            other => other,
        }
    }

    fn limit_reply(
        &self,
        now: Instant,
        from: SocketAddr,
        request_len: usize,
        reply: Reply,
    ) -> Reply {
        match self.limits.amplification_allowance(from, request_len) {
            Some(allowance) if reply.len() > allowance => {
                let mut sessions = self.sessions();
                if sessions.is_validated(from, now) {
                    reply
                } else {
                    offered(sessions.offer(now, from, reply.into_bytes()))
                }
            }
            _ => reply,
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
            Outcome::Respond(r) => Answer::Reply(Reply::new(&r)),
            Outcome::Refuse(e) => Answer::Reply(e.into()),
            Outcome::Replay(reply) => Answer::Reply(reply),
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
            // Inside an upload, `6:` is answered without waiting: the commit's reply is
            // what every later commit replays.
            Ok(Request::Board(req)) => self.execute(now, from, req, None).await,
            Ok(Request::Session(_)) => Answer::Reply(Reply::error(
                ErrorCode::UnknownControl,
                "not a board request",
            )),
            Err(e) => Answer::Reply(Reply::error(e.code(), e.to_string())),
        };
        let this = self.clone();
        answer.then(move |reply| {
            this.sessions().finish(sid, reply.clone());
            reply
        })
    }

    /// Runs a layer-1 request; a reply too large for a datagram becomes a download.
    ///
    /// `hold` is the request datagram's length when a `6:` may be held (not inside an
    /// upload), for the amplification allowance of the reply that wakes it.
    async fn execute(
        self: &Arc<Self>,
        now: Instant,
        from: SocketAddr,
        req: BoardRequest,
        hold: Option<usize>,
    ) -> Answer {
        match req {
            // A disk-backed board makes a publish wait for its group commit: that leaves the
            // receive loop, so the loop keeps receiving and concurrent publishes share a sync.
            // The wait holds a place in the queue for the disk, taken without waiting.
            BoardRequest::Publish(text) if self.board.defers_publish() => {
                let this = self.clone();
                self.deferred(text.len(), async move { this.publish(from, text).await })
            }
            BoardRequest::Publish(text) => Answer::Reply(self.publish(from, text).await),
            BoardRequest::PublishOnce { token, text } if self.board.defers_publish() => {
                let this = self.clone();
                let len = text.len();
                self.deferred(
                    len,
                    async move { this.publish_once(from, token, text).await },
                )
            }
            BoardRequest::PublishOnce { token, text } => {
                Answer::Reply(self.publish_once(from, token, text).await)
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
                Err(e) => Answer::Reply(self.board_failure(&e)),
            },
            BoardRequest::Last(n) => match self.board.span(n) {
                Ok(span) => self.messages(now, from, span),
                Err(e) => Answer::Reply(self.board_failure(&e)),
            },
            BoardRequest::After {
                after,
                max,
                wait_ms,
            } => self.after(
                now,
                from,
                follow::After {
                    after,
                    max,
                    wait_ms,
                },
                hold,
            ),
        }
    }

    /// A publish of `len` bytes that waits for the board, away from the receive loop,
    /// holding a place in the queue for the disk; `4:busy` if there is none.
    fn deferred(&self, len: usize, reply: impl Future<Output = Reply> + Send + 'static) -> Answer {
        let Some(queued) = self.queue(len) else {
            return Answer::Reply(busy());
        };
        Answer::Wait(Box::pin(async move {
            let reply = reply.await;
            drop(queued);
            reply
        }))
    }

    async fn publish(&self, from: SocketAddr, text: Bytes) -> Reply {
        match self.board.publish(from, text).await {
            Ok(id) => {
                self.publishes.fetch_add(1, Ordering::Relaxed);
                if self.wakes_on_publish {
                    self.follow.published(id);
                }
                Reply::new(&Response::Published(id))
            }
            Err(e) => self.board_failure(&e),
        }
    }

    /// `5:<token>:<text>`: the store decides, atomically, whether the token is new.
    async fn publish_once(&self, from: SocketAddr, token: PublishToken, text: Bytes) -> Reply {
        match self.board.publish_once(from, token, text).await {
            Ok(Published::Stored(id)) => {
                self.publishes.fetch_add(1, Ordering::Relaxed);
                if self.wakes_on_publish {
                    self.follow.published(id);
                }
                Reply::new(&Response::Published(id))
            }
            Ok(Published::Duplicate(id)) => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                Reply::new(&Response::Published(id))
            }
            // A store without a token table answers as a server without `5:` would.
            Err(BoardError::Unsupported(_)) => {
                Reply::error(ErrorCode::UnknownControl, "unknown request 5")
            }
            Err(e) => self.board_failure(&e),
        }
    }
}

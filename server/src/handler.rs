//! The request handler: one datagram in, at most one datagram out.
//!
//! It parses each datagram once, runs layer-1 requests against the board, and routes
//! layer-2 requests through the session manager. Time comes in as an argument, so the
//! handler runs the same under the UDP driver and in tests without sockets.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mboard_protocol::{
    BoardRequest, ErrorCode, Request, Response, encode_ids, encode_messages, ids_reply_len,
    messages_reply_len,
};
use tracing::{debug, warn};

use crate::board::{Board, BoardError};
use crate::config::Limits;
use crate::session::{Outcome, SessionManager, Stats};

/// Answers datagrams for one board.
#[derive(Debug)]
pub struct Handler<B> {
    board: B,
    /// Held only for table operations, never across an await or a board call.
    sessions: Mutex<SessionManager>,
    max_datagram: usize,
    session_timeout: Duration,
}

fn error(code: ErrorCode, reason: impl Into<Bytes>) -> Bytes {
    Response::error(code, reason).to_bytes()
}

fn storage_failure(e: &BoardError) -> Bytes {
    warn!(error = %e, "board failure");
    error(ErrorCode::ErrTransm, "storage failure")
}

impl<B: Board> Handler<B> {
    /// A handler over `board` with these limits; `seed` seeds session ids.
    pub fn new(board: B, limits: Limits, seed: u64) -> Self {
        let (max_datagram, session_timeout) = (limits.max_datagram, limits.session_timeout);
        Handler {
            board,
            sessions: Mutex::new(SessionManager::new(limits, seed)),
            max_datagram,
            session_timeout,
        }
    }

    /// How long an idle session lives.
    pub fn session_timeout(&self) -> Duration {
        self.session_timeout
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

    /// Answers one datagram from `from`; `None` means send nothing.
    pub async fn handle(&self, now: Instant, from: SocketAddr, datagram: Bytes) -> Option<Bytes> {
        let request = match Request::parse(datagram) {
            Ok(request) => request,
            Err(e) => {
                debug!(%from, error = %e, "refused datagram");
                return Some(error(e.code(), e.to_string()));
            }
        };
        match request {
            Request::Board(req) => Some(self.execute(now, from, req).await),
            Request::Session(req) => {
                let outcome = self.sessions().handle(now, from, req);
                match outcome {
                    Outcome::Reply(reply) => Some(reply),
                    Outcome::Nothing => None,
                    Outcome::Execute { sid, request } => {
                        let reply = match Request::parse(request) {
                            Ok(Request::Board(req)) => self.execute(now, from, req).await,
                            Ok(Request::Session(_)) => {
                                error(ErrorCode::UnknownControl, "not a board request")
                            }
                            Err(e) => error(e.code(), e.to_string()),
                        };
                        self.sessions().finish(sid, reply.clone());
                        Some(reply)
                    }
                }
            }
        }
    }

    /// Runs a layer-1 request and returns its reply, or a download offer if it is too large.
    async fn execute(&self, now: Instant, from: SocketAddr, req: BoardRequest) -> Bytes {
        match req {
            BoardRequest::Publish(text) => match self.board.publish(from, text).await {
                Ok(id) => Response::Published(id).to_bytes(),
                Err(e) => storage_failure(&e),
            },
            BoardRequest::Get(id) => match self.board.get(id) {
                Ok(Some(entry)) => {
                    let size = 2 + entry.encoded_len() as u64;
                    self.sized(now, from, size, |out| {
                        Response::Entry(entry).encode(out);
                        Ok(())
                    })
                }
                Ok(None) => error(ErrorCode::MsgNotFound, format!("no message {id}")),
                Err(e) => storage_failure(&e),
            },
            BoardRequest::Ids(n) => match self.board.span(n) {
                Ok(span) => self.sized(
                    now,
                    from,
                    ids_reply_len(span.count, span.id_digits),
                    |out| {
                        encode_ids(self.board.ids(&span)?, out);
                        Ok(())
                    },
                ),
                Err(e) => storage_failure(&e),
            },
            BoardRequest::Last(n) => match self.board.span(n) {
                Ok(span) => self.sized(
                    now,
                    from,
                    messages_reply_len(span.count, span.records),
                    |out| {
                        encode_messages(self.board.messages(&span)?.iter(), out);
                        Ok(())
                    },
                ),
                Err(e) => storage_failure(&e),
            },
        }
    }

    /// Builds a reply of a known `size`: directly if it fits a datagram, else as a download
    /// reserved *before* building, so that an oversized reply is refused without copying.
    fn sized(
        &self,
        now: Instant,
        from: SocketAddr,
        size: u64,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), BoardError>,
    ) -> Bytes {
        let reservation = if size > self.max_datagram as u64 {
            match self.sessions().reserve(now, from, size) {
                Ok(r) => Some(r),
                Err(busy) => return busy,
            }
        } else {
            None
        };
        let mut out = Vec::with_capacity(size as usize);
        let built = encode(&mut out);
        debug_assert!(
            built.is_err() || out.len() as u64 == size,
            "span disagrees with reply"
        );
        match (built, reservation) {
            (Ok(()), None) => Bytes::from(out),
            (Ok(()), Some(r)) => self.sessions().fill(r, Bytes::from(out)),
            (Err(e), r) => {
                if let Some(r) = r {
                    self.sessions().cancel(r);
                }
                storage_failure(&e)
            }
        }
    }
}

//! The board-read answers: `3:` and `4:` replies, built at once when they fit a datagram,
//! and otherwise reserved as downloads and built off the receive loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mboard_protocol::{ErrorCode, MessageId, Response, messages_reply_len};

use super::answer::offered;
use super::{Answer, Handler};
use crate::board::{Board, BoardError, Span};
use crate::reply::Reply;

impl<B: Board> Handler<B> {
    /// The `4:`-format reply for the messages in `span`.
    pub(super) fn messages(self: &Arc<Self>, now: Instant, from: SocketAddr, span: Span) -> Answer {
        self.sized(
            now,
            from,
            messages_reply_len(span.count, span.records),
            move |board, out| board.encode_messages(&span, out),
        )
    }

    /// `3:<id>`, sized first and read when built: a large text is read off the receive
    /// loop, and not at all if the reply is refused as busy. An id retention has trimmed
    /// is `2:no longer kept`, also when it is trimmed between the two.
    pub(super) fn get(self: &Arc<Self>, now: Instant, from: SocketAddr, id: MessageId) -> Answer {
        self.get_or_catch_up(now, from, id, true)
    }

    /// `3:<id>` once the store has caught up: what it holds now is the answer.
    fn get_now(self: &Arc<Self>, now: Instant, from: SocketAddr, id: MessageId) -> Answer {
        self.get_or_catch_up(now, from, id, false)
    }

    fn get_or_catch_up(
        self: &Arc<Self>,
        now: Instant,
        from: SocketAddr,
        id: MessageId,
        catch_up: bool,
    ) -> Answer {
        match self.board.entry_len(id) {
            Ok(Some(len)) => {
                let size = 2 + len as u64;
                self.sized(now, from, size, move |board, out| {
                    // Ids are never reused, so a message that had a length and is gone now
                    // was trimmed.
                    let entry = board.get(id)?.ok_or(BoardError::NotKept)?;
                    Response::Entry(entry).encode(out);
                    Ok(())
                })
            }
            Ok(None) => match self.board.oldest() {
                Ok(_) if id < self.board.first_id() => Answer::Reply(Reply::error(
                    ErrorCode::MsgNotFound,
                    format!("no message {id}"),
                )),
                Ok(oldest) if id < oldest => {
                    Answer::Reply(self.board_failure(&BoardError::NotKept))
                }
                Ok(_) => match self.board.catch_up(id).filter(|_| catch_up) {
                    // The store knows of more than it can read yet: wait for it, then
                    // answer as if it had been there.
                    Some(wait) => {
                        // Its place among the reads waiting, held until it is answered.
                        let Ok(place) = self.catching_up.clone().try_acquire_owned() else {
                            return Answer::Reply(super::busy());
                        };
                        let this = self.clone();
                        Answer::Wait(Box::pin(async move {
                            let waited = wait.await;
                            drop(place);
                            if let Err(e) = waited {
                                return this.board_failure(&e);
                            }
                            let answer = this.get_now(Instant::now(), from, id);
                            let reply = match answer {
                                // This future is polled by the receive loop: a large
                                // reply is built on the blocking pool, as the loop
                                // would have built it.
                                Answer::Build(build) => {
                                    match tokio::task::spawn_blocking(build).await {
                                        Ok(reply) => Some(reply),
                                        Err(e) => {
                                            return this
                                                .board_failure(&BoardError::Storage(Box::new(e)));
                                        }
                                    }
                                }
                                other => other.resolve().await,
                            };
                            reply.unwrap_or_else(|| {
                                Reply::error(ErrorCode::MsgNotFound, format!("no message {id}"))
                            })
                        }))
                    }
                    None => Answer::Reply(Reply::error(
                        ErrorCode::MsgNotFound,
                        format!("no message {id}"),
                    )),
                },
                Err(e) => Answer::Reply(self.board_failure(&e)),
            },
            Err(e) => Answer::Reply(self.board_failure(&e)),
        }
    }

    /// A reply of a known `size`: built now if it fits a datagram; otherwise a download,
    /// reserved now (so an oversized reply is refused before anything is copied) and built
    /// later, off the receive loop. A reply that came out shorter (retention trimmed the
    /// oldest messages of its span meanwhile) is offered at the size it has.
    pub(super) fn sized<F>(
        self: &Arc<Self>,
        now: Instant,
        from: SocketAddr,
        size: u64,
        encode: F,
    ) -> Answer
    where
        F: FnOnce(&B, &mut Vec<u8>) -> Result<(), BoardError> + Send + 'static,
    {
        if size <= self.limits.max_datagram as u64 {
            let mut out = Vec::with_capacity(size as usize);
            return Answer::Reply(match encode(&self.board, &mut out) {
                Ok(()) => Reply::ok(Bytes::from(out)),
                Err(e) => self.board_failure(&e),
            });
        }
        let reservation = match self.sessions().reserve(now, from, size) {
            Ok(r) => r,
            Err(e) => return Answer::Reply(e.into()),
        };
        let this = self.clone();
        Answer::Build(Box::new(move || {
            let mut out = Vec::with_capacity(size as usize);
            match encode(&this.board, &mut out) {
                Ok(()) if out.len() as u64 == size => {
                    offered(this.sessions().fill(reservation, Bytes::from(out)))
                }
                Ok(()) => {
                    debug_assert!((out.len() as u64) < size, "span disagrees with reply");
                    let mut sessions = this.sessions();
                    sessions.cancel(reservation);
                    offered(sessions.offer(now, from, Bytes::from(out)))
                }
                Err(e) => {
                    this.sessions().cancel(reservation);
                    this.board_failure(&e)
                }
            }
        }))
    }
}

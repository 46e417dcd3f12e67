//! Sending answers: building what must be built, counting, the error-reply limit.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mboard_protocol::RequestKind;
use tokio::net::UdpSocket;
use tracing::debug;

use super::receiver::transient;
use crate::access;
use crate::handler::Answer;
use crate::limiter::RateLimiter;
use crate::metrics::{DropReason, Metrics, Shard};
use crate::reply::Reply;

/// What sending a reply needs: the socket, the loop's own shard of the metrics, and the
/// per-destination limit on error replies.
#[derive(Debug, Clone)]
pub(super) struct Sender {
    pub(super) socket: Arc<UdpSocket>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) shard: usize,
    pub(super) errors: Arc<RateLimiter>,
}

/// A request being answered: where its reply goes, and what metrics and the access log
/// say of it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Source {
    pub(super) kind: Option<RequestKind>,
    pub(super) len: usize,
    pub(super) from: SocketAddr,
    /// When its datagram was taken off the socket.
    pub(super) received: Instant,
}

impl Sender {
    pub(super) fn shard(&self) -> &Shard {
        self.metrics.shard(self.shard)
    }

    /// Sends an answer, building it on a blocking thread, or awaiting it, first if need be.
    pub(super) async fn deliver(&self, answer: Answer, source: Source) -> io::Result<()> {
        let reply = resolve(answer).await?;
        let code = reply.as_ref().map(Reply::code);
        self.shard().answered(source.kind, source.len, code);
        let sent = match reply {
            Some(reply) => self.send(&reply, source.from).await?,
            None => 0,
        };
        access::request(
            source.from,
            source.kind,
            source.len,
            code,
            sent,
            source.received,
        );
        Ok(())
    }

    /// Sends the answer to a held request (counted when it was received).
    pub(super) async fn deliver_held(&self, answer: Answer, to: SocketAddr) -> io::Result<()> {
        let reply = resolve(answer).await?;
        let sent = match &reply {
            Some(reply) => self.send(reply, to).await?,
            None => 0,
        };
        access::held_answer(to, reply.as_ref().map(Reply::code), sent);
        Ok(())
    }

    /// Sends `reply` to `to`, returning the bytes sent (0 if it was dropped).
    pub(super) async fn send(&self, reply: &Reply, to: SocketAddr) -> io::Result<usize> {
        // Replies to malformed input (`1` bad format, `3` unknown request) are limited per
        // destination. Every reply of ours that another mboard (or an echo service)
        // receives makes it answer `1` or `3` or publish, so one spoofed datagram naming
        // another server's address could otherwise start a loop between the two that never
        // ends; a loop carries one datagram, and the first reply dropped ends it.
        if reply.code().is_refusal() && !self.errors.allow(to, Instant::now()) {
            return Ok(0);
        }
        match self.socket.send_to(reply.bytes(), to).await {
            Ok(sent) => {
                self.shard().sent(sent);
                Ok(sent)
            }
            Err(e) if transient(&e) => {
                debug!(%to, error = %e, "send failed");
                self.shard().dropped(DropReason::SendError);
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }
}

/// The reply an answer stands for, built on a blocking thread or awaited if need be.
pub(super) async fn resolve(answer: Answer) -> io::Result<Option<Reply>> {
    Ok(match answer {
        Answer::Silent => None,
        Answer::Reply(reply) => Some(reply),
        Answer::Build(build) => Some(
            tokio::task::spawn_blocking(build)
                .await
                .map_err(io::Error::other)?,
        ),
        Answer::Wait(wait) => Some(wait.await),
    })
}

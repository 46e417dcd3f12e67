//! Sending answers: building what must be built, counting, the error-reply limit.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mboard_protocol::RequestKind;
use tokio::net::UdpSocket;
use tracing::debug;

use super::batch::{Sent, send_all};
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
    /// Datagrams per system call (`--io-batch`).
    pub(super) batch: usize,
}

/// Replies ready to leave together, with the requests they answer (`None`: a request
/// answered with silence, still counted and logged).
#[derive(Debug, Default)]
pub(super) struct Outbox {
    replies: Vec<(Option<Reply>, Source)>,
    /// Whether each reply may go (see [`Sender::may_send`]).
    allowed: Vec<bool>,
    /// What became of each reply that went.
    outcome: Vec<Sent>,
}

impl Outbox {
    pub(super) fn push(&mut self, reply: Option<Reply>, source: Source) {
        self.replies.push((reply, source));
    }

    /// The replies to send, in order, and where each goes.
    #[cfg(test)]
    pub(super) fn take(&mut self) -> Vec<(Option<Reply>, SocketAddr)> {
        self.replies.drain(..).map(|(r, s)| (r, s.from)).collect()
    }
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
        let mut outbox = Outbox::default();
        outbox.push(resolve(answer).await?, source);
        self.deliver_all(&mut outbox).await
    }

    /// Sends everything in `outbox`, a batch per system call, counting and logging each
    /// request as [`Sender::deliver`] does, and empties it.
    pub(super) async fn deliver_all(&self, outbox: &mut Outbox) -> io::Result<()> {
        if outbox.replies.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let Outbox {
            replies,
            allowed,
            outcome,
        } = outbox;
        allowed.clear();
        allowed.extend(replies.iter().map(|(reply, source)| {
            reply
                .as_ref()
                .is_some_and(|reply| self.may_send(reply, source.from, now))
        }));
        let datagrams: Vec<(&[u8], SocketAddr)> = replies
            .iter()
            .zip(allowed.iter())
            .filter(|(_, allowed)| **allowed)
            .filter_map(|((reply, source), _)| {
                Some((reply.as_ref()?.bytes().as_ref(), source.from))
            })
            .collect();
        self.send_counted(&datagrams, outcome).await?;
        let mut sent = outcome.iter();
        for ((reply, source), allowed) in replies.drain(..).zip(allowed.iter()) {
            let code = reply.as_ref().map(Reply::code);
            self.shard().answered(source.kind, source.len, code);
            // Only the replies that went have an outcome.
            let outcome = if *allowed { sent.next() } else { None };
            let bytes = outcome.map_or(0, |&outcome| self.count(outcome, source.from));
            access::request(
                source.from,
                source.kind,
                source.len,
                code,
                bytes,
                source.received,
            );
        }
        Ok(())
    }

    /// Sends the answer to a held request (counted when it was received).
    pub(super) async fn deliver_held(&self, answer: Answer, to: SocketAddr) -> io::Result<()> {
        match resolve(answer).await? {
            Some(reply) => {
                self.deliver_held_all(&mut vec![(reply, to)], &mut Vec::new())
                    .await
            }
            None => {
                access::held_answer(to, None, 0);
                Ok(())
            }
        }
    }

    /// Sends the answers to held requests that are ready now, a batch per system call,
    /// and empties `replies`.
    pub(super) async fn deliver_held_all(
        &self,
        replies: &mut Vec<(Reply, SocketAddr)>,
        outcome: &mut Vec<Sent>,
    ) -> io::Result<()> {
        let now = Instant::now();
        replies.retain(|(reply, to)| self.may_send(reply, *to, now));
        let datagrams: Vec<(&[u8], SocketAddr)> = replies
            .iter()
            .map(|(reply, to)| (reply.bytes().as_ref(), *to))
            .collect();
        self.send_counted(&datagrams, outcome).await?;
        for ((reply, to), &sent) in replies.drain(..).zip(outcome.iter()) {
            let bytes = self.count(sent, to);
            access::held_answer(to, Some(reply.code()), bytes);
        }
        Ok(())
    }

    /// Sends `datagrams`, a batch per system call, noting each one's fate in `outcome`
    /// and counting the calls and the datagrams they carried.
    async fn send_counted(
        &self,
        datagrams: &[(&[u8], SocketAddr)],
        outcome: &mut Vec<Sent>,
    ) -> io::Result<()> {
        let calls = send_all(&self.socket, datagrams, self.batch, outcome).await?;
        let sent = outcome
            .iter()
            .filter(|o| matches!(o, Sent::Bytes(_)))
            .count();
        self.shard().sent_in_calls(calls, sent);
        Ok(())
    }

    /// Whether `reply` may go to `to` now.
    fn may_send(&self, reply: &Reply, to: SocketAddr, now: Instant) -> bool {
        // Replies to malformed input (`1` bad format, `3` unknown request) are limited per
        // destination. Every reply of ours that another mboard (or an echo service)
        // receives makes it answer `1` or `3` or publish, so one spoofed datagram naming
        // another server's address could otherwise start a loop between the two that never
        // ends; a loop carries one datagram, and the first reply dropped ends it.
        !reply.code().is_refusal() || self.errors.allow(to, now)
    }

    /// Counts what became of a reply to `to`, returning the bytes it carried out.
    fn count(&self, outcome: Sent, to: SocketAddr) -> usize {
        match outcome {
            Sent::Bytes(sent) => {
                self.shard().sent(sent);
                sent
            }
            Sent::Dropped => {
                debug!(%to, "send failed");
                self.shard().dropped(DropReason::SendError);
                0
            }
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

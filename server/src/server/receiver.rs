//! One receive loop: the datagram path from the socket to the handler and back.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::sender::{Sender, Source};
use crate::board::Board;
use crate::drops::DropWatch;
use crate::handler::{Answer, Handler};
use crate::limiter::RateLimiter;
use crate::metrics::DropReason;
use crate::overload::Overload;
use crate::session::HostKey;

/// Errors from `recv_from`/`send_to` that concern one peer, not the socket.
pub(super) fn transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    // ICMP errors from earlier sends surface as refused/reset on some systems; a full
    // buffer or an unroutable destination affects one datagram.
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionReset | Interrupted | WouldBlock | HostUnreachable | NetworkUnreachable
    ) || e.raw_os_error() == Some(105) // ENOBUFS
        || e.raw_os_error() == Some(90) // EMSGSIZE
        || e.raw_os_error() == Some(22) // EINVAL (e.g. an address of the other family)
}

/// One receive loop: takes datagrams off the shared socket, hands each to the handler, and
/// sends what it answers, detaching work that would stall the loop.
pub(super) struct Receiver<B> {
    /// Answers datagrams.
    pub(super) handler: Arc<Handler<B>>,
    /// Permits for large replies being built off the loops; when none is left the loop
    /// waits, which pushes back on senders instead of queueing without bound.
    pub(super) deferred: Arc<Semaphore>,
    /// Per-source rate limit, applied before any work.
    pub(super) limiter: Arc<RateLimiter>,
    /// Where replies go out, shared with the tasks this loop detaches.
    pub(super) sender: Sender,
    /// Whether this loop keeps up, and who gives way when it does not.
    pub(super) overload: Overload,
    /// The kernel's drop count for the socket, which [`Receiver::overload`] is fed.
    pub(super) drops: Arc<DropWatch>,
}

impl<B: Board> Receiver<B> {
    /// Receives until the socket fails; errors concerning one peer only are counted and
    /// skipped.
    pub(super) async fn run(mut self) -> io::Result<()> {
        // Room for the largest datagram the kernel can hand us, IPv6 included.
        let mut buf = vec![0u8; 65_536];
        loop {
            let (len, from) = match self.receive(&mut buf).await {
                Ok(received) => received,
                Err(e) if transient(&e) => {
                    debug!(error = %e, "receive error ignored");
                    self.sender.shard().dropped(DropReason::ReceiveError);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let received = Instant::now();
            if !self.admit(from, received) {
                continue;
            }
            // One copy per datagram: published text keeps exactly its own bytes alive.
            let datagram = Bytes::copy_from_slice(&buf[..len]);
            let handled = self.handler.handle(received, from, datagram).await;
            let source = Source {
                kind: handled.kind,
                len,
                from,
                received,
            };
            self.answer(handled.answer, source).await?;
        }
    }

    /// Whether a datagram gets any work at all; one that does not is dropped without a
    /// reply (and counted).
    fn admit(&mut self, from: SocketAddr, received: Instant) -> bool {
        // Over its source's limit: dropped before any work.
        if !self.limiter.allow(from, received) {
            return false;
        }
        // Behind, and its host sends more than its share: dropped the same way.
        self.overload.kernel_drops(self.drops.get());
        let admitted = self.overload.admit(HostKey::from(from), received);
        if self.overload.suspect() {
            self.drops.want();
        }
        if !admitted {
            self.sender.shard().dropped(DropReason::Overload);
            return false;
        }
        if let Some(hold) = self.overload.began() {
            warn!(
                loop_ = self.sender.shard,
                share_percent = self.overload.share_percent(),
                hold = %humantime::format_duration(hold),
                "a receive loop fell behind: dropping the datagrams of hosts over their share of the traffic"
            );
        }
        true
    }

    /// Sends what the handler answered, here or from a task of its own; an error is the
    /// socket's, and ends the loop.
    async fn answer(&self, answer: Answer, source: Source) -> io::Result<()> {
        match answer {
            // A large reply is copied on a blocking thread, and a publish waits for its
            // group commit, in tasks of their own, so neither occupies the receive loop.
            // Each large reply holds a reservation in the session budget, which bounds
            // how many can exist; each publish holds a place in the handler's queue for
            // the disk, taken without waiting (a full queue is answered `4:busy`).
            answer @ Answer::Build(_) => self.detach(source, answer).await,
            answer @ Answer::Wait(_) => {
                let sender = self.sender.clone();
                tokio::spawn(async move {
                    let _ = sender.deliver(answer, source).await;
                });
                Ok(())
            }
            answer => self.sender.deliver(answer, source).await,
        }
    }

    /// The next datagram, noting whether the loop had to wait for it.
    pub(super) async fn receive(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let socket = &self.sender.socket;
        match socket.try_recv_from(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.overload.waited();
                socket.recv_from(buf).await
            }
            received => received,
        }
    }

    /// Sends `answer` from a task of its own, under a permit.
    ///
    /// Waits for a permit first, so that a flood of such requests slows the receive loop
    /// rather than piling up tasks.
    pub(super) async fn detach(&self, source: Source, answer: Answer) -> io::Result<()> {
        let permit = self
            .deferred
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let sender = self.sender.clone();
        tokio::spawn(async move {
            // Only this reply is lost if sending fails; the loop reports fatal socket errors.
            let _ = sender.deliver(answer, source).await;
            drop(permit);
        });
        Ok(())
    }
}

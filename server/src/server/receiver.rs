//! One receive loop: the datagram path from the socket to the handler and back.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use super::batch::{Inbox, transient};
use super::sender::{Outbox, Sender, Source};
use super::waiting::Waiting;
use crate::board::Board;
use crate::handler::{Answer, Handler};
use crate::limiter::RateLimiter;
use crate::metrics::DropReason;
use crate::overload::Overload;
use crate::queue_watch::QueueWatch;
use crate::session::HostKey;

/// One receive loop: takes datagrams off the shared socket, hands each to the handler, and
/// sends what it answers, detaching work that would stall the loop.
pub(super) struct Receiver<B> {
    /// Answers datagrams.
    pub(super) handler: Arc<Handler<B>>,
    /// Permits for large replies being built off the loops (`--max-building-replies`);
    /// when none is left the loop waits, which pushes back on senders instead of queueing
    /// without bound.
    pub(super) deferred: Arc<Semaphore>,
    /// Per-source rate limit, applied before any work.
    pub(super) limiter: Arc<RateLimiter>,
    /// Where replies go out, shared with the tasks this loop detaches.
    pub(super) sender: Sender,
    /// Whether this loop keeps up, and who gives way when it does not.
    pub(super) overload: Overload,
    /// The kernel's view of the socket's queue, which [`Receiver::overload`] is fed.
    pub(super) queue: Arc<QueueWatch>,
}

impl<B: Board> Receiver<B> {
    /// Receives until the socket fails; errors concerning one peer only are counted and
    /// skipped. Replies that wait for the board are kept and sent from here as they
    /// complete (see [`Waiting`]).
    pub(super) async fn run(mut self) -> io::Result<()> {
        let mut inbox = Inbox::new(self.sender.batch);
        let mut outbox = Outbox::default();
        let mut waiting = Waiting::default();
        loop {
            tokio::select! {
                received = self.receive(&mut inbox) => match received {
                    Ok(()) => self.handle_all(&inbox, &mut outbox, &mut waiting).await?,
                    Err(e) if transient(&e) => {
                        debug!(error = %e, "receive error ignored");
                        self.sender.shard().dropped(DropReason::ReceiveError);
                    }
                    Err(e) => return Err(e),
                },
                () = waiting.ready(&mut outbox) => {}
            }
            // Whichever branch ran, the outbox may hold replies the board completed: a
            // wait for them can be cut short by a batch arriving once it collected some.
            self.sender.deliver_all(&mut outbox).await?;
        }
    }

    /// Hands each datagram of the batch just received to the handler, in order, putting
    /// what is ready into `outbox` and what waits for the board into `waiting`.
    async fn handle_all(
        &mut self,
        inbox: &Inbox,
        outbox: &mut Outbox,
        waiting: &mut Waiting,
    ) -> io::Result<()> {
        // One reading of the clock for the batch: its datagrams were all queued by now.
        let received = Instant::now();
        for (bytes, from) in inbox.datagrams() {
            if !self.admit(from, received) {
                continue;
            }
            // One copy per datagram: published text keeps exactly its own bytes alive.
            let datagram = Bytes::copy_from_slice(bytes);
            let handled = self.handler.handle(received, from, datagram).await;
            let source = Source {
                kind: handled.kind,
                len: bytes.len(),
                from,
                received,
            };
            self.answer(handled.answer, source, outbox, waiting).await?;
            // Under a flood the queue never empties, so the loop never waits for the
            // socket; it gives way to the tasks sharing its thread (the queue watch that
            // shedding depends on, expiry, held requests, metrics) every so many datagrams.
            tokio::task::consume_budget().await;
        }
        Ok(())
    }

    /// Whether a datagram gets any work at all; one that does not is dropped without a
    /// reply (and counted).
    fn admit(&mut self, from: SocketAddr, received: Instant) -> bool {
        // Over its source's limit: dropped before any work.
        if !self.limiter.allow(from, received) {
            return false;
        }
        // Behind, and its host sends more than its share: dropped the same way.
        self.overload.kernel(self.queue.get());
        let admitted = self.overload.admit(HostKey::from(from), received);
        if self.overload.watchful() {
            self.queue.want();
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

    /// Sends what the handler answered with the rest of the batch, or later; an error is
    /// the socket's, and ends the loop.
    async fn answer(
        &self,
        answer: Answer,
        source: Source,
        outbox: &mut Outbox,
        waiting: &mut Waiting,
    ) -> io::Result<()> {
        match answer {
            // Replies ready now leave together once the batch is handled.
            Answer::Reply(reply) => outbox.push(Some(reply), source),
            Answer::Silent => outbox.push(None, source),
            // A large reply is copied on a blocking thread in a task of its own, so that
            // it does not occupy the receive loop; each holds a reservation in the
            // session budget, which bounds how many can exist.
            answer @ Answer::Build(_) => {
                let permit = self.build_permit(outbox, waiting).await?;
                self.detach(permit, source, answer);
            }
            // A publish waiting for its group commit or acknowledgement holds a place in
            // the handler's queue for the board, taken without waiting (a full queue is
            // answered `4:busy`): that bounds how many wait here.
            Answer::Wait(wait) => {
                if let Some(reply) = waiting.start(wait, source) {
                    outbox.push(Some(reply), source);
                }
            }
        }
        Ok(())
    }

    /// The next datagrams, as many as are queued up to a batch, noting whether the loop
    /// had to wait for them.
    async fn receive(&mut self, inbox: &mut Inbox) -> io::Result<()> {
        let socket = &self.sender.socket;
        loop {
            match inbox.try_receive(socket) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.overload.waited();
                    socket.readable().await?;
                }
                // A signal interrupted the call before it took anything: it is tried again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(datagrams) => {
                    self.sender.shard().received_in_one_call(datagrams);
                    if inbox.drained() {
                        self.overload.waited();
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A permit to build one more reply off the loop (`--max-building-replies`).
    ///
    /// With none left the loop waits for one, so that a flood of such requests slows it
    /// rather than piling up tasks. It first sends the replies already ready, and answers
    /// the publishes the board completes meanwhile: those do not wait behind the builds.
    async fn build_permit(
        &self,
        outbox: &mut Outbox,
        waiting: &mut Waiting,
    ) -> io::Result<OwnedSemaphorePermit> {
        if let Ok(permit) = self.deferred.clone().try_acquire_owned() {
            return Ok(permit);
        }
        self.sender.deliver_all(outbox).await?;
        let acquire = self.deferred.clone().acquire_owned();
        tokio::pin!(acquire);
        loop {
            tokio::select! {
                permit = &mut acquire => return permit.map_err(io::Error::other),
                () = waiting.ready(outbox) => self.sender.deliver_all(outbox).await?,
            }
        }
    }

    /// Sends `answer` from a task of its own, which gives `permit` back once it is sent.
    fn detach(&self, permit: OwnedSemaphorePermit, source: Source, answer: Answer) {
        let sender = self.sender.clone();
        tokio::spawn(async move {
            // Only this reply is lost if sending fails; the loop reports fatal socket errors.
            let _ = sender.deliver(answer, source).await;
            drop(permit);
        });
    }
}

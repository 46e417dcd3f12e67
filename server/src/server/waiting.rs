//! Replies that wait for the board (a journal's group commit, JetStream's
//! acknowledgement), kept and polled by the receive loop that took their requests.
//!
//! A task per waiting publish would cost a spawn, a wake-up of that task when the board
//! answers, and a hand-over to a sending task: several context switches per publish on a
//! busy server. Kept here instead, a publish is started at once — its first poll, made in
//! the receive loop, hands it to the board (a journal's queue, NATS's connection) together
//! with the rest of its batch, so that they reach the disk or the network in one go — and
//! those the board completes together wake the loop once and leave in one `sendmmsg`.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures::stream::{FuturesUnordered, StreamExt};

use super::sender::{Outbox, Source};
use crate::handler::Pending;
use crate::reply::Reply;

/// The receive loop's waiting replies.
#[derive(Default)]
pub(super) struct Waiting {
    replies: FuturesUnordered<Tagged>,
}

impl Waiting {
    /// Starts `wait`, the answer to the request from `source`: a reply ready at once is
    /// returned, any other is kept until it is.
    pub(super) fn start(&mut self, mut wait: Pending, source: Source) -> Option<Reply> {
        // The real waker is registered when the set polls it, which it does first thing
        // for a future just pushed: nothing that completes meanwhile is missed.
        let mut cx = Context::from_waker(Waker::noop());
        match wait.as_mut().poll(&mut cx) {
            Poll::Ready(reply) => Some(reply),
            Poll::Pending => {
                self.replies.push(Tagged { wait, source });
                None
            }
        }
    }

    /// Waits until at least one reply is ready, then moves every ready one into `outbox`.
    /// Never ready while nothing waits (the loop starts more as requests come). Dropped
    /// before it ends, it may have moved some already: `outbox` must be sent anyway.
    pub(super) async fn ready(&mut self, outbox: &mut Outbox) {
        poll_fn(|cx| self.collect(cx, outbox)).await;
        // The board completes its publishes in groups, waking this loop at the first one:
        // once the rest of the group has had its turn, it is ready too.
        tokio::task::yield_now().await;
        let mut cx = Context::from_waker(Waker::noop());
        let _ = self.collect(&mut cx, outbox);
    }

    /// Moves the ready replies into `outbox`: ready if there was one.
    fn collect(&mut self, cx: &mut Context<'_>, outbox: &mut Outbox) -> Poll<()> {
        let mut any = false;
        while let Poll::Ready(Some((reply, source))) = self.replies.poll_next_unpin(cx) {
            outbox.push(Some(reply), source);
            any = true;
        }
        if any { Poll::Ready(()) } else { Poll::Pending }
    }
}

/// A waiting reply with the request it answers.
struct Tagged {
    wait: Pending,
    source: Source,
}

impl Future for Tagged {
    type Output = (Reply, Source);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let source = self.source;
        self.wait.as_mut().poll(cx).map(|reply| (reply, source))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use tokio::sync::oneshot;

    use super::*;

    fn source(port: u16) -> Source {
        Source {
            kind: None,
            len: 0,
            from: SocketAddr::from(([127, 0, 0, 1], port)),
            received: Instant::now(),
        }
    }

    fn reply(text: &'static str) -> Reply {
        Reply::ok(Bytes::from_static(text.as_bytes()))
    }

    /// A reply the test completes by sending it.
    fn later() -> (oneshot::Sender<Reply>, Pending) {
        let (tx, rx) = oneshot::channel();
        let wait = Box::pin(async move { rx.await.unwrap_or_else(|_| reply("dropped")) });
        (tx, wait)
    }

    fn sent(outbox: &mut Outbox) -> Vec<(String, u16)> {
        outbox
            .take()
            .into_iter()
            .map(|(r, to)| {
                let text = r.map(|r| String::from_utf8_lossy(r.bytes()).into_owned());
                (text.unwrap_or_default(), to.port())
            })
            .collect()
    }

    #[test]
    fn a_reply_ready_at_once_is_not_kept() {
        let mut waiting = Waiting::default();
        let ready = Box::pin(async { reply("0:1") });
        let got = waiting.start(ready, source(1)).expect("ready at once");
        assert_eq!(&got.bytes()[..], b"0:1");
        assert!(waiting.replies.is_empty());
    }

    #[tokio::test]
    async fn replies_completed_together_leave_together_in_any_order() {
        let mut waiting = Waiting::default();
        let mut senders = Vec::new();
        for port in 1..=3 {
            let (tx, wait) = later();
            assert!(waiting.start(wait, source(port)).is_none());
            senders.push(tx);
        }
        let mut outbox = Outbox::default();
        // Nothing is ready: the wait does not end on its own.
        let idle = tokio::time::timeout(Duration::from_millis(20), waiting.ready(&mut outbox));
        assert!(idle.await.is_err());
        let third = senders.pop().expect("three");
        let _ = third.send(reply("0:3"));
        let first = senders.remove(0);
        let _ = first.send(reply("0:1"));
        waiting.ready(&mut outbox).await;
        let mut got = sent(&mut outbox);
        got.sort();
        assert_eq!(got, [("0:1".to_owned(), 1), ("0:3".to_owned(), 3)]);
        // The one left is sent when it completes, from another task.
        let last = senders.pop().expect("one left");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let _ = last.send(reply("0:2"));
        });
        waiting.ready(&mut outbox).await;
        assert_eq!(sent(&mut outbox), [("0:2".to_owned(), 2)]);
        assert!(waiting.replies.is_empty());
    }

    #[tokio::test]
    async fn a_reply_completed_between_its_start_and_the_first_wait_is_not_missed() {
        let mut waiting = Waiting::default();
        let (tx, wait) = later();
        assert!(waiting.start(wait, source(9)).is_none());
        // Completed before anything polled it with a real waker.
        let _ = tx.send(reply("0:9"));
        let mut outbox = Outbox::default();
        tokio::time::timeout(Duration::from_secs(5), waiting.ready(&mut outbox))
            .await
            .expect("seen without another wake-up");
        assert_eq!(sent(&mut outbox), [("0:9".to_owned(), 9)]);
    }

    #[tokio::test]
    async fn a_wait_cut_short_leaves_what_it_collected_in_the_outbox() {
        let mut waiting = Waiting::default();
        let (tx, wait) = later();
        assert!(waiting.start(wait, source(4)).is_none());
        let _ = tx.send(reply("0:4"));
        let mut outbox = Outbox::default();
        {
            // Polled once: it collects, then yields; the receive loop may drop it there.
            let mut cut = std::pin::pin!(waiting.ready(&mut outbox));
            let mut cx = Context::from_waker(Waker::noop());
            assert!(cut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(sent(&mut outbox), [("0:4".to_owned(), 4)]);
    }
}

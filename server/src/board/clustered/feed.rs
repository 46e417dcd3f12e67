//! The replica's feed: an ordered consumer delivering the stream in id order, a watchdog
//! that recreates it when it stalls, and a poll of the stream's state for trimming and lag.
//!
//! An ordered consumer lives on one NATS server; when that server dies it may stall for
//! many seconds, or until the server is back. So the feed keeps its own place (the
//! replica's newest id) and, when nothing arrives for [`STALL`] while the stream is known
//! to hold more, drops the consumer and starts a fresh one after that place: nothing is
//! skipped and nothing applied twice.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, push};
use futures::StreamExt;
use mboard_protocol::MessageId;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{MemoryBoard, Shared, gap, headers};
use crate::board::Board;

/// Silence, while the stream is ahead of the replica, after which the consumer is
/// recreated.
const STALL: Duration = Duration::from_secs(2);
/// How often the stream's state is read (lag, trimming, the newest id).
const POLL: Duration = Duration::from_millis(500);
/// Pause before recreating a consumer that could not be created.
const RETRY: Duration = Duration::from_millis(250);

/// The feed's tasks, stopped when the board is dropped.
#[derive(Debug)]
pub(super) struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

pub(super) fn start(shared: Arc<Shared>, replica: Arc<MemoryBoard>) -> Tasks {
    Tasks(vec![
        tokio::spawn(feed(shared.clone(), replica.clone())),
        tokio::spawn(poll(shared, replica)),
    ])
}

fn newest(shared: &Shared) -> MessageId {
    *shared.newest.borrow()
}

/// Keeps the replica fed: one consumer after another, each started after the replica's
/// newest id, for as long as the board lives.
async fn feed(shared: Arc<Shared>, replica: Arc<MemoryBoard>) {
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(RETRY).await;
        }
        first = false;
        if let Some(messages) = subscribe(&shared, &replica).await {
            follow(&shared, &replica, messages).await;
        }
    }
}

/// A fresh ordered consumer's messages, from the replica's place; `None` when NATS could
/// not give one in time (the feed retries).
async fn subscribe(shared: &Shared, replica: &MemoryBoard) -> Option<push::Ordered> {
    // Past the newest held, or from the replica's start (the stream's first id).
    let next = newest(shared)
        .0
        .saturating_add(1)
        .max(replica.oldest().map_or(1, |o| o.0));
    let config = push::OrderedConfig {
        deliver_subject: shared.client.new_inbox(),
        filter_subject: shared.subject.clone(),
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: next.max(1),
        },
        ..Default::default()
    };
    let created = tokio::time::timeout(shared.timeout, shared.stream.create_consumer(config));
    let consumer = match created.await {
        Ok(Ok(consumer)) => consumer,
        Ok(Err(e)) => {
            debug!(error = %e, "cannot create the replica's consumer; retrying");
            return None;
        }
        Err(_) => return None,
    };
    match tokio::time::timeout(shared.timeout, consumer.messages()).await {
        Ok(Ok(messages)) => Some(messages),
        _ => None,
    }
}

/// Applies one consumer's messages until it ends, fails, or stalls: then the feed starts
/// another.
async fn follow(shared: &Shared, replica: &MemoryBoard, mut messages: push::Ordered) {
    loop {
        match tokio::time::timeout(STALL, messages.next()).await {
            Ok(Some(Ok(m))) => {
                if !apply(shared, replica, &m).await {
                    return;
                }
            }
            // Not terminal (a missed heartbeat, say): the watchdog decides.
            Ok(Some(Err(e))) => debug!(error = %e, "replica consumer"),
            Ok(None) => return,
            Err(_) => {
                if shared.stream_last.load(Ordering::Relaxed) > newest(shared).0 {
                    shared.metrics.consumer_restarts.inc();
                    warn!(newest = %newest(shared), "the replica's consumer stalled: recreating it");
                    return;
                }
            }
        }
    }
}

/// Applies one delivered message to the replica and moves the newest id; false when the
/// consumer must be recreated.
async fn apply(shared: &Shared, replica: &MemoryBoard, m: &async_nats::jetstream::Message) -> bool {
    let Ok(info) = m.info() else { return true };
    let id = MessageId(info.stream_sequence);
    let entry = headers::decode(m.message.headers.as_ref(), m.message.payload.clone());
    if let Err(e) = gap::apply(shared, replica, id, entry).await {
        // The replica is where it was: a new consumer starts after it.
        warn!(error = %e, "cannot apply a message to the replica; recreating the consumer");
        return false;
    }
    shared.newest.send_if_modified(|n| {
        let newer = id > *n;
        if newer {
            *n = id;
        }
        newer
    });
    shared.metrics.replica_newest.set(id.0 as i64);
    true
}

/// Reads the stream's state: its newest id (for the watchdog and lag), its first (what
/// the stream's own limits trimmed), and the connection's state.
async fn poll(shared: Arc<Shared>, replica: Arc<MemoryBoard>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let connected = shared.connected();
        shared.metrics.connected.set(i64::from(connected));
        if connected
            && let Ok(Ok(info)) =
                tokio::time::timeout(shared.timeout, shared.stream.get_info()).await
        {
            let state = info.state;
            shared
                .stream_last
                .fetch_max(state.last_sequence, Ordering::Relaxed);
            // Only what the replica has received may be trimmed by the stream's first id:
            // the consumer starts at the first id the stream still has anyway.
            let first = MessageId(
                state
                    .first_sequence
                    .min(newest(&shared).0.saturating_add(1)),
            );
            if let Err(e) = replica.trim_below(first) {
                warn!(error = %e, "replica failed");
            }
        }
        let last = shared.stream_last.load(Ordering::Relaxed);
        shared.metrics.stream_last.set(last as i64);
        shared
            .metrics
            .lag
            .set(last.saturating_sub(newest(&shared).0) as i64);
    }
}

//! The clustered store: the board lives in a NATS JetStream stream, shared by every server
//! connected to it, and each server reads from a replica of its own.
//!
//! Ids are the stream's sequence numbers (the first message is id 1). A publish goes to
//! JetStream and is answered once JetStream acknowledged it (on a quorum of an R3 stream);
//! a `5:` token becomes the message's `Nats-Msg-Id`, so the stream's duplicate window
//! deduplicates resends through any server. Reads are answered from an in-memory replica
//! ([`MemoryBoard`]), fed in order by an ordered consumer ([`feed`]): the handler never
//! waits for the network to read, except for an id the stream has and the replica has not
//! received yet ([`Board::catch_up`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use bytes::Bytes;
use mboard_protocol::{Entry, Message, MessageId, PublishToken, Timestamp};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::info;

use super::{Board, BoardError, CatchUp, MemoryBoard, Published, Refusal, Retention, Span, Status};
use super::{StoreState, TokenLimits};

mod config;
mod connect;
mod feed;
mod gap;
mod headers;
mod metrics;
mod probe;
#[cfg(test)]
mod replica_tests;
mod stream;

pub use config::{ClusterConfig, NatsAuth, NatsTls, Secret};
use metrics::NatsMetrics;

/// Why the clustered store could not start, or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS could not be reached at start-up.
    #[error("cannot connect to NATS at {servers}: {reason}")]
    Connect {
        /// The URLs tried.
        servers: String,
        /// Why.
        reason: String,
    },
    /// The stream cannot hold what this server promises, or could not be created.
    #[error("{0}")]
    Stream(String),
    /// JetStream refused a publish for a reason retrying will not fix.
    #[error("jetstream refused the publish: {0}")]
    Publish(String),
    /// The stream has a message this replica did not receive in time.
    #[error("replica is behind: message {0} not received in time")]
    Behind(MessageId),
}

impl From<ClusterError> for BoardError {
    fn from(e: ClusterError) -> Self {
        BoardError::Storage(Box::new(e))
    }
}

/// What the store's tasks share.
#[derive(Debug)]
struct Shared {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    subject: String,
    timeout: Duration,
    catch_up: Duration,
    /// The newest id the replica holds (0: none yet).
    newest: watch::Sender<MessageId>,
    /// The newest id the stream is known to have (from acknowledgements and stream info).
    stream_last: AtomicU64,
    /// Asks JetStream for its newest id on behalf of reads above the replica's.
    probe: Arc<probe::Probe>,
    metrics: NatsMetrics,
}

impl Shared {
    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Waits, at most `bound`, until the replica holds `id`; says whether it does.
    async fn wait_for(&self, id: MessageId, bound: Duration) -> bool {
        let mut newest = self.newest.subscribe();
        tokio::time::timeout(bound, newest.wait_for(|n| *n >= id))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The stream's newest sequence, asked of JetStream after this call began (one
    /// question shared by all who ask meanwhile, see [`probe`]).
    async fn last_sequence(&self) -> Result<u64, BoardError> {
        // A question already in flight is waited for, then the one asked after it.
        match self.probe.newest(self.timeout * 2).await {
            Some(last) => {
                self.stream_last.fetch_max(last, Ordering::Relaxed);
                Ok(last)
            }
            None => Err(BoardError::Refused(Refusal::Unavailable)),
        }
    }
}

/// The question [`Shared::probe`] asks: the stream's info, within `timeout`.
fn ask_newest(
    stream: jetstream::stream::Stream,
    timeout: Duration,
    metrics: Counter,
) -> probe::Ask {
    Box::new(move || {
        let (stream, asked) = (stream.clone(), metrics.clone());
        Box::pin(async move {
            asked.inc();
            match tokio::time::timeout(timeout, stream.get_info()).await {
                Ok(Ok(info)) => Some(info.state.last_sequence),
                _ => None,
            }
        })
    })
}

/// The board kept in a NATS JetStream stream, read from a local replica.
#[derive(Debug)]
pub(crate) struct ClusteredBoard {
    replica: Arc<MemoryBoard>,
    shared: Arc<Shared>,
    /// Stops the feeding tasks when the board is dropped.
    _tasks: feed::Tasks,
}

impl ClusteredBoard {
    /// Connects to NATS, creates the stream (or checks the one there), and loads the
    /// replica with what the stream holds before returning.
    pub(crate) async fn connect(
        config: &ClusterConfig,
        max_request_size: u64,
        tokens: TokenLimits,
        retention: Retention,
    ) -> Result<Self, ClusterError> {
        let needs = stream::Needs {
            name: config.stream.clone(),
            subject: config.subject(),
            replicas: config.replicas,
            retention,
            dedup_window: tokens.window,
            max_message: max_request_size + stream::HEADER_ROOM,
        };
        let (client, js, nats_stream) = connect::connect(config, &needs).await?;
        let replica = Arc::new(
            MemoryBoard::with_limits(tokens, retention)
                .map_err(|e| ClusterError::Stream(format!("cannot start the replica: {e}")))?,
        );
        let state = nats_stream.cached_info().state.clone();
        // An empty replica starts at the stream's first id, so that ids below it read as
        // trimmed and the first message of a new stream is id 1.
        replica
            .trim_below(MessageId(state.first_sequence.max(1)))
            .map_err(|e| ClusterError::Stream(e.to_string()))?;
        let metrics = NatsMetrics::default();
        let probe = probe::Probe::new(ask_newest(
            nats_stream.clone(),
            config.timeout,
            metrics.stream_probes.clone(),
        ));
        let shared = Arc::new(Shared {
            client,
            js,
            stream: nats_stream,
            subject: needs.subject.clone(),
            timeout: config.timeout,
            catch_up: config.catch_up,
            newest: watch::Sender::new(MessageId(0)),
            stream_last: AtomicU64::new(state.last_sequence),
            probe,
            metrics,
        });
        let tasks = feed::start(shared.clone(), replica.clone());
        if state.messages > 0 {
            info!(
                messages = state.messages,
                last = state.last_sequence,
                "loading the replica from the stream"
            );
            shared
                .wait_for(MessageId(state.last_sequence), Duration::MAX)
                .await;
        }
        info!(stream = %config.stream, first = state.first_sequence, last = state.last_sequence, "clustered board ready");
        Ok(ClusteredBoard {
            replica,
            shared,
            _tasks: tasks,
        })
    }

    /// Sends one message to JetStream and waits for its acknowledgement; returns its id
    /// and whether the stream had its message id already.
    async fn send(
        &self,
        from: SocketAddr,
        text: Bytes,
        token: Option<PublishToken>,
    ) -> Result<(MessageId, bool), BoardError> {
        let shared = &self.shared;
        // While disconnected, the client would buffer the publish and time out: say so now.
        if !shared.connected() {
            shared.metrics.publish_failures.inc();
            return Err(BoardError::Refused(Refusal::Unavailable));
        }
        let time = Timestamp::from_system_time(SystemTime::now());
        let mut message = PublishMessage::build()
            .headers(headers::encode(from, time))
            .payload(text);
        if let Some(token) = token {
            message = message.message_id(token.to_string());
        }
        let sent = tokio::time::timeout(shared.timeout, async {
            shared
                .js
                .send_publish(shared.subject.clone(), message)
                .await?
                .await
        })
        .await;
        let ack = match sent {
            Ok(Ok(ack)) => ack,
            Ok(Err(e)) => {
                shared.metrics.publish_failures.inc();
                return Err(match e.kind() {
                    PublishErrorKind::StreamNotFound
                    | PublishErrorKind::TimedOut
                    | PublishErrorKind::BrokenPipe
                    | PublishErrorKind::MaxAckPending => BoardError::Refused(Refusal::Unavailable),
                    _ => ClusterError::Publish(e.to_string()).into(),
                });
            }
            Err(_) => {
                shared.metrics.publish_failures.inc();
                return Err(BoardError::Refused(Refusal::Unavailable));
            }
        };
        let id = MessageId(ack.sequence);
        // Answered at once, without waiting for this server's own replica (a consumer
        // delivery later): a `3:` of the id meanwhile waits for it ([`Board::catch_up`]
        // knows the stream has it from here), and held `6:` requests wake as it arrives.
        shared.stream_last.fetch_max(id.0, Ordering::Relaxed);
        Ok((id, ack.duplicate))
    }
}

impl Board for ClusteredBoard {
    fn defers_publish(&self) -> bool {
        true
    }

    fn register_metrics(&self, registry: &mut Registry) {
        self.shared.metrics.register(registry);
    }

    async fn publish(&self, from: SocketAddr, text: Bytes) -> Result<MessageId, BoardError> {
        Ok(self.send(from, text, None).await?.0)
    }

    async fn publish_once(
        &self,
        from: SocketAddr,
        token: PublishToken,
        text: Bytes,
    ) -> Result<Published, BoardError> {
        Ok(match self.send(from, text, Some(token)).await? {
            (id, true) => Published::Duplicate(id),
            (id, false) => Published::Stored(id),
        })
    }

    fn first_id(&self) -> MessageId {
        MessageId(1)
    }

    fn oldest(&self) -> Result<MessageId, BoardError> {
        self.replica.oldest()
    }

    fn status(&self) -> Option<Status> {
        let mut status = self.replica.status()?;
        status.state = if self.shared.connected() {
            StoreState::Writable
        } else {
            StoreState::Lost
        };
        Some(status)
    }

    fn get(&self, id: MessageId) -> Result<Option<Entry>, BoardError> {
        self.replica.get(id)
    }

    fn entry_len(&self, id: MessageId) -> Result<Option<usize>, BoardError> {
        self.replica.entry_len(id)
    }

    fn span(&self, n: u64) -> Result<Span, BoardError> {
        self.replica.span(n)
    }

    fn span_after(&self, after: MessageId, max: u64) -> Result<Span, BoardError> {
        self.replica.span_after(after, max)
    }

    fn messages(&self, span: &Span) -> Result<Vec<Message>, BoardError> {
        self.replica.messages(span)
    }

    fn encode_messages(&self, span: &Span, out: &mut Vec<u8>) -> Result<(), BoardError> {
        self.replica.encode_messages(span, out)
    }

    fn catch_up(&self, id: MessageId) -> Option<CatchUp> {
        if id <= *self.shared.newest.borrow() {
            return None;
        }
        let shared = self.shared.clone();
        Some(Box::pin(async move {
            if id.0 > shared.stream_last.load(Ordering::Relaxed)
                && id.0 > shared.last_sequence().await?
            {
                // Not published yet, anywhere.
                return Ok(());
            }
            if shared.wait_for(id, shared.catch_up).await {
                Ok(())
            } else {
                Err(ClusterError::Behind(id).into())
            }
        }))
    }

    fn arrivals(&self) -> Option<watch::Receiver<MessageId>> {
        Some(self.shared.newest.subscribe())
    }
}

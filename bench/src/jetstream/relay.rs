//! The clustered store's floor: a bare relay from UDP to JetStream, run as a process of its
//! own in place of an mboard server. It answers `5:<token>:<text>` with `0:<id>` once
//! JetStream acknowledged the message (sent with the token as its `Nats-Msg-Id` and the
//! one `Mboard-Pub` header an mboard server sends), `2:<n>` with no ids (it holds no board;
//! load generators probe with it), and every other datagram with a `1`.
//! No sessions, no limits, no replica, no metrics, no batched system calls: what is left is
//! the hop itself (a datagram in, a publish over TCP, an acknowledgement back, a datagram
//! out), so `5:` through it shows what the hop alone costs on the machine it runs on. With
//! a feed, it also drains a consumer of the stream, as each mboard server's replica must.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull, push};
use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use mboard_protocol::{BoardRequest, ErrorCode, MessageId, Request, Response};
use tokio::net::UdpSocket;

/// What the relay listens on and publishes to.
#[derive(Debug, Clone)]
pub(crate) struct Relay {
    pub(crate) listen: SocketAddr,
    pub(crate) nats: String,
    pub(crate) replicas: usize,
    /// Receive loops sharing the socket, each on the runtime's threads.
    pub(crate) loops: usize,
    /// Also drain a consumer of the stream, as a replica would.
    pub(crate) feed: Option<Feed>,
}

/// How the relay's feed takes the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Feed {
    /// An ordered push consumer, one delivery per message, as mboard-server's replica.
    Push,
    /// A pull consumer fetched in batches: what is there after a pause of [`PAUSE`], or,
    /// when nothing was, the first message to come.
    Pull,
}

/// The pull feed's pause between fetches that found messages.
const PAUSE: Duration = Duration::from_millis(1);

/// Serves until SIGINT or SIGTERM, on a stream of its own (deleted on the way out). The
/// line `relaying addr=<ip:port> stream=<name>` on stderr says it is ready.
#[allow(clippy::print_stderr)]
pub(crate) fn serve(relay: &Relay) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (client, js, _node) = super::place::connect(&relay.nats).await?;
        let (created, subject) = super::own_stream(&js, "mboard-relay", relay.replicas).await?;
        let name = created.cached_info().config.name.clone();
        let socket = Arc::new(
            UdpSocket::bind(relay.listen)
                .await
                .with_context(|| format!("bind {}", relay.listen))?,
        );
        let mut tasks = tokio::task::JoinSet::new();
        match relay.feed {
            Some(Feed::Push) => {
                let messages = feed(&created, &client, &subject).await?;
                tasks.spawn(drain(messages));
            }
            Some(Feed::Pull) => {
                let consumer = created
                    .create_consumer(pull::Config {
                        filter_subject: subject.clone(),
                        deliver_policy: DeliverPolicy::All,
                        ack_policy: AckPolicy::None,
                        ..Default::default()
                    })
                    .await
                    .context("create the feed's consumer")?;
                tasks.spawn(drain_pulled(consumer));
            }
            None => {}
        }
        for _ in 0..relay.loops.max(1) {
            tasks.spawn(relay_loop(socket.clone(), js.clone(), subject.clone()));
        }
        eprintln!("relaying addr={} stream={name}", socket.local_addr()?);
        let outcome = tokio::select! {
            () = stopped() => Ok(()),
            Some(ended) = tasks.join_next() => {
                ended.context("relay task").and_then(|r| r.context("relay"))
            }
        };
        tasks.abort_all();
        let deleted = js.delete_stream(&name).await;
        outcome?;
        deleted.with_context(|| format!("delete stream {name}"))?;
        Ok(())
    })
}

/// SIGINT or SIGTERM.
async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// One receive loop: publishes go to JetStream as they arrive, their acknowledgements are
/// awaited beside the socket (as an mboard receive loop keeps its waiting publishes), and
/// each is answered as it comes.
async fn relay_loop(socket: Arc<UdpSocket>, js: jetstream::Context, subject: String) -> Result<()> {
    let mut buf = vec![0u8; 65_536];
    let mut reply = Vec::with_capacity(64);
    let mut waiting = FuturesUnordered::new();
    loop {
        let (answer, to) = tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (n, from) = match received {
                    Ok(got) => got,
                    // An ICMP refusal of an earlier reply: that peer's, not the socket's.
                    Err(e) if one_peer(&e) => continue,
                    Err(e) => return Err(e).context("receive"),
                };
                match publish(&js, &subject, from, Bytes::copy_from_slice(&buf[..n])).await {
                    Ok(ack) => {
                        waiting.push(async move { (from, ack.await.map(|a| a.sequence)) });
                        continue;
                    }
                    Err(Some(answer)) => (answer, from),
                    Err(None) => continue,
                }
            }
            Some((to, acked)) = waiting.next(), if !waiting.is_empty() => {
                (acked.map_or_else(|_| unavailable(), |seq| Response::Published(MessageId(seq))), to)
            }
        };
        reply.clear();
        answer.encode(&mut reply);
        // A failed send loses that reply only: the destination may be one the system
        // refuses (a spoofed broadcast source, port 0), and a socket that is broken for
        // good fails the next receive.
        let _ = socket.send_to(&reply, to).await;
    }
}

/// Receive errors that concern one peer (an ICMP refusal of an earlier reply), not the
/// socket.
fn one_peer(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionReset | HostUnreachable | NetworkUnreachable
    )
}

/// What the relay answers to anything but `5:` and `2:`.
const REFUSAL: &[u8] = b"the relay takes only 5:<token>:<text> and 2:<n>";

/// Sends a `5:` to JetStream; anything else is answered at once with what `Err` holds,
/// or not at all.
async fn publish(
    js: &jetstream::Context,
    subject: &str,
    from: SocketAddr,
    datagram: Bytes,
) -> Result<jetstream::context::PublishAckFuture, Option<Response>> {
    // The refusal reads as a `1:` publish, so answering it would refuse it again: a
    // spoofed source naming an echo service or another relay would start a loop.
    if datagram.strip_prefix(b"1:") == Some(REFUSAL) {
        return Err(None);
    }
    let (token, text) = match Request::parse(datagram) {
        Ok(Request::Board(BoardRequest::PublishOnce { token, text })) => (token, text),
        Ok(Request::Board(BoardRequest::Ids(_))) => return Err(Some(Response::Ids(Vec::new()))),
        _ => {
            return Err(Some(Response::Error {
                code: ErrorCode::BadFormat,
                reason: Bytes::from_static(REFUSAL),
            }));
        }
    };
    let micros = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let mut headers = HeaderMap::new();
    headers.insert("Mboard-Pub", format!("{micros} {from}"));
    let message = PublishMessage::build()
        .headers(headers)
        .message_id(token.to_string())
        .payload(text);
    js.send_publish(subject.to_owned(), message)
        .await
        .map_err(|_| Some(unavailable()))
}

fn unavailable() -> Response {
    Response::Error {
        code: ErrorCode::ErrTransm,
        reason: Bytes::from_static(b"storage unavailable"),
    }
}

/// An ordered consumer of the whole stream, as a replica's.
async fn feed(
    stream: &stream::Stream,
    client: &async_nats::Client,
    subject: &str,
) -> Result<push::Ordered> {
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .context("create the feed's consumer")?;
    consumer.messages().await.context("the feed's messages")
}

/// Takes every delivered message and reads its stream sequence, as a replica does before
/// storing it; stores nothing.
async fn drain(mut messages: push::Ordered) -> Result<()> {
    while let Some(m) = messages.next().await {
        let m = m.context("feed")?;
        std::hint::black_box(m.info().map(|i| i.stream_sequence).ok());
    }
    // Ending quietly would stop the relay as if it had been asked to.
    anyhow::bail!("the feed's consumer ended")
}

/// Takes every message in batches: a fetch of what is there, then a pause while fetches
/// find something, a wait for the next message when one found nothing.
async fn drain_pulled(consumer: PullConsumer) -> Result<()> {
    loop {
        let mut got = 0usize;
        let mut batch = consumer.fetch().max_messages(4_096).messages().await?;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("feed: {e}"))?;
            std::hint::black_box(m.info().map(|i| i.stream_sequence).ok());
            got += 1;
        }
        if got > 0 {
            tokio::time::sleep(PAUSE).await;
            continue;
        }
        let mut next = consumer
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(5))
            .messages()
            .await?;
        while let Some(m) = next.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("feed: {e}"))?;
            std::hint::black_box(m.info().map(|i| i.stream_sequence).ok());
        }
    }
}

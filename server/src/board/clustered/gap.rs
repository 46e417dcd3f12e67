//! A message that does not follow on from the replica's newest: what the ids in between
//! became, asked of the stream, so that the replica never drops a message the stream
//! still has.
//!
//! The replica's ids are consecutive (a [`MemoryBoard`] holds a run of ids). A delivery
//! past the next id has three possible causes, told apart by the stream's first id and a
//! direct read of each id missing:
//!
//! * the stream trimmed them (its limits, a purge) while this replica was behind: the
//!   replica drops them as well, and what it held before them, which the stream trimmed
//!   first;
//! * the consumer skipped them although the stream has them: they are read directly, in
//!   order, before the message that came;
//! * the stream has neither (an id deleted on its own, or lost inside NATS): a hole the
//!   replica cannot hold. Streams this server creates refuse deletes, and start-up refuses
//!   streams that allow them or have holes, so this is NATS losing data; it is logged as
//!   an error and counted, and the replica starts again after the hole.

use std::time::Duration;

use mboard_protocol::{Entry, MessageId};
use tracing::{error, info};

use async_nats::jetstream::context::RequestErrorKind;
use async_nats::jetstream::stream::RawMessageErrorKind;

use super::{ClusterError, MemoryBoard, Shared, headers};
use crate::board::{BoardError, Refusal};

/// Appends message `id` to the replica, first filling any gap before it from the stream.
pub(super) async fn apply(
    shared: &Shared,
    replica: &MemoryBoard,
    id: MessageId,
    entry: Entry,
) -> Result<(), BoardError> {
    let (next, holding) = replica.expected()?;
    if id > next && holding {
        fill(shared, replica, next, id).await?;
    }
    replica.replicate(id, entry)?;
    Ok(())
}

/// Brings the replica from `next` up to just before `id` as the stream has it.
async fn fill(
    shared: &Shared,
    replica: &MemoryBoard,
    next: MessageId,
    id: MessageId,
) -> Result<(), BoardError> {
    let first = within(shared.timeout, shared.stream.get_info())
        .await?
        .state
        .first_sequence;
    if first > next.0 {
        let trimmed = replica.trim_below(MessageId(first.min(id.0)))?;
        info!(
            from = %next,
            to = first.min(id.0) - 1,
            dropped = trimmed,
            "the stream trimmed messages before this replica received them: trimmed here too"
        );
    }
    for seq in first.max(next.0)..id.0 {
        match within(shared.timeout, shared.stream.get_raw_message(seq)).await {
            Ok(m) => {
                let entry = headers::decode(Some(&m.headers), m.payload);
                replica.replicate(MessageId(seq), entry)?;
                shared.metrics.replica_refetched.inc();
            }
            Err(Fetch::Failed(e)) => return Err(e),
            Err(Fetch::Missing) => {
                shared.metrics.replica_holes.inc();
                error!(
                    id = seq,
                    "the stream has no message {seq} although it keeps older ones (deleted, or lost by NATS): \
                     the replica drops the messages before it"
                );
            }
        }
    }
    Ok(())
}

/// Why a request to the stream gave nothing.
enum Fetch {
    /// JetStream has no such message.
    Missing,
    /// It did not answer in time, or failed.
    Failed(BoardError),
}

impl From<Fetch> for BoardError {
    fn from(e: Fetch) -> Self {
        match e {
            Fetch::Missing => ClusterError::Stream("stream information missing".into()).into(),
            Fetch::Failed(e) => e,
        }
    }
}

/// `request` within `bound`.
async fn within<T, K>(
    bound: Duration,
    request: impl Future<Output = Result<T, async_nats::error::Error<K>>>,
) -> Result<T, Fetch>
where
    K: Clone + std::fmt::Debug + std::fmt::Display + PartialEq + Missing,
{
    match tokio::time::timeout(bound, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if e.kind().is_missing() => Err(Fetch::Missing),
        Ok(Err(e)) => Err(Fetch::Failed(
            ClusterError::Stream(format!("reading the stream: {e}")).into(),
        )),
        Err(_) => Err(Fetch::Failed(BoardError::Refused(Refusal::Unavailable))),
    }
}

/// Whether an error kind says the message asked for does not exist.
trait Missing {
    fn is_missing(&self) -> bool;
}

impl Missing for RawMessageErrorKind {
    fn is_missing(&self) -> bool {
        matches!(self, RawMessageErrorKind::NoMessageFound)
    }
}

impl Missing for RequestErrorKind {
    fn is_missing(&self) -> bool {
        false
    }
}

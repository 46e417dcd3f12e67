//! The board store: the API the request handler uses, and the stores behind it.
//!
//! `publish` is async so that a journal-backed store can resolve it only once the record is
//! durable (group commit), while reads stay synchronous. Stores also report the encoded size
//! of a reply before building it, so the handler can refuse an oversized `4:0` cheaply.
//!
//! Each store lives in its own submodule and keeps its failures in its own error type;
//! [`BoardError`] carries them without naming them, so a new store needs no change here.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use mboard_protocol::{Entry, Message, MessageId, encode_messages};

mod journal;
mod memory;
mod sums;

pub use journal::{Fsync, Journal, JournalConfig, JournalError, Recovery, Torn};
pub use memory::MemoryBoard;

/// A failure of the store itself (not of the request).
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// Another thread panicked while holding the board's lock.
    #[error("board lock poisoned")]
    Poisoned,
    /// The backing storage failed; the store's own error says how.
    #[error(transparent)]
    Storage(Box<dyn std::error::Error + Send + Sync>),
}

/// The newest-n messages at one moment, and how big their replies are.
///
/// Reads take the span rather than `n`, so a publish that lands between sizing a reply and
/// building it cannot change what the reply holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// Position of the first message in the store's order (opaque to callers).
    pub start: u64,
    /// How many messages the request covers.
    pub count: u64,
    /// Sum of the decimal lengths of their ids (for `2:`).
    pub id_digits: u64,
    /// Sum of their `4:` record lengths.
    pub records: u64,
}

impl Span {
    /// The ids in the span, oldest first: ids are consecutive on every board.
    pub fn ids(&self) -> impl Iterator<Item = MessageId> {
        (self.start..self.start + self.count).map(MessageId)
    }
}

/// A message board: ids strictly increase in publish order and are never reused.
pub trait Board: Send + Sync + 'static {
    /// Whether `publish` may wait (for a disk), so the driver should not run it inline.
    fn defers_publish(&self) -> bool {
        false
    }

    /// Adds this board's own metrics (a journal's fsyncs, say) to `registry`.
    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let _ = registry;
    }

    /// Stores `text` published from `from` and returns its id once it is stored.
    fn publish(
        &self,
        from: SocketAddr,
        text: Bytes,
    ) -> impl Future<Output = Result<MessageId, BoardError>> + Send;

    /// One message, or `None` if there is no message with that id.
    fn get(&self, id: MessageId) -> Result<Option<Entry>, BoardError>;

    /// The encoded length of message `id` (what [`Entry::encoded_len`] would say), or
    /// `None` if there is none.
    ///
    /// A `3:` reply is sized and reserved before it is read, so a store that reads from
    /// disk overrides this to find the length without reading a 16 MiB text on the
    /// receive loop — only to refuse it as busy, perhaps.
    fn entry_len(&self, id: MessageId) -> Result<Option<usize>, BoardError> {
        Ok(self.get(id)?.map(|e| e.encoded_len()))
    }

    /// The newest `n` messages (`n` = 0 means all) and the sizes of their replies.
    fn span(&self, n: u64) -> Result<Span, BoardError>;

    /// The messages with ids above `after`, oldest first, at most `max` (0 = no limit),
    /// and the sizes of their replies (for `6:`).
    fn span_after(&self, after: MessageId, max: u64) -> Result<Span, BoardError>;

    /// The messages in `span`, oldest first.
    fn messages(&self, span: &Span) -> Result<Vec<Message>, BoardError>;

    /// Appends the `4:` reply for `span` (as [`encode_messages`] would) to `out`.
    ///
    /// A store that keeps entries in memory overrides this to encode straight from them,
    /// without cloning each entry (whose shared reference counts every reader would
    /// otherwise bump from every core).
    fn encode_messages(&self, span: &Span, out: &mut Vec<u8>) -> Result<(), BoardError> {
        encode_messages(self.messages(span)?.iter(), out);
        Ok(())
    }
}

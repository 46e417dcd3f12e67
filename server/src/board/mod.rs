//! The board store: the API the request handler uses, and the stores behind it.
//!
//! `publish` is async so that a journal-backed store can resolve it only once the record is
//! durable (group commit), while reads stay synchronous. Stores also report the encoded size
//! of a reply before building it, so the handler can refuse an oversized `4:0` cheaply.
//!
//! `5:` publishes are deduplicated by the store itself ([`Board::publish_once`]), so that
//! looking a token up and assigning an id are one step: the memory board and the journal
//! share [`tokens::Tokens`]; a store with its own deduplication can use that instead.
//!
//! Retention ([`Retention`]) trims the oldest messages off either store, off the receive
//! loops; ids keep counting, so the kept ids are consecutive from [`Board::oldest`], and a
//! trimmed id reads as [`BoardError::NotKept`] where it once existed.
//!
//! Each store lives in its own submodule and keeps its failures in its own error type;
//! [`BoardError`] carries them without naming them, so a new store needs no change here.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use mboard_protocol::{Entry, Message, MessageId, PublishToken, encode_messages};

mod clustered;
mod journal;
mod memory;
mod retention;
mod sums;
mod tokens;
pub(crate) mod warnings;

pub(crate) use clustered::ClusteredBoard;
pub use clustered::{ClusterConfig, ClusterError, NatsAuth, NatsTls, Secret};
pub use journal::{Fsync, JournalConfig};
pub(crate) use journal::{Journal, JournalError};
pub use memory::MemoryBoard;
pub use retention::Retention;
pub use tokens::{TokenCounts, TokenLimits};

/// A failure of the store itself (not of the request).
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// Another thread panicked while holding the board's lock.
    #[error("board lock poisoned")]
    Poisoned,
    /// The backing storage failed; the store's own error says how.
    #[error(transparent)]
    Storage(Box<dyn std::error::Error + Send + Sync>),
    /// The store does not do this (a test double, say).
    #[error("this store cannot {0}")]
    Unsupported(&'static str),
    /// The message existed but retention has trimmed it.
    #[error("no longer kept")]
    NotKept,
    /// The store cannot take a publish now and stored nothing; it keeps answering reads.
    #[error("{0}")]
    Refused(Refusal),
}

/// Why a store refused a publish, storing nothing: the reason a `4` reply carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Too many publishes wait already (a slow or stalled disk); try again later.
    #[error("busy")]
    Busy,
    /// The disk is full.
    #[error("storage full")]
    Full,
    /// The filesystem is read-only.
    #[error("storage read-only")]
    ReadOnly,
    /// The data directory is no longer this server's (its files were removed, or its lock
    /// is no longer held): nothing more is written until the server is restarted.
    #[error("storage unavailable")]
    Unavailable,
}

/// Whether a store can take publishes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreState {
    /// Publishes are stored.
    #[default]
    Writable,
    /// The disk is full; retried until there is room.
    Full,
    /// The filesystem is read-only; retried with backoff until it is writable.
    ReadOnly,
    /// The data directory is no longer ours; nothing is written until a restart.
    Lost,
}

impl StoreState {
    /// Every state, in the order metrics list them.
    pub const ALL: [StoreState; 4] = [
        StoreState::Writable,
        StoreState::Full,
        StoreState::ReadOnly,
        StoreState::Lost,
    ];

    /// Its name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            StoreState::Writable => "writable",
            StoreState::Full => "full",
            StoreState::ReadOnly => "read_only",
            StoreState::Lost => "lost",
        }
    }
}

/// What a store keeps, and whether it can store more: read by the metrics endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Messages kept.
    pub messages: u64,
    /// Their bytes, as the store's retention counts them.
    pub bytes: u64,
    /// The oldest id kept (the next id when nothing is).
    pub oldest: MessageId,
    /// Messages trimmed by retention since the server started.
    pub trimmed: u64,
    /// Whether publishes are stored now.
    pub state: StoreState,
}

/// What became of a `5:` publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The text was stored under this new id.
    Stored(MessageId),
    /// The token had already published this id: nothing was stored.
    Duplicate(MessageId),
}

impl Published {
    /// The id to answer with.
    pub fn id(self) -> MessageId {
        match self {
            Published::Stored(id) | Published::Duplicate(id) => id,
        }
    }
}

/// Waits until a message the store knows of can be read here: see [`Board::catch_up`].
pub(crate) type CatchUp = Pin<Box<dyn Future<Output = Result<(), BoardError>> + Send>>;

/// The newest-n messages at one moment, and how big their replies are.
///
/// Reads take the span rather than `n`, so a publish that lands between sizing a reply and
/// building it cannot change what the reply holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// The id of its first message.
    pub start: u64,
    /// How many messages the request covers.
    pub count: u64,
    /// Sum of the decimal lengths of their ids (for `2:`).
    pub id_digits: u64,
    /// Sum of their `4:` record lengths.
    pub records: u64,
}

impl Span {
    /// The ids in the span, oldest first: kept ids are consecutive on every board.
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

    /// Stores `text` unless `token` published within the store's deduplication window,
    /// in which case it stores nothing and returns the id that publish got.
    ///
    /// Looking the token up and storing are atomic: two concurrent publishes of one token
    /// store once, and both learn the one id, only once it is stored (durably, on a
    /// durable store). A failed store forgets the token, so that a resend may retry.
    fn publish_once(
        &self,
        from: SocketAddr,
        token: PublishToken,
        text: Bytes,
    ) -> impl Future<Output = Result<Published, BoardError>> + Send {
        let _ = (from, token, text);
        std::future::ready(Err(BoardError::Unsupported("publish exactly once")))
    }

    /// The token table's counts, for a store that keeps one.
    fn tokens(&self) -> Option<TokenCounts> {
        None
    }

    /// Keeps what `retention` allows from now on (a reload): a lower limit is trimmed to
    /// soon by the store's own trimming, never on the caller's thread; a higher one keeps
    /// what is there. A store that cannot change its limits while it runs says so, and
    /// keeps the ones it has.
    fn set_retention(&self, retention: Retention) -> Result<(), BoardError> {
        let _ = retention;
        Err(BoardError::Unsupported(
            "change its retention while it runs",
        ))
    }

    /// The first id this store ever hands out: 0, or 1 on the clustered store, whose ids
    /// are its stream's sequence. Ids below it were never messages (`no message`, not `no
    /// longer kept`).
    fn first_id(&self) -> MessageId {
        MessageId(0)
    }

    /// The oldest id kept: every id below it was trimmed by retention. A store that never
    /// trims keeps everything from 0.
    fn oldest(&self) -> Result<MessageId, BoardError> {
        Ok(MessageId(0))
    }

    /// What the store keeps and whether it can store more, for a store that reports it.
    fn status(&self) -> Option<Status> {
        None
    }

    /// For a store whose reads come from a replica that may lag behind publishes made
    /// elsewhere (the clustered store): when message `id` is not readable here yet, a
    /// future that resolves (bounded) once it is, or once it is known not to exist, so that
    /// an acknowledged id is never answered "no message". `None`: read it now.
    fn catch_up(&self, id: MessageId) -> Option<CatchUp> {
        let _ = id;
        None
    }

    /// For a store that receives messages published elsewhere (the clustered store): the
    /// newest id readable here, changing as messages arrive, so that held `6:` requests
    /// wake for them too.
    fn arrivals(&self) -> Option<tokio::sync::watch::Receiver<MessageId>> {
        None
    }

    /// One message, or `None` if there is no message with that id (none yet, or trimmed:
    /// [`Board::oldest`] tells which).
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

    /// The messages in `span`, oldest first: those still kept, so a span whose oldest
    /// messages were trimmed since it was taken yields only its newer ones.
    fn messages(&self, span: &Span) -> Result<Vec<Message>, BoardError>;

    /// Appends the `4:` reply for `span` (as [`encode_messages`] would) to `out`: for the
    /// messages still kept, as [`Board::messages`], so the reply may be shorter than the
    /// span said.
    ///
    /// A store that keeps entries in memory overrides this to encode straight from them,
    /// without cloning each entry (whose shared reference counts every reader would
    /// otherwise bump from every core).
    fn encode_messages(&self, span: &Span, out: &mut Vec<u8>) -> Result<(), BoardError> {
        encode_messages(self.messages(span)?.iter(), out);
        Ok(())
    }
}

//! The in-memory board: fast, and gone when the server stops.
//!
//! Retention trims it from a thread of its own ([`Trimmer`]), never on the receive loops: a
//! publish only wakes that thread when it takes the board over a limit. Should the thread
//! fall behind a flood anyway, publishes are refused as busy once the board is a quarter
//! over its byte limit, so memory stays bounded whatever the thread's share of the CPU.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use bytes::Bytes;
use mboard_protocol::{Entry, Message, MessageId, PublishToken, Timestamp, encode_entries};

use super::retention::{Held, Retention};
use super::sums::Sums;
use super::tokens::{TokenCounts, TokenLimits, Tokens};
use super::{Board, BoardError, Published, Refusal, Span, Status, StoreState};
use trimmer::Trimmer;

mod replica;
#[cfg(test)]
mod retention_tests;
#[cfg(test)]
mod tests;
mod trimmer;

/// Bytes a message costs the memory board besides its text, as `--retain-bytes` counts
/// them: its entry in the queue (72 bytes: time, address, the text's handle), its running
/// size sum (8), the allocator's header on the text, and the queue's spare capacity.
pub(super) const ENTRY_COST: u64 = 128;

#[derive(Debug, Default)]
struct Inner {
    /// Message `sums.first() + i` is `entries[i]`.
    entries: VecDeque<Entry>,
    sums: Sums,
    /// Bytes kept, as retention counts them: each text plus [`ENTRY_COST`].
    bytes: u64,
    /// Messages trimmed since the board was created.
    trimmed: u64,
    /// The limits, under the lock the publishes and the trimming thread take anyway, so
    /// a reload changes them for both at once.
    retention: Retention,
}

impl Inner {
    fn held(&self) -> Held {
        Held {
            messages: self.entries.len() as u64,
            bytes: self.bytes,
            oldest: self.entries.front().map(|e| e.time),
        }
    }

    /// The entries of `span` still kept, and the id of the first.
    fn kept(&self, span: &Span) -> (MessageId, impl ExactSizeIterator<Item = &Entry>) {
        let kept = self.sums.clip(span);
        let start = (kept.start - self.sums.first()) as usize;
        (
            MessageId(kept.start),
            self.entries.range(start..start + kept.count as usize),
        )
    }
}

fn cost(text: &Bytes) -> u64 {
    text.len() as u64 + ENTRY_COST
}

/// A board held in memory only: gone when the server stops.
///
/// Texts are kept as the `Bytes` slices they arrived in, so publishing copies nothing.
#[derive(Debug)]
pub struct MemoryBoard {
    inner: Arc<RwLock<Inner>>,
    tokens: Tokens,
    /// Started with the first limit (at creation or by [`Board::set_retention`]).
    trimmer: OnceLock<Trimmer>,
    /// Whether the board starts its trimming thread itself: not in tests that trim by
    /// hand.
    trims_itself: bool,
}

impl Default for MemoryBoard {
    fn default() -> Self {
        Self::with_tokens(TokenLimits::default())
    }
}

impl MemoryBoard {
    /// An empty board that keeps everything, remembering publish tokens by the default
    /// limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty board that keeps everything, remembering publish tokens within `limits`.
    pub(crate) fn with_tokens(limits: TokenLimits) -> Self {
        let mut board = Self::unstarted(limits, Retention::UNLIMITED);
        // No thread until a limit comes (by `set_retention`).
        board.trims_itself = true;
        board
    }

    /// An empty board remembering publish tokens within `limits` and keeping what
    /// `retention` allows, trimmed by a thread of its own (which this starts).
    pub(crate) fn with_limits(limits: TokenLimits, retention: Retention) -> std::io::Result<Self> {
        let mut board = Self::unstarted(limits, retention);
        board.trims_itself = true;
        board.start_trimmer(retention)?;
        Ok(board)
    }

    /// A board with these limits whose trimming is left to the caller ([`Self::trim`]).
    pub(crate) fn unstarted(limits: TokenLimits, retention: Retention) -> Self {
        let inner = Inner {
            retention,
            ..Inner::default()
        };
        MemoryBoard {
            inner: Arc::new(RwLock::new(inner)),
            tokens: Tokens::new(limits),
            trimmer: OnceLock::new(),
            trims_itself: false,
        }
    }

    /// Starts the trimming thread once there is something to trim to (the board trims
    /// itself, and has no thread yet).
    fn start_trimmer(&self, retention: Retention) -> std::io::Result<()> {
        if self.trims_itself && retention.is_limited() && self.trimmer.get().is_none() {
            let trimmer = Trimmer::start(self.inner.clone())?;
            // Reloads come one at a time, so no other thread can have set it meanwhile;
            // if one had, this one is dropped, which stops it.
            let _ = self.trimmer.set(trimmer);
        }
        Ok(())
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Inner>, BoardError> {
        self.inner.read().map_err(|_| BoardError::Poisoned)
    }

    /// Trims what `retention` no longer allows at `now`; returns when the oldest message
    /// left will be too old, if there is an age limit. The trimming thread calls this;
    /// tests call it with a clock of their own.
    #[cfg(test)]
    pub(crate) fn trim(&self, now: Timestamp) -> Result<Option<Timestamp>, BoardError> {
        trimmer::trim(&self.inner, now)
    }

    /// Appends a message; returns its id and time.
    fn store(&self, from: SocketAddr, text: Bytes) -> Result<(MessageId, Timestamp), BoardError> {
        let inner = self.inner.write().map_err(|_| BoardError::Poisoned)?;
        if let Some(limit) = inner.retention.bytes
            && inner.bytes > limit.saturating_add(limit / 4)
        {
            drop(inner);
            self.wake_trimmer();
            return Err(BoardError::Refused(Refusal::Busy));
        }
        let id = MessageId(inner.sums.next());
        // Taken under the lock so that timestamps never go backwards as ids go forwards.
        let time = Timestamp::from_system_time(SystemTime::now());
        self.push(inner, id, Entry { time, from, text });
        Ok((id, time))
    }

    /// Appends `entry` as message `id` (the next), then lets go of the lock and wakes the
    /// trimmer if that took the board over a limit.
    fn push(&self, mut inner: RwLockWriteGuard<'_, Inner>, id: MessageId, entry: Entry) {
        // The first message of an empty board sets when the next one is due to age out.
        let was_empty = inner.entries.is_empty();
        inner
            .sums
            .push(Message::record_len_of(id, entry.time, entry.from, entry.text.len()) as u64);
        inner.bytes += cost(&entry.text);
        inner.entries.push_back(entry);
        let retention = inner.retention;
        let over = retention.size_exceeded(inner.entries.len() as u64, inner.bytes)
            || (was_empty && retention.age.is_some());
        drop(inner);
        if over {
            self.wake_trimmer();
        }
    }

    fn wake_trimmer(&self) {
        if let Some(trimmer) = self.trimmer.get() {
            trimmer.wake();
        }
    }
}

impl Board for MemoryBoard {
    async fn publish(&self, from: SocketAddr, text: Bytes) -> Result<MessageId, BoardError> {
        Ok(self.store(from, text)?.0)
    }

    async fn publish_once(
        &self,
        from: SocketAddr,
        token: PublishToken,
        text: Bytes,
    ) -> Result<Published, BoardError> {
        let claimed = match self.tokens.claim(token).await {
            Ok(claimed) => claimed,
            Err(id) => return Ok(Published::Duplicate(id)),
        };
        // On failure the claim is dropped, which abandons the token.
        let (id, time) = self.store(from, text)?;
        claimed.published(id, time);
        Ok(Published::Stored(id))
    }

    fn tokens(&self) -> Option<TokenCounts> {
        Some(self.tokens.counts())
    }

    /// The new limits hold for publishes at once; what a lower one no longer allows is
    /// trimmed by the trimming thread (started now if the board had no limit before).
    fn set_retention(&self, retention: Retention) -> Result<(), BoardError> {
        self.start_trimmer(retention)
            .map_err(|e| BoardError::Storage(Box::new(e)))?;
        self.inner
            .write()
            .map_err(|_| BoardError::Poisoned)?
            .retention = retention;
        self.wake_trimmer();
        Ok(())
    }

    fn oldest(&self) -> Result<MessageId, BoardError> {
        Ok(MessageId(self.read()?.sums.first()))
    }

    fn status(&self) -> Option<Status> {
        let inner = self.read().ok()?;
        Some(Status {
            messages: inner.entries.len() as u64,
            bytes: inner.bytes,
            oldest: MessageId(inner.sums.first()),
            trimmed: inner.trimmed,
            state: StoreState::Writable,
        })
    }

    fn get(&self, id: MessageId) -> Result<Option<Entry>, BoardError> {
        let inner = self.read()?;
        Ok(index(&inner, id).map(|i| inner.entries[i].clone()))
    }

    fn entry_len(&self, id: MessageId) -> Result<Option<usize>, BoardError> {
        let inner = self.read()?;
        Ok(index(&inner, id).map(|i| inner.entries[i].encoded_len()))
    }

    fn span(&self, n: u64) -> Result<Span, BoardError> {
        Ok(self.read()?.sums.span(n))
    }

    fn span_after(&self, after: MessageId, max: u64) -> Result<Span, BoardError> {
        Ok(self.read()?.sums.span_after(after.0, max))
    }

    fn messages(&self, span: &Span) -> Result<Vec<Message>, BoardError> {
        let inner = self.read()?;
        let (first, entries) = inner.kept(span);
        Ok(entries
            .zip(first.0..)
            .map(|(entry, id)| Message {
                id: MessageId(id),
                entry: entry.clone(),
            })
            .collect())
    }

    fn encode_messages(&self, span: &Span, out: &mut Vec<u8>) -> Result<(), BoardError> {
        let inner = self.read()?;
        let (first, entries) = inner.kept(span);
        encode_entries(first, entries, out);
        Ok(())
    }
}

/// Where message `id` is in the queue, if it is kept.
fn index(inner: &Inner, id: MessageId) -> Option<usize> {
    let i = id.0.checked_sub(inner.sums.first())?;
    usize::try_from(i).ok().filter(|&i| i < inner.entries.len())
}

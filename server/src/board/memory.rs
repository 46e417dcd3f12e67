//! The in-memory board: fast, and gone when the server stops.
//!
//! Retention trims it from a thread of its own ([`Trimmer`]), never on the receive loops: a
//! publish only wakes that thread when it takes the board over a limit. Should the thread
//! fall behind a flood anyway, publishes are refused as busy once the board is a quarter
//! over its byte limit, so memory stays bounded whatever the thread's share of the CPU.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use mboard_protocol::{Entry, Message, MessageId, PublishToken, Timestamp, encode_entries};

use super::retention::{Held, Retention};
use super::sums::Sums;
use super::tokens::{TokenCounts, TokenLimits, Tokens};
use super::{Board, BoardError, Published, Refusal, Span, Status, StoreState};

/// Bytes a message costs the memory board besides its text, as `--retain-bytes` counts
/// them: its entry in the queue (72 bytes: time, address, the text's handle), its running
/// size sum (8), the allocator's header on the text, and the queue's spare capacity.
pub const ENTRY_COST: u64 = 128;

/// Messages trimmed under one hold of the lock, so readers wait microseconds at most.
const TRIM_CHUNK: usize = 4_096;

#[derive(Debug, Default)]
struct Inner {
    /// Message `sums.first() + i` is `entries[i]`.
    entries: VecDeque<Entry>,
    sums: Sums,
    /// Bytes kept, as retention counts them: each text plus [`ENTRY_COST`].
    bytes: u64,
    /// Messages trimmed since the board was created.
    trimmed: u64,
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
    retention: Retention,
    /// `None` without limits, and in tests that trim by hand.
    trimmer: Option<Trimmer>,
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
    pub fn with_tokens(limits: TokenLimits) -> Self {
        Self::unstarted(limits, Retention::UNLIMITED)
    }

    /// An empty board remembering publish tokens within `limits` and keeping what
    /// `retention` allows, trimmed by a thread of its own (which this starts).
    pub fn with_limits(limits: TokenLimits, retention: Retention) -> std::io::Result<Self> {
        let mut board = Self::unstarted(limits, retention);
        if retention.is_limited() {
            board.trimmer = Some(Trimmer::start(board.inner.clone(), retention)?);
        }
        Ok(board)
    }

    /// A board with these limits whose trimming is left to the caller ([`Self::trim`]).
    pub(crate) fn unstarted(limits: TokenLimits, retention: Retention) -> Self {
        MemoryBoard {
            inner: Arc::default(),
            tokens: Tokens::new(limits),
            retention,
            trimmer: None,
        }
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Inner>, BoardError> {
        self.inner.read().map_err(|_| BoardError::Poisoned)
    }

    /// Trims what `retention` no longer allows at `now`; returns when the oldest message
    /// left will be too old, if there is an age limit. The trimming thread calls this;
    /// tests call it with a clock of their own.
    #[cfg(test)]
    pub(crate) fn trim(&self, now: Timestamp) -> Result<Option<Timestamp>, BoardError> {
        trim(&self.inner, &self.retention, now)
    }

    /// Appends a message; returns its id and time.
    fn store(&self, from: SocketAddr, text: Bytes) -> Result<(MessageId, Timestamp), BoardError> {
        let inner = self.inner.write().map_err(|_| BoardError::Poisoned)?;
        if let Some(limit) = self.retention.bytes
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
        inner
            .sums
            .push(Message::record_len_of(id, entry.time, entry.from, entry.text.len()) as u64);
        inner.bytes += cost(&entry.text);
        inner.entries.push_back(entry);
        let over = self
            .retention
            .size_exceeded(inner.entries.len() as u64, inner.bytes);
        drop(inner);
        if over {
            self.wake_trimmer();
        }
    }

    /// Appends `entry` as message `id`, for a store that replicates ids assigned elsewhere
    /// (the clustered store). An id already held is ignored (a redelivery); an id past a gap
    /// drops everything before it, so that kept ids stay consecutive.
    pub(super) fn replicate(&self, id: MessageId, entry: Entry) -> Result<bool, BoardError> {
        let mut inner = self.inner.write().map_err(|_| BoardError::Poisoned)?;
        let next = inner.sums.next();
        if id.0 < next {
            return Ok(false);
        }
        let gap = id.0 > next && !inner.entries.is_empty();
        if id.0 > next {
            let dropped = inner.entries.len() as u64;
            inner.entries.clear();
            inner.bytes = 0;
            inner.trimmed += dropped;
            inner.sums = Sums::starting_at(id.0);
        }
        self.push(inner, id, entry);
        Ok(gap)
    }

    /// Drops every message below `first` (trimmed elsewhere); returns how many.
    pub(super) fn trim_below(&self, first: MessageId) -> Result<u64, BoardError> {
        let mut inner = self.inner.write().map_err(|_| BoardError::Poisoned)?;
        let n = first
            .0
            .saturating_sub(inner.sums.first())
            .min(inner.entries.len() as u64);
        let gone: Vec<Entry> = inner.entries.drain(..n as usize).collect();
        for entry in &gone {
            inner.bytes -= cost(&entry.text);
        }
        inner.sums.trim(n);
        inner.trimmed += n;
        if inner.entries.is_empty() && inner.sums.first() < first.0 {
            inner.sums = Sums::starting_at(first.0);
        }
        drop(inner);
        drop(gone);
        Ok(n)
    }

    fn wake_trimmer(&self) {
        if let Some(trimmer) = &self.trimmer {
            trimmer.wake();
        }
    }
}

/// Trims `inner` down to what `retention` allows at `now`, a chunk at a time; the texts
/// are freed outside the lock.
fn trim(
    inner: &RwLock<Inner>,
    retention: &Retention,
    now: Timestamp,
) -> Result<Option<Timestamp>, BoardError> {
    loop {
        let mut guard: RwLockWriteGuard<'_, Inner> =
            inner.write().map_err(|_| BoardError::Poisoned)?;
        let mut gone = Vec::new();
        while gone.len() < TRIM_CHUNK && retention.exceeded(guard.held(), now) {
            let Some(entry) = guard.entries.pop_front() else {
                break;
            };
            guard.bytes -= cost(&entry.text);
            gone.push(entry);
        }
        guard.sums.trim(gone.len() as u64);
        guard.trimmed += gone.len() as u64;
        if gone.len() < TRIM_CHUNK {
            if guard.entries.capacity() > 4 * guard.entries.len() + 1024 {
                let len = guard.entries.len();
                guard.entries.shrink_to(2 * len);
            }
            let next = guard.entries.front().and_then(|e| retention.expiry(e.time));
            return Ok(next);
        }
        drop(guard);
        drop(gone);
    }
}

/// The thread that trims a memory board: woken by publishes that take it over a count or
/// byte limit, and by the clock when its oldest message passes the age limit.
#[derive(Debug)]
struct Trimmer {
    shared: Arc<TrimShared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct TrimShared {
    /// Set by a publish that wants trimming; the thread clears it before it trims, so a
    /// burst of publishes wakes it once.
    wanted: AtomicBool,
    stop: AtomicBool,
}

impl Trimmer {
    fn start(inner: Arc<RwLock<Inner>>, retention: Retention) -> std::io::Result<Trimmer> {
        let shared = Arc::new(TrimShared::default());
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mboard-retention".into())
            .spawn(move || {
                while !state.stop.load(Ordering::Acquire) {
                    state.wanted.store(false, Ordering::Release);
                    let now = Timestamp::from_system_time(SystemTime::now());
                    let next = match trim(&inner, &retention, now) {
                        Ok(next) => next,
                        Err(_) => return,
                    };
                    if state.wanted.load(Ordering::Acquire) {
                        continue;
                    }
                    // Woken early by a publish (or the board being dropped), or by the
                    // oldest message coming of age; an hour at most, so a clock that jumps
                    // is caught up with.
                    let wait = next.map_or(Duration::from_secs(3_600), |at| {
                        Duration::from_micros(at.0.saturating_sub(now.0))
                    });
                    std::thread::park_timeout(wait.min(Duration::from_secs(3_600)));
                }
            })?;
        Ok(Trimmer {
            shared,
            thread: Some(thread),
        })
    }

    fn wake(&self) {
        if !self.shared.wanted.swap(true, Ordering::AcqRel)
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
    }
}

impl Drop for Trimmer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mboard_protocol::{encode_ids, encode_messages, ids_reply_len, messages_reply_len};

    use super::*;

    fn from() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40_000))
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn encoding_from_entries_matches_encoding_messages() {
        let board = MemoryBoard::new();
        block_on(async {
            for text in ["one", "two:with:colons", "", "four\n"] {
                board
                    .publish(from(), Bytes::from(text))
                    .await
                    .expect("publish");
            }
        });
        for n in [0, 1, 3, 4, 9] {
            let span = board.span(n).expect("span");
            let mut direct = Vec::new();
            board.encode_messages(&span, &mut direct).expect("encode");
            let mut via_messages = Vec::new();
            encode_messages(
                board.messages(&span).expect("messages").iter(),
                &mut via_messages,
            );
            assert_eq!(direct, via_messages, "n = {n}");
            assert_eq!(
                direct.len() as u64,
                messages_reply_len(span.count, span.records)
            );
        }
    }

    #[test]
    fn ids_increase_and_reads_see_publishes() {
        let board = MemoryBoard::new();
        block_on(async {
            for (i, text) in ["Hello world!", "a:b:c", "x"].into_iter().enumerate() {
                let id = board
                    .publish(from(), Bytes::from(text))
                    .await
                    .expect("publish");
                assert_eq!(id, MessageId(i as u64));
            }
        });
        assert_eq!(
            board.get(MessageId(1)).expect("get").map(|e| e.text),
            Some(Bytes::from("a:b:c"))
        );
        assert_eq!(board.get(MessageId(3)).expect("get"), None);
        assert_eq!(board.get(MessageId(u64::MAX)).expect("get"), None);
        let entry = board.get(MessageId(0)).expect("get").expect("exists");
        assert_eq!(
            board.entry_len(MessageId(0)).expect("len"),
            Some(entry.encoded_len())
        );
        assert_eq!(board.entry_len(MessageId(3)).expect("len"), None);
        assert_eq!(board.entry_len(MessageId(u64::MAX)).expect("len"), None);
        let ids = |n| board.span(n).expect("span").ids().collect::<Vec<_>>();
        assert_eq!(ids(2), vec![MessageId(1), MessageId(2)]);
        assert_eq!(ids(0).len(), 3);
        assert_eq!(ids(100).len(), 3);
        let newest = board
            .messages(&board.span(2).expect("span"))
            .expect("newest");
        assert_eq!(
            newest.iter().map(|m| m.id.0).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let all = board.messages(&board.span(0).expect("span")).expect("all");
        let times: Vec<_> = all.iter().map(|m| m.entry.time).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn spans_match_the_encoded_replies() {
        let board = MemoryBoard::new();
        block_on(async {
            for i in 0..120 {
                board
                    .publish(
                        from(),
                        Bytes::from(format!("message {i}: {}", "x".repeat(i))),
                    )
                    .await
                    .expect("publish");
            }
        });
        for n in [0, 1, 2, 9, 10, 11, 119, 120, 121, 1000] {
            let span = board.span(n).expect("span");
            let mut ids = Vec::new();
            encode_ids(span.ids(), &mut ids);
            assert_eq!(
                ids_reply_len(span.count, span.id_digits),
                ids.len() as u64,
                "n={n}"
            );
            let mut messages = Vec::new();
            encode_messages(board.messages(&span).expect("newest").iter(), &mut messages);
            assert_eq!(
                messages_reply_len(span.count, span.records),
                messages.len() as u64,
                "n={n}"
            );
        }
        assert_eq!(MemoryBoard::new().span(0).expect("span"), Span::default());
    }

    #[test]
    fn a_span_is_a_snapshot() {
        let board = MemoryBoard::new();
        block_on(async {
            board
                .publish(from(), Bytes::from("a"))
                .await
                .expect("publish");
            let span = board.span(1).expect("span");
            board
                .publish(from(), Bytes::from("b"))
                .await
                .expect("publish");
            let read = board.messages(&span).expect("read");
            assert_eq!(read.len(), 1);
            assert_eq!(read[0].entry.text, Bytes::from("a"));
        });
    }

    #[test]
    fn a_token_publishes_once_even_when_racing_itself() {
        let board = Arc::new(MemoryBoard::new());
        let token = PublishToken(uuid::Uuid::from_u128(7));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let board = board.clone();
                std::thread::spawn(move || {
                    block_on(board.publish_once(from(), token, Bytes::from("once")))
                        .expect("publish")
                })
            })
            .collect();
        let results: Vec<Published> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let stored = results
            .iter()
            .filter(|p| matches!(p, Published::Stored(_)))
            .count();
        assert_eq!(stored, 1, "{results:?}");
        assert!(results.iter().all(|p| p.id() == MessageId(0)));
        assert_eq!(board.span(0).expect("span").count, 1);
        assert_eq!(board.tokens().map(|c| c.held), Some(1));
    }

    #[test]
    fn concurrent_publishers_get_distinct_increasing_ids() {
        let board = Arc::new(MemoryBoard::new());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let board = board.clone();
                std::thread::spawn(move || {
                    block_on(async {
                        let mut ids = Vec::new();
                        for i in 0..500 {
                            ids.push(
                                board
                                    .publish(from(), Bytes::from(format!("{t}/{i}")))
                                    .await
                                    .expect("publish"),
                            );
                        }
                        ids
                    })
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            let ids = t.join().expect("thread");
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "each publisher sees increasing ids"
            );
            all.extend(ids);
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4000);
        assert_eq!(all.last(), Some(&MessageId(3999)));
    }
}

#[cfg(test)]
mod retention_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn from() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40_000))
    }

    fn publish(board: &MemoryBoard, text: &str) -> MessageId {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(board.publish(from(), Bytes::copy_from_slice(text.as_bytes())))
            .expect("publish")
    }

    fn manual(retention: Retention) -> MemoryBoard {
        MemoryBoard::unstarted(TokenLimits::default(), retention)
    }

    fn now() -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    fn ids(board: &MemoryBoard) -> Vec<u64> {
        board.span(0).expect("span").ids().map(|id| id.0).collect()
    }

    #[test]
    fn a_count_limit_keeps_the_newest_and_ids_go_on() {
        let board = manual(Retention {
            messages: Some(3),
            ..Retention::UNLIMITED
        });
        for i in 0..5 {
            publish(&board, &format!("m{i}"));
        }
        assert_eq!(
            ids(&board).len(),
            5,
            "nothing trimmed until the trimmer runs"
        );
        board.trim(now()).expect("trim");
        assert_eq!(ids(&board), vec![2, 3, 4]);
        assert_eq!(board.oldest().expect("oldest"), MessageId(2));
        assert_eq!(board.get(MessageId(1)).expect("get"), None);
        assert_eq!(board.entry_len(MessageId(1)).expect("len"), None);
        assert_eq!(
            board.get(MessageId(2)).expect("get").map(|e| e.text),
            Some(Bytes::from("m2"))
        );
        assert_eq!(publish(&board, "m5"), MessageId(5));
        let after: Vec<u64> = board
            .messages(&board.span_after(MessageId(0), 2).expect("span"))
            .expect("read")
            .iter()
            .map(|m| m.id.0)
            .collect();
        assert_eq!(
            after,
            vec![2, 3],
            "6: below the oldest starts at the oldest"
        );
        let status = board.status().expect("status");
        assert_eq!(
            (status.messages, status.oldest, status.trimmed),
            (4, MessageId(2), 2)
        );
    }

    #[test]
    fn a_byte_limit_counts_texts_and_their_cost() {
        let board = manual(Retention {
            bytes: Some(3 * (100 + ENTRY_COST)),
            ..Retention::UNLIMITED
        });
        for _ in 0..4 {
            publish(&board, &"x".repeat(100));
        }
        board.trim(now()).expect("trim");
        assert_eq!(ids(&board), vec![1, 2, 3]);
        assert_eq!(
            board.status().expect("status").bytes,
            3 * (100 + ENTRY_COST)
        );
        // One larger message pushes out as many as it must, oldest first.
        publish(&board, &"y".repeat(250));
        board.trim(now()).expect("trim");
        assert_eq!(ids(&board), vec![3, 4]);
    }

    #[test]
    fn an_age_limit_follows_the_clock_it_is_given() {
        let age = Duration::from_secs(60);
        let board = manual(Retention {
            age: Some(age),
            ..Retention::UNLIMITED
        });
        let start = now();
        for i in 0..3 {
            publish(&board, &format!("m{i}"));
        }
        let first = board.get(MessageId(0)).expect("get").expect("kept").time;
        let next = board.trim(start).expect("trim");
        assert_eq!(ids(&board).len(), 3);
        assert_eq!(next, Some(Timestamp(first.0 + 60_000_000)));
        // A minute after the last publish, all three are too old; ids continue.
        let last = board.get(MessageId(2)).expect("get").expect("kept").time;
        assert_eq!(
            board.trim(Timestamp(last.0 + 60_000_000)).expect("trim"),
            None
        );
        assert!(ids(&board).is_empty());
        assert_eq!(board.oldest().expect("oldest"), MessageId(3));
        assert_eq!(publish(&board, "later"), MessageId(3));
    }

    #[test]
    fn limits_together_trim_until_every_one_holds() {
        let board = manual(Retention {
            messages: Some(4),
            bytes: Some(5 * (10 + ENTRY_COST)),
            age: Some(Duration::from_secs(3_600)),
        });
        for _ in 0..6 {
            publish(&board, &"z".repeat(10));
        }
        board.trim(now()).expect("trim");
        assert_eq!(
            ids(&board),
            vec![2, 3, 4, 5],
            "the count is the tighter limit"
        );
        publish(&board, &"w".repeat(300));
        board.trim(now()).expect("trim");
        assert_eq!(ids(&board), vec![5, 6], "now the byte limit is");
        let later = Timestamp(now().0 + 3_601_000_000);
        board.trim(later).expect("trim");
        assert!(ids(&board).is_empty(), "then age takes the rest");
    }

    #[test]
    fn a_span_read_after_its_oldest_were_trimmed_gets_what_is_left() {
        let board = manual(Retention {
            messages: Some(2),
            ..Retention::UNLIMITED
        });
        for i in 0..4 {
            publish(&board, &format!("m{i}"));
        }
        let span = board.span(0).expect("span");
        board.trim(now()).expect("trim");
        let read: Vec<u64> = board
            .messages(&span)
            .expect("read")
            .iter()
            .map(|m| m.id.0)
            .collect();
        assert_eq!(read, vec![2, 3]);
        let mut out = Vec::new();
        board.encode_messages(&span, &mut out).expect("encode");
        let mut want = Vec::new();
        mboard_protocol::encode_messages(board.messages(&span).expect("read").iter(), &mut want);
        assert_eq!(out, want);
    }

    #[test]
    fn the_thread_trims_by_itself_and_reads_racing_it_stay_whole() {
        let board = Arc::new(
            MemoryBoard::with_limits(
                TokenLimits::default(),
                Retention {
                    messages: Some(100),
                    ..Retention::UNLIMITED
                },
            )
            .expect("board"),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|r| {
                let (board, stop) = (board.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !stop.load(Ordering::Relaxed) || reads == 0 {
                        let span = if r == 0 {
                            board.span(0)
                        } else {
                            board.span_after(MessageId(reads), 50)
                        }
                        .expect("span");
                        for m in board.messages(&span).expect("read") {
                            assert!(m.id.0 >= span.start && m.id.0 < span.start + span.count);
                            assert_eq!(m.entry.text, format!("message {}", m.id.0).as_bytes());
                        }
                        let mut out = Vec::new();
                        board.encode_messages(&span, &mut out).expect("encode");
                        assert!(
                            out.len() as u64
                                <= mboard_protocol::messages_reply_len(span.count, span.records)
                        );
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for i in 0..20_000u64 {
            assert_eq!(publish(&board, &format!("message {i}")), MessageId(i));
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().expect("reader") > 0);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while board.span(0).expect("span").count > 100 {
            assert!(
                std::time::Instant::now() < deadline,
                "the thread did not trim"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(ids(&board), (19_900..20_000).collect::<Vec<_>>());
    }

    #[test]
    fn a_board_far_over_its_byte_limit_refuses_publishes_as_busy() {
        let limit = 4 * (1_000 + ENTRY_COST);
        let board = manual(Retention {
            bytes: Some(limit),
            ..Retention::UNLIMITED
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let text = Bytes::from(vec![b'q'; 1_000]);
        let mut stored = 0;
        let refused = loop {
            match rt.block_on(board.publish(from(), text.clone())) {
                Ok(_) => stored += 1,
                Err(e) => break e,
            }
        };
        assert!(
            matches!(refused, BoardError::Refused(Refusal::Busy)),
            "{refused}"
        );
        assert_eq!(stored, 6, "up to a quarter over the limit, and one more");
        board.trim(now()).expect("trim");
        assert!(
            rt.block_on(board.publish(from(), text)).is_ok(),
            "trimmed: room again"
        );
    }

    #[test]
    fn dropping_a_board_stops_its_thread() {
        let board = MemoryBoard::with_limits(
            TokenLimits::default(),
            Retention {
                age: Some(Duration::from_secs(86_400)),
                ..Retention::UNLIMITED
            },
        )
        .expect("board");
        publish(&board, "x");
        // Joins the thread, which waits a day for the message to age.
        let started = std::time::Instant::now();
        drop(board);
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}

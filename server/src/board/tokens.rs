//! The publish-token table behind `5:<token>:<text>`: which tokens published which id.
//!
//! [`TokenTable`] is sans-IO: the store feeds it the publisher's wall-clock time (the time
//! it records with the message), so a table rebuilt from the journal after a restart ages
//! tokens exactly as the one that was running did. [`Tokens`] shares one table between a
//! store's publishers and its writer, and hands out [`Claimed`] guards.
//!
//! A token is *pending* from the moment its publish is accepted until the store has made it
//! durable and assigned its id. A second publish of a pending token must neither store the
//! text again nor be told an id that is not yet durable, so it waits for the first one: it
//! gets the id once that is durable, or, if that publish failed, tries to publish itself.
//! Waiting rather than answering nothing matters inside an upload: a commit that answered
//! nothing would stay executing, and every later commit of its session would go unanswered.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use mboard_protocol::{MessageId, PublishToken, Timestamp};
use tokio::sync::watch;

/// How long tokens are remembered, and how many at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLimits {
    /// A token is remembered for at least this long after its publish (`--dedup-window`).
    pub window: Duration,
    /// Tokens remembered at once; past it the oldest are forgotten early (`--max-tokens`).
    pub max_tokens: usize,
}

impl Default for TokenLimits {
    /// Two minutes, 1,048,576 tokens: about 90 MiB when full (docs/OPERATIONS.md).
    fn default() -> Self {
        TokenLimits {
            window: Duration::from_secs(120),
            max_tokens: 1 << 20,
        }
    }
}

/// What the table knows of a token.
#[derive(Debug)]
pub(super) enum Claim {
    /// Not seen within the window: publish it (the token is now pending).
    New,
    /// Its publish is still being stored: the receiver turns `Some(id)` once it is, and
    /// closes without a value if it failed.
    Pending(watch::Receiver<Option<MessageId>>),
    /// Already published as this id: answer with it, store nothing.
    Published(MessageId),
}

/// A token's slot: its id, and when it was published (microseconds since the epoch); or,
/// while its publish is under way, `at` is [`PENDING`] and `id` says whether resends wait
/// for it (a channel in `waiters`). One map for both states: a publish looks its token up
/// twice (claimed, then published) where two maps took four hashes of it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: MessageId,
    at: u64,
}

/// `at` of a pending token. No publish is stamped this late (584,000 years after the
/// epoch); restored times are kept below it.
const PENDING: u64 = u64::MAX;

impl Slot {
    fn pending(waited: bool) -> Slot {
        Slot {
            id: MessageId(u64::from(waited)),
            at: PENDING,
        }
    }

    fn is_pending(self) -> bool {
        self.at == PENDING
    }

    fn waited(self) -> bool {
        self.is_pending() && self.id.0 == 1
    }
}

/// Tokens published within the window, oldest first, bounded in number; and the tokens
/// whose publish is under way.
#[derive(Debug)]
pub(super) struct TokenTable {
    window_micros: u64,
    max_tokens: usize,
    /// Tokens published within the window, and tokens being published (never forgotten
    /// early nor by age: the store resolves every one, or drops its guard).
    slots: HashMap<PublishToken, Slot>,
    /// How many of `slots` are pending.
    pending: usize,
    /// Published tokens in the order they were published, with their time. An entry whose
    /// token has been published again since (only a restore can do that) is stale: its
    /// time differs from the slot's, and it is skipped.
    order: VecDeque<(u64, PublishToken)>,
    /// The channel a pending token's waiting resends listen on, made when the first resend
    /// comes (most publishes have none: no channel to allocate and notify for them).
    waiters: HashMap<PublishToken, watch::Sender<Option<MessageId>>>,
    evicted_early: u64,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenCounts {
    /// Tokens remembered now (published within the window, or being published).
    pub held: usize,
    /// Tokens forgotten before their window ended because the table was full.
    pub evicted_early: u64,
}

impl TokenTable {
    /// An empty table with these limits.
    pub(super) fn new(limits: TokenLimits) -> Self {
        TokenTable {
            window_micros: u64::try_from(limits.window.as_micros()).unwrap_or(u64::MAX),
            max_tokens: limits.max_tokens.max(1),
            slots: HashMap::new(),
            pending: 0,
            order: VecDeque::new(),
            waiters: HashMap::new(),
            evicted_early: 0,
        }
    }

    /// Counts for metrics, as of the last call that was given the time.
    pub(super) fn counts(&self) -> TokenCounts {
        TokenCounts {
            held: self.slots.len(),
            evicted_early: self.evicted_early,
        }
    }

    /// Looks `token` up at `now`; a token not known within the window becomes pending.
    pub(super) fn claim(&mut self, token: PublishToken, now: Timestamp) -> Claim {
        self.expire(now);
        match self.slots.entry(token) {
            Entry::Occupied(slot) if !slot.get().is_pending() => Claim::Published(slot.get().id),
            Entry::Occupied(mut slot) => {
                *slot.get_mut() = Slot::pending(true);
                let waiters = self
                    .waiters
                    .entry(token)
                    .or_insert_with(|| watch::channel(None).0);
                Claim::Pending(waiters.subscribe())
            }
            Entry::Vacant(slot) => {
                slot.insert(Slot::pending(false));
                self.pending += 1;
                Claim::New
            }
        }
    }

    /// The pending `token` was stored as `id` at `at`: remember it, and tell its waiters.
    pub(super) fn published(&mut self, token: PublishToken, id: MessageId, at: Timestamp) {
        let at = at.0.min(PENDING - 1);
        let Some(slot) = self.slots.get_mut(&token).filter(|s| s.is_pending()) else {
            return;
        };
        let waited = slot.waited();
        *slot = Slot { id, at };
        self.pending -= 1;
        if waited && let Some(waiters) = self.waiters.remove(&token) {
            waiters.send_replace(Some(id));
        }
        self.make_room(token);
        self.order.push_back((at, token));
    }

    /// The pending `token` could not be stored: forget it, so that a resend (or a waiter)
    /// may try again.
    pub(super) fn abandon(&mut self, token: PublishToken) {
        if let Entry::Occupied(slot) = self.slots.entry(token)
            && slot.get().is_pending()
        {
            if slot.remove().waited() {
                // Dropping the sender closes the waiters' receivers without a value.
                self.waiters.remove(&token);
            }
            self.pending -= 1;
        }
    }

    /// Remembers a token read back from storage (rebuilding the table at start-up), if
    /// it is still inside the window at `now`. A later record of the same token wins, as
    /// it did in the server that wrote them.
    pub(super) fn restore(
        &mut self,
        token: PublishToken,
        id: MessageId,
        at: Timestamp,
        now: Timestamp,
    ) {
        if now.0.saturating_sub(at.0) < self.window_micros {
            self.remember(token, id, at.0);
        }
    }

    fn remember(&mut self, token: PublishToken, id: MessageId, at: u64) {
        let at = at.min(PENDING - 1);
        if let Some(old) = self.slots.insert(token, Slot { id, at })
            && old.is_pending()
        {
            // Only start-up restores, before any publish; a pending claim it replaced
            // would have nothing left to resolve.
            self.pending -= 1;
            self.waiters.remove(&token);
        }
        self.make_room(token);
        self.order.push_back((at, token));
    }

    /// Forgets the oldest published tokens (other than `newest`, just published) while
    /// there are more than the table holds.
    fn make_room(&mut self, newest: PublishToken) {
        while self.slots.len() - self.pending > self.max_tokens {
            let Some((at, old)) = self.order.pop_front() else {
                break;
            };
            if old != newest && self.forget(old, at) {
                self.evicted_early += 1;
            }
        }
    }

    /// Forgets `token` if its queue entry at `at` is the live one; says whether it was.
    fn forget(&mut self, token: PublishToken, at: u64) -> bool {
        match self.slots.entry(token) {
            Entry::Occupied(slot) if slot.get().at == at => {
                slot.remove();
                true
            }
            _ => false,
        }
    }

    /// The tokens published within the window at `now` whose ids are in `first..end`,
    /// with their ids and publish times: those a store must keep when it deletes the
    /// records of those ids.
    pub(super) fn live_between(
        &self,
        first: u64,
        end: u64,
        now: Timestamp,
    ) -> Vec<(PublishToken, MessageId, Timestamp)> {
        self.slots
            .iter()
            .filter(|(_, s)| {
                !s.is_pending()
                    && (first..end).contains(&s.id.0)
                    && now.0.saturating_sub(s.at) < self.window_micros
            })
            .map(|(token, s)| (*token, s.id, Timestamp(s.at)))
            .collect()
    }

    /// The id and publish time of `token`, if it was published within the window at `now`.
    pub(super) fn live(
        &self,
        token: PublishToken,
        now: Timestamp,
    ) -> Option<(MessageId, Timestamp)> {
        self.slots
            .get(&token)
            .filter(|s| !s.is_pending() && now.0.saturating_sub(s.at) < self.window_micros)
            .map(|s| (s.id, Timestamp(s.at)))
    }

    /// Forgets published tokens whose window has ended by `now`.
    pub(super) fn expire(&mut self, now: Timestamp) {
        while let Some(&(at, token)) = self.order.front() {
            if now.0.saturating_sub(at) < self.window_micros {
                break;
            }
            self.order.pop_front();
            self.forget(token, at);
        }
    }
}

/// A store's token table, shared by its publishers and its writer.
#[derive(Debug, Clone)]
pub(super) struct Tokens(Arc<Mutex<TokenTable>>);

impl Tokens {
    /// An empty table with these limits.
    pub(super) fn new(limits: TokenLimits) -> Self {
        Tokens(Arc::new(Mutex::new(TokenTable::new(limits))))
    }

    /// The table, for start-up to restore into.
    pub(super) fn table(&self) -> MutexGuard<'_, TokenTable> {
        // The table is consistent between calls, so a panic elsewhere while holding it
        // must not stop exactly-once publishing.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Claims `token` for a publish: `Ok` to publish it (resolve the guard when stored),
    /// `Err(id)` if it already published `id`. A publish of it that is under way is
    /// waited for; if that one fails, this claim tries again.
    pub(super) async fn claim(&self, token: PublishToken) -> Result<Claimed, MessageId> {
        loop {
            let now = Timestamp::from_system_time(SystemTime::now());
            let claim = self.table().claim(token, now);
            let mut waiting = match claim {
                Claim::New => {
                    return Ok(Claimed {
                        tokens: self.clone(),
                        token,
                        resolved: false,
                    });
                }
                Claim::Published(id) => return Err(id),
                Claim::Pending(waiting) => waiting,
            };
            if let Ok(id) = waiting.wait_for(Option::is_some).await
                && let Some(id) = *id
            {
                return Err(id);
            }
        }
    }

    /// Counts for metrics, forgetting tokens whose window has ended first.
    pub(super) fn counts(&self) -> TokenCounts {
        let mut table = self.table();
        table.expire(Timestamp::from_system_time(SystemTime::now()));
        table.counts()
    }
}

/// A pending token: resolve it with [`Claimed::published`] once its message is stored;
/// dropping it unresolved (the store failed, the publish was cancelled) abandons it.
#[derive(Debug)]
pub(super) struct Claimed {
    tokens: Tokens,
    token: PublishToken,
    resolved: bool,
}

impl Claimed {
    /// The token claimed.
    pub(super) fn token(&self) -> PublishToken {
        self.token
    }

    /// Its message was stored (durably) as `id` at `at`.
    pub(super) fn published(mut self, id: MessageId, at: Timestamp) {
        self.resolved = true;
        self.tokens.table().published(self.token, id, at);
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if !self.resolved {
            self.tokens.table().abandon(self.token);
        }
    }
}

#[cfg(test)]
mod tests;

//! The publish-token table behind `5:<token>:<text>`: which tokens published which id.
//!
//! Sans-IO: the store feeds it the publisher's wall-clock time (the same time it records
//! with the message), so a table rebuilt from the journal after a restart ages tokens
//! exactly as the one that was running did.
//!
//! A token is *pending* from the moment its publish is accepted until the store has made it
//! durable and assigned its id; a resend arriving meanwhile must neither store the text a
//! second time nor be told an id that is not yet durable, so it is answered nothing and
//! the client's next resend gets the id.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use mboard_protocol::{MessageId, PublishToken, Timestamp};

/// What the table knows of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Not seen within the window: publish it (the token is now pending).
    New,
    /// Its publish is still being stored: answer nothing, the resend will get the id.
    Pending,
    /// Already published as this id: answer with it, store nothing.
    Published(MessageId),
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// `None` while pending.
    id: Option<MessageId>,
    /// When it was published (or claimed), in microseconds since the epoch.
    at: u64,
}

/// Tokens published within the window, oldest first, bounded in number.
#[derive(Debug)]
pub struct TokenTable {
    window_micros: u64,
    max_tokens: usize,
    slots: HashMap<PublishToken, Slot>,
    /// Tokens in the order they were claimed, with their time; an entry whose token was
    /// abandoned or re-claimed since is stale and skipped.
    order: VecDeque<(u64, PublishToken)>,
    early: u64,
    duplicates: u64,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenCounts {
    /// Tokens remembered now.
    pub held: usize,
    /// Tokens forgotten before their window ended because the table was full.
    pub evicted_early: u64,
    /// Resends answered from the table without storing anything.
    pub duplicates: u64,
}

impl TokenTable {
    /// A table remembering tokens for `window`, at most `max_tokens` of them.
    pub fn new(window: Duration, max_tokens: usize) -> Self {
        TokenTable {
            window_micros: u64::try_from(window.as_micros()).unwrap_or(u64::MAX),
            max_tokens: max_tokens.max(1),
            slots: HashMap::new(),
            order: VecDeque::new(),
            early: 0,
            duplicates: 0,
        }
    }

    /// Counts for metrics.
    pub fn counts(&self) -> TokenCounts {
        TokenCounts {
            held: self.slots.len(),
            evicted_early: self.early,
            duplicates: self.duplicates,
        }
    }

    /// Looks `token` up at `now`; a token not known within the window becomes pending.
    pub fn claim(&mut self, token: PublishToken, now: Timestamp) -> Claim {
        self.forget_before(now);
        match self.slots.get(&token) {
            Some(Slot { id: Some(id), .. }) => {
                self.duplicates += 1;
                Claim::Published(*id)
            }
            Some(Slot { id: None, .. }) => Claim::Pending,
            None => {
                self.insert(token, None, now.0);
                Claim::New
            }
        }
    }

    /// The pending `token` was stored as `id`.
    pub fn published(&mut self, token: PublishToken, id: MessageId) {
        if let Some(slot) = self.slots.get_mut(&token) {
            slot.id = Some(id);
        }
    }

    /// The pending `token` could not be stored: forget it, so a resend may try again.
    pub fn abandon(&mut self, token: PublishToken) {
        if matches!(self.slots.get(&token), Some(Slot { id: None, .. })) {
            self.slots.remove(&token);
        }
    }

    /// Remembers a token read back from storage (rebuilding the table at start-up), if
    /// it is still inside the window at `now`.
    pub fn restore(&mut self, token: PublishToken, id: MessageId, at: Timestamp, now: Timestamp) {
        if now.0.saturating_sub(at.0) < self.window_micros {
            self.insert(token, Some(id), at.0);
        }
    }

    fn insert(&mut self, token: PublishToken, id: Option<MessageId>, at: u64) {
        while self.slots.len() >= self.max_tokens {
            let Some((at, old)) = self.order.pop_front() else {
                break;
            };
            if self.slots.get(&old).is_some_and(|s| s.at == at) {
                self.slots.remove(&old);
                self.early += 1;
            }
        }
        self.slots.insert(token, Slot { id, at });
        self.order.push_back((at, token));
    }

    /// Forgets tokens whose window has ended by `now`.
    fn forget_before(&mut self, now: Timestamp) {
        while let Some(&(at, token)) = self.order.front() {
            if now.0.saturating_sub(at) < self.window_micros {
                break;
            }
            self.order.pop_front();
            // A token still pending this late is forgotten too: its publish, if it ever
            // completes, finds no slot, and a resend this late is past the window anyway.
            if self.slots.get(&token).is_some_and(|s| s.at == at) {
                self.slots.remove(&token);
            }
        }
        // Stale entries of abandoned tokens are dropped as they reach the front; keep the
        // queue from growing past the table when many are abandoned.
        if self.order.len() > 2 * self.max_tokens {
            let slots = &self.slots;
            self.order
                .retain(|(at, t)| slots.get(t).is_some_and(|s| s.at == *at));
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn token(n: u128) -> PublishToken {
        PublishToken(Uuid::from_u128(n))
    }

    fn secs(s: u64) -> Timestamp {
        Timestamp(s * 1_000_000)
    }

    const WINDOW: Duration = Duration::from_secs(120);

    #[test]
    fn a_token_publishes_once_within_its_window() {
        let mut t = TokenTable::new(WINDOW, 100);
        assert_eq!(t.claim(token(1), secs(0)), Claim::New);
        // A resend while the first is being stored is answered nothing.
        assert_eq!(t.claim(token(1), secs(0)), Claim::Pending);
        t.published(token(1), MessageId(7));
        assert_eq!(t.claim(token(1), secs(119)), Claim::Published(MessageId(7)));
        assert_eq!(t.counts().duplicates, 1);
        // After the window it is a new token.
        assert_eq!(t.claim(token(1), secs(120)), Claim::New);
    }

    #[test]
    fn an_abandoned_publish_can_be_retried() {
        let mut t = TokenTable::new(WINDOW, 100);
        assert_eq!(t.claim(token(1), secs(0)), Claim::New);
        t.abandon(token(1));
        assert_eq!(t.claim(token(1), secs(1)), Claim::New);
        t.published(token(1), MessageId(3));
        // Abandoning a published token changes nothing.
        t.abandon(token(1));
        assert_eq!(t.claim(token(1), secs(2)), Claim::Published(MessageId(3)));
    }

    #[test]
    fn a_full_table_forgets_the_oldest_early_and_counts_it() {
        let mut t = TokenTable::new(WINDOW, 3);
        for n in 0..3 {
            assert_eq!(t.claim(token(n), secs(n as u64)), Claim::New);
            t.published(token(n), MessageId(n as u64));
        }
        assert_eq!(t.claim(token(3), secs(3)), Claim::New);
        assert_eq!(t.counts().evicted_early, 1);
        assert_eq!(t.counts().held, 3);
        assert_eq!(
            t.claim(token(0), secs(4)),
            Claim::New,
            "the oldest was forgotten"
        );
        assert_eq!(t.claim(token(2), secs(4)), Claim::Published(MessageId(2)));
    }

    #[test]
    fn restored_tokens_keep_their_age() {
        let mut t = TokenTable::new(WINDOW, 100);
        let now = secs(1_000);
        t.restore(token(1), MessageId(1), secs(900), now);
        t.restore(token(2), MessageId(2), secs(870), now);
        assert_eq!(t.claim(token(1), now), Claim::Published(MessageId(1)));
        assert_eq!(
            t.claim(token(2), now),
            Claim::New,
            "its window ended before the restart"
        );
        // Token 1 was published at 900: it is forgotten at 1,020.
        assert_eq!(t.claim(token(1), secs(1_020)), Claim::New);
    }

    #[test]
    fn abandoned_tokens_do_not_grow_the_queue() {
        let mut t = TokenTable::new(WINDOW, 10);
        for n in 0..10_000 {
            assert_eq!(t.claim(token(n), secs(0)), Claim::New);
            t.abandon(token(n));
        }
        assert!(t.order.len() <= 21, "{}", t.order.len());
        assert_eq!(t.counts().held, 0);
    }
}

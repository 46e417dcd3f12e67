//! Reading a board in pages with `6:`, sans-IO: where the next page starts, how large it
//! is, which replies are news, and when a follower lost and found its server again.
//!
//! Nothing here sends or waits; the client feeds in what came and asks what to do next,
//! so gaps, duplicates, stale replies and outages are tested without a network.

use std::collections::VecDeque;
use std::time::Duration;

use mboard_protocol::{Message, MessageId, SessionId};

/// Where a reader is: the next message id it wants.
///
/// `6:<after>` asks for ids above `after`, so there is no way to ask it for message 0:
/// a cursor at the very beginning reads message 0 with `3:0` beside `6:0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    next: u64,
}

/// What a page of messages brought a [`Cursor`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Accepted {
    /// Messages that should have come first but are no longer kept (retention removed
    /// them): `(first missing id, how many)`.
    pub missed: Option<(MessageId, u64)>,
    /// The messages not seen before, oldest first.
    pub messages: Vec<Message>,
}

/// A reply whose ids do not go up: no server sends that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message ids out of order ({after} then {then})")]
pub(crate) struct OutOfOrder {
    /// The id before.
    pub after: MessageId,
    /// The id that did not follow it.
    pub then: MessageId,
}

impl Cursor {
    /// Before every message.
    pub(crate) fn beginning() -> Self {
        Cursor { next: 0 }
    }

    /// After message `id`: the next wanted is `id + 1`.
    pub(crate) fn after(id: MessageId) -> Self {
        Cursor {
            next: id.0.saturating_add(1),
        }
    }

    /// The next id wanted.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// The `<after>` of the `6:` that asks for the next page: `None` at the beginning,
    /// where `6:0` leaves message 0 out and `3:0` must read it.
    pub(crate) fn asks_after(&self) -> Option<MessageId> {
        self.next.checked_sub(1).map(MessageId)
    }

    /// The last id given out, if any.
    pub(crate) fn last(&self) -> Option<MessageId> {
        self.asks_after()
    }

    /// Takes a page: drops what was seen already (a late or duplicated reply to an earlier
    /// request), says what retention removed before the first new message, and moves on
    /// past the last.
    pub(crate) fn accept(&mut self, page: Vec<Message>) -> Result<Accepted, OutOfOrder> {
        for pair in page.windows(2) {
            if pair[1].id <= pair[0].id {
                return Err(OutOfOrder {
                    after: pair[0].id,
                    then: pair[1].id,
                });
            }
        }
        let messages: Vec<Message> = page.into_iter().filter(|m| m.id.0 >= self.next).collect();
        let Some(first) = messages.first() else {
            return Ok(Accepted::default());
        };
        let missed =
            (first.id.0 > self.next).then(|| (MessageId(self.next), first.id.0 - self.next));
        self.next = messages
            .last()
            .map_or(self.next, |m| m.id.0.saturating_add(1));
        Ok(Accepted { missed, messages })
    }
}

/// How many messages to ask for in one page: as many as usually fit in one reply datagram,
/// judged by the size of the messages seen so far. A page that does not fit still comes,
/// as a download offer, at the cost of a round trip or two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pager {
    /// The average `4:` record size of the last page, in bytes.
    record: Option<u64>,
    /// At most this many, since the server could not afford a larger page.
    cap: Option<u64>,
}

impl Pager {
    /// The bytes of records a page aims at: a reply datagram is 1,472 bytes by default,
    /// and the next page's messages may be longer than the last's.
    pub(crate) const TARGET: u64 = 1_200;
    /// The most messages asked for at once, however short.
    pub(crate) const MAX: u64 = 64;
    /// The page size before any message has been seen (records of 60 bytes: short texts).
    pub(crate) const FIRST: u64 = 20;

    /// A pager that has seen nothing.
    pub(crate) fn new() -> Self {
        Pager {
            record: None,
            cap: None,
        }
    }

    /// Messages to ask for in the next page.
    pub(crate) fn size(&self) -> u64 {
        let size = match self.record {
            None => Self::FIRST,
            Some(record) => (Self::TARGET / record.max(1)).clamp(1, Self::MAX),
        };
        self.cap.map_or(size, |cap| size.min(cap))
    }

    /// Learns from a page that came: the next is sized by its messages.
    pub(crate) fn observe(&mut self, page: &[Message]) {
        if page.is_empty() {
            return;
        }
        let bytes: u64 = page.iter().map(|m| m.record_len() as u64).sum();
        self.record = Some(bytes.div_ceil(page.len() as u64));
        self.cap = None;
    }

    /// The server refused the page as too large for it now (`4:busy`: 20 messages of
    /// 16 MiB are past its session memory): returns false if it was one message already,
    /// else halves the next page.
    pub(crate) fn refused(&mut self) -> bool {
        let size = self.size();
        if size <= 1 {
            return false;
        }
        self.cap = Some(size / 2);
        true
    }
}

impl Default for Pager {
    fn default() -> Self {
        Self::new()
    }
}

/// The download offers already taken, so that a duplicate of one (the network repeats
/// datagrams) is not fetched again from a session that is closed by then.
#[derive(Debug, Clone, Default)]
pub(crate) struct Offers {
    taken: VecDeque<SessionId>,
}

impl Offers {
    const KEPT: usize = 16;

    pub(crate) fn taken(&self, sid: SessionId) -> bool {
        self.taken.contains(&sid)
    }

    pub(crate) fn take(&mut self, sid: SessionId) {
        if self.taken.len() == Self::KEPT {
            self.taken.pop_front();
        }
        self.taken.push_back(sid);
    }
}

/// What a follower knows of its server: whether it has ever answered, and whether it
/// answers now. An outage is said once when it starts and once when it ends.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reach {
    heard: bool,
    lost: bool,
    failures: u32,
}

/// What to do after a failed exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failed {
    /// The server has never answered: give up (the address may be wrong).
    GiveUp,
    /// Try again after this pause; `report` is true the first time in an outage.
    Retry {
        /// Say that the server stopped answering.
        report: bool,
        /// How long to wait before the next attempt.
        pause: Duration,
    },
}

impl Reach {
    /// The first pause after a failure.
    pub(crate) const FIRST_PAUSE: Duration = Duration::from_millis(250);
    /// Pauses double up to this.
    pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(4);

    /// A server that has not answered yet.
    pub(crate) fn new() -> Self {
        Reach::default()
    }

    /// Whether the server answers (as far as is known).
    pub(crate) fn is_lost(&self) -> bool {
        self.lost
    }

    /// The server answered; true if that ends an outage (say so).
    pub(crate) fn answered(&mut self) -> bool {
        self.heard = true;
        self.failures = 0;
        std::mem::take(&mut self.lost)
    }

    /// An exchange failed in a way that may pass (silence, refusal, busy).
    pub(crate) fn failed(&mut self) -> Failed {
        if !self.heard {
            return Failed::GiveUp;
        }
        let report = !self.lost;
        self.lost = true;
        let pause = Self::FIRST_PAUSE
            .saturating_mul(1 << self.failures.min(8))
            .min(Self::MAX_PAUSE);
        self.failures = self.failures.saturating_add(1);
        Failed::Retry { report, pause }
    }
}

#[cfg(test)]
mod tests;

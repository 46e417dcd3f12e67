//! A memory board as the replica of a board whose ids are assigned elsewhere (the
//! clustered store's stream): messages arrive with their ids, and the oldest id follows
//! the stream's trimming.

use mboard_protocol::{Entry, MessageId};

use super::{MemoryBoard, cost};
use crate::board::BoardError;
use crate::board::sums::Sums;

impl MemoryBoard {
    /// Appends `entry` as message `id`. An id already held is ignored (a redelivery); an
    /// id past a gap drops everything before it, so that kept ids stay consecutive.
    /// Returns whether there was a gap with messages held before it.
    pub(crate) fn replicate(&self, id: MessageId, entry: Entry) -> Result<bool, BoardError> {
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

    /// The id the next message must have to follow on from what is held, and whether
    /// anything is held.
    pub(crate) fn expected(&self) -> Result<(MessageId, bool), BoardError> {
        let inner = self.inner.read().map_err(|_| BoardError::Poisoned)?;
        Ok((MessageId(inner.sums.next()), !inner.entries.is_empty()))
    }

    /// Drops every message below `first` (trimmed elsewhere); returns how many.
    pub(crate) fn trim_below(&self, first: MessageId) -> Result<u64, BoardError> {
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
}

//! Running sums of reply sizes, shared by the stores so every store sizes spans alike.

use mboard_protocol::digits_in_range;

use super::Span;

/// Running sums behind [`Span`]s: `records[i]` is the `4:` record bytes of messages `0..i`.
///
/// Ids are consecutive from 0, so id digits come from [`digits_in_range`] and only the
/// record sizes need storing: 8 bytes a message.
#[derive(Debug, Clone)]
pub(super) struct Sums {
    records: Vec<u64>,
}

impl Default for Sums {
    fn default() -> Self {
        Sums { records: vec![0] }
    }
}

impl Sums {
    /// Messages counted.
    pub(super) fn len(&self) -> u64 {
        self.records.len() as u64 - 1
    }

    /// Counts one more message whose `4:` record takes `record_len` bytes.
    pub(super) fn push(&mut self, record_len: u64) {
        let last = self.records.last().copied().unwrap_or(0);
        self.records.push(last + record_len);
    }

    /// The newest `n` messages (`n` = 0 or more than there are: all).
    pub(super) fn span(&self, n: u64) -> Span {
        let len = self.len();
        let start = if n == 0 || n >= len { 0 } else { len - n };
        Span {
            start,
            count: len - start,
            id_digits: digits_in_range(start, len),
            records: self.records[len as usize] - self.records[start as usize],
        }
    }
}

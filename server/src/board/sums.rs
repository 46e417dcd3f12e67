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
        self.range(start, len)
    }

    /// The messages with ids above `after`, oldest first, at most `max` (0: all).
    pub(super) fn span_after(&self, after: u64, max: u64) -> Span {
        let len = self.len();
        let start = after.saturating_add(1).min(len);
        let end = if max == 0 {
            len
        } else {
            start.saturating_add(max).min(len)
        };
        self.range(start, end)
    }

    fn range(&self, start: u64, end: u64) -> Span {
        Span {
            start,
            count: end - start,
            id_digits: digits_in_range(start, end),
            records: self.records[end as usize] - self.records[start as usize],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_after_an_id() {
        let mut sums = Sums::default();
        for len in [10, 20, 30, 40] {
            sums.push(len);
        }
        let span = sums.span_after(0, 0);
        assert_eq!((span.start, span.count, span.records), (1, 3, 90));
        let span = sums.span_after(0, 2);
        assert_eq!((span.start, span.count, span.records), (1, 2, 50));
        assert_eq!(sums.span_after(3, 0).count, 0);
        assert_eq!(sums.span_after(u64::MAX, 5).count, 0);
        assert_eq!(sums.span_after(1, u64::MAX).count, 2);
        // `after` below every id: from the first.
        assert_eq!(Sums::default().span_after(0, 0).count, 0);
    }
}

//! Running sums of reply sizes, shared by the stores so every store sizes spans alike.

use std::collections::VecDeque;

use mboard_protocol::digits_in_range;

use super::Span;

/// Running sums behind [`Span`]s over the messages a store keeps.
///
/// Kept ids are consecutive: from `first` (the oldest kept; every id below it has been
/// trimmed) to the newest. `records[i] - records[0]` is the `4:` record bytes of messages
/// `first .. first + i`; the origin moves as messages are trimmed, so only differences
/// mean anything. Id digits come from [`digits_in_range`]: 8 bytes a message in all.
#[derive(Debug, Clone)]
pub(super) struct Sums {
    first: u64,
    records: VecDeque<u64>,
}

impl Default for Sums {
    fn default() -> Self {
        Sums::starting_at(0)
    }
}

impl Sums {
    /// Nothing counted yet; the next message is `first`.
    pub(super) fn starting_at(first: u64) -> Self {
        Sums {
            first,
            records: VecDeque::from([0]),
        }
    }

    /// Messages counted.
    pub(super) fn len(&self) -> u64 {
        self.records.len() as u64 - 1
    }

    /// The oldest id counted (the next id, if none is).
    pub(super) fn first(&self) -> u64 {
        self.first
    }

    /// The id the next message gets.
    pub(super) fn next(&self) -> u64 {
        self.first + self.len()
    }

    /// Counts one more message whose `4:` record takes `record_len` bytes.
    pub(super) fn push(&mut self, record_len: u64) {
        let last = self.records.back().copied().unwrap_or(0);
        self.records.push_back(last + record_len);
    }

    /// Stops counting the `n` oldest messages (at most all of them).
    pub(super) fn trim(&mut self, n: u64) {
        let n = n.min(self.len());
        self.records.drain(..n as usize);
        self.first += n;
        // A burst that was trimmed away leaves its capacity behind; give it back once the
        // queue holds a quarter of it.
        if self.records.capacity() > 4 * self.records.len() + 1024 {
            self.records.shrink_to(2 * self.records.len());
        }
    }

    /// The newest `n` messages (`n` = 0 or more than there are: all).
    pub(super) fn span(&self, n: u64) -> Span {
        let (first, next) = (self.first, self.next());
        let start = if n == 0 || n >= self.len() {
            first
        } else {
            next - n
        };
        self.range(start, next)
    }

    /// The messages with ids above `after`, oldest first, at most `max` (0: all). An
    /// `after` below the oldest kept starts at the oldest kept.
    pub(super) fn span_after(&self, after: u64, max: u64) -> Span {
        let next = self.next();
        let start = after.saturating_add(1).clamp(self.first, next);
        let end = if max == 0 {
            next
        } else {
            start.saturating_add(max).min(next)
        };
        self.range(start, end)
    }

    /// The part of `span` still counted: its newest messages, from the oldest kept on.
    pub(super) fn clip(&self, span: &Span) -> Span {
        let end = (span.start + span.count).clamp(self.first, self.next());
        let start = span.start.clamp(self.first, end);
        if start == span.start && end == span.start + span.count {
            *span
        } else {
            self.range(start, end)
        }
    }

    /// The span of ids `start..end`, both within what is counted.
    fn range(&self, start: u64, end: u64) -> Span {
        let at = |id: u64| self.records[(id - self.first) as usize];
        Span {
            start,
            count: end - start,
            id_digits: digits_in_range(start, end),
            records: at(end) - at(start),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(lens: &[u64]) -> Sums {
        let mut sums = Sums::default();
        for &len in lens {
            sums.push(len);
        }
        sums
    }

    fn parts(span: Span) -> (u64, u64, u64) {
        (span.start, span.count, span.records)
    }

    #[test]
    fn spans_after_an_id() {
        let sums = sums(&[10, 20, 30, 40]);
        assert_eq!(parts(sums.span_after(0, 0)), (1, 3, 90));
        assert_eq!(parts(sums.span_after(0, 2)), (1, 2, 50));
        assert_eq!(sums.span_after(3, 0).count, 0);
        assert_eq!(sums.span_after(u64::MAX, 5).count, 0);
        assert_eq!(sums.span_after(1, u64::MAX).count, 2);
        // `after` below every id: from the first.
        assert_eq!(Sums::default().span_after(0, 0).count, 0);
    }

    #[test]
    fn trimming_moves_the_first_id_and_spans_follow() {
        let mut sums = sums(&[10, 20, 30, 40, 50]);
        sums.trim(2);
        assert_eq!((sums.first(), sums.next(), sums.len()), (2, 5, 3));
        assert_eq!(parts(sums.span(0)), (2, 3, 120));
        assert_eq!(parts(sums.span(2)), (3, 2, 90));
        assert_eq!(parts(sums.span(9)), (2, 3, 120));
        // `after` below the oldest kept starts at the oldest kept; the gap shows in ids.
        assert_eq!(parts(sums.span_after(0, 0)), (2, 3, 120));
        assert_eq!(parts(sums.span_after(0, 1)), (2, 1, 30));
        assert_eq!(parts(sums.span_after(3, 0)), (4, 1, 50));
        sums.push(60);
        assert_eq!(parts(sums.span(1)), (5, 1, 60));
        assert_eq!(sums.span(0).id_digits, 4);
        // Trimming everything keeps the next id.
        sums.trim(100);
        assert_eq!((sums.first(), sums.next(), sums.len()), (6, 6, 0));
        assert_eq!(parts(sums.span(0)), (6, 0, 0));
        assert_eq!(parts(sums.span_after(2, 0)), (6, 0, 0));
        sums.push(5);
        assert_eq!(parts(sums.span(0)), (6, 1, 5));
    }

    #[test]
    fn a_span_is_clipped_to_what_is_still_kept() {
        let mut sums = sums(&[10, 20, 30, 40]);
        let all = sums.span(0);
        assert_eq!(sums.clip(&all), all);
        sums.trim(1);
        sums.push(50);
        assert_eq!(
            parts(sums.clip(&all)),
            (1, 3, 90),
            "newer messages are not added"
        );
        sums.trim(10);
        assert_eq!(sums.clip(&all).count, 0);
    }

    #[test]
    fn an_index_starting_past_zero_sizes_ids_by_their_digits() {
        let mut sums = Sums::starting_at(98);
        for len in [1, 2, 3] {
            sums.push(len);
        }
        let span = sums.span(0);
        assert_eq!((span.start, span.count, span.id_digits), (98, 3, 2 + 2 + 3));
    }
}

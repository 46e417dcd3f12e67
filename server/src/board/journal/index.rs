//! The journal's index in memory: which segments hold the kept messages, where each
//! message's record starts, and the sums behind spans.
//!
//! 16 bytes a message (its offset and a running size sum), 20 with an age limit (its
//! publish time, in whole seconds, rounded up so that no message goes early). Texts are
//! read back from the segment files; readers hold a segment's file while they read, so a
//! segment deleted meanwhile is still read whole.

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use mboard_protocol::{PublishToken, Timestamp};

use crate::board::Span;
use crate::board::retention::{Held, Retention};
use crate::board::sums::Sums;

/// A segment file holding kept messages (or the one being appended to).
#[derive(Debug, Clone)]
pub(super) struct Segment {
    /// The id its first message has (or will have).
    pub(super) first: u64,
    pub(super) file: Arc<File>,
    pub(super) path: PathBuf,
    /// Bytes written and indexed (synced, under `--fsync always`).
    pub(super) len: u64,
    /// The tokens it holds token notes of: noted again elsewhere before it is deleted,
    /// if they are still inside the deduplication window.
    pub(super) noted: Vec<PublishToken>,
}

impl Segment {
    /// Segment `first`, holding `len` bytes and no notes yet.
    pub(super) fn new(first: u64, file: Arc<File>, path: PathBuf, len: u64) -> Segment {
        Segment {
            first,
            file,
            path,
            len,
            noted: Vec::new(),
        }
    }
}

/// Where to read a run of consecutive messages: one segment's bytes `from..to`.
#[derive(Debug, Clone)]
pub(super) struct Piece {
    pub(super) file: Arc<File>,
    /// The segment's first id (part of every record's place) and its path.
    pub(super) segment: u64,
    pub(super) path: PathBuf,
    pub(super) from: u64,
    pub(super) to: u64,
    /// The id of the first message, and how many to read.
    pub(super) first: u64,
    pub(super) count: u64,
}

/// The index.
#[derive(Debug)]
pub(super) struct Index {
    /// From the one holding the oldest kept message to the one being appended to.
    segments: VecDeque<Segment>,
    /// Offset of each kept message's record in its segment, oldest first.
    offsets: VecDeque<u64>,
    /// Each kept message's publish time in seconds after `time_base`, rounded up; kept
    /// only under an age limit.
    times: Option<VecDeque<u32>>,
    time_base: u64,
    sums: Sums,
    /// Bytes of all the segments listed.
    bytes: u64,
    /// Messages trimmed since start-up.
    trimmed: u64,
}

impl Index {
    /// An empty index whose next message is `first`; `times` keeps publish times (for an
    /// age limit).
    pub(super) fn new(first: u64, times: bool, now: Timestamp) -> Index {
        Index {
            segments: VecDeque::new(),
            offsets: VecDeque::new(),
            times: times.then(VecDeque::new),
            // A day before now, so clocks a little behind still fit.
            time_base: (now.0 / 1_000_000).saturating_sub(86_400),
            sums: Sums::starting_at(first),
            bytes: 0,
            trimmed: 0,
        }
    }

    /// Whether it keeps publish times, which an age limit needs.
    pub(super) fn timed(&self) -> bool {
        self.times.is_some()
    }

    pub(super) fn sums(&self) -> &Sums {
        &self.sums
    }

    /// The id the next message gets.
    pub(super) fn next(&self) -> u64 {
        self.sums.next()
    }

    pub(super) fn segments(&self) -> &VecDeque<Segment> {
        &self.segments
    }

    /// The segment being appended to.
    pub(super) fn active(&self) -> Option<&Segment> {
        self.segments.back()
    }

    /// Bytes of the segment files listed.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(super) fn trimmed(&self) -> u64 {
        self.trimmed
    }

    /// Starts appending to `segment`.
    pub(super) fn add_segment(&mut self, segment: Segment) {
        self.bytes += segment.len;
        self.segments.push_back(segment);
    }

    /// Counts a message whose record starts at `offset` in the newest segment.
    pub(super) fn push(&mut self, offset: u64, reply_len: u64, time: Timestamp) {
        self.offsets.push_back(offset);
        self.sums.push(reply_len);
        let base = self.time_base;
        if let Some(times) = &mut self.times {
            let secs = time.0.div_ceil(1_000_000).saturating_sub(base);
            times.push_back(u32::try_from(secs).unwrap_or(u32::MAX));
        }
    }

    /// The newest segment holds token notes of `tokens` now.
    pub(super) fn noted(&mut self, tokens: impl IntoIterator<Item = PublishToken>) {
        if let Some(active) = self.segments.back_mut() {
            active.noted.extend(tokens);
        }
    }

    /// The newest segment now holds `len` bytes.
    pub(super) fn grow(&mut self, len: u64) {
        if let Some(active) = self.segments.back_mut() {
            self.bytes = self.bytes - active.len + len;
            active.len = len;
        }
    }

    /// What retention weighs.
    pub(super) fn held(&self) -> Held {
        let messages = self.sums.len();
        let bytes = self.offsets.front().map_or(0, |&at| self.bytes - at);
        let oldest = match &self.times {
            Some(times) => times
                .front()
                .map(|&s| Timestamp((self.time_base + u64::from(s)) * 1_000_000)),
            // Without an age limit the time is not weighed, only whether there is one.
            None => (messages > 0).then_some(Timestamp(u64::MAX)),
        };
        Held {
            messages,
            bytes,
            oldest,
        }
    }

    /// Trims at most `max` of the oldest messages that `retention` no longer allows at
    /// `now`; returns how many went, and the segments nothing kept is in any more (never
    /// the newest), for the caller to delete.
    pub(super) fn trim(
        &mut self,
        retention: &Retention,
        now: Timestamp,
        max: u64,
    ) -> (u64, Vec<Segment>) {
        let mut n = 0;
        let mut gone = Vec::new();
        while n < max && retention.exceeded(self.held(), now) {
            self.pop();
            // The bytes kept count from the oldest kept message's segment on.
            gone.extend(self.release());
            n += 1;
        }
        self.shrink();
        (n, gone)
    }

    /// Trims every message below `id`; an `id` past the newest moves the next id there.
    pub(super) fn trim_below(&mut self, id: u64) -> Vec<Segment> {
        while self.sums.first() < id && self.sums.len() > 0 {
            self.pop();
        }
        if self.sums.next() < id {
            self.sums = Sums::starting_at(id);
        }
        self.shrink();
        self.release()
    }

    fn pop(&mut self) {
        self.offsets.pop_front();
        if let Some(times) = &mut self.times {
            times.pop_front();
        }
        self.sums.trim(1);
        self.trimmed += 1;
    }

    /// Takes out the segments before the one holding the oldest kept message.
    fn release(&mut self) -> Vec<Segment> {
        let mut gone = Vec::new();
        while self.segments.len() > 1 && self.segments[1].first <= self.sums.first() {
            if let Some(segment) = self.segments.pop_front() {
                self.bytes -= segment.len;
                gone.push(segment);
            }
        }
        gone
    }

    /// Gives back the memory of a burst that was trimmed away.
    fn shrink(&mut self) {
        if self.offsets.capacity() > 4 * self.offsets.len() + 1024 {
            let len = self.offsets.len();
            self.offsets.shrink_to(2 * len);
            if let Some(times) = &mut self.times {
                times.shrink_to(2 * len);
            }
        }
    }

    /// Where kept message `id` starts: its segment and the record's offset in it.
    pub(super) fn locate(&self, id: u64) -> Option<(&Segment, u64)> {
        let i = id.checked_sub(self.sums.first())?;
        let offset = *self.offsets.get(usize::try_from(i).ok()?)?;
        Some((self.segment_of(id)?, offset))
    }

    /// Where kept message `id`'s record starts in its segment.
    fn offset(&self, id: u64) -> u64 {
        self.offsets[(id - self.sums.first()) as usize]
    }

    fn segment_of(&self, id: u64) -> Option<&Segment> {
        let k = self.segments.partition_point(|s| s.first <= id);
        self.segments.get(k.checked_sub(1)?)
    }

    /// The pieces to read for the messages of `span` still kept, oldest first.
    pub(super) fn pieces(&self, span: &Span) -> Vec<Piece> {
        let kept = self.sums.clip(span);
        let (mut id, end) = (kept.start, kept.start + kept.count);
        let mut pieces = Vec::new();
        while id < end {
            let k = self.segments.partition_point(|s| s.first <= id) - 1;
            let segment = &self.segments[k];
            let next_first = self.segments.get(k + 1).map(|s| s.first);
            let stop = next_first.map_or(end, |f| f.min(end));
            // A run ends where the message after it starts, if that one is in this
            // segment; otherwise at the segment's end (notes after it are skipped).
            let to = if stop < self.sums.next() && next_first.is_none_or(|f| stop < f) {
                self.offset(stop)
            } else {
                segment.len
            };
            pieces.push(Piece {
                file: segment.file.clone(),
                segment: segment.first,
                path: segment.path.clone(),
                from: self.offset(id),
                to,
                first: id,
                count: stop - id,
            });
            id = stop;
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(first: u64, len: u64) -> Segment {
        let file = Arc::new(File::open("/dev/null").expect("a file"));
        Segment::new(first, file, PathBuf::from(format!("/seg/{first}")), len)
    }

    /// Segments of three messages each, 100 bytes apart after a 40-byte header.
    fn index(segments: u64, times: bool) -> Index {
        let now = Timestamp(1_000_000_000_000);
        let mut index = Index::new(0, times, now);
        for s in 0..segments {
            index.add_segment(segment(s * 3, 40));
            for m in 0..3 {
                index.push(40 + m * 100, 10, Timestamp(now.0 + (s * 3 + m) * 1_000_000));
                index.grow(40 + (m + 1) * 100);
            }
        }
        index
    }

    fn froms(pieces: &[Piece]) -> Vec<(u64, u64, u64, u64)> {
        pieces
            .iter()
            .map(|p| (p.first, p.count, p.from, p.to))
            .collect()
    }

    #[test]
    fn pieces_follow_segments_and_stop_where_the_span_does() {
        let index = index(3, false);
        let all = index.sums().span(0);
        assert_eq!(
            froms(&index.pieces(&all)),
            vec![(0, 3, 40, 340), (3, 3, 40, 340), (6, 3, 40, 340)]
        );
        let middle = index.sums().span_after(3, 2);
        assert_eq!((middle.start, middle.count), (4, 2));
        assert_eq!(froms(&index.pieces(&middle)), vec![(4, 2, 140, 340)]);
        let across = index.sums().span_after(4, 3);
        assert_eq!(
            froms(&index.pieces(&across)),
            vec![(5, 1, 240, 340), (6, 2, 40, 240)]
        );
        let one = index.sums().span_after(0, 1);
        assert_eq!(froms(&index.pieces(&one)), vec![(1, 1, 140, 240)]);
        let (segment, offset) = index.locate(7).expect("kept");
        assert_eq!((segment.first, offset), (6, 140));
        assert!(index.locate(9).is_none());
    }

    #[test]
    fn trimming_counts_bytes_from_the_oldest_kept_and_releases_whole_segments() {
        let mut index = index(3, false);
        assert_eq!(index.held().bytes, 3 * 340 - 40);
        let bytes = Retention {
            bytes: Some(500),
            ..Retention::UNLIMITED
        };
        let (n, gone) = index.trim(&bytes, Timestamp(0), u64::MAX);
        // 980 → 880 → 780 → (segment 0 goes, header and all) 640 → 540 → 440.
        assert_eq!(n, 5);
        assert_eq!(gone.iter().map(|s| s.first).collect::<Vec<_>>(), vec![0]);
        assert_eq!(index.held().bytes, 440);
        assert_eq!(index.sums().first(), 5);
        assert!(index.locate(4).is_none());
        let count = Retention {
            messages: Some(1),
            ..Retention::UNLIMITED
        };
        let (n, gone) = index.trim(&count, Timestamp(0), 2);
        assert_eq!((n, gone.len()), (2, 1), "at most two at a time");
        let (n, gone) = index.trim(&count, Timestamp(0), u64::MAX);
        assert_eq!((n, gone.len(), index.sums().first()), (1, 0, 8));
        assert_eq!(index.segments().len(), 1);
        assert_eq!(index.trimmed(), 8);
    }

    #[test]
    fn the_newest_segment_stays_when_everything_goes() {
        let mut index = index(2, false);
        let gone = index.trim_below(6);
        assert_eq!(gone.len(), 1);
        assert_eq!(
            (index.sums().first(), index.next(), index.held().bytes),
            (6, 6, 0)
        );
        assert_eq!(index.segments().len(), 1, "the one being appended to");
        // Past the newest: the next id moves on (records that were lost).
        assert!(index.trim_below(10).is_empty());
        assert_eq!(index.next(), 10);
    }

    #[test]
    fn ages_are_whole_seconds_rounded_up() {
        let mut index = index(2, true);
        let first = index.held().oldest.expect("kept");
        assert_eq!(first, Timestamp(1_000_000_000_000));
        let age = Retention {
            age: Some(std::time::Duration::from_secs(10)),
            ..Retention::UNLIMITED
        };
        // Messages 0..6 at t0 + 0..5 s; at t0 + 12 s, those up to 2 s are 10 s old.
        let (n, _) = index.trim(&age, Timestamp(first.0 + 12_000_000), u64::MAX);
        assert_eq!(n, 3);
        let mut late = Index::new(0, true, Timestamp(5_000_000_000));
        late.add_segment(segment(0, 40));
        late.push(40, 10, Timestamp(5_000_000_001));
        assert_eq!(
            late.held().oldest,
            Some(Timestamp(5_001_000_000)),
            "rounded up"
        );
    }
}

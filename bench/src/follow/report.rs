//! What the followers measured, summed over all of them and joined with the publishes.

use std::collections::HashMap;
use std::fmt::Write as _;

use mboard_client::json_string;

use crate::report::{Tally, percentile_signed};

/// One follower's counts.
#[derive(Debug, Default)]
pub(crate) struct FollowerTally {
    /// Resends while fetching offers, and the first failure.
    pub(crate) tally: Tally,
    /// Sampled ids, and when this follower first read each (nanoseconds, as in
    /// [`super::Shared`]).
    pub(crate) seen: Vec<(u64, u64)>,
    /// Ids read for the first time in the measured window.
    pub(crate) delivered: u64,
    /// Replies read in the measured window.
    pub(crate) replies: u64,
    /// Replies that came as a download offer and were fetched.
    pub(crate) offers: u64,
    /// Requests answered `4:busy`.
    pub(crate) busy: u64,
    /// Replies that were not a list of messages.
    pub(crate) errors: u64,
}

/// The followers' side of a follower run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FollowReport {
    /// Follower sockets.
    pub(crate) followers: usize,
    /// (follower, sampled id) pairs timed.
    pub(crate) samples: u64,
    /// (follower, sampled id) pairs published in the window that the follower had not
    /// read by the end of the drain.
    pub(crate) unseen: u64,
    /// Publish reply to follower read, median, in microseconds (negative: the follower
    /// read it first).
    pub(crate) p50_us: f64,
    /// 99th percentile.
    pub(crate) p99_us: f64,
    /// 99.9th percentile.
    pub(crate) p999_us: f64,
    /// Messages the followers read per second, all followers together.
    pub(crate) messages_per_s: f64,
    /// Replies the followers read per second.
    pub(crate) replies_per_s: f64,
    /// Replies that came as download offers.
    pub(crate) offers: u64,
    /// `4:busy` answers.
    pub(crate) busy: u64,
    /// Replies that were not lists of messages, and failed fetches.
    pub(crate) errors: u64,
    /// What the first of those was.
    pub(crate) first_error: Option<String>,
}

impl FollowReport {
    /// Joins the followers' reads with the publishers' `published` samples (sampled id,
    /// reply time) from `seconds` of measuring.
    pub(crate) fn new(
        followers: Vec<FollowerTally>,
        published: &[(u64, u64)],
        seconds: f64,
    ) -> Self {
        let replied: HashMap<u64, u64> = published.iter().copied().collect();
        let count = followers.len();
        let mut latencies = Vec::new();
        let (mut delivered, mut replies, mut offers, mut busy, mut errors) = (0, 0, 0, 0, 0);
        let mut first_error = None;
        for f in followers {
            latencies.extend(
                f.seen
                    .iter()
                    .filter_map(|(id, read)| replied.get(id).map(|at| *read as i64 - *at as i64)),
            );
            delivered += f.delivered;
            replies += f.replies;
            offers += f.offers;
            busy += f.busy;
            errors += f.errors + f.tally.errors();
            if first_error.is_none() {
                first_error = f.tally.first_error().map(str::to_string);
            }
        }
        latencies.sort_unstable();
        let samples = latencies.len() as u64;
        FollowReport {
            followers: count,
            samples,
            unseen: (count as u64 * replied.len() as u64).saturating_sub(samples),
            p50_us: percentile_signed(&latencies, 0.50),
            p99_us: percentile_signed(&latencies, 0.99),
            p999_us: percentile_signed(&latencies, 0.999),
            messages_per_s: delivered as f64 / seconds,
            replies_per_s: replies as f64 / seconds,
            offers,
            busy,
            errors,
            first_error,
        }
    }

    /// Its fields, as more members of the run's JSON object.
    pub(crate) fn json_fields(&self, s: &mut String) {
        let _ = write!(
            s,
            ",\"followers\":{},\"follow_samples\":{},\"follow_unseen\":{},\"follow_p50_us\":{:.1},\"follow_p99_us\":{:.1},\"follow_p999_us\":{:.1},\"follow_messages_per_s\":{:.1},\"follow_replies_per_s\":{:.1},\"follow_offers\":{},\"follow_busy\":{},\"follow_errors\":{}",
            self.followers,
            self.samples,
            self.unseen,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.messages_per_s,
            self.replies_per_s,
            self.offers,
            self.busy,
            self.errors
        );
        if let Some(e) = &self.first_error {
            let _ = write!(s, ",\"follow_first_error\":{}", json_string(e));
        }
    }

    /// One line for people.
    pub(crate) fn line(&self) -> String {
        let mut s = format!(
            "  followers={} publish reply -> follower read: p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  ({} timed, {} unseen)  read {:.0} msgs/s in {:.0} replies/s  offers {}  busy {}  errors {}",
            self.followers,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.samples,
            self.unseen,
            self.messages_per_s,
            self.replies_per_s,
            self.offers,
            self.busy,
            self.errors
        );
        if let Some(e) = &self.first_error {
            let _ = write!(s, "  (first error: {e})");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_reads_with_publishes_and_counts_what_was_not_read() {
        let published = [(16, 1_000), (32, 2_000), (48, 3_000)];
        let fast = FollowerTally {
            // Id 0 was published before the window: not timed.
            seen: vec![(0, 10), (16, 1_500), (32, 1_900), (48, 3_100)],
            delivered: 40,
            replies: 4,
            ..FollowerTally::default()
        };
        let slow = FollowerTally {
            seen: vec![(16, 5_000)],
            delivered: 20,
            replies: 2,
            ..FollowerTally::default()
        };
        let r = FollowReport::new(vec![fast, slow], &published, 2.0);
        assert_eq!(r.followers, 2);
        assert_eq!(r.samples, 4);
        assert_eq!(r.unseen, 2);
        // Latencies -0.1, 0.1, 0.5, 4.0 us: the follower that read id 32 before its
        // publisher had the reply counts as negative.
        assert_eq!(r.p50_us, 0.1);
        assert_eq!(r.p99_us, 4.0);
        assert_eq!(r.messages_per_s, 30.0);
        assert_eq!(r.replies_per_s, 3.0);
        let mut json = String::from("{\"x\":1");
        r.json_fields(&mut json);
        json.push('}');
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(parsed["follow_unseen"], 2);
        assert_eq!(parsed["follow_p99_us"], 4.0);
    }
}

//! The access log: at `debug`, one line per request answered; at `info`, a summary of
//! every interval (a minute by default) that saw traffic.
//!
//! Both are logged under the target `mboard_server::access`, so a filter such as
//! `info,mboard_server::access=debug` turns the per-request lines on alone. Those lines
//! cost nothing while `debug` is off: `tracing` checks the level before it evaluates any
//! field, and the fields are plain values already at hand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mboard_protocol::{ReplyCode, RequestKind};
use tokio::net::UdpSocket;
use tracing::{debug, info};

use crate::board::Board;
use crate::handler::Handler;
use crate::limiter::RateLimiter;
use crate::metrics::{
    Metrics, REPLY_CODES, REQUEST_TYPES, receive_queue_drops, reply_index, request_index,
};

/// One request answered: who asked what, the reply's code, its size, and how long it took
/// from the datagram's arrival to the reply's departure.
pub(crate) fn request(
    from: SocketAddr,
    kind: Option<RequestKind>,
    request_len: usize,
    reply: Option<ReplyCode>,
    sent: usize,
    received: Instant,
) {
    debug!(
        %from,
        request = %REQUEST_TYPES[request_index(kind)],
        reply = %REPLY_CODES[reply_index(reply)],
        bytes_in = request_len,
        bytes_out = sent,
        micros = received.elapsed().as_micros() as u64,
        "request"
    );
}

/// The answer to a held `6:` request, sent when a publish or its deadline woke it (its
/// arrival was logged by [`request`] with `reply=none`).
pub(crate) fn held_answer(to: SocketAddr, reply: Option<ReplyCode>, sent: usize) {
    debug!(
        %to,
        request = %"after",
        reply = %REPLY_CODES[reply_index(reply)],
        bytes_out = sent,
        "held request answered"
    );
}

/// What the summary counts, as totals since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    requests: u64,
    publishes: u64,
    errors: u64,
    drops: u64,
    bytes_in: u64,
    bytes_out: u64,
}

impl Counts {
    fn since(self, before: Counts) -> Counts {
        Counts {
            requests: self.requests - before.requests,
            publishes: self.publishes - before.publishes,
            errors: self.errors - before.errors,
            drops: self.drops - before.drops,
            bytes_in: self.bytes_in - before.bytes_in,
            bytes_out: self.bytes_out - before.bytes_out,
        }
    }
}

/// The counters the summary reads: the same ones `/metrics` reports.
pub(crate) struct Sources<B> {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) handler: Arc<Handler<B>>,
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) errors: Arc<RateLimiter>,
    pub(crate) socket: Arc<UdpSocket>,
}

/// The [`REPLY_CODES`] indices of error replies, codes `1` to `4`.
const ERROR_REPLIES: std::ops::RangeInclusive<usize> = 1..=4;

impl<B: Board> Sources<B> {
    fn counts(&self) -> Counts {
        let t = self.metrics.totals();
        Counts {
            requests: t.requests.iter().flatten().sum(),
            publishes: self.handler.publishes(),
            errors: t
                .requests
                .iter()
                .map(|by_code| by_code[ERROR_REPLIES].iter().sum::<u64>())
                .sum(),
            drops: self.limiter.dropped()
                + self.errors.dropped()
                + t.receive_errors
                + t.send_errors
                + t.shed
                + receive_queue_drops(&self.socket).unwrap_or(0),
            bytes_in: t.received_bytes,
            bytes_out: t.sent_bytes,
        }
    }
}

/// Logs, every `interval`, what the server did in it; an interval without a datagram logs
/// nothing.
pub(crate) async fn summaries<B: Board>(
    sources: Sources<B>,
    interval: Duration,
) -> std::io::Result<()> {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // From zero, not from a first reading: this task may start after the first requests
    // were answered (a busy machine), and they belong in the first summary.
    let mut before = Counts::default();
    loop {
        tick.tick().await;
        let now = sources.counts();
        let n = now.since(before);
        if n != Counts::default() {
            info!(
                seconds = interval.as_secs_f64(),
                requests = n.requests,
                publishes = n.publishes,
                errors = n.errors,
                drops = n.drops,
                bytes_in = n.bytes_in,
                bytes_out = n.bytes_out,
                "summary"
            );
        }
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_are_codes_one_to_four() {
        assert_eq!(REPLY_CODES[ERROR_REPLIES], ["1", "2", "3", "4"]);
    }

    #[test]
    fn a_summary_counts_what_happened_since_the_one_before() {
        let before = Counts {
            requests: 10,
            publishes: 2,
            errors: 1,
            drops: 0,
            bytes_in: 100,
            bytes_out: 50,
        };
        let now = Counts {
            requests: 15,
            drops: 4,
            ..before
        };
        assert_eq!(
            now.since(before),
            Counts {
                requests: 5,
                drops: 4,
                ..Counts::default()
            }
        );
    }
}

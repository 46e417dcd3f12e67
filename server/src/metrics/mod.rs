//! Server metrics and the `--metrics` endpoint (Prometheus/OpenMetrics text over HTTP).
//!
//! The hot path only adds to plain atomics in a [`Shard`] owned by its receive loop, so
//! the two cores never write the same cache line; everything is summed, and the gauges
//! (sessions, buffered bytes, …) read, only when the endpoint is scraped. The endpoint
//! itself, and how it shares its connections between hosts, is in `endpoint` and `slots`.

mod collector;
mod endpoint;
mod exposition;
mod slots;

pub(crate) use collector::{
    KernelQueue, ServerCollector, queue_of, receive_queue_drops, socket_inode,
};
pub(crate) use endpoint::serve_metrics;
pub use slots::EndpointLimits;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use mboard_protocol::{ReplyCode, RequestKind};

/// What a request datagram asks for, by its code byte (`other`: not a request code).
pub(crate) const REQUEST_TYPES: [&str; 12] = [
    "publish",
    "ids",
    "get",
    "last",
    "publish_once",
    "after",
    "open",
    "block",
    "commit",
    "fetch",
    "close",
    "other",
];

/// What was answered, by the reply's code byte (`offer` is `d:`, `none` is no reply).
pub(crate) const REPLY_CODES: [&str; 7] = ["0", "1", "2", "3", "4", "offer", "none"];

/// Index into [`REQUEST_TYPES`] of a request (`None`: not a request at all).
pub(crate) fn request_index(kind: Option<RequestKind>) -> usize {
    // `RequestKind::ALL` is in the order of `REQUEST_TYPES`; a test holds them together.
    kind.map_or(REQUEST_TYPES.len() - 1, |k| k as usize)
}

/// Index into [`REPLY_CODES`] of a reply's code (`None`: nothing was sent).
pub(crate) fn reply_index(code: Option<ReplyCode>) -> usize {
    match code {
        None => 6,
        Some(ReplyCode::Ok) => 0,
        Some(ReplyCode::Error(code)) => usize::from(code.byte() - b'0'),
        Some(ReplyCode::Offer) => 5,
    }
}

/// Why a datagram was dropped without being answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// Receiving failed for it (e.g. an ICMP error surfacing on the socket).
    ReceiveError,
    /// Sending its reply failed (e.g. the kernel's send buffer was full).
    SendError,
    /// Its receive loop was behind and its host over its share of the traffic.
    Overload,
}

/// One receive loop's counters, on a cache line pair of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Shard {
    requests: [[AtomicU64; REPLY_CODES.len()]; REQUEST_TYPES.len()],
    received_bytes: AtomicU64,
    sent_bytes: AtomicU64,
    receive_errors: AtomicU64,
    shed: AtomicU64,
    send_errors: AtomicU64,
    /// System calls that received datagrams, and the datagrams they took.
    receive_calls: AtomicU64,
    received_datagrams: AtomicU64,
    /// System calls that sent datagrams, and the datagrams they gave.
    send_calls: AtomicU64,
    sent_datagrams: AtomicU64,
}

impl Shard {
    /// Counts a request of type `kind` and the code of the reply it got.
    pub(crate) fn answered(
        &self,
        kind: Option<RequestKind>,
        request_len: usize,
        reply: Option<ReplyCode>,
    ) {
        self.requests[request_index(kind)][reply_index(reply)].fetch_add(1, Relaxed);
        self.received_bytes.fetch_add(request_len as u64, Relaxed);
    }

    /// Counts a reply's bytes once sent.
    pub(crate) fn sent(&self, len: usize) {
        self.sent_bytes.fetch_add(len as u64, Relaxed);
    }

    /// Counts one system call that received `datagrams`.
    pub(crate) fn received_in_one_call(&self, datagrams: usize) {
        self.receive_calls.fetch_add(1, Relaxed);
        self.received_datagrams.fetch_add(datagrams as u64, Relaxed);
    }

    /// Counts `calls` system calls that sent `datagrams` between them.
    pub(crate) fn sent_in_calls(&self, calls: usize, datagrams: usize) {
        self.send_calls.fetch_add(calls as u64, Relaxed);
        self.sent_datagrams.fetch_add(datagrams as u64, Relaxed);
    }

    /// Counts a datagram dropped for `why`.
    pub(crate) fn dropped(&self, why: DropReason) {
        match why {
            DropReason::ReceiveError => {
                self.receive_errors.fetch_add(1, Relaxed);
            }
            DropReason::SendError => {
                self.send_errors.fetch_add(1, Relaxed);
            }
            DropReason::Overload => {
                self.shed.fetch_add(1, Relaxed);
            }
        }
    }
}

/// The driver's counters: one [`Shard`] per receive loop.
#[derive(Debug)]
pub(crate) struct Metrics {
    shards: Box<[Shard]>,
}

/// Totals over all shards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Requests by [`REQUEST_TYPES`] index, then [`REPLY_CODES`] index.
    pub requests: [[u64; REPLY_CODES.len()]; REQUEST_TYPES.len()],
    /// Bytes of datagrams received and let through the rate limit.
    pub received_bytes: u64,
    /// Bytes of replies sent.
    pub sent_bytes: u64,
    /// Datagrams whose receive failed.
    pub receive_errors: u64,
    /// Replies whose send failed.
    pub send_errors: u64,
    /// Datagrams dropped by a loop that was behind, their host being over its share.
    pub shed: u64,
    /// Receiving system calls.
    pub receive_calls: u64,
    /// The datagrams those calls took.
    pub received_datagrams: u64,
    /// Sending system calls.
    pub send_calls: u64,
    /// The datagrams those calls gave.
    pub sent_datagrams: u64,
}

impl Metrics {
    /// Counters for `loops` receive loops.
    pub(crate) fn new(loops: usize) -> Self {
        Metrics {
            shards: (0..loops.max(1)).map(|_| Shard::default()).collect(),
        }
    }

    /// The shard of receive loop `i`.
    pub(crate) fn shard(&self, i: usize) -> &Shard {
        &self.shards[i % self.shards.len()]
    }

    /// Sums the shards.
    pub(crate) fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for s in self.shards.iter() {
            for (kind, replies) in s.requests.iter().enumerate() {
                for (code, n) in replies.iter().enumerate() {
                    t.requests[kind][code] += n.load(Relaxed);
                }
            }
            t.received_bytes += s.received_bytes.load(Relaxed);
            t.sent_bytes += s.sent_bytes.load(Relaxed);
            t.receive_errors += s.receive_errors.load(Relaxed);
            t.send_errors += s.send_errors.load(Relaxed);
            t.shed += s.shed.load(Relaxed);
            t.receive_calls += s.receive_calls.load(Relaxed);
            t.received_datagrams += s.received_datagrams.load(Relaxed);
            t.send_calls += s.send_calls.load(Relaxed);
            t.sent_datagrams += s.sent_datagrams.load(Relaxed);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn request_types_follow_the_code_byte() {
        let cases: [(&[u8], &str); 13] = [
            (b"1:hi", "publish"),
            (b"2:0", "ids"),
            (b"3:7", "get"),
            (b"4:10", "last"),
            (b"5:x:hi", "publish_once"),
            (b"6:1:2:3", "after"),
            (b"a:10:5", "open"),
            (b"b:x", "block"),
            (b"c:x", "commit"),
            (b"g:x:0", "fetch"),
            (b"x:x", "close"),
            (b"9:", "other"),
            (b"", "other"),
        ];
        for (datagram, name) in cases {
            let kind = match mboard_protocol::Request::parse_classified(Bytes::copy_from_slice(
                datagram,
            )) {
                Ok(request) => Some(request.kind()),
                Err(rejected) => rejected.kind,
            };
            assert_eq!(REQUEST_TYPES[request_index(kind)], name);
        }
        for kind in RequestKind::ALL {
            assert_eq!(REQUEST_TYPES[request_index(Some(kind))], kind.name());
        }
    }

    #[test]
    fn reply_codes_follow_the_first_byte() {
        let code = |pdu: &'static [u8]| {
            let expect = mboard_protocol::Expect::Published;
            mboard_protocol::Response::parse(Bytes::from_static(pdu), expect)
                .map(|r| r.code())
                .ok()
        };
        assert_eq!(REPLY_CODES[reply_index(code(b"0:5"))], "0");
        assert_eq!(REPLY_CODES[reply_index(code(b"4:busy"))], "4");
        let offer = b"d:3f2b8c1e-9a4d-4e6f-8b1a-2c3d4e5f6a7b:9:1";
        assert_eq!(REPLY_CODES[reply_index(code(offer))], "offer");
        assert_eq!(REPLY_CODES[reply_index(None)], "none");
    }

    #[test]
    fn shards_sum_into_totals() {
        let m = Metrics::new(3);
        let (publish, ok) = (Some(RequestKind::Publish), Some(ReplyCode::Ok));
        m.shard(0).answered(publish, 4, ok);
        m.shard(1).answered(publish, 5, ok);
        let unknown = Some(ReplyCode::Error(mboard_protocol::ErrorCode::UnknownControl));
        m.shard(5).answered(None, 2, unknown);
        m.shard(2).sent(7);
        m.shard(2).dropped(DropReason::SendError);
        let t = m.totals();
        assert_eq!(t.requests[0][0], 2);
        assert_eq!(t.requests[request_index(None)][3], 1);
        assert_eq!(t.received_bytes, 11);
        assert_eq!((t.sent_bytes, t.send_errors, t.receive_errors), (7, 1, 0));
    }
}

//! Server metrics and the `--metrics` endpoint (Prometheus/OpenMetrics text over HTTP).
//!
//! The hot path only adds to plain atomics in a [`Shard`] owned by its receive loop, so
//! the two cores never write the same cache line; everything is summed, and the gauges
//! (sessions, buffered bytes, …) read, only when the endpoint is scraped. The endpoint
//! itself, and how it shares its connections between hosts, is in `endpoint` and `slots`.

mod endpoint;
mod exposition;
mod slots;

pub(crate) use endpoint::serve_metrics;
pub use slots::EndpointLimits;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::net::UdpSocket;

use mboard_protocol::{ReplyCode, RequestKind};

use crate::board::{Board, Status, StoreState};
use crate::handler::Handler;
use crate::limiter::RateLimiter;

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
}

/// One receive loop's counters, on a cache line pair of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Shard {
    requests: [[AtomicU64; REPLY_CODES.len()]; REQUEST_TYPES.len()],
    received_bytes: AtomicU64,
    sent_bytes: AtomicU64,
    receive_errors: AtomicU64,
    send_errors: AtomicU64,
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

    /// Counts a datagram dropped for `why`.
    pub(crate) fn dropped(&self, why: DropReason) {
        match why {
            DropReason::ReceiveError => {
                self.receive_errors.fetch_add(1, Relaxed);
            }
            DropReason::SendError => {
                self.send_errors.fetch_add(1, Relaxed);
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
        }
        t
    }
}

/// Everything the endpoint reports, read when scraped.
pub(crate) struct ServerCollector<B> {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) handler: Arc<Handler<B>>,
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) errors: Arc<RateLimiter>,
    pub(crate) socket: Arc<UdpSocket>,
}

impl<B> fmt::Debug for ServerCollector<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCollector").finish_non_exhaustive()
    }
}

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl<B: Board> Collector for ServerCollector<B> {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let t = self.metrics.totals();
        {
            let mut family = e.encode_descriptor(
                "mboard_requests",
                "Request datagrams handled, by request type and reply code (none: no reply).",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (kind, replies) in t.requests.iter().enumerate() {
                for (code, &n) in replies.iter().enumerate() {
                    // Only what happened: most pairs (a publish answered by an offer, …)
                    // never do.
                    if n > 0 {
                        let labels = [("type", REQUEST_TYPES[kind]), ("reply", REPLY_CODES[code])];
                        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        {
            let mut family = e.encode_descriptor(
                "mboard_datagrams_dropped",
                "Datagrams dropped without an answer, by reason.",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            let mut reasons = vec![
                ("rate_limit", self.limiter.dropped()),
                ("error_reply_limit", self.errors.dropped()),
                ("receive_error", t.receive_errors),
                ("send_error", t.send_errors),
            ];
            if let Some(n) = receive_queue_drops(&self.socket) {
                reasons.push(("receive_queue_full", n));
            }
            for (reason, n) in reasons {
                ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
            }
        }
        counter(
            &mut e,
            "mboard_rate_limit_untracked",
            "Datagrams let through unlimited because the rate limiter's table was full.",
            self.limiter.untracked(),
        )?;
        gauge(
            &mut e,
            "mboard_rate_limit_sources",
            "Source addresses the rate limiter tracks.",
            self.limiter.sources() as u64,
        )?;
        counter(
            &mut e,
            "mboard_received_bytes",
            "Bytes of request datagrams handled.",
            t.received_bytes,
        )?;
        counter(
            &mut e,
            "mboard_sent_bytes",
            "Bytes of replies sent.",
            t.sent_bytes,
        )?;
        let stats = self.handler.stats();
        gauge(
            &mut e,
            "mboard_sessions",
            "Sessions open.",
            stats.sessions as u64,
        )?;
        counter(
            &mut e,
            "mboard_sessions_expired",
            "Sessions dropped after the session timeout without a datagram.",
            stats.expired,
        )?;
        counter(
            &mut e,
            "mboard_sessions_evicted",
            "Unclaimed sessions (never used by their owner) dropped to make room for new ones.",
            stats.evicted,
        )?;
        {
            let mut family = e.encode_descriptor(
                "mboard_sessions_reclaimed",
                "Sessions dropped before their timeout to make room for new ones, by reason: unclaimed (never used by their owner, past the claim grace), slow_over_share and slow (claimed, below the progress floor; of a host over its share, or not).",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (reason, n) in [
                ("unclaimed", stats.evicted),
                ("slow_over_share", stats.reclaimed.over_share),
                ("slow", stats.reclaimed.within_share),
            ] {
                ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
            }
        }
        {
            let mut family = e.encode_descriptor(
                "mboard_host_share_refusals",
                "Session requests refused busy while their host held more than its share, by the resource that was short: memory (--host-memory-share) or sessions (--host-session-share).",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (resource, n) in [
                ("memory", stats.host_refusals.memory),
                ("sessions", stats.host_refusals.sessions),
            ] {
                ConstCounter::new(n).encode(family.encode_family(&[("resource", resource)])?)?;
            }
        }
        gauge(
            &mut e,
            "mboard_session_hosts",
            "Hosts (IPv4 addresses, IPv6 /64s) holding at least one claimed session.",
            stats.hosts as u64,
        )?;
        gauge(
            &mut e,
            "mboard_session_reserved_bytes",
            "Session memory reserved (uploads, cached replies, downloads).",
            stats.reserved,
        )?;
        gauge(
            &mut e,
            "mboard_session_buffered_bytes",
            "Session memory allocated (at most what is reserved).",
            stats.buffered,
        )?;
        gauge(
            &mut e,
            "mboard_session_memory_limit_bytes",
            "The session memory budget (--max-session-memory).",
            self.handler.limits().max_session_memory,
        )?;
        gauge(
            &mut e,
            "mboard_validated_addresses",
            "Addresses exempt from the amplification limit because they echoed a session id.",
            stats.validated as u64,
        )?;
        let held = self.handler.hold_counts();
        gauge(
            &mut e,
            "mboard_held_requests",
            "6: requests held now, waiting for a message.",
            held.held as u64,
        )?;
        counter(
            &mut e,
            "mboard_held_woken",
            "Held 6: requests answered because a message was published.",
            held.woken,
        )?;
        counter(
            &mut e,
            "mboard_held_timed_out",
            "Held 6: requests answered 0:0 because their wait ran out.",
            held.timed_out,
        )?;
        counter(
            &mut e,
            "mboard_held_refused",
            "6: requests answered 4:busy because the held-request bounds were reached.",
            held.refused,
        )?;
        counter(
            &mut e,
            "mboard_publishes",
            "Messages published (acknowledged) since the server started.",
            self.handler.publishes(),
        )?;
        counter(
            &mut e,
            "mboard_token_duplicates",
            "5: publishes answered with the id their token already published, storing nothing.",
            self.handler.duplicates(),
        )?;
        if let Some(tokens) = self.handler.board().tokens() {
            gauge(
                &mut e,
                "mboard_tokens",
                "Publish tokens remembered (inside the dedup window, or being published).",
                tokens.held as u64,
            )?;
            counter(
                &mut e,
                "mboard_tokens_evicted_early",
                "Publish tokens forgotten before their dedup window ended because the table was full (--max-tokens).",
                tokens.evicted_early,
            )?;
        }
        if let Ok(span) = self.handler.board().span(0) {
            gauge(
                &mut e,
                "mboard_messages",
                "Messages on the board.",
                span.count,
            )?;
        }
        if let Some(status) = self.handler.board().status() {
            encode_status(&mut e, &status)?;
        }
        Ok(())
    }
}

/// What the store keeps and whether it can store more.
fn encode_status(e: &mut DescriptorEncoder<'_>, status: &Status) -> fmt::Result {
    gauge(
        e,
        "mboard_retained_bytes",
        "Bytes of the messages kept, as --retain-bytes counts them (memory: each text plus 128 bytes; journal: bytes on disk).",
        status.bytes,
    )?;
    gauge(
        e,
        "mboard_oldest_id",
        "The oldest message id kept (the next id when none is); ids below it were trimmed.",
        status.oldest.0,
    )?;
    counter(
        e,
        "mboard_trimmed_messages",
        "Messages trimmed by retention since the server started.",
        status.trimmed,
    )?;
    let mut family = e.encode_descriptor(
        "mboard_store_state",
        "Whether the store takes publishes: 1 for the state it is in (writable, full, read_only, lost).",
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for state in StoreState::ALL {
        let on = i64::from(state == status.state);
        ConstGauge::new(on).encode(family.encode_family(&[("state", state.name())])?)?;
    }
    Ok(())
}

/// Datagrams the kernel dropped because `socket`'s receive queue was full.
///
/// Linux counts them per socket in `/proc/net/udp{,6}`; under a flood this is where most
/// loss happens, so it is worth the scrape-time read. `None` where it cannot be read.
#[cfg(target_os = "linux")]
pub(crate) fn receive_queue_drops(socket: &UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    let inode = link
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .to_owned();
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
                (fields.get(9) == Some(&inode.as_str())).then(|| fields.last()?.parse().ok())?
            })
        })
}

/// Datagrams the kernel dropped because `socket`'s receive queue was full.
#[cfg(not(target_os = "linux"))]
pub fn receive_queue_drops(_: &UdpSocket) -> Option<u64> {
    None
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

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn kernel_queue_drops_are_read_for_this_socket() {
        let full = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let quiet = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        assert_eq!(receive_queue_drops(&quiet), Some(0));
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = full.local_addr().expect("addr");
        // Loopback delivers synchronously; a receive queue nobody reads overflows long
        // before this many datagrams.
        for _ in 0..20_000 {
            let _ = sender.send_to(b"x", to);
        }
        assert!(receive_queue_drops(&full).is_some_and(|n| n > 0));
        assert_eq!(receive_queue_drops(&quiet), Some(0));
    }
}

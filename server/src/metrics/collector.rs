//! What the endpoint reports of the server, read when scraped: one family group a
//! function, in the order the families are exposed.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::net::UdpSocket;

use super::{Metrics, REPLY_CODES, REQUEST_TYPES, Totals};
use crate::board::{Board, Status, StoreState};
use crate::handler::Handler;
use crate::held::HoldCounts;
use crate::limiter::RateLimiter;
use crate::session::Stats;

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

pub(super) fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// A counter family with one label `key`, a sample for each of `values`.
pub(super) fn labelled(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    key: &str,
    values: &[(&str, u64)],
) -> fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for &(value, n) in values {
        ConstCounter::new(n).encode(family.encode_family(&[(key, value)])?)?;
    }
    Ok(())
}

impl<B: Board> Collector for ServerCollector<B> {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let t = self.metrics.totals();
        self.encode_datagrams(&mut e, &t)?;
        self.encode_limiter_and_bytes(&mut e, &t)?;
        let stats = self.handler.stats();
        encode_sessions(&mut e, &stats)?;
        encode_session_memory(&mut e, &stats, self.handler.limits().max_session_memory)?;
        encode_held(&mut e, &self.handler.hold_counts())?;
        self.encode_board(&mut e)
    }
}

impl<B: Board> ServerCollector<B> {
    /// Requests by type and reply, and datagrams dropped unanswered.
    fn encode_datagrams(&self, e: &mut DescriptorEncoder<'_>, t: &Totals) -> fmt::Result {
        {
            let mut family = e.encode_descriptor(
                "mboard_requests",
                "Request datagrams handled, by request type and reply code (none: no reply).",
                None,
                MetricType::Counter,
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
        let mut reasons = vec![
            ("rate_limit", self.limiter.dropped()),
            ("error_reply_limit", self.errors.dropped()),
            ("receive_error", t.receive_errors),
            ("send_error", t.send_errors),
            ("overload", t.shed),
        ];
        if let Some(n) = receive_queue_drops(&self.socket) {
            reasons.push(("receive_queue_full", n));
        }
        labelled(
            e,
            "mboard_datagrams_dropped",
            "Datagrams dropped without an answer, by reason.",
            "reason",
            &reasons,
        )
    }

    /// The rate limiter's table, and bytes in and out.
    fn encode_limiter_and_bytes(&self, e: &mut DescriptorEncoder<'_>, t: &Totals) -> fmt::Result {
        counter(
            e,
            "mboard_rate_limit_untracked",
            "Datagrams let through unlimited because the rate limiter's table was full.",
            self.limiter.untracked(),
        )?;
        gauge(
            e,
            "mboard_rate_limit_sources",
            "Source addresses the rate limiter tracks.",
            self.limiter.sources() as u64,
        )?;
        counter(
            e,
            "mboard_received_bytes",
            "Bytes of request datagrams handled.",
            t.received_bytes,
        )?;
        counter(
            e,
            "mboard_sent_bytes",
            "Bytes of replies sent.",
            t.sent_bytes,
        )?;
        labelled(
            e,
            "mboard_socket_calls",
            "System calls that received or sent datagrams on the board's socket (several per call when batched, --io-batch).",
            "op",
            &[("receive", t.receive_calls), ("send", t.send_calls)],
        )?;
        labelled(
            e,
            "mboard_socket_datagrams",
            "Datagrams those system calls received or sent.",
            "op",
            &[
                ("receive", t.received_datagrams),
                ("send", t.sent_datagrams),
            ],
        )
    }

    /// Publishes, the token table and what the store holds.
    fn encode_board(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        counter(
            e,
            "mboard_publishes",
            "Messages published (acknowledged) since the server started.",
            self.handler.publishes(),
        )?;
        counter(
            e,
            "mboard_token_duplicates",
            "5: publishes answered with the id their token already published, storing nothing.",
            self.handler.duplicates(),
        )?;
        if let Some(tokens) = self.handler.board().tokens() {
            gauge(
                e,
                "mboard_tokens",
                "Publish tokens remembered (inside the dedup window, or being published).",
                tokens.held as u64,
            )?;
            counter(
                e,
                "mboard_tokens_evicted_early",
                "Publish tokens forgotten before their dedup window ended because the table was full (--max-tokens).",
                tokens.evicted_early,
            )?;
        }
        if let Ok(span) = self.handler.board().span(0) {
            gauge(e, "mboard_messages", "Messages on the board.", span.count)?;
        }
        if let Some(status) = self.handler.board().status() {
            encode_status(e, &status)?;
        }
        Ok(())
    }
}

/// Sessions open, and those dropped or refused to share the server out.
fn encode_sessions(e: &mut DescriptorEncoder<'_>, stats: &Stats) -> fmt::Result {
    gauge(
        e,
        "mboard_sessions",
        "Sessions open.",
        stats.sessions as u64,
    )?;
    counter(
        e,
        "mboard_sessions_expired",
        "Sessions dropped after the session timeout without a datagram.",
        stats.expired,
    )?;
    counter(
        e,
        "mboard_sessions_evicted",
        "Unclaimed sessions (never used by their owner) dropped to make room for new ones.",
        stats.evicted,
    )?;
    labelled(
        e,
        "mboard_sessions_reclaimed",
        "Sessions dropped before their timeout to make room for new ones, by reason: unclaimed (never used by their owner, past the claim grace), slow_over_share and slow (claimed, below the progress floor; of a host over its share, or not), over_share (claimed and moving, but held beyond its host's share, taken back for a host within its share).",
        "reason",
        &[
            ("unclaimed", stats.evicted),
            ("slow_over_share", stats.reclaimed.over_share),
            ("slow", stats.reclaimed.within_share),
            ("over_share", stats.reclaimed.recalled),
        ],
    )?;
    labelled(
        e,
        "mboard_host_share_refusals",
        "Session requests refused busy while their host held more than its share, by the resource that was short: memory (--host-memory-share) or sessions (--host-session-share).",
        "resource",
        &[
            ("memory", stats.host_refusals.memory),
            ("sessions", stats.host_refusals.sessions),
        ],
    )
}

/// The hosts holding sessions, and the session memory budget and its use.
fn encode_session_memory(e: &mut DescriptorEncoder<'_>, stats: &Stats, limit: u64) -> fmt::Result {
    gauge(
        e,
        "mboard_session_hosts",
        "Hosts (IPv4 addresses, IPv6 /64s) holding at least one claimed session.",
        stats.hosts as u64,
    )?;
    gauge(
        e,
        "mboard_session_reserved_bytes",
        "Session memory reserved (uploads, cached replies, downloads).",
        stats.reserved,
    )?;
    gauge(
        e,
        "mboard_session_buffered_bytes",
        "Session memory allocated (at most what is reserved).",
        stats.buffered,
    )?;
    gauge(
        e,
        "mboard_session_memory_limit_bytes",
        "The session memory budget (--max-session-memory).",
        limit,
    )?;
    gauge(
        e,
        "mboard_validated_addresses",
        "Addresses exempt from the amplification limit because they echoed a session id.",
        stats.validated as u64,
    )
}

/// Held `6:` requests, and how they ended.
fn encode_held(e: &mut DescriptorEncoder<'_>, held: &HoldCounts) -> fmt::Result {
    gauge(
        e,
        "mboard_held_requests",
        "6: requests held now, waiting for a message.",
        held.held as u64,
    )?;
    counter(
        e,
        "mboard_held_woken",
        "Held 6: requests answered because a message was published.",
        held.woken,
    )?;
    counter(
        e,
        "mboard_held_timed_out",
        "Held 6: requests answered 0:0 because their wait ran out.",
        held.timed_out,
    )?;
    counter(
        e,
        "mboard_held_refused",
        "6: requests answered 4:busy because the held-request bounds were reached.",
        held.refused,
    )
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
        MetricType::Gauge,
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
pub(crate) fn receive_queue_drops(socket: &UdpSocket) -> Option<u64> {
    queue_of(&socket_inode(socket)?).map(|q| q.drops)
}

/// The inode by which `/proc/net/udp` names `socket`.
#[cfg(target_os = "linux")]
pub(crate) fn socket_inode(socket: &UdpSocket) -> Option<String> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    Some(
        link.to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .to_owned(),
    )
}

/// The inode by which `/proc/net/udp` names `socket`: none here.
#[cfg(not(target_os = "linux"))]
pub(crate) fn socket_inode(_: &UdpSocket) -> Option<String> {
    None
}

/// What the kernel says of one UDP socket's receive queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KernelQueue {
    /// The bytes its queued datagrams take, bookkeeping included (the figure the kernel
    /// holds against the receive buffer's size).
    pub(crate) queued: u64,
    /// The datagrams dropped because the queue was full, since the socket was opened.
    pub(crate) drops: u64,
}

/// The receive queue of the UDP socket with `inode`. The tables list every UDP socket of
/// the machine (thousands, on a busy one), so the inode is looked for as text and only its
/// line is split.
pub(crate) fn queue_of(inode: &str) -> Option<KernelQueue> {
    let needle = format!(" {inode} ");
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            let mut from = 0;
            while let Some(found) = text[from..].find(&needle) {
                let at = from + found;
                let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                let fields: Vec<&str> = text[start..end].split_whitespace().collect();
                // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
                if fields.get(9) == Some(&inode) {
                    let (_, rx) = fields.get(4)?.split_once(':')?;
                    return Some(KernelQueue {
                        queued: u64::from_str_radix(rx, 16).ok()?,
                        drops: fields.last()?.parse().ok()?,
                    });
                }
                from = at + needle.len() - 1;
            }
            None
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Among a thousand other sockets (their numbers all over the table), still ours.
        let others: Vec<std::net::UdpSocket> = (0..1_000)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let inode = socket_inode(&full).expect("inode");
        let queue = queue_of(&inode).expect("ours");
        assert!(queue.drops > 0, "{queue:?}");
        // Nobody read it: it holds as much as its buffer takes, bookkeeping included.
        let buffer = socket2::SockRef::from(&full)
            .recv_buffer_size()
            .expect("size");
        assert!(
            queue.queued as usize > buffer / 2 && queue.queued as usize <= buffer + 65_536,
            "{queue:?} of {buffer}"
        );
        let quiet = queue_of(&socket_inode(&quiet).expect("inode")).expect("ours");
        assert_eq!(
            quiet,
            KernelQueue {
                queued: 0,
                drops: 0
            }
        );
        assert_eq!(queue_of("999999999999"), None, "no such socket");
        drop(others);
    }
}

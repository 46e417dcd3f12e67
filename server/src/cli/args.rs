//! The server's options (`Args`): every one a flag, an environment variable and a key of
//! the config file, with its default written once.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use mboard_server::{EndpointLimits, Fairness, Fsync, Limits, RateLimit, Shedding, parse_size};

use super::RELOADED;

/// The socket receive buffer asked for by default: 4 MiB. It absorbs a thousand followers
/// re-arming at once and the moments the loops are not scheduled; under a flood, the
/// loops shed the flooding host's datagrams at the cost of a receive each, so the queue
/// drains in milliseconds instead of being one every honest request waits behind
/// (docs/OPERATIONS.md).
pub(crate) const RECV_BUFFER: usize = 4 << 20;

/// Message board over UDP: layer-1 board requests and layer-2 sessions on one port.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Args {
    // Defaults are read from `Limits::default()` and `RateLimit` so that each is written
    // once; durations are `humantime::Duration` so that `--help` shows them as `30s`.
    /// Address to serve on (IPv4 or IPv6, e.g. `[::1]:7777`).
    #[arg(long, env = "MBOARD_LISTEN", default_value = "127.0.0.1:7777")]
    pub(crate) listen: SocketAddr,

    /// Keep the board in memory only (lost when the server stops).
    #[arg(long, env = "MBOARD_IN_MEMORY", conflicts_with_all = ["data_dir", "fsync"])]
    pub(crate) in_memory: bool,

    /// Directory of the durable board (created if missing).
    #[arg(long, env = "MBOARD_DATA_DIR", default_value = "mboard-data")]
    pub(crate) data_dir: PathBuf,

    /// When a publish is acknowledged: `always` after fsync, `never` after the write
    /// (survives a server crash, not a power failure).
    #[arg(long, env = "MBOARD_FSYNC", default_value = "always")]
    pub(crate) fsync: Fsync,

    /// Start a new journal segment file once the current one holds this much (`64MiB`); a
    /// larger message still fits, in a segment that grows past it. (Journal only.)
    #[arg(long, env = "MBOARD_SEGMENT_SIZE", value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub(crate) segment_size: u64,

    /// At shutdown, wait at most this long for the disk to take the publishes queued for
    /// it; then exit without acknowledging those that are not durable. (Journal only.)
    #[arg(
        long,
        env = "MBOARD_SHUTDOWN_GRACE",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub(crate) shutdown_grace: humantime::Duration,

    /// Keep only the newest N messages (`none`: no limit). Older ones are trimmed: `3:`
    /// answers them `2:no longer kept`, and their ids are never reused.
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_RETAIN_MESSAGES", value_name = "N|none", default_value = "none", value_parser = parse_count)]
    pub(crate) retain_messages: Keep<u64>,

    /// Keep only the newest messages that fit in SIZE (`512MiB`; `none`: no limit): bytes
    /// on disk for the journal, bytes of memory for `--in-memory`. Default: none for the
    /// journal, 256MiB in memory.
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_RETAIN_BYTES", value_name = "SIZE|none", value_parser = parse_bytes)]
    pub(crate) retain_bytes: Option<Keep<u64>>,

    /// Keep a message for at most this long after its publish (`7d`, `12h`; `none`: no
    /// limit), by the server's clock. On the journal, a reload can set it only if the
    /// server started with one.
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_RETAIN_AGE", value_name = "DURATION|none", default_value = "none", value_parser = parse_age)]
    pub(crate) retain_age: Keep<std::time::Duration>,

    /// Publishes waiting for the disk at once; more are answered `4:busy` at once.
    #[arg(long, env = "MBOARD_MAX_QUEUED_PUBLISHES", value_name = "N", default_value_t = Limits::default().max_queued_publishes)]
    pub(crate) max_queued_publishes: usize,

    /// Bytes of text waiting for the disk at once (`256MiB`); more are answered `4:busy`.
    #[arg(long, env = "MBOARD_MAX_QUEUED_BYTES", value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    pub(crate) max_queued_bytes: u64,

    /// `3:` reads waiting at once for this server's replica to receive a message the
    /// stream has (clustered store); more are answered `4:busy` at once.
    #[arg(long, env = "MBOARD_MAX_CATCHING_UP", value_name = "N", default_value_t = Limits::default().max_catching_up)]
    pub(crate) max_catching_up: usize,

    /// Large replies being built at once off the receive loops (each the first block of a
    /// download); with none left, a loop waits for one.
    #[arg(long, env = "MBOARD_MAX_BUILDING_REPLIES", value_name = "N", default_value_t = Limits::default().max_building_replies)]
    pub(crate) max_building_replies: usize,

    /// Drop a session after this long without a datagram (`30s`, `500ms`).
    #[arg(long, env = "MBOARD_SESSION_TIMEOUT", default_value_t = Limits::default().session_timeout.into())]
    pub(crate) session_timeout: humantime::Duration,

    /// Largest request an upload session may carry, in bytes.
    #[arg(long, env = "MBOARD_MAX_REQUEST_SIZE", default_value_t = Limits::default().max_request_size)]
    pub(crate) max_request_size: u64,

    /// Largest response sent as one datagram, in bytes; larger ones become download offers.
    #[arg(long, env = "MBOARD_MAX_DATAGRAM", default_value_t = Limits::default().max_datagram)]
    pub(crate) max_datagram: usize,

    /// Bytes all sessions together may reserve (uploads, cached replies, downloads).
    #[arg(long, env = "MBOARD_MAX_SESSION_MEMORY", default_value_t = Limits::default().max_session_memory)]
    pub(crate) max_session_memory: u64,

    /// Open sessions one source address (IP and port) may hold.
    #[arg(long, env = "MBOARD_MAX_SESSIONS_PER_SOURCE", default_value_t = Limits::default().max_sessions_per_source)]
    pub(crate) max_sessions_per_source: u32,

    /// Open sessions in all.
    #[arg(long, env = "MBOARD_MAX_SESSIONS", default_value_t = Limits::default().max_sessions)]
    pub(crate) max_sessions: u32,

    /// Until an address has proved it receives our datagrams, send it at most this many
    /// times the bytes of its request (or 64 bytes); larger replies become download
    /// offers. 0 turns the rule off.
    #[arg(long, env = "MBOARD_AMPLIFICATION_FACTOR", default_value_t = Limits::default().amplification_factor)]
    pub(crate) amplification_factor: u32,

    /// Apply the amplification rule to loopback sources too (exempt by default).
    #[arg(long, env = "MBOARD_AMPLIFICATION_LOOPBACK")]
    pub(crate) amplification_loopback: bool,

    /// How long an address stays validated after echoing one of our session ids.
    #[arg(long, env = "MBOARD_VALIDATION_TTL", default_value_t = Limits::default().validation_ttl.into())]
    pub(crate) validation_ttl: humantime::Duration,

    /// When the server is full, a session nobody has used since it was created (an
    /// upload with no block, an offer never fetched) may be dropped for a new one once it
    /// is this old.
    #[arg(long, env = "MBOARD_CLAIM_GRACE", default_value_t = Limits::default().claim_grace.into())]
    pub(crate) claim_grace: humantime::Duration,

    /// Each host's share of --max-session-memory, in percent. A host (an IPv4 address, an
    /// IPv6 /64) may hold up to its share whenever there is room; beyond it, only room
    /// that leaves one share free for other hosts (100: no per-host limit).
    #[arg(
        long,
        env = "MBOARD_HOST_MEMORY_SHARE",
        value_name = "PERCENT",
        default_value_t = Fairness::default().host_memory_share
    )]
    pub(crate) host_memory_share: u8,

    /// Each host's share of --max-sessions, in percent, on the same terms.
    #[arg(
        long,
        env = "MBOARD_HOST_SESSION_SHARE",
        value_name = "PERCENT",
        default_value_t = Fairness::default().host_session_share
    )]
    pub(crate) host_session_share: u8,

    /// While a receive loop falls behind (the socket's queue never empties) and the kernel
    /// drops datagrams for the socket, each host keeps this share of the loop's traffic,
    /// in percent (at least an equal share of the hosts seen lately), and its datagrams
    /// past it are dropped unanswered, so that a flood from one host cannot make the
    /// kernel drop everyone's. 0 turns this off.
    #[arg(
        long,
        env = "MBOARD_OVERLOAD_HOST_SHARE",
        value_name = "PERCENT",
        default_value_t = Shedding::default().host_share,
        value_parser = clap::value_parser!(u8).range(0..=100)
    )]
    pub(crate) overload_host_share: u8,

    /// When a new session does not fit, a session that has moved fewer than this many
    /// bytes a second since it started (after --progress-grace) may be dropped for it,
    /// hosts over their share first (0: never).
    #[arg(
        long,
        env = "MBOARD_PROGRESS_FLOOR",
        value_name = "BYTES_PER_SEC",
        default_value_t = Fairness::default().progress_floor
    )]
    pub(crate) progress_floor: u64,

    /// Time every session has before the progress floor applies to it.
    #[arg(
        long,
        env = "MBOARD_PROGRESS_GRACE",
        value_name = "DURATION",
        default_value_t = Fairness::default().progress_grace.into()
    )]
    pub(crate) progress_grace: humantime::Duration,

    /// The longest a `6:` request is held waiting for a new message, whatever it asks.
    #[arg(long, env = "MBOARD_MAX_HOLD", default_value_t = Limits::default().max_hold.into())]
    pub(crate) max_hold: humantime::Duration,

    /// `6:` requests held at once, in all; more are answered `4:busy`.
    #[arg(long, env = "MBOARD_MAX_HELD", default_value_t = Limits::default().max_held)]
    pub(crate) max_held: usize,

    /// `6:` requests one source address (IP and port) may have held at once.
    #[arg(long, env = "MBOARD_MAX_HELD_PER_SOURCE", default_value_t = Limits::default().max_held_per_source)]
    pub(crate) max_held_per_source: usize,

    /// Validated addresses remembered at once.
    #[arg(long, env = "MBOARD_MAX_VALIDATED", default_value_t = Limits::default().max_validated)]
    pub(crate) max_validated: usize,

    /// Remember the token of every `5:` publish for at least this long: a resend with the
    /// same token within it stores nothing and gets the same id.
    #[arg(long, env = "MBOARD_DEDUP_WINDOW", default_value_t = Limits::default().tokens.window.into())]
    pub(crate) dedup_window: humantime::Duration,

    /// Publish tokens remembered at once (about 90 bytes each); past it the oldest are
    /// forgotten before their window ends, and counted.
    #[arg(long, env = "MBOARD_MAX_TOKENS", default_value_t = Limits::default().tokens.max_tokens)]
    pub(crate) max_tokens: usize,

    /// Datagrams per second one source address may sustain; more are dropped without a
    /// reply (0 turns rate limiting off).
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_RATE_LIMIT", default_value_t = RateLimit::default().rate)]
    pub(crate) rate_limit: f64,

    /// Datagrams one source address may send at once after being quiet.
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_RATE_BURST", default_value_t = RateLimit::default().burst)]
    pub(crate) rate_burst: f64,

    /// Replies to malformed input (codes 1 and 3) one destination may be sent per second;
    /// more are dropped, which ends any reflection loop with another server (0: off).
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_ERROR_REPLY_RATE", default_value_t = RateLimit::ERROR_REPLIES.rate)]
    pub(crate) error_reply_rate: f64,

    /// Replies to malformed input one destination may be sent at once.
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_ERROR_REPLY_BURST", default_value_t = RateLimit::ERROR_REPLIES.burst)]
    pub(crate) error_reply_burst: f64,

    /// Source addresses the rate limiter tracks at once.
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_RATE_SOURCES", default_value_t = RateLimit::default().max_sources)]
    pub(crate) rate_sources: usize,

    /// Serve Prometheus metrics at `http://ADDR/metrics` (off by default; keep ADDR
    /// private, e.g. `127.0.0.1:9477`).
    #[arg(long, env = "MBOARD_METRICS", value_name = "ADDR")]
    pub(crate) metrics: Option<SocketAddr>,

    /// Connections the metrics endpoint holds at once. When full, an idle one (or one
    /// still sending its request) is closed for a newcomer; if all are being answered,
    /// the newcomer is closed at once.
    #[arg(
        long,
        env = "MBOARD_METRICS_CONNECTIONS",
        value_name = "N",
        default_value_t = EndpointLimits::default().connections
    )]
    pub(crate) metrics_connections: usize,

    /// Connections one host (an IPv4 address, an IPv6 /64) may hold to the metrics
    /// endpoint; beyond it, the host's own idle ones give way first.
    #[arg(
        long,
        env = "MBOARD_METRICS_CONNECTIONS_PER_IP",
        value_name = "N",
        default_value_t = EndpointLimits::default().connections_per_ip
    )]
    pub(crate) metrics_connections_per_ip: usize,

    /// Receive buffer of the board's socket, in bytes (0: the system's default). The
    /// system caps it (Linux: `net.core.rmem_max`); the size granted is logged.
    #[arg(long, env = "MBOARD_RECV_BUFFER", value_name = "BYTES", default_value_t = RECV_BUFFER)]
    pub(crate) recv_buffer: usize,

    /// Receive loops sharing the socket (default: twice the number of cores).
    #[arg(long, env = "MBOARD_WORKERS")]
    pub(crate) workers: Option<usize>,

    /// Datagrams one system call receives or sends at most (`recvmmsg`/`sendmmsg` on
    /// Linux), from 1 (one at a time) to 256.
    #[arg(long, env = "MBOARD_IO_BATCH", value_name = "N", default_value_t = mboard_server::IO_BATCH)]
    pub(crate) io_batch: usize,

    /// Log filter, e.g. `info` or `mboard_server=debug` (default: $RUST_LOG, else `info`).
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_LOG_LEVEL", value_parser = super::log_filter)]
    pub(crate) log_level: Option<String>,

    /// Read options from this TOML file too, each by its long name (`max-sessions =
    /// 1000`); the command line and the environment win over it. SIGHUP reads it again.
    #[arg(long, env = "MBOARD_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// How often to log a summary of the traffic at `info` (`0s`: never); an interval
    /// without traffic logs nothing.
    #[arg(long, env = "MBOARD_SUMMARY_INTERVAL", default_value = "1m")]
    pub(crate) summary_interval: humantime::Duration,

    #[command(flatten)]
    pub(crate) nats: super::NatsArgs,

    #[command(flatten)]
    pub(crate) packaging: super::Packaging,
}

/// A retention limit, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keep<T>(pub(crate) Option<T>);

fn keep<T>(s: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<Keep<T>, String> {
    if s.eq_ignore_ascii_case("none") {
        Ok(Keep(None))
    } else {
        parse(s).map(|v| Keep(Some(v)))
    }
}

fn parse_count(s: &str) -> Result<Keep<u64>, String> {
    keep(s, |s| {
        s.parse()
            .map_err(|_| format!("{s:?} is not a number of messages"))
    })
}

fn parse_bytes(s: &str) -> Result<Keep<u64>, String> {
    keep(s, parse_size)
}

fn parse_age(s: &str) -> Result<Keep<std::time::Duration>, String> {
    keep(s, |s| {
        humantime::parse_duration(s).map_err(|e| e.to_string())
    })
}

//! Server configuration: every limit is an option with a documented default.

use std::time::Duration;

use mboard_protocol::{DATA_HEADER_MAX, MAX_DATAGRAM};

use crate::board::{ClusterConfig, JournalConfig, Retention, TokenLimits};
use crate::limiter::RateLimit;
use crate::metrics::EndpointLimits;
use crate::overload::Shedding;
use crate::session::Fairness;

/// Datagrams one system call receives or sends at most, by default (`--io-batch`).
pub const IO_BATCH: usize = 32;

/// The most `--io-batch` may be: each datagram of a batch has a 64 KiB buffer in every
/// receive loop.
pub const IO_BATCH_MAX: usize = 256;

/// Limits on sessions and datagrams.
///
/// Defaults follow the contract: 16 MiB requests, 256 MiB buffered in all, 64 sessions per
/// source address, 100,000 sessions, 30 s idle timeout, 1,472-byte response datagrams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request PDU an upload may carry (`a:` above it is answered `4`).
    pub max_request_size: u64,
    /// Bytes reserved by all sessions together (uploads, cached replies, downloads).
    pub max_session_memory: u64,
    /// Open sessions one source address (IP and port) may hold.
    pub max_sessions_per_source: u32,
    /// Open sessions in all.
    pub max_sessions: u32,
    /// A session with no datagram for this long is dropped.
    pub session_timeout: Duration,
    /// Largest response sent as one datagram; larger ones become download offers.
    pub max_datagram: usize,
    /// An address not yet validated is sent at most this many times the bytes of its
    /// request (or 64 bytes, whichever is more); larger replies become download offers.
    /// 0 turns the rule off.
    pub amplification_factor: u32,
    /// Apply the amplification rule to loopback sources too (they cannot be spoofed from
    /// another host, so they are exempt unless this is set).
    pub amplification_loopback: bool,
    /// How long an address stays validated after it last echoed one of our session ids.
    pub validation_ttl: Duration,
    /// Validated addresses remembered at once; beyond it new ones stay unvalidated.
    pub max_validated: usize,
    /// A session its owner has not used since it was created (an upload with no block
    /// yet, a download offer never fetched) may be dropped to make room for a new one once
    /// it is this old, when the server is full. A real client uses its session within one
    /// round trip; a spoofed request never does.
    pub claim_grace: Duration,
    /// Connections the metrics endpoint (`--metrics`) holds, in all and per host.
    pub metrics: EndpointLimits,
    /// The longest a `6:` request is held waiting for a message, whatever it asks.
    pub max_hold: Duration,
    /// `6:` requests held at once, in all; beyond it they are answered `4:busy`.
    pub max_held: usize,
    /// `6:` requests one source address (IP and port) may have held at once.
    pub max_held_per_source: usize,
    /// How long `5:` publish tokens are remembered, and how many at most.
    pub tokens: TokenLimits,
    /// Each host's share of the session budget and table, and the progress floor below
    /// which a session may be reclaimed for a new one.
    pub fairness: Fairness,
    /// Publishes waiting for the disk at once; beyond it they are answered `4:busy` at
    /// once, so a stalled disk never holds up a receive loop.
    pub max_queued_publishes: usize,
    /// Bytes of text waiting for the disk at once; beyond it, likewise `4:busy`.
    pub max_queued_bytes: u64,
    /// `3:` reads waiting at once for a replica to receive what the store already has
    /// (the clustered store); beyond it they are answered `4:busy` at once.
    pub max_catching_up: usize,
    /// Large replies (the first block of a download) being built off the receive loops at
    /// once, each in a task of its own; with none left a loop waits for one, which pushes
    /// back on the senders of such requests instead of piling up tasks.
    pub max_building_replies: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_size: 16 * 1024 * 1024,
            max_session_memory: 256 * 1024 * 1024,
            max_sessions_per_source: 64,
            max_sessions: 100_000,
            session_timeout: Duration::from_secs(30),
            max_datagram: 1_472,
            amplification_factor: 3,
            amplification_loopback: false,
            validation_ttl: Duration::from_secs(600),
            max_validated: 65_536,
            claim_grace: Duration::from_millis(500),
            metrics: EndpointLimits::default(),
            max_hold: Duration::from_secs(30),
            // About 100 bytes each: a megabyte of table at most.
            max_held: 10_000,
            max_held_per_source: 16,
            tokens: TokenLimits::default(),
            fairness: Fairness::default(),
            max_queued_publishes: 4_096,
            max_queued_bytes: 256 * 1024 * 1024,
            max_catching_up: 4_096,
            max_building_replies: 4_096,
        }
    }
}

/// Replies up to this size go to any address: session opens, acknowledgements, errors and
/// download offers all fit, so a client can always reach the step that validates it.
pub(crate) const AMPLIFICATION_FLOOR: usize = 64;

/// The smallest `max_datagram` allowed: room for an offer, an error and a useful block.
pub(crate) const MIN_DATAGRAM: usize = 128;

/// A configuration value that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// `max_datagram` outside what UDP and the protocol's headers allow.
    #[error("max datagram must be between {MIN_DATAGRAM} and {MAX_DATAGRAM} bytes, not {0}")]
    Datagram(usize),
    /// A limit of zero would refuse every session.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// A zero session timeout would expire sessions before their first reply.
    #[error("session timeout must be longer than zero")]
    Timeout,
    /// A zero deduplication window would forget every token at once.
    #[error("dedup window must be longer than zero")]
    DedupWindow,
    /// A rate that is not a number of at least 0.
    #[error("{0} must be a number of at least 0 (0 turns it off), not {1}")]
    Rate(&'static str, f64),
    /// A burst that would let nothing through while the rate limit is on.
    #[error("{0} must be a number of at least 1 while its rate is above 0, not {1}")]
    Burst(&'static str, f64),
    /// Session memory too small for the smallest session.
    #[error(
        "max session memory must be at least twice max datagram ({0} bytes), not {1}: the smallest upload or download is larger than one datagram"
    )]
    SessionMemory(u64, u64),
    /// A zero validation lifetime would forget every address at once.
    #[error("validation ttl must be longer than zero")]
    ValidationTtl,
    /// A host's share that is not a percentage from 1 to 100.
    #[error("{0} must be a percentage from 1 to 100, not {1}")]
    Share(&'static str, u8),
    /// No receive loop would take datagrams off the socket.
    #[error("workers must be at least 1")]
    Workers,
    /// A system call could not take or give any datagram, or more than the cap.
    #[error("io batch must be from 1 to {max}, not {found}")]
    IoBatch {
        /// The cap, [`IO_BATCH_MAX`].
        max: usize,
        /// What was asked.
        found: usize,
    },
    /// A byte limit below the largest message, which would trim it as soon as it is stored
    /// (or, for the publish queue, refuse it every time).
    #[error("{what} must be at least the max request size ({min} bytes), not {found}")]
    BelowRequest {
        /// The option.
        what: &'static str,
        /// The max request size.
        min: u64,
        /// The value given.
        found: u64,
    },
    /// The clustered store's options cannot work.
    #[error("{0}")]
    Clustered(String),
    /// A zero retention age would trim every message as soon as it is stored.
    #[error("retain age must be longer than zero")]
    RetainAge,
    /// An age limit reloaded onto a journal started without one, whose index keeps no
    /// publish times to weigh.
    #[error(
        "retain age cannot be set by a reload on a journal started without one (it keeps no publish times in memory); restart to set it"
    )]
    RetainAgeReload,
    /// A reload that would change the clustered store's retention.
    #[error(
        "retention cannot be changed by a reload on the clustered store (its limits are the stream's and every server's); change them on the stream and restart the servers"
    )]
    ClusteredRetentionReload,
    /// A journal segment size outside what the journal can work with.
    #[error("segment size must be between {MIN_SEGMENT} and {MAX_SEGMENT} bytes, not {0}")]
    SegmentSize(u64),
}

/// The smallest journal segment: smaller ones would mean a file per few messages.
pub(crate) const MIN_SEGMENT: u64 = 64 * 1024;
/// The largest journal segment (1 TiB).
pub(crate) const MAX_SEGMENT: u64 = 1 << 40;

/// The byte limit on the memory board unless `--retain-bytes` says otherwise: 256 MiB, the
/// default session memory, so a flood cannot take the machine's memory and a `4:0` of the
/// whole board fits in one download (docs/OPERATIONS.md).
pub const MEMORY_RETAIN_BYTES: u64 = 256 * 1024 * 1024;

/// A size in bytes as people write it: `4096`, `512KiB`, `64MiB`, `1.5GiB`, `10GB`. `KB`,
/// `MB`, `GB`, `TB` are powers of 1,000; `KiB` … `TiB` (or `K` … `T`) powers of 1,024; a
/// bare number or `B` is bytes. Case does not matter.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit = unit.trim();
    let bad = || format!("{s:?} is not a size (e.g. 4096, 512KiB, 64MiB, 1.5GiB)");
    if number.is_empty() {
        return Err(bad());
    }
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown size unit {unit:?} in {s:?} (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
            ));
        }
    };
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(scale).ok_or_else(bad);
    }
    let n: f64 = number.parse().map_err(|_| bad())?;
    let bytes = (n * scale as f64).round();
    if bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64 {
        Ok(bytes as u64)
    } else {
        Err(bad())
    }
}

impl Retention {
    /// Checks that the limits keep at least the newest message of any allowed size.
    pub(crate) fn validate(&self, limits: &Limits) -> Result<(), ConfigError> {
        if self.messages == Some(0) {
            return Err(ConfigError::Zero("retain messages"));
        }
        if let Some(bytes) = self.bytes
            && bytes < limits.max_request_size
        {
            return Err(ConfigError::BelowRequest {
                what: "retain bytes",
                min: limits.max_request_size,
                found: bytes,
            });
        }
        if self.age.is_some_and(|a| a.is_zero()) {
            return Err(ConfigError::RetainAge);
        }
        Ok(())
    }
}

/// What a [`RateLimit`]'s parts are called in its error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateNames {
    /// The rate, e.g. `rate limit`.
    pub rate: &'static str,
    /// The burst, e.g. `rate burst`.
    pub burst: &'static str,
    /// The table size, e.g. `rate sources`.
    pub sources: &'static str,
}

impl RateLimit {
    /// Checks that the limit is a number and, when on, lets at least one datagram through.
    pub(crate) fn validate(&self, names: RateNames) -> Result<(), ConfigError> {
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return Err(ConfigError::Rate(names.rate, self.rate));
        }
        if self.rate > 0.0 && !(self.burst.is_finite() && self.burst >= 1.0) {
            return Err(ConfigError::Burst(names.burst, self.burst));
        }
        if self.max_sources == 0 {
            return Err(ConfigError::Zero(names.sources));
        }
        Ok(())
    }
}

impl Config {
    /// Checks every limit.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        if self.workers == 0 {
            return Err(ConfigError::Workers);
        }
        if !(1..=IO_BATCH_MAX).contains(&self.io_batch) {
            return Err(ConfigError::IoBatch {
                max: IO_BATCH_MAX,
                found: self.io_batch,
            });
        }
        self.rate_limit.validate(RateNames {
            rate: "rate limit",
            burst: "rate burst",
            sources: "rate sources",
        })?;
        self.error_limit.validate(RateNames {
            rate: "error reply rate",
            burst: "error reply burst",
            sources: "error reply sources",
        })?;
        self.retention.validate(&self.limits)?;
        if let Store::Clustered(cluster) = &self.store
            && let Some(problem) = cluster.problem()
        {
            return Err(ConfigError::Clustered(problem));
        }
        if let Store::Journal(journal) = &self.store
            && !(MIN_SEGMENT..=MAX_SEGMENT).contains(&journal.segment_size)
        {
            return Err(ConfigError::SegmentSize(journal.segment_size));
        }
        Ok(())
    }
}

impl Limits {
    /// Checks that the limits can serve at least one session.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_DATAGRAM..=MAX_DATAGRAM).contains(&self.max_datagram) {
            return Err(ConfigError::Datagram(self.max_datagram));
        }
        if self.max_request_size == 0 {
            return Err(ConfigError::Zero("max request size"));
        }
        let smallest_session = 2 * self.max_datagram as u64;
        if self.max_session_memory < smallest_session {
            return Err(ConfigError::SessionMemory(
                smallest_session,
                self.max_session_memory,
            ));
        }
        if self.max_sessions_per_source == 0 {
            return Err(ConfigError::Zero("max sessions per source"));
        }
        if self.max_sessions == 0 {
            return Err(ConfigError::Zero("max sessions"));
        }
        if self.session_timeout.is_zero() {
            return Err(ConfigError::Timeout);
        }
        if self.validation_ttl.is_zero() {
            return Err(ConfigError::ValidationTtl);
        }
        if self.max_validated == 0 {
            return Err(ConfigError::Zero("max validated"));
        }
        if self.max_held == 0 {
            return Err(ConfigError::Zero("max held"));
        }
        if self.max_held_per_source == 0 {
            return Err(ConfigError::Zero("max held per source"));
        }
        if self.tokens.window.is_zero() {
            return Err(ConfigError::DedupWindow);
        }
        if self.tokens.max_tokens == 0 {
            return Err(ConfigError::Zero("max tokens"));
        }
        self.fairness.validate()?;
        if self.max_queued_publishes == 0 {
            return Err(ConfigError::Zero("max queued publishes"));
        }
        if self.max_catching_up == 0 {
            return Err(ConfigError::Zero("max catching up"));
        }
        if self.max_building_replies == 0 {
            return Err(ConfigError::Zero("max building replies"));
        }
        if self.max_queued_bytes < self.max_request_size {
            return Err(ConfigError::BelowRequest {
                what: "max queued bytes",
                min: self.max_request_size,
                found: self.max_queued_bytes,
            });
        }
        self.metrics.validate()
    }

    /// The most bytes an unvalidated `from` may be sent for a request of `request_len`
    /// bytes, or `None` when the rule does not apply to it.
    pub(crate) fn amplification_allowance(
        &self,
        from: std::net::SocketAddr,
        request_len: usize,
    ) -> Option<usize> {
        if self.amplification_factor == 0
            || (from.ip().is_loopback() && !self.amplification_loopback)
        {
            return None;
        }
        Some(
            (request_len.saturating_mul(self.amplification_factor as usize))
                .max(AMPLIFICATION_FLOOR),
        )
    }

    /// Block size of download offers: a `g:` reply with the widest index still fits.
    pub(crate) fn download_block_size(&self) -> usize {
        self.max_datagram - DATA_HEADER_MAX
    }
}

/// Where the board is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// In memory only: lost when the server stops.
    Memory,
    /// In an append-only journal in a data directory.
    Journal(JournalConfig),
    /// In a NATS JetStream stream shared with other servers, read from a local replica.
    Clustered(ClusterConfig),
}

/// Everything [`crate::run`] needs besides the socket.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the board is kept.
    pub store: Store,
    /// Session and datagram limits.
    pub limits: Limits,
    /// Per-source rate limit on incoming datagrams.
    pub rate_limit: RateLimit,
    /// Per-destination limit on replies to malformed input (codes `1` and `3`).
    pub error_limit: RateLimit,
    /// Who gives way when a receive loop falls behind.
    pub shedding: Shedding,
    /// Receive loops sharing the socket.
    pub workers: usize,
    /// Datagrams one system call receives or sends at most (1: one at a time).
    pub io_batch: usize,
    /// Seed for session ids; `None` seeds from the operating system.
    pub seed: Option<u64>,
    /// How often the access log sums up traffic at `info` (`None` or zero: never).
    pub summary_interval: Option<Duration>,
    /// What the store keeps. The binary's defaults differ by store: the memory board
    /// keeps [`MEMORY_RETAIN_BYTES`] (as `Config::default()`, whose store is memory), the
    /// journal everything.
    pub retention: Retention,
}

impl Default for Config {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Config {
            store: Store::Memory,
            limits: Limits::default(),
            rate_limit: RateLimit::default(),
            error_limit: RateLimit::ERROR_REPLIES,
            shedding: Shedding::default(),
            workers: 2 * cores,
            io_batch: IO_BATCH,
            seed: None,
            summary_interval: Some(Duration::from_secs(60)),
            retention: Retention {
                bytes: Some(MEMORY_RETAIN_BYTES),
                ..Retention::UNLIMITED
            },
        }
    }
}

#[cfg(test)]
mod tests;

//! The configuration the options give (`Config`), checked before the server starts.

use anyhow::Context;
use mboard_server::{
    Config, EndpointLimits, Fairness, JournalConfig, Limits, MEMORY_RETAIN_BYTES, RateLimit,
    Retention, Shedding, Store, TokenLimits,
};

use super::args::Args;

/// The configuration the options give, refused in one line if it cannot work.
pub(crate) fn checked_config(args: &Args) -> anyhow::Result<Config> {
    args.nats
        .check()
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    let config = config(args);
    config.validate().context("invalid configuration")?;
    if let Store::Journal(journal) = &config.store {
        super::check_data_dir(&journal.dir)?;
    }
    let limits = &config.limits;
    if limits.max_session_memory < limits.max_request_size {
        tracing::warn!(
            max_session_memory = limits.max_session_memory,
            max_request_size = limits.max_request_size,
            "requests and replies larger than the session memory are answered 4:busy"
        );
    }
    Ok(config)
}

/// The server's configuration as the options give it.
pub(crate) fn config(args: &Args) -> Config {
    let defaults = Config::default();
    let store = if args.nats.chosen() {
        Store::Clustered(args.nats.config())
    } else if args.in_memory {
        Store::Memory
    } else {
        Store::Journal(JournalConfig {
            dir: args.data_dir.clone(),
            fsync: args.fsync,
            segment_size: args.segment_size,
            shutdown_grace: args.shutdown_grace.into(),
        })
    };
    // The clustered store's replica is in memory too.
    let default_bytes = (args.in_memory || args.nats.chosen()).then_some(MEMORY_RETAIN_BYTES);
    let retention = Retention {
        messages: args.retain_messages.0,
        bytes: args.retain_bytes.map_or(default_bytes, |k| k.0),
        age: args.retain_age.0,
    };
    Config {
        store,
        limits: limits(args),
        rate_limit: RateLimit {
            rate: args.rate_limit,
            burst: args.rate_burst,
            max_sources: args.rate_sources,
        },
        error_limit: RateLimit {
            rate: args.error_reply_rate,
            burst: args.error_reply_burst,
            ..RateLimit::ERROR_REPLIES
        },
        shedding: Shedding {
            host_share: args.overload_host_share,
        },
        workers: args.workers.unwrap_or(defaults.workers),
        io_batch: args.io_batch,
        seed: None,
        summary_interval: Some(args.summary_interval.into()),
        retention,
    }
}

/// The session, hold, token and queue limits the options give.
fn limits(args: &Args) -> Limits {
    Limits {
        max_request_size: args.max_request_size,
        max_session_memory: args.max_session_memory,
        max_sessions_per_source: args.max_sessions_per_source,
        max_sessions: args.max_sessions,
        session_timeout: args.session_timeout.into(),
        max_datagram: args.max_datagram,
        amplification_factor: args.amplification_factor,
        amplification_loopback: args.amplification_loopback,
        validation_ttl: args.validation_ttl.into(),
        max_validated: args.max_validated,
        claim_grace: args.claim_grace.into(),
        max_hold: args.max_hold.into(),
        max_held: args.max_held,
        max_held_per_source: args.max_held_per_source,
        tokens: TokenLimits {
            window: args.dedup_window.into(),
            max_tokens: args.max_tokens,
        },
        metrics: EndpointLimits {
            connections: args.metrics_connections,
            connections_per_ip: args.metrics_connections_per_ip,
        },
        fairness: Fairness {
            host_memory_share: args.host_memory_share,
            host_session_share: args.host_session_share,
            progress_floor: args.progress_floor,
            progress_grace: args.progress_grace.into(),
        },
        max_queued_publishes: args.max_queued_publishes,
        max_queued_bytes: args.max_queued_bytes,
        max_catching_up: args.max_catching_up,
        max_building_replies: args.max_building_replies,
    }
}

#[cfg(test)]
mod tests;

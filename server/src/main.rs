//! `mboard-server`: serves the message board over UDP.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use mboard_server::{
    Config, EndpointLimits, Fairness, Fsync, JournalConfig, Limits, MEMORY_RETAIN_BYTES, RateLimit,
    Retention, Shedding, Store, TokenLimits, parse_size,
};
use tokio::net::{TcpListener, UdpSocket};

mod cli;

/// The socket receive buffer asked for by default: 4 MiB. It absorbs a thousand followers
/// re-arming at once and the moments the loops are not scheduled; under a flood, the
/// loops shed the flooding host's datagrams at the cost of a receive each, so the queue
/// drains in milliseconds instead of being one every honest request waits behind
/// (docs/OPERATIONS.md).
const RECV_BUFFER: usize = 4 << 20;

// glibc's allocator keeps what a crowd of sessions freed: after three rounds of 100,000
// expired sessions the server still held 250 MiB. jemalloc returns freed pages to the
// system (docs/BENCHMARKS.md, "Memory returned").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Message board over UDP: layer-1 board requests and layer-2 sessions on one port.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    // Defaults are read from `Limits::default()` and `RateLimit` so that each is written
    // once; durations are `humantime::Duration` so that `--help` shows them as `30s`.
    /// Address to serve on (IPv4 or IPv6, e.g. `[::1]:7777`).
    #[arg(long, env = "MBOARD_LISTEN", default_value = "127.0.0.1:7777")]
    listen: SocketAddr,

    /// Keep the board in memory only (lost when the server stops).
    #[arg(long, env = "MBOARD_IN_MEMORY", conflicts_with_all = ["data_dir", "fsync"])]
    in_memory: bool,

    /// Directory of the durable board (created if missing).
    #[arg(long, env = "MBOARD_DATA_DIR", default_value = "mboard-data")]
    data_dir: PathBuf,

    /// When a publish is acknowledged: `always` after fsync, `never` after the write
    /// (survives a server crash, not a power failure).
    #[arg(long, env = "MBOARD_FSYNC", default_value = "always")]
    fsync: Fsync,

    /// Start a new journal segment file once the current one holds this much (`64MiB`); a
    /// larger message still fits, in a segment that grows past it. (Journal only.)
    #[arg(long, env = "MBOARD_SEGMENT_SIZE", value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    segment_size: u64,

    /// At shutdown, wait at most this long for the disk to take the publishes queued for
    /// it; then exit without acknowledging those that are not durable. (Journal only.)
    #[arg(
        long,
        env = "MBOARD_SHUTDOWN_GRACE",
        value_name = "DURATION",
        default_value = "10s"
    )]
    shutdown_grace: humantime::Duration,

    /// Keep only the newest N messages (`none`: no limit). Older ones are trimmed: `3:`
    /// answers them `2:no longer kept`, and their ids are never reused.
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_RETAIN_MESSAGES", value_name = "N|none", default_value = "none", value_parser = parse_count)]
    retain_messages: Keep<u64>,

    /// Keep only the newest messages that fit in SIZE (`512MiB`; `none`: no limit): bytes
    /// on disk for the journal, bytes of memory for `--in-memory`. Default: none for the
    /// journal, 256MiB in memory.
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_RETAIN_BYTES", value_name = "SIZE|none", value_parser = parse_bytes)]
    retain_bytes: Option<Keep<u64>>,

    /// Keep a message for at most this long after its publish (`7d`, `12h`; `none`: no
    /// limit), by the server's clock. On the journal, a reload can set it only if the
    /// server started with one.
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_RETAIN_AGE", value_name = "DURATION|none", default_value = "none", value_parser = parse_age)]
    retain_age: Keep<std::time::Duration>,

    /// Publishes waiting for the disk at once; more are answered `4:busy` at once.
    #[arg(long, env = "MBOARD_MAX_QUEUED_PUBLISHES", value_name = "N", default_value_t = Limits::default().max_queued_publishes)]
    max_queued_publishes: usize,

    /// Bytes of text waiting for the disk at once (`256MiB`); more are answered `4:busy`.
    #[arg(long, env = "MBOARD_MAX_QUEUED_BYTES", value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    max_queued_bytes: u64,

    /// Drop a session after this long without a datagram (`30s`, `500ms`).
    #[arg(long, env = "MBOARD_SESSION_TIMEOUT", default_value_t = Limits::default().session_timeout.into())]
    session_timeout: humantime::Duration,

    /// Largest request an upload session may carry, in bytes.
    #[arg(long, env = "MBOARD_MAX_REQUEST_SIZE", default_value_t = Limits::default().max_request_size)]
    max_request_size: u64,

    /// Largest response sent as one datagram, in bytes; larger ones become download offers.
    #[arg(long, env = "MBOARD_MAX_DATAGRAM", default_value_t = Limits::default().max_datagram)]
    max_datagram: usize,

    /// Bytes all sessions together may reserve (uploads, cached replies, downloads).
    #[arg(long, env = "MBOARD_MAX_SESSION_MEMORY", default_value_t = Limits::default().max_session_memory)]
    max_session_memory: u64,

    /// Open sessions one source address (IP and port) may hold.
    #[arg(long, env = "MBOARD_MAX_SESSIONS_PER_SOURCE", default_value_t = Limits::default().max_sessions_per_source)]
    max_sessions_per_source: u32,

    /// Open sessions in all.
    #[arg(long, env = "MBOARD_MAX_SESSIONS", default_value_t = Limits::default().max_sessions)]
    max_sessions: u32,

    /// Until an address has proved it receives our datagrams, send it at most this many
    /// times the bytes of its request (or 64 bytes); larger replies become download
    /// offers. 0 turns the rule off.
    #[arg(long, env = "MBOARD_AMPLIFICATION_FACTOR", default_value_t = Limits::default().amplification_factor)]
    amplification_factor: u32,

    /// Apply the amplification rule to loopback sources too (exempt by default).
    #[arg(long, env = "MBOARD_AMPLIFICATION_LOOPBACK")]
    amplification_loopback: bool,

    /// How long an address stays validated after echoing one of our session ids.
    #[arg(long, env = "MBOARD_VALIDATION_TTL", default_value_t = Limits::default().validation_ttl.into())]
    validation_ttl: humantime::Duration,

    /// When the server is full, a session nobody has used since it was created (an
    /// upload with no block, an offer never fetched) may be dropped for a new one once it
    /// is this old.
    #[arg(long, env = "MBOARD_CLAIM_GRACE", default_value_t = Limits::default().claim_grace.into())]
    claim_grace: humantime::Duration,

    /// Each host's share of --max-session-memory, in percent. A host (an IPv4 address, an
    /// IPv6 /64) may hold up to its share whenever there is room; beyond it, only room
    /// that leaves one share free for other hosts (100: no per-host limit).
    #[arg(
        long,
        env = "MBOARD_HOST_MEMORY_SHARE",
        value_name = "PERCENT",
        default_value_t = Fairness::default().host_memory_share
    )]
    host_memory_share: u8,

    /// Each host's share of --max-sessions, in percent, on the same terms.
    #[arg(
        long,
        env = "MBOARD_HOST_SESSION_SHARE",
        value_name = "PERCENT",
        default_value_t = Fairness::default().host_session_share
    )]
    host_session_share: u8,

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
    overload_host_share: u8,

    /// When a new session does not fit, a session that has moved fewer than this many
    /// bytes a second since it started (after --progress-grace) may be dropped for it,
    /// hosts over their share first (0: never).
    #[arg(
        long,
        env = "MBOARD_PROGRESS_FLOOR",
        value_name = "BYTES_PER_SEC",
        default_value_t = Fairness::default().progress_floor
    )]
    progress_floor: u64,

    /// Time every session has before the progress floor applies to it.
    #[arg(
        long,
        env = "MBOARD_PROGRESS_GRACE",
        value_name = "DURATION",
        default_value_t = Fairness::default().progress_grace.into()
    )]
    progress_grace: humantime::Duration,

    /// The longest a `6:` request is held waiting for a new message, whatever it asks.
    #[arg(long, env = "MBOARD_MAX_HOLD", default_value_t = Limits::default().max_hold.into())]
    max_hold: humantime::Duration,

    /// `6:` requests held at once, in all; more are answered `4:busy`.
    #[arg(long, env = "MBOARD_MAX_HELD", default_value_t = Limits::default().max_held)]
    max_held: usize,

    /// `6:` requests one source address (IP and port) may have held at once.
    #[arg(long, env = "MBOARD_MAX_HELD_PER_SOURCE", default_value_t = Limits::default().max_held_per_source)]
    max_held_per_source: usize,

    /// Validated addresses remembered at once.
    #[arg(long, env = "MBOARD_MAX_VALIDATED", default_value_t = Limits::default().max_validated)]
    max_validated: usize,

    /// Remember the token of every `5:` publish for at least this long: a resend with the
    /// same token within it stores nothing and gets the same id.
    #[arg(long, env = "MBOARD_DEDUP_WINDOW", default_value_t = Limits::default().tokens.window.into())]
    dedup_window: humantime::Duration,

    /// Publish tokens remembered at once (about 90 bytes each); past it the oldest are
    /// forgotten before their window ends, and counted.
    #[arg(long, env = "MBOARD_MAX_TOKENS", default_value_t = Limits::default().tokens.max_tokens)]
    max_tokens: usize,

    /// Datagrams per second one source address may sustain; more are dropped without a
    /// reply (0 turns rate limiting off).
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_RATE_LIMIT", default_value_t = RateLimit::default().rate)]
    rate_limit: f64,

    /// Datagrams one source address may send at once after being quiet.
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_RATE_BURST", default_value_t = RateLimit::default().burst)]
    rate_burst: f64,

    /// Replies to malformed input (codes 1 and 3) one destination may be sent per second;
    /// more are dropped, which ends any reflection loop with another server (0: off).
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_ERROR_REPLY_RATE", default_value_t = RateLimit::ERROR_REPLIES.rate)]
    error_reply_rate: f64,

    /// Replies to malformed input one destination may be sent at once.
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_ERROR_REPLY_BURST", default_value_t = RateLimit::ERROR_REPLIES.burst)]
    error_reply_burst: f64,

    /// Source addresses the rate limiter tracks at once.
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_RATE_SOURCES", default_value_t = RateLimit::default().max_sources)]
    rate_sources: usize,

    /// Serve Prometheus metrics at `http://ADDR/metrics` (off by default; keep ADDR
    /// private, e.g. `127.0.0.1:9477`).
    #[arg(long, env = "MBOARD_METRICS", value_name = "ADDR")]
    metrics: Option<SocketAddr>,

    /// Connections the metrics endpoint holds at once. When full, an idle one (or one
    /// still sending its request) is closed for a newcomer; if all are being answered,
    /// the newcomer is closed at once.
    #[arg(
        long,
        env = "MBOARD_METRICS_CONNECTIONS",
        value_name = "N",
        default_value_t = EndpointLimits::default().connections
    )]
    metrics_connections: usize,

    /// Connections one host (an IPv4 address, an IPv6 /64) may hold to the metrics
    /// endpoint; beyond it, the host's own idle ones give way first.
    #[arg(
        long,
        env = "MBOARD_METRICS_CONNECTIONS_PER_IP",
        value_name = "N",
        default_value_t = EndpointLimits::default().connections_per_ip
    )]
    metrics_connections_per_ip: usize,

    /// Receive buffer of the board's socket, in bytes (0: the system's default). The
    /// system caps it (Linux: `net.core.rmem_max`); the size granted is logged.
    #[arg(long, env = "MBOARD_RECV_BUFFER", value_name = "BYTES", default_value_t = RECV_BUFFER)]
    recv_buffer: usize,

    /// Receive loops sharing the socket (default: twice the number of cores).
    #[arg(long, env = "MBOARD_WORKERS")]
    workers: Option<usize>,

    /// Log filter, e.g. `info` or `mboard_server=debug` (default: $RUST_LOG, else `info`).
    #[arg(help_heading = RELOADED)]
    #[arg(long, env = "MBOARD_LOG_LEVEL", value_parser = cli::log_filter)]
    log_level: Option<String>,

    /// Read options from this TOML file too, each by its long name (`max-sessions =
    /// 1000`); the command line and the environment win over it. SIGHUP reads it again.
    #[arg(long, env = "MBOARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// How often to log a summary of the traffic at `info` (`0s`: never); an interval
    /// without traffic logs nothing.
    #[arg(long, env = "MBOARD_SUMMARY_INTERVAL", default_value = "1m")]
    summary_interval: humantime::Duration,

    #[command(flatten)]
    nats: cli::NatsArgs,

    #[command(flatten)]
    packaging: cli::Packaging,
}

/// The help heading of the options SIGHUP reloads from the config file.
const RELOADED: &str = cli::RELOADED;

/// A retention limit, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Keep<T>(Option<T>);

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

/// Runs the server; any error that stops it is one line on standard error and exit code 1.
#[allow(clippy::print_stderr)]
fn main() -> std::process::ExitCode {
    match serve() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The causes on the same line: `cannot bind …: Address in use`.
            eprintln!("error: {}", cli::one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve() -> anyhow::Result<()> {
    let first = cli::Options::from_command_line(Args::command());
    let first_args = Args::from_arg_matches(first.matches()).context("options")?;
    if first_args.packaging.run(Args::command())? {
        return Ok(());
    }
    let options = first.with_file(first_args.config.as_deref())?;
    let args = Args::from_arg_matches(options.matches()).context("options")?;
    let logging = cli::Logging::init(args.log_level.as_deref())?;
    let config = checked_config(&args)?;
    tracing::info!("configuration: {}", options.describe());
    if args.in_memory {
        tracing::info!("board is kept in memory: it is lost when the server stops");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let in_memory = args.in_memory;
        let (reloads, reloader) = cli::Reloader::new(options, logging, &config, move |args| {
            let mut args = Args::from_arg_matches(args)?;
            // The store takes a restart, so the reloaded limits (`--retain-bytes`'s
            // default above all) are those of the store the server runs.
            args.in_memory = in_memory;
            Ok(cli::Loaded {
                config: checked_config(&args)?,
                log_level: args.log_level,
            })
        });
        reloader.listen()?;
        let udp = UdpSocket::bind(args.listen)
            .await
            .with_context(|| format!("cannot bind {}", args.listen))?;
        if args.recv_buffer > 0 {
            let granted = mboard_server::set_receive_buffer(&udp, args.recv_buffer)
                .context("cannot set the receive buffer")?;
            if granted < args.recv_buffer && args.recv_buffer == RECV_BUFFER {
                // Most systems cap buffers at 208 KiB unless raised; not the operator's doing.
                tracing::info!(
                    asked = args.recv_buffer,
                    granted,
                    "receive buffer capped by the system (raise net.core.rmem_max to take floods and crowds of followers)"
                );
            } else if granted < args.recv_buffer {
                tracing::warn!(
                    asked = args.recv_buffer,
                    granted,
                    "receive buffer capped by the system (raise net.core.rmem_max)"
                );
            } else {
                tracing::info!(bytes = granted, "receive buffer");
            }
        }
        let metrics = match args.metrics {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind metrics address {addr}"))?,
            ),
            None => None,
        };
        let listeners = mboard_server::Listeners { udp, metrics };
        mboard_server::run_reloading(listeners, config, reloads, shutdown).await?;
        Ok(())
    })
}

/// The configuration the options give, refused in one line if it cannot work.
fn checked_config(args: &Args) -> anyhow::Result<Config> {
    args.nats
        .check()
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    let config = config(args);
    config.validate().context("invalid configuration")?;
    if let Store::Journal(journal) = &config.store {
        cli::check_data_dir(&journal.dir)?;
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
fn config(args: &Args) -> Config {
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
        limits: Limits {
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
        },
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
        seed: None,
        summary_interval: Some(args.summary_interval.into()),
        retention,
    }
}

/// Listens for Ctrl+C and SIGTERM from now on, before the socket is served: a signal that
/// arrives right after start-up must stop the server cleanly, not kill it by the default
/// action (tokio installs its handler when the listener is created, not when awaited).
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for Ctrl+C")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Listens for Ctrl+C.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::io::Write;

    use super::*;

    /// The options an operator sets: not `--help`, `--version` or the packagers' flags.
    fn options() -> Vec<clap::Arg> {
        Args::command()
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
            .cloned()
            .collect()
    }

    #[test]
    fn every_option_has_its_environment_variable() {
        for arg in options() {
            let long = arg.get_long().expect("every option has a long name");
            let expected = format!("MBOARD_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(expected.as_str()),
                "--{long} needs `env = \"{expected}\"`"
            );
        }
    }

    #[test]
    fn every_option_with_a_default_can_be_written_in_the_config_file() {
        // Each option set to its own default, by its long name, in one file.
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        for arg in options() {
            let long = arg.get_long().expect("long name");
            if let Some(default) = arg.get_default_values().first() {
                let default = default.to_str().expect("utf-8");
                if arg.get_action().takes_values() {
                    writeln!(file, "{long} = {default:?}").expect("write");
                } else {
                    writeln!(file, "{long} = {default}").expect("write");
                }
            }
        }
        let argv = vec![OsString::from("mboard-server")];
        let options = cli::Options::try_from_args(Args::command(), argv)
            .expect("command line")
            .with_file(Some(file.path()))
            .expect("every default is accepted in the file");
        let args = Args::from_arg_matches(options.matches()).expect("args");
        let defaults = Args::try_parse_from(["mboard-server"]).expect("defaults");
        assert_eq!(
            format!("{:?}", config(&args)),
            format!("{:?}", config(&defaults))
        );
    }

    #[test]
    fn the_options_under_the_reload_heading_are_the_ones_a_reload_changes() {
        let heading = |a: &clap::Arg| a.get_help_heading() == Some(RELOADED);
        let reloaded: Vec<_> = options().into_iter().filter(heading).collect();
        assert!(reloaded.len() >= 9, "{reloaded:?}");
        let base = Args::try_parse_from(["mboard-server", "--in-memory"]).expect("parse");
        for arg in reloaded {
            let long = format!("--{}", arg.get_long().expect("long"));
            let value = match arg.get_id().as_str() {
                "log_level" => "debug",
                "retain_age" => "5s",
                _ => "5",
            };
            let args = Args::try_parse_from(["mboard-server", "--in-memory", &long, value])
                .expect("parse");
            let changed = config(&args).reloadable() != config(&base).reloadable()
                || args.log_level != base.log_level;
            assert!(changed, "{long} {value} changes nothing a reload applies");
        }
    }

    #[test]
    fn nats_options_select_the_clustered_store() {
        let args = Args::try_parse_from([
            "mboard-server",
            "--nats",
            "nats://127.0.0.1:4222,nats://127.0.0.1:4223",
            "--nats-replicas",
            "3",
            "--nats-user",
            "mboard",
            "--nats-password",
            "s3cret",
        ])
        .expect("parse");
        let config = config(&args);
        assert_eq!(
            config.retention.bytes,
            Some(MEMORY_RETAIN_BYTES),
            "replica in memory"
        );
        let Store::Clustered(cluster) = config.store else {
            panic!("clustered")
        };
        assert_eq!(cluster.servers.len(), 2);
        assert_eq!((cluster.stream.as_str(), cluster.replicas), ("mboard", 3));
        assert!(matches!(
            cluster.auth,
            mboard_server::NatsAuth::UserPassword { .. }
        ));
        assert!(
            !format!("{cluster:?}").contains("s3cret"),
            "secrets stay out of logs"
        );
        for lacking in [
            &["--nats-token", "t"][..],
            &["--nats", "nats://x", "--nats-user", "u"],
            &["--nats", "nats://x", "--nats-key", "k.pem"],
        ] {
            let argv = ["mboard-server"].iter().chain(lacking).copied();
            let args = Args::try_parse_from(argv).expect("parse");
            let e = cli::one_line(&checked_config(&args).expect_err("refused"));
            assert!(e.contains(" needs --nats"), "{lacking:?}: {e}");
        }
        for bad in [
            &["--nats", "nats://x", "--in-memory"][..],
            &["--nats", "nats://x", "--data-dir", "d"],
            &[
                "--nats",
                "nats://x",
                "--nats-token",
                "t",
                "--nats-user",
                "u",
                "--nats-password",
                "p",
            ],
        ] {
            let argv = ["mboard-server"].iter().chain(bad).copied();
            assert!(Args::try_parse_from(argv).is_err(), "{bad:?}");
        }
        let bad = Args::try_parse_from([
            "mboard-server",
            "--nats",
            "nats://x",
            "--nats-stream",
            "a.b",
        ])
        .expect("parse");
        assert!(
            super::config(&bad).validate().is_err(),
            "a dotted stream name"
        );
    }

    #[test]
    fn nats_options_come_from_the_config_file_too_and_secrets_are_not_logged() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(
            file,
            "nats = [\"nats://127.0.0.1:4222\", \"nats://127.0.0.1:4223\"]\n\
             nats-stream = \"board\"\nnats-token = \"t0ken-in-file\"\n\
             nats-ca = \"/etc/mboard/nats-ca.pem\"\nnats-timeout = \"1s\""
        )
        .expect("write");
        let argv = vec![OsString::from("mboard-server")];
        let options = cli::Options::try_from_args(Args::command(), argv)
            .expect("command line")
            .with_file(Some(file.path()))
            .expect("accepted");
        let args = Args::from_arg_matches(options.matches()).expect("args");
        let Store::Clustered(cluster) = config(&args).store else {
            panic!("the file selects the clustered store")
        };
        assert_eq!(cluster.servers.len(), 2);
        assert_eq!(cluster.stream, "board");
        assert_eq!(cluster.timeout, std::time::Duration::from_secs(1));
        assert!(cluster.tls.ca.is_some());
        let line = options.describe();
        assert!(line.contains("nats-stream=board"), "{line}");
        assert!(!line.contains("t0ken-in-file"), "{line}");
        assert!(line.contains("nats-token=(hidden)"), "{line}");
    }

    #[test]
    fn unworkable_options_are_refused_before_anything_starts() {
        let refused = |extra: &[&str]| {
            let argv = [&["mboard-server", "--in-memory"], extra].concat();
            let args = Args::try_parse_from(argv).expect("parse");
            cli::one_line(&checked_config(&args).expect_err("refused"))
        };
        assert_eq!(
            refused(&["--rate-sources", "0"]),
            "invalid configuration: rate sources must be at least 1"
        );
        assert_eq!(
            refused(&["--workers", "0"]),
            "invalid configuration: workers must be at least 1"
        );
        assert!(refused(&["--max-session-memory", "100"]).contains("twice max datagram"));
        assert_eq!(
            refused(&["--rate-burst", "0.5"]),
            "invalid configuration: rate burst must be a number of at least 1 while its rate is above 0, not 0.5"
        );
        assert_eq!(
            refused(&["--error-reply-rate", "NaN"]),
            "invalid configuration: error reply rate must be a number of at least 0 (0 turns it off), not NaN"
        );
        let bad_filter = Args::try_parse_from(["mboard-server", "--log-level", "x=y=z"]);
        assert!(
            bad_filter.is_err(),
            "a bad log filter is refused while parsing"
        );
    }

    #[test]
    fn no_options_means_the_library_defaults() {
        Args::command().debug_assert();
        let args = Args::try_parse_from(["mboard-server", "--in-memory"]).expect("parse");
        let config = config(&args);
        let defaults = Config::default();
        assert_eq!(config.limits, defaults.limits);
        assert_eq!(config.rate_limit, defaults.rate_limit);
        assert_eq!(config.error_limit, defaults.error_limit);
        assert_eq!(config.workers, defaults.workers);
        assert_eq!(args.recv_buffer, RECV_BUFFER);
        assert_eq!(config.retention, defaults.retention, "memory keeps 256 MiB");
        let durable = Args::try_parse_from(["mboard-server"]).expect("parse");
        let durable = super::config(&durable);
        assert_eq!(
            durable.retention,
            Retention::UNLIMITED,
            "the journal keeps all"
        );
        let Store::Journal(journal) = durable.store else {
            panic!("durable by default")
        };
        assert_eq!(journal, JournalConfig::new("mboard-data".into()));
    }

    #[test]
    fn the_receive_buffer_is_an_option() {
        let args = Args::try_parse_from(["mboard-server", "--in-memory", "--recv-buffer", "0"])
            .expect("parse");
        assert_eq!(args.recv_buffer, 0, "0 keeps the system's default");
        assert!(
            Args::try_parse_from(["mboard-server", "--recv-buffer", "-1"]).is_err(),
            "a size is a number of bytes"
        );
    }

    #[test]
    fn retention_options_take_sizes_durations_and_none() {
        let args = Args::try_parse_from([
            "mboard-server",
            "--retain-messages",
            "1000",
            "--retain-bytes",
            "512MiB",
            "--retain-age",
            "7d",
            "--segment-size",
            "1MiB",
        ])
        .expect("parse");
        let config = config(&args);
        assert_eq!(
            config.retention,
            Retention {
                messages: Some(1_000),
                bytes: Some(512 << 20),
                age: Some(std::time::Duration::from_secs(7 * 86_400)),
            }
        );
        let Store::Journal(journal) = config.store else {
            panic!("durable")
        };
        assert_eq!(journal.segment_size, 1 << 20);
        let unlimited =
            Args::try_parse_from(["mboard-server", "--in-memory", "--retain-bytes", "none"])
                .expect("parse");
        assert_eq!(super::config(&unlimited).retention, Retention::UNLIMITED);
        for bad in [
            &["--retain-bytes", "lots"][..],
            &["--retain-messages", "-3"],
            &["--retain-age", "soon"],
            &["--segment-size", "1XB"],
        ] {
            let argv = ["mboard-server"].iter().chain(bad).copied();
            assert!(Args::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn metrics_connection_caps_are_options() {
        let args = Args::try_parse_from([
            "mboard-server",
            "--in-memory",
            "--metrics-connections",
            "32",
            "--metrics-connections-per-ip",
            "2",
        ])
        .expect("parse");
        let metrics = config(&args).limits.metrics;
        assert_eq!((metrics.connections, metrics.connections_per_ip), (32, 2));
    }

    #[test]
    fn host_shares_and_the_progress_floor_are_options() {
        let args = Args::try_parse_from([
            "mboard-server",
            "--in-memory",
            "--host-memory-share",
            "50",
            "--host-session-share",
            "10",
            "--progress-floor",
            "0",
            "--progress-grace",
            "2s",
        ])
        .expect("parse");
        let fair = config(&args).limits.fairness;
        assert_eq!(
            fair,
            Fairness {
                host_memory_share: 50,
                host_session_share: 10,
                progress_floor: 0,
                progress_grace: std::time::Duration::from_secs(2),
            }
        );
    }

    #[test]
    fn the_overload_share_is_an_option_in_percent() {
        let args =
            |share: &str| Args::try_parse_from(["mboard-server", "--overload-host-share", share]);
        let parsed = args("10").expect("parse");
        assert_eq!(config(&parsed).shedding, Shedding { host_share: 10 });
        assert_eq!(config(&args("0").expect("parse")).shedding.host_share, 0);
        assert!(args("101").is_err());
        assert!(args("-1").is_err());
        let defaults = Args::try_parse_from(["mboard-server"]).expect("parse");
        assert_eq!(config(&defaults).shedding, Shedding::default());
    }
}

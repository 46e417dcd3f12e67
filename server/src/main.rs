//! `mboard-server`: serves the message board over UDP.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use mboard_server::board::clustered::{ClusterConfig, NatsAuth, NatsTls, Secret};
use mboard_server::config::{MEMORY_RETAIN_BYTES, parse_size};
use mboard_server::{
    Config, EndpointLimits, Fsync, JournalConfig, Limits, RateLimit, Retention, Store, TokenLimits,
};
use tokio::net::{TcpListener, UdpSocket};
use tracing_subscriber::EnvFilter;

/// Message board over UDP: layer-1 board requests and layer-2 sessions on one port.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    // Defaults are read from `Limits::default()` and `RateLimit` so that each is written
    // once; durations are `humantime::Duration` so that `--help` shows them as `30s`.
    /// Address to serve on (IPv4 or IPv6, e.g. `[::1]:7777`).
    #[arg(long, default_value = "127.0.0.1:7777")]
    listen: SocketAddr,

    /// Keep the board in memory only (lost when the server stops).
    #[arg(long, conflicts_with_all = ["data_dir", "fsync", "segment_size", "shutdown_grace"])]
    in_memory: bool,

    /// Directory of the durable board (created if missing).
    #[arg(long, default_value = "mboard-data")]
    data_dir: PathBuf,

    /// Keep the board in a NATS JetStream stream shared by every server given the same
    /// NATS (comma-separated URLs, `nats://127.0.0.1:4222,nats://…`); reads come from a
    /// replica in memory. See docs/SCALING.md.
    #[arg(long, env = "MBOARD_NATS", value_name = "URL,…", value_delimiter = ',',
          conflicts_with_all = ["in_memory", "data_dir", "fsync", "segment_size", "shutdown_grace"])]
    nats: Vec<String>,

    /// The stream's name (its subject is `NAME.messages`).
    #[arg(
        long,
        env = "MBOARD_NATS_STREAM",
        value_name = "NAME",
        default_value = "mboard",
        requires = "nats"
    )]
    nats_stream: String,

    /// Replicas of the stream when this server creates it (an existing stream is used as
    /// it is).
    #[arg(
        long,
        env = "MBOARD_NATS_REPLICAS",
        value_name = "N",
        default_value_t = 1,
        requires = "nats"
    )]
    nats_replicas: usize,

    /// User name for NATS (with --nats-password).
    #[arg(
        long,
        env = "MBOARD_NATS_USER",
        requires = "nats_password",
        conflicts_with = "nats_token"
    )]
    nats_user: Option<String>,

    /// Password for NATS (prefer the environment variable: arguments are visible to `ps`).
    #[arg(
        long,
        env = "MBOARD_NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    nats_password: Option<String>,

    /// Token for NATS (prefer the environment variable).
    #[arg(
        long,
        env = "MBOARD_NATS_TOKEN",
        hide_env_values = true,
        requires = "nats"
    )]
    nats_token: Option<String>,

    /// Use TLS towards NATS, trusting this PEM certificate authority.
    #[arg(long, env = "MBOARD_NATS_CA", value_name = "FILE", requires = "nats")]
    nats_ca: Option<PathBuf>,

    /// PEM client certificate for NATS servers that verify clients (with --nats-key).
    #[arg(
        long,
        env = "MBOARD_NATS_CERT",
        value_name = "FILE",
        requires = "nats_key"
    )]
    nats_cert: Option<PathBuf>,

    /// PEM key of --nats-cert.
    #[arg(
        long,
        env = "MBOARD_NATS_KEY",
        value_name = "FILE",
        requires = "nats_cert"
    )]
    nats_key: Option<PathBuf>,

    /// Require TLS towards NATS, trusting the system's certificate authorities.
    #[arg(long, env = "MBOARD_NATS_TLS", requires = "nats")]
    nats_tls: bool,

    /// How long a publish waits for JetStream's acknowledgement before it is answered
    /// `4:storage unavailable` (keep it below the clients' timeout, 5 s by default).
    #[arg(
        long,
        env = "MBOARD_NATS_TIMEOUT",
        value_name = "DURATION",
        default_value = "2s"
    )]
    nats_timeout: humantime::Duration,

    /// How long start-up waits for NATS and JetStream to answer.
    #[arg(
        long,
        env = "MBOARD_NATS_CONNECT_TIMEOUT",
        value_name = "DURATION",
        default_value = "15s"
    )]
    nats_connect_timeout: humantime::Duration,

    /// How long a `3:` for an id the stream has, but this server's replica has not
    /// received yet, waits for it before being answered `4`.
    #[arg(
        long,
        env = "MBOARD_NATS_CATCH_UP",
        value_name = "DURATION",
        default_value = "2s"
    )]
    nats_catch_up: humantime::Duration,

    /// When a publish is acknowledged: `always` after fsync, `never` after the write
    /// (survives a server crash, not a power failure).
    #[arg(long, default_value = "always")]
    fsync: Fsync,

    /// Start a new journal segment file once the current one holds this much (`64MiB`); a
    /// larger message still fits, in a segment that grows past it.
    #[arg(long, env = "MBOARD_SEGMENT_SIZE", value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    segment_size: u64,

    /// At shutdown, wait at most this long for the disk to take the publishes queued for
    /// it; then exit without acknowledging those that are not durable.
    #[arg(
        long,
        env = "MBOARD_SHUTDOWN_GRACE",
        value_name = "DURATION",
        default_value = "10s"
    )]
    shutdown_grace: humantime::Duration,

    /// Keep only the newest N messages (`none`: no limit). Older ones are trimmed: `3:`
    /// answers them `2:no longer kept`, and their ids are never reused.
    #[arg(long, env = "MBOARD_RETAIN_MESSAGES", value_name = "N|none", default_value = "none", value_parser = parse_count)]
    retain_messages: Keep<u64>,

    /// Keep only the newest messages that fit in SIZE (`512MiB`; `none`: no limit): bytes
    /// on disk for the journal, bytes of memory for `--in-memory`. Default: none for the
    /// journal, 256MiB in memory.
    #[arg(long, env = "MBOARD_RETAIN_BYTES", value_name = "SIZE|none", value_parser = parse_bytes)]
    retain_bytes: Option<Keep<u64>>,

    /// Keep a message for at most this long after its publish (`7d`, `12h`; `none`: no
    /// limit), by the server's clock.
    #[arg(long, env = "MBOARD_RETAIN_AGE", value_name = "DURATION|none", default_value = "none", value_parser = parse_age)]
    retain_age: Keep<std::time::Duration>,

    /// Publishes waiting for the disk at once; more are answered `4:busy` at once.
    #[arg(long, env = "MBOARD_MAX_QUEUED_PUBLISHES", value_name = "N", default_value_t = Limits::default().max_queued_publishes)]
    max_queued_publishes: usize,

    /// Bytes of text waiting for the disk at once (`256MiB`); more are answered `4:busy`.
    #[arg(long, env = "MBOARD_MAX_QUEUED_BYTES", value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    max_queued_bytes: u64,

    /// Drop a session after this long without a datagram (`30s`, `500ms`).
    #[arg(long, default_value_t = Limits::default().session_timeout.into())]
    session_timeout: humantime::Duration,

    /// Largest request an upload session may carry, in bytes.
    #[arg(long, default_value_t = Limits::default().max_request_size)]
    max_request_size: u64,

    /// Largest response sent as one datagram, in bytes; larger ones become download offers.
    #[arg(long, default_value_t = Limits::default().max_datagram)]
    max_datagram: usize,

    /// Bytes all sessions together may reserve (uploads, cached replies, downloads).
    #[arg(long, default_value_t = Limits::default().max_session_memory)]
    max_session_memory: u64,

    /// Open sessions one source address (IP and port) may hold.
    #[arg(long, default_value_t = Limits::default().max_sessions_per_source)]
    max_sessions_per_source: u32,

    /// Open sessions in all.
    #[arg(long, default_value_t = Limits::default().max_sessions)]
    max_sessions: u32,

    /// Until an address has proved it receives our datagrams, send it at most this many
    /// times the bytes of its request (or 64 bytes); larger replies become download
    /// offers. 0 turns the rule off.
    #[arg(long, default_value_t = Limits::default().amplification_factor)]
    amplification_factor: u32,

    /// Apply the amplification rule to loopback sources too (exempt by default).
    #[arg(long)]
    amplification_loopback: bool,

    /// How long an address stays validated after echoing one of our session ids.
    #[arg(long, default_value_t = Limits::default().validation_ttl.into())]
    validation_ttl: humantime::Duration,

    /// When the server is full, a session nobody has used since it was created (an
    /// upload with no block, an offer never fetched) may be dropped for a new one once it
    /// is this old.
    #[arg(long, default_value_t = Limits::default().claim_grace.into())]
    claim_grace: humantime::Duration,

    /// The longest a `6:` request is held waiting for a new message, whatever it asks.
    #[arg(long, default_value_t = Limits::default().max_hold.into())]
    max_hold: humantime::Duration,

    /// `6:` requests held at once, in all; more are answered `4:busy`.
    #[arg(long, default_value_t = Limits::default().max_held)]
    max_held: usize,

    /// `6:` requests one source address (IP and port) may have held at once.
    #[arg(long, default_value_t = Limits::default().max_held_per_source)]
    max_held_per_source: usize,

    /// Validated addresses remembered at once.
    #[arg(long, default_value_t = Limits::default().max_validated)]
    max_validated: usize,

    /// Remember the token of every `5:` publish for at least this long: a resend with the
    /// same token within it stores nothing and gets the same id.
    #[arg(long, default_value_t = Limits::default().tokens.window.into())]
    dedup_window: humantime::Duration,

    /// Publish tokens remembered at once (about 90 bytes each); past it the oldest are
    /// forgotten before their window ends, and counted.
    #[arg(long, default_value_t = Limits::default().tokens.max_tokens)]
    max_tokens: usize,

    /// Datagrams per second one source address may sustain; more are dropped without a
    /// reply (0 turns rate limiting off).
    #[arg(long, default_value_t = RateLimit::default().rate)]
    rate_limit: f64,

    /// Datagrams one source address may send at once after being quiet.
    #[arg(long, default_value_t = RateLimit::default().burst)]
    rate_burst: f64,

    /// Replies to malformed input (codes 1 and 3) one destination may be sent per second;
    /// more are dropped, which ends any reflection loop with another server (0: off).
    #[arg(long, default_value_t = RateLimit::ERROR_REPLIES.rate)]
    error_reply_rate: f64,

    /// Replies to malformed input one destination may be sent at once.
    #[arg(long, default_value_t = RateLimit::ERROR_REPLIES.burst)]
    error_reply_burst: f64,

    /// Source addresses the rate limiter tracks at once.
    #[arg(long, default_value_t = RateLimit::default().max_sources)]
    rate_sources: usize,

    /// Serve Prometheus metrics at `http://ADDR/metrics` (off by default; keep ADDR
    /// private, e.g. `127.0.0.1:9477`).
    #[arg(long, value_name = "ADDR")]
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

    /// Receive loops sharing the socket (default: twice the number of cores).
    #[arg(long)]
    workers: Option<usize>,

    /// Log filter, e.g. `info` or `mboard_server=debug` (default: $RUST_LOG, else `info`).
    #[arg(long)]
    log_level: Option<String>,
}

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
            // `{:#}` puts the causes on the same line: `cannot bind …: Address in use`.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = match &args.log_level {
        Some(level) => EnvFilter::try_new(level).context("bad --log-level")?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    if args.in_memory {
        tracing::info!("board is kept in memory: it is lost when the server stops");
    }
    let config = config(&args);
    config.validate().context("invalid configuration")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let udp = UdpSocket::bind(args.listen)
            .await
            .with_context(|| format!("cannot bind {}", args.listen))?;
        let metrics = match args.metrics {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind metrics address {addr}"))?,
            ),
            None => None,
        };
        let listeners = mboard_server::Listeners { udp, metrics };
        mboard_server::run(listeners, config, shutdown).await?;
        Ok(())
    })
}

/// The server's configuration as the options give it.
fn config(args: &Args) -> Config {
    let defaults = Config::default();
    let store = if !args.nats.is_empty() {
        Store::Clustered(cluster(args))
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
    let default_bytes = (args.in_memory || !args.nats.is_empty()).then_some(MEMORY_RETAIN_BYTES);
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
        workers: args.workers.unwrap_or(defaults.workers),
        seed: None,
        retention,
    }
}

/// The clustered store's options.
fn cluster(args: &Args) -> ClusterConfig {
    let auth = match (&args.nats_user, &args.nats_password, &args.nats_token) {
        (Some(user), Some(password), _) => NatsAuth::UserPassword {
            user: user.clone(),
            password: Secret(password.clone()),
        },
        (_, _, Some(token)) => NatsAuth::Token(Secret(token.clone())),
        _ => NatsAuth::None,
    };
    ClusterConfig {
        servers: args.nats.clone(),
        stream: args.nats_stream.clone(),
        replicas: args.nats_replicas,
        auth,
        tls: NatsTls {
            require: args.nats_tls,
            ca: args.nats_ca.clone(),
            client: args.nats_cert.clone().zip(args.nats_key.clone()),
        },
        timeout: args.nats_timeout.into(),
        connect_timeout: args.nats_connect_timeout.into(),
        catch_up: args.nats_catch_up.into(),
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
    use clap::CommandFactory;

    use super::*;

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
        assert!(matches!(cluster.auth, NatsAuth::UserPassword { .. }));
        assert!(
            !format!("{cluster:?}").contains("s3cret"),
            "secrets stay out of logs"
        );
        for bad in [
            &["--nats", "nats://x", "--in-memory"][..],
            &["--nats", "nats://x", "--data-dir", "d"],
            &["--nats-stream", "s"],
            &["--nats", "nats://x", "--nats-user", "u"],
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
}

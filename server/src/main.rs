//! `mboard-server`: serves the message board over UDP.

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use tokio::net::{TcpListener, UdpSocket};

mod cli;

use cli::args::{Args, RECV_BUFFER};
use cli::config::checked_config;

// glibc's allocator keeps what a crowd of sessions freed: after three rounds of 100,000
// expired sessions the server still held 250 MiB. jemalloc returns freed pages to the
// system (docs/BENCHMARKS.md, "Memory returned").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The blocking pool's threads, where downloads are built (the board read and copied into
/// the reply; the journal's reads may wait for the disk). tokio's default of 512 let a
/// flood of small downloads keep that many threads, each stack resident: tens of MiB
/// beyond the session memory. Sixteen builds at once keep a disk busy; more wait their
/// turn, each already holding its place in the session memory.
const BLOCKING_THREADS: usize = 16;

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
        .max_blocking_threads(BLOCKING_THREADS)
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
            receive_buffer(&udp, args.recv_buffer)?;
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

/// Asks for a receive buffer of `asked` bytes on the board's socket and says what was
/// granted.
fn receive_buffer(udp: &UdpSocket, asked: usize) -> anyhow::Result<()> {
    let granted =
        mboard_server::set_receive_buffer(udp, asked).context("cannot set the receive buffer")?;
    if granted < asked && asked == RECV_BUFFER {
        // Most systems cap buffers at 208 KiB unless raised; not the operator's doing.
        tracing::info!(
            asked,
            granted,
            "receive buffer capped by the system (raise net.core.rmem_max to take floods and crowds of followers)"
        );
    } else if granted < asked {
        tracing::warn!(
            asked,
            granted,
            "receive buffer capped by the system (raise net.core.rmem_max)"
        );
    } else {
        tracing::info!(bytes = granted, "receive buffer");
    }
    Ok(())
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

//! `mboard-bench`: throughput and latency of an mboard server, against a bare UDP echo.

// Printing the report is what this tool is for.
#![allow(clippy::print_stdout)]

mod datagram;
mod echo;
mod follow;
mod jetstream;
mod lag;
mod redis_follow;
mod report;
mod run;
mod scenario;
mod session;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::report::Report;
use crate::scenario::{Follow, Load, Scenario};

/// Closed-loop load on an mboard server: requests/s and latency percentiles.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Server address (not used by `echo`, which starts its own). A comma-separated list
    /// spreads the datagram clients over several servers of one clustered board; `lag`
    /// takes two: the publisher's, then the reader's.
    #[arg(long, env = "MBOARD_SERVER", default_value = "127.0.0.1:7777")]
    server: String,
    /// Concurrent closed-loop clients, each on its own socket.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time first.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Resend a request after this long without a reply.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    resend: Duration,
    /// Also run the echo ceiling, right after, and print the ratio.
    #[arg(long)]
    vs_echo: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    scenario: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A bare UDP echo server started in-process: the ceiling.
    Echo,
    /// `3:<id>` over existing messages (seeds 1,000 if the board is empty).
    Get,
    /// `4:<n>`.
    Last {
        /// Messages per request.
        #[arg(short, default_value_t = 10)]
        n: u64,
    },
    /// Single-datagram `1:<text>` (at-least-once, the classic path).
    Publish {
        /// Text bytes.
        #[arg(long, default_value = "16", value_parser = parse_size)]
        size: usize,
    },
    /// Single-datagram `5:<token>:<text>` (exactly once): a new token per publish, the same
    /// one in its resends.
    PublishOnce {
        /// Text bytes.
        #[arg(long, default_value = "16", value_parser = parse_size)]
        size: usize,
    },
    /// Publishers as in `publish` (or `publish-once`) at full rate, while followers each
    /// hold a `6:<last>:<max>:<wait>` and re-arm it with their newest id when answered.
    /// Reports publish throughput, and the time from a publish's reply to a follower's
    /// first read of it.
    Follow {
        /// Publish with `5:` and a token each, as `publish-once` does.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// The follower scenario against the peer, Redis streams: publishers `XADD` at full rate
    /// to a stream made for the run (deleted after), while followers each loop on `XREAD
    /// BLOCK <wait> STREAMS <stream> <last id seen>` on a connection of their own (each is
    /// an open file: 1,000 followers need `ulimit -n` above 1,100). Reports what `follow`
    /// does.
    RedisFollow {
        /// The Redis server.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// The clustered store's baseline: JetStream's own publishes from `async-nats`, at the
    /// same concurrency, on a stream created for the run (and deleted after).
    Jetstream {
        /// NATS URLs, comma-separated.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        /// The stream's replicas.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// Text bytes.
        #[arg(long, default_value = "16", value_parser = parse_size)]
        size: usize,
        /// Publish to this existing stream (made by `place`, taking `<name>.messages`)
        /// instead of one created for the run; it is kept.
        #[arg(long)]
        stream: Option<String>,
        /// Refuse to measure unless the stream's leader is this NATS node (its
        /// `server_name`), before and after the run; prints where the stream is.
        #[arg(long)]
        leader: Option<String>,
        /// Refuse to measure unless the connection goes to this NATS node.
        #[arg(long)]
        via: Option<String>,
    },
    /// The clustered store's floor: serves a bare UDP-to-JetStream relay in place of an
    /// mboard server, until SIGINT or SIGTERM. It answers `5:<token>:<text>` with `0:<id>`
    /// once JetStream acknowledged it, on a stream of its own (deleted on the way out), and
    /// refuses anything else. Point `publish-once` at it; it prints
    /// `relaying addr=<ip:port> stream=<name>` on stderr when ready.
    Relay {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:7777")]
        listen: SocketAddr,
        /// NATS URLs, comma-separated.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        /// The stream's replicas.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// Receive loops sharing the socket (default, as mboard-server's `--workers`: twice
        /// the machine's cores).
        #[arg(long)]
        loops: Option<usize>,
        /// Also drain a consumer of the stream, as each mboard server's replica must:
        /// `push` (alone: `--feed`) an ordered push consumer, one delivery per message, as
        /// mboard-server's; `pull` a pull consumer fetched in batches.
        #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "push")]
        feed: Option<jetstream::relay::Feed>,
    },
    /// Creates a stream as mboard-server creates its board's (at its default options), if
    /// it does not exist, and moves its leader to one NATS node: R1 by the node's
    /// `server_tags` (`node:<name>`), R3 by stepping the leader down until it lands there.
    /// Prints where the stream and its consumers are.
    Place {
        /// NATS URLs, comma-separated.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        /// The stream's name.
        #[arg(long)]
        stream: String,
        /// The stream's replicas, when created.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// The NATS node (`server_name`) to lead it.
        #[arg(long)]
        leader: String,
        /// Only look: refuse (exit non-zero) if the leader is elsewhere or the stream is
        /// missing.
        #[arg(long)]
        check: bool,
        /// With `--check`: also refuse unless the stream has exactly this many consumers,
        /// each on the stream's leader.
        #[arg(long, requires = "check")]
        consumers: Option<usize>,
    },
    /// Replication lag of a clustered board: publish on the first `--server`, time until a
    /// `6:` held on the second wakes (p50/p99 over `--duration`).
    Lag,
    /// Exactly-once publish through an upload session, as the CLI does.
    PublishSession {
        /// Text bytes.
        #[arg(long, default_value = "16", value_parser = parse_size)]
        size: usize,
    },
    /// One large publish per operation: MB/s and time.
    Upload {
        /// Text bytes (`16MiB`).
        #[arg(long, value_parser = parse_size)]
        size: usize,
    },
    /// One large get per operation: MB/s and time.
    Download {
        /// Text bytes (`16MiB`).
        #[arg(long, value_parser = parse_size)]
        size: usize,
    },
}

/// The follower scenario's shape, for mboard (`follow`) and Redis (`redis-follow`) alike.
#[derive(Debug, Clone, clap::Args)]
struct FollowArgs {
    /// Text bytes.
    #[arg(long, default_value = "16", value_parser = parse_size)]
    size: usize,
    /// Followers, each with one request outstanding (a `6:`, or an `XREAD BLOCK` on a
    /// connection of its own); 0: publishers alone, the baseline.
    #[arg(long, default_value_t = 1_000)]
    followers: usize,
    /// Messages per reply: `<max>` of each `6:` (replies too large for a datagram come as
    /// offers, which followers fetch), `COUNT` of each `XREAD`; 0 = all after the last seen.
    #[arg(long, default_value_t = 0)]
    max: u64,
    /// `<wait>` of each `6:`, `BLOCK` of each `XREAD`.
    #[arg(long, default_value = "25s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// Publishes per second, all publishers together, instead of full rate: the follower
    /// latency of a board its followers keep up with.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
}

impl FollowArgs {
    /// The scenario, with `5:` publishers if `once`.
    fn spec(&self, once: bool) -> Follow {
        Follow {
            size: self.size,
            once,
            followers: self.followers,
            max: self.max,
            wait_ms: millis(self.wait),
            rate: self.rate,
            start: 0,
        }
    }
}

/// `16MiB`, `64KiB`, `1MB`, `1400`.
fn parse_size(s: &str) -> Result<usize, String> {
    let digits = s.chars().take_while(char::is_ascii_digit).count();
    let (n, unit) = s.split_at(digits);
    let n: usize = n.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        _ => return Err(format!("bad size unit in {s:?} (use B, KB, KiB, MB, MiB)")),
    };
    Ok(n * mult)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let scenario = match args.scenario {
        Command::Echo => Scenario::Echo,
        Command::Get => Scenario::Get {
            messages: 1_000,
            first: 0,
        },
        Command::Last { n } => Scenario::Last { n },
        Command::Publish { size } => Scenario::Publish { size },
        Command::PublishOnce { size } => Scenario::PublishOnce { size },
        Command::Follow { once, ref follow } => Scenario::Follow(follow.spec(once)),
        Command::PublishSession { size } => Scenario::PublishSession { size },
        Command::Upload { size } => Scenario::Upload { size },
        Command::Download { size } => Scenario::Download { size, id: 0 },
        Command::Jetstream {
            ref nats,
            replicas,
            size,
            ref stream,
            ref leader,
            ref via,
        } => {
            let target = jetstream::Target {
                stream: stream.clone(),
                leader: leader.clone(),
                via: via.clone(),
            };
            return jetstream(&args, nats, replicas, &target, size);
        }
        Command::Place {
            ref nats,
            ref stream,
            replicas,
            ref leader,
            check,
            consumers,
        } => return jetstream::place(nats, stream, replicas, leader, check, consumers),
        Command::Relay {
            listen,
            ref nats,
            replicas,
            loops,
            feed,
        } => {
            return jetstream::relay::serve(&jetstream::relay::Relay {
                listen,
                nats: nats.clone(),
                replicas,
                loops: loops.unwrap_or_else(|| 2 * cores()),
                feed,
            });
        }
        Command::Lag => return lag(&args),
        Command::RedisFollow {
            ref redis,
            ref follow,
        } => return redis_follow(&args, redis, &follow.spec(false)),
    };
    closed_loop(&args, &scenario)
}

/// Runs a closed-loop scenario (seeding the board first) and prints its report, beside
/// the echo ceiling's when asked.
fn closed_loop(args: &Args, scenario: &Scenario) -> Result<()> {
    let report = if *scenario == Scenario::Echo {
        echo(args)?
    } else {
        let load = args.load(args.servers()?);
        let scenario = run::seed(&load, scenario).context("seed the board")?;
        run::run(&load, &scenario)?
    };
    let ceiling = if args.vs_echo && *scenario != Scenario::Echo {
        Some(echo(args)?)
    } else {
        None
    };
    let out = match (&ceiling, args.json) {
        (None, true) => report.json(),
        (None, false) => report.line(),
        (Some(echo), true) => report::compare_json(&report, echo),
        (Some(echo), false) => report::compare_lines(&report, echo),
    };
    println!("{out}");
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The follower scenario against Redis: a loop of its own, against Redis rather than a
/// server.
fn redis_follow(args: &Args, url: &str, spec: &Follow) -> Result<()> {
    peer(args, |load| redis_follow::run(url, load, spec))
}

/// JetStream's own publish rate: a loop of its own, against NATS rather than a server.
fn jetstream(
    args: &Args,
    nats: &str,
    replicas: usize,
    target: &jetstream::Target,
    size: usize,
) -> Result<()> {
    peer(args, |load| {
        jetstream::run(nats, replicas, target, load, size)
    })
}

/// Runs a peer's own loop under the common load options (it has no mboard server to
/// address) and prints its report.
fn peer(args: &Args, run: impl FnOnce(&Load) -> Result<Report>) -> Result<()> {
    let report = run(&args.load(vec![SocketAddr::from(([127, 0, 0, 1], 0))]))?;
    println!(
        "{}",
        if args.json {
            report.json()
        } else {
            report.line()
        }
    );
    Ok(())
}

/// Replication lag between two servers of one clustered board: percentiles, not a
/// throughput report.
fn lag(args: &Args) -> Result<()> {
    let servers = args.servers()?;
    let [publisher, reader] = servers[..] else {
        anyhow::bail!("lag needs two servers: --server PUBLISHER,READER");
    };
    let lag = lag::run(publisher, reader, args.duration)?;
    if args.json {
        println!(
            "{{\"scenario\":\"lag\",\"samples\":{},\"p50_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1}}}",
            lag.samples, lag.p50_us, lag.p99_us, lag.max_us
        );
    } else {
        println!(
            "lag              samples={:<5} p50 {:>8.1} us  p99 {:>8.1} us  max {:>8.1} us",
            lag.samples, lag.p50_us, lag.p99_us, lag.max_us
        );
    }
    Ok(())
}

impl Args {
    /// `--server`, resolved: a comma-separated list.
    fn servers(&self) -> Result<Vec<SocketAddr>> {
        self.server
            .split(',')
            .map(|s| Ok(mboard_client::resolve(s.trim())?))
            .collect()
    }

    /// The load the options describe, against `servers` (the first for seeding and
    /// sessions).
    fn load(&self, servers: Vec<SocketAddr>) -> Load {
        Load {
            server: servers[0],
            servers,
            clients: self.clients,
            duration: self.duration,
            warmup: self.warmup,
            resend: self.resend,
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The same load against an echo server started for it.
fn echo(args: &Args) -> Result<Report> {
    let addr = echo::start(cores()).context("start echo server")?;
    Ok(run::run(&args.load(vec![addr]), &Scenario::Echo)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("mboard-bench").chain(words.iter().copied()))
    }

    #[test]
    fn redis_follow_defaults_mirror_follow() {
        let args = parse(&["redis-follow"]).expect("parses");
        let Command::RedisFollow { redis, follow } = args.scenario else {
            panic!("not redis-follow: {:?}", args.scenario);
        };
        assert_eq!(redis, "redis://127.0.0.1:6379");
        let FollowArgs {
            size,
            followers,
            max,
            wait,
            rate,
        } = follow;
        assert_eq!((size, followers, max, rate), (16, 1_000, 0, None));
        assert_eq!(millis(wait), 25_000);
        assert_eq!(args.clients, 32);
    }

    #[test]
    fn redis_follow_takes_its_options_and_refuses_bad_ones() {
        let args = parse(&[
            "--duration",
            "5s",
            "redis-follow",
            "--redis",
            "redis://127.0.0.1:6391",
            "--followers",
            "0",
            "--max",
            "10",
            "--wait",
            "2s",
            "--rate",
            "200",
        ])
        .expect("parses");
        assert_eq!(args.duration, Duration::from_secs(5));
        let Command::RedisFollow { redis, follow } = args.scenario else {
            panic!("not redis-follow: {:?}", args.scenario);
        };
        let FollowArgs {
            followers,
            max,
            wait,
            rate,
            ..
        } = follow;
        assert_eq!(redis, "redis://127.0.0.1:6391");
        assert_eq!(
            (followers, max, millis(wait), rate),
            (0, 10, 2_000, Some(200))
        );
        for bad in [
            &["redis-follow", "--rate", "0"][..],
            &["redis-follow", "--followers", "-1"],
            &["redis-follow", "--wait", "soon"],
            &["redis-follow", "--size", "16XB"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}

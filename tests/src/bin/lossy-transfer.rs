//! Times a large publish and get through the client library, optionally over a lossy proxy.
//!
//! `cargo run --release -p mboard-tests --bin lossy-transfer -- --size 16MiB --loss 0.1`

// Printing the figures is what this tool is for.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use mboard_client::{Client, ClientConfig};
use mboard_server::Limits;
use mboard_tests::TestServer;
use mboard_tests::proxy::{Faults, Proxy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Times a large publish and get, directly or through a fault-injecting proxy.
#[derive(Debug, Parser)]
struct Args {
    /// Bytes to publish (`16MiB`, `500KB`, or a number).
    #[arg(long, default_value = "16MiB")]
    size: String,
    /// Loss probability each way; 0 with `--proxy` still relays through the proxy.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Relay through the proxy even without loss (to separate proxy cost from loss cost).
    #[arg(long)]
    proxy: bool,
    /// Runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Client window.
    #[arg(long, default_value_t = ClientConfig::default().window)]
    window: usize,
}

fn parse_size(s: &str) -> Result<usize> {
    let (digits, unit): (String, String) = s.chars().partition(|c| c.is_ascii_digit());
    let n: usize = digits.parse().context("size")?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "kib" => 1 << 10,
        "mb" | "m" => 1_000_000,
        "mib" => 1 << 20,
        other => anyhow::bail!("unknown unit {other}"),
    };
    Ok(n * mult)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let size = parse_size(&args.size)?;
    let server = TestServer::builder()
        .limits(Limits {
            max_request_size: size as u64 + 2,
            ..Limits::default()
        })
        .start();
    let faults = Faults {
        loss: args.loss,
        ..Faults::NONE
    };
    let proxy =
        (args.proxy || args.loss > 0.0).then(|| Proxy::start(server.addr, faults, faults, 9));
    let target = proxy.as_ref().map_or(server.addr, |p| p.addr);
    let mut rng = StdRng::seed_from_u64(1);
    let text: Vec<u8> = (0..size).map(|_| rng.random()).collect();
    let config = ClientConfig {
        timeout: Duration::from_secs(600),
        window: args.window,
        ..ClientConfig::default()
    };
    let (mut ups, mut downs) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let mut client = Client::new(target, config.clone())?;
        let t = Instant::now();
        let id = client.publish(&text)?;
        ups.push(t.elapsed());
        let t = Instant::now();
        let entry = client.get(id)?;
        downs.push(t.elapsed());
        anyhow::ensure!(entry.text == text, "read back differs");
    }
    let mbps = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
    let (up, down) = (median(ups), median(downs));
    println!(
        "size={} loss={:.0}% proxy={} window={} runs={}: publish {:.0} ms ({:.0} MB/s), get {:.0} ms ({:.0} MB/s)",
        args.size,
        args.loss * 100.0,
        proxy.is_some(),
        args.window,
        args.runs,
        up.as_secs_f64() * 1e3,
        mbps(up),
        down.as_secs_f64() * 1e3,
        mbps(down)
    );
    Ok(())
}

//! A short smoke run of `mboard-bench`: every scenario reports sane figures as JSON.

use std::process::Command;

use mboard_tests::redis::RedisServer;
use mboard_tests::{TestServer, binary, gate, vacant_addr};

pub(crate) fn bench(server: Option<std::net::SocketAddr>, args: &[&str]) -> String {
    let mut cmd = Command::new(binary("mboard-bench"));
    if let Some(server) = server {
        cmd.args(["--server", &server.to_string()]);
    }
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// A short run of `mboard-bench` with `args` after the common ones, whatever its outcome
/// (errors in one line, without a backtrace).
pub(crate) fn run(mut cmd: Command, args: &[&str]) -> std::process::Output {
    cmd.args([
        "--clients",
        "4",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--json",
    ])
    .args(args)
    .env_remove("MBOARD_SERVER")
    .env("RUST_BACKTRACE", "0")
    .env("RUST_LIB_BACKTRACE", "0")
    .output()
    .expect("run mboard-bench")
}

/// The number after `"key":` in a flat JSON object.
pub(crate) fn field(json: &str, key: &str) -> f64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {json}"));
    let rest = &json[at + key.len() + 3..];
    let end = rest.find([',', '}']).expect("end of number");
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} in {json}"))
}

#[test]
fn every_scenario_reports_operations_without_errors() {
    // mboard-bench is a load generator.
    let _gate = gate::load();
    let server = TestServer::builder().start();
    for args in [
        &["get"][..],
        &["last", "-n", "5"],
        &["publish", "--size", "100"],
        &["publish-once", "--size", "100"],
        &["publish-session", "--size", "3000"],
        &["upload", "--size", "64KiB"],
        &["download", "--size", "64KiB"],
    ] {
        let json = bench(Some(server.addr), args);
        assert!(
            json.starts_with(&format!("{{\"scenario\":\"{}\"", args[0])),
            "{json}"
        );
        assert!(field(&json, "operations") > 0.0, "{json}");
        assert_eq!(field(&json, "errors"), 0.0, "{json}");
        assert!(
            field(&json, "p50_us") > 0.0 && field(&json, "p99_us") >= field(&json, "p50_us"),
            "{json}"
        );
        if args[0] == "upload" || args[0] == "download" {
            assert!(field(&json, "mb_per_s") > 0.0, "{json}");
        }
    }
}

/// Checks a `follow` run's report: publishes made, followers read every sampled id, and
/// the latency from publish reply to follower read is there. Returns the JSON.
fn follow(server: std::net::SocketAddr, args: &[&str]) -> String {
    let json = bench(Some(server), &[&["follow"][..], args].concat());
    assert!(json.starts_with("{\"scenario\":\"follow\""), "{json}");
    assert!(field(&json, "operations") > 0.0, "{json}");
    assert_eq!(field(&json, "errors"), 0.0, "{json}");
    assert_eq!(field(&json, "follow_errors"), 0.0, "{json}");
    followers_saw_everything(&json);
    json
}

/// The followers' side of a small run: sampled publishes timed, all of them read.
fn followers_saw_everything(json: &str) {
    assert!(field(json, "follow_samples") > 0.0, "{json}");
    // Followers drain after the publishers stop: a small run leaves nothing unread.
    assert_eq!(field(json, "follow_unseen"), 0.0, "{json}");
    assert!(
        field(json, "follow_p99_us") >= field(json, "follow_p50_us"),
        "{json}"
    );
    assert!(field(json, "follow_messages_per_s") > 0.0, "{json}");
}

#[test]
fn follow_reports_publishes_and_follower_latency() {
    // mboard-bench is a load generator.
    let _gate = gate::load();
    let server = TestServer::builder().start();
    let json = follow(server.addr, &["--followers", "20", "--max", "8"]);
    assert_eq!(field(&json, "followers"), 20.0, "{json}");
    assert_eq!(field(&json, "follow_offers"), 0.0, "{json}");
    // Exactly-once publishers, paced: the followers keep up.
    follow(
        server.addr,
        &["--followers", "20", "--once", "--rate", "2000"],
    );
    // The baseline: the same publishers with nobody following.
    let json = bench(Some(server.addr), &["follow", "--followers", "0"]);
    assert!(field(&json, "operations") > 0.0, "{json}");
    assert_eq!(field(&json, "follow_samples"), 0.0, "{json}");
}

#[test]
fn followers_fetch_offers_and_wait_out_busy() {
    // mboard-bench is a load generator.
    let _gate = gate::load();
    // Replies of more than one message do not fit in a datagram, and only a few requests
    // may be held at once.
    let server = TestServer::builder()
        .limits(mboard_server::Limits {
            max_datagram: 128,
            max_held: 4,
            ..mboard_server::Limits::default()
        })
        .start();
    let json = follow(server.addr, &["--followers", "12", "--rate", "500"]);
    assert!(field(&json, "follow_offers") > 0.0, "{json}");
    assert!(field(&json, "follow_busy") > 0.0, "{json}");
}

#[test]
fn echo_and_the_comparison_with_it() {
    // mboard-bench is a load generator.
    let _gate = gate::load();
    let json = bench(None, &["echo"]);
    assert!(field(&json, "rate") > 0.0, "{json}");
    let server = TestServer::builder().start();
    let json = bench(Some(server.addr), &["--vs-echo", "get"]);
    assert!(json.starts_with("{\"run\":{\"scenario\":\"get\""), "{json}");
    assert!(json.contains("\"echo\":{\"scenario\":\"echo\""), "{json}");
    assert!(field(&json, "ratio") > 0.0, "{json}");
}

#[test]
fn an_absent_server_is_an_error_not_a_zero() {
    let _gate = gate::plain();
    let free = vacant_addr();
    let out = Command::new(binary("mboard-bench"))
        .args(["--server", &free.to_string(), "--duration", "100ms", "get"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("no reply from {free}")));
}

#[test]
fn a_run_whose_operations_fail_says_why() {
    // mboard-bench is a load generator.
    let _gate = gate::load();
    let server = TestServer::builder()
        .limits(mboard_server::Limits {
            max_request_size: 10_000,
            ..mboard_server::Limits::default()
        })
        .start();
    let json = bench(Some(server.addr), &["upload", "--size", "20000"]);
    assert_eq!(field(&json, "operations"), 0.0, "{json}");
    assert!(field(&json, "errors") > 0.0, "{json}");
    assert!(
        json.contains(
            "\"first_error\":\"text too large: 20000 bytes, the server takes at most 9961\""
        ),
        "{json}"
    );
}

/// Checks a `redis-follow` run's report as [`follow`] checks mboard's. Returns the JSON.
fn redis_follow(redis: &RedisServer, args: &[&str]) -> String {
    let json = bench(
        None,
        &[&["redis-follow", "--redis", &redis.url()][..], args].concat(),
    );
    assert!(json.starts_with("{\"scenario\":\"redis-follow\""), "{json}");
    assert!(field(&json, "operations") > 0.0, "{json}");
    assert_eq!(field(&json, "errors"), 0.0, "{json}");
    assert_eq!(field(&json, "follow_errors"), 0.0, "{json}");
    assert!(!json.contains("first_error"), "{json}");
    json
}

#[test]
fn redis_follow_reports_publishes_and_follower_latency_against_a_real_redis() {
    // mboard-bench is a load generator.
    let _gate = gate::load();
    let redis = RedisServer::start();
    for args in [
        &["--followers", "20"][..],
        &["--followers", "20", "--max", "8", "--wait", "2s"],
        &["--followers", "20", "--rate", "2000"],
    ] {
        let json = redis_follow(&redis, args);
        assert_eq!(field(&json, "followers"), 20.0, "{json}");
        followers_saw_everything(&json);
        assert!(field(&json, "follow_replies_per_s") > 0.0, "{json}");
    }
    // The baseline: the same publishers with nobody following.
    let json = redis_follow(&redis, &["--followers", "0"]);
    assert_eq!(field(&json, "follow_samples"), 0.0, "{json}");
}

#[test]
fn an_absent_redis_is_an_error_not_a_zero() {
    let _gate = gate::plain();
    let free = vacant_addr();
    let out = Command::new(binary("mboard-bench"))
        .args(["--duration", "100ms", "redis-follow", "--redis"])
        .arg(format!("redis://{free}"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("connect to Redis at redis://{free}")),
        "{stderr}"
    );
    let out = Command::new(binary("mboard-bench"))
        .args(["redis-follow", "--redis", "redis://127.0.0.1:6379/3"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without user, password or database"),
        "{stderr}"
    );
}

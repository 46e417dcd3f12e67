//! `--metrics`: the Prometheus endpoint reports what the server did, exactly.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use mboard_server::{Fsync, JournalConfig, Limits, RateLimit, Store};
use mboard_tests::{DataDir, Peer, Scrape, ServerProcess, TestServer, gate, http, scrape};

/// Scrapes until `check` passes: a reply can reach the peer a moment before the server
/// has counted its bytes as sent.
pub(super) fn eventually(
    addr: std::net::SocketAddr,
    check: impl Fn(&Scrape) -> Result<()>,
) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = scrape(addr).expect("scrape");
        match check(&s) {
            Ok(()) => return s,
            Err(e) if Instant::now() > deadline => panic!("{e}\n{}", s.body),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn expect(s: &Scrape, series: &str, want: f64) -> Result<()> {
    match s.value(series) {
        Some(v) if v == want => Ok(()),
        other => bail!("{series}: want {want}, have {other:?}"),
    }
}

fn requests(kind: &str, reply: &str) -> String {
    format!("mboard_requests_total{{type=\"{kind}\",reply=\"{reply}\"}}")
}

#[test]
fn requests_are_counted_by_type_and_reply_and_bytes_exactly() {
    let _gate = gate::plain();
    let server = TestServer::builder().metrics().start();
    let metrics = server.metrics.expect("metrics endpoint");
    let peer = Peer::new(server.addr);

    let s = scrape(metrics).expect("scrape");
    assert_eq!(s.value("mboard_sessions"), Some(0.0));
    assert_eq!(s.value("mboard_publishes_total"), Some(0.0));
    assert!(!s.body.contains("mboard_requests_total{"), "{}", s.body);

    let exchange: [(&[u8], &str); 6] = [
        (b"1:hello", "0:0"),
        (b"1:world", "0:1"),
        (b"3:9", "2:no message 9"),
        (b"9:what", "3:unknown request 9"),
        (b"2:x", "1:bad number"),
        (b"a:10:5", ""),
    ];
    let (mut sent, mut received) = (0, 0);
    for (request, reply) in exchange {
        let answer = peer.ask(request);
        if !reply.is_empty() {
            assert_eq!(String::from_utf8_lossy(&answer), reply);
        }
        sent += request.len();
        received += answer.len();
    }
    eventually(metrics, |s| {
        expect(s, &requests("publish", "0"), 2.0)?;
        expect(s, &requests("get", "2"), 1.0)?;
        expect(s, &requests("other", "3"), 1.0)?;
        expect(s, &requests("ids", "1"), 1.0)?;
        expect(s, &requests("open", "0"), 1.0)?;
        expect(s, "mboard_received_bytes_total", sent as f64)?;
        expect(s, "mboard_sent_bytes_total", received as f64)?;
        // One request at a time: each system call takes or gives one datagram.
        for op in ["receive", "send"] {
            expect(s, &format!("mboard_socket_calls_total{{op=\"{op}\"}}"), 6.0)?;
            expect(
                s,
                &format!("mboard_socket_datagrams_total{{op=\"{op}\"}}"),
                6.0,
            )?;
        }
        expect(s, "mboard_publishes_total", 2.0)?;
        expect(s, "mboard_messages", 2.0)?;
        expect(s, "mboard_sessions", 1.0)?;
        expect(
            s,
            "mboard_session_memory_limit_bytes",
            256.0 * 1024.0 * 1024.0,
        )?;
        expect(
            s,
            "mboard_datagrams_dropped_total{reason=\"rate_limit\"}",
            0.0,
        )?;
        // A server that keeps up sheds nothing.
        expect(
            s,
            "mboard_datagrams_dropped_total{reason=\"overload\"}",
            0.0,
        )
    });
    let s = scrape(metrics).expect("scrape");
    // The open session reserves nothing until its first block.
    assert_eq!(s.value("mboard_session_reserved_bytes"), Some(0.0));
    assert_eq!(
        s.body.matches("mboard_requests_total{").count(),
        5,
        "only pairs that happened are reported:\n{}",
        s.body
    );
}

#[test]
fn the_endpoint_speaks_openmetrics_at_metrics_only() {
    let _gate = gate::plain();
    let server = TestServer::builder().metrics().start();
    let metrics = server.metrics.expect("metrics endpoint");

    let s = scrape(metrics).expect("scrape");
    assert_eq!(
        s.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(s.body.ends_with("# EOF\n"), "{}", s.body);
    assert!(s.body.contains("# TYPE mboard_datagrams_dropped counter\n"));

    let head = http(metrics, "HEAD", "/metrics").expect("head");
    assert!(head.status.contains(" 200 "), "{}", head.status);
    assert!(head.body.is_empty());

    let other = http(metrics, "GET", "/").expect("get /");
    assert!(other.status.contains(" 404 "), "{}", other.status);

    let post = http(metrics, "POST", "/metrics").expect("post");
    assert!(post.status.contains(" 405 "), "{}", post.status);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}

#[test]
fn rate_limited_datagrams_are_counted_as_dropped() {
    let _gate = gate::plain();
    let server = TestServer::builder()
        .rate_limit(RateLimit {
            rate: 0.001,
            burst: 5.0,
            max_sources: 16,
        })
        .metrics()
        .start();
    let metrics = server.metrics.expect("metrics endpoint");
    let peer = Peer::new(server.addr);
    for _ in 0..20 {
        peer.send(b"4:1");
    }
    for _ in 0..5 {
        assert!(peer.recv_within(Duration::from_secs(5)).is_some());
    }
    eventually(metrics, |s| {
        expect(
            s,
            "mboard_datagrams_dropped_total{reason=\"rate_limit\"}",
            15.0,
        )?;
        expect(s, &requests("last", "0"), 5.0)?;
        expect(s, "mboard_rate_limit_sources", 1.0)
    });
}

#[test]
fn the_journal_reports_its_commits_and_fsyncs() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    let store = Store::Journal(JournalConfig {
        fsync: Fsync::Always,
        ..JournalConfig::new(dir.path().to_owned())
    });
    let server = TestServer::builder().store(store).metrics().start();
    let metrics = server.metrics.expect("metrics endpoint");
    let peer = Peer::new(server.addr);
    // One at a time, so each publish is a group commit of its own.
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        assert_eq!(peer.ask_str(format!("1:{text}")), format!("0:{i}"));
    }
    let s = eventually(metrics, |s| {
        expect(s, "mboard_journal_commits_total", 3.0)?;
        expect(s, "mboard_journal_records_total", 3.0)?;
        expect(s, "mboard_journal_fsync_seconds_count", 3.0)?;
        expect(s, "mboard_publishes_total", 3.0)?;
        expect(s, "mboard_messages", 3.0)
    });
    let file = std::fs::metadata(dir.segment(0)).expect("segment").len();
    assert_eq!(s.value("mboard_journal_bytes"), Some(file as f64));
    assert_eq!(s.value("mboard_journal_segments"), Some(1.0));
    assert!(
        s.body
            .contains("mboard_journal_fsync_seconds_bucket{le=\"+Inf\"} 3")
    );
}

#[test]
fn the_binary_serves_metrics_only_when_asked() {
    let _gate = gate::plain();
    let plain = ServerProcess::must_start(&["--in-memory"]);
    let with = ServerProcess::must_start(&["--in-memory", "--metrics", "127.0.0.1:0"]);
    let addr = with
        .metrics_addr()
        .unwrap_or_else(|| panic!("no metrics address logged:\n{}", with.log()));
    assert_eq!(Peer::new(with.addr).ask_str("1:hi"), "0:0");
    eventually(addr, |s| expect(s, "mboard_publishes_total", 1.0));
    assert_eq!(Peer::new(plain.addr).ask_str("1:hi"), "0:0");
    assert!(plain.metrics_addr().is_none(), "{}", plain.log());
    assert!(!plain.log().contains("serving metrics"), "{}", plain.log());

    // A metrics address that cannot be bound is a start-up error, not a silent omission.
    let taken = addr.to_string();
    match ServerProcess::start(&["--in-memory", "--metrics", &taken]) {
        Ok(_) => panic!("started with its metrics address taken"),
        Err((code, log)) => {
            assert_eq!(code, Some(1), "{log}");
            assert!(log.contains("cannot bind metrics address"), "{log}");
        }
    }
}

#[test]
fn unfetched_downloads_give_way_to_new_requests_and_are_counted() {
    // Within and past the claim grace.
    let _gate = gate::timed();
    // Room for one large reply at a time.
    let limits = Limits {
        max_session_memory: 6_000,
        ..Limits::default()
    };
    let server = TestServer::builder().limits(limits).metrics().start();
    let metrics = server.metrics.expect("metrics endpoint");
    let publisher = Peer::new(server.addr);
    let text = "m".repeat(1_300);
    for i in 0..3 {
        assert_eq!(publisher.ask_str(format!("1:{text}")), format!("0:{i}"));
    }
    // `4:0` is about 4 KB: an offer. Asked and abandoned, as a spoofed request would be.
    let abandoner = Peer::new(server.addr);
    assert!(abandoner.ask_str("4:0").starts_with("d:"));
    let client = Peer::new(server.addr);
    assert_eq!(client.ask_str("4:0"), "4:busy", "within the claim grace");
    std::thread::sleep(Duration::from_millis(600));
    let offer = client.ask_str("4:0");
    assert!(offer.starts_with("d:"), "{offer}");
    eventually(metrics, |s| {
        expect(s, "mboard_sessions_evicted_total", 1.0)?;
        expect(s, "mboard_sessions", 1.0)?;
        expect(s, &requests("last", "4"), 1.0)?;
        expect(s, &requests("last", "offer"), 2.0)
    });
}

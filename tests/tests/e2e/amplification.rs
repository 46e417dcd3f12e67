//! Anti-amplification: an address that has not proved it receives our datagrams is sent at
//! most max(3 × its request, 64 bytes) per request.

use bytes::Bytes;
use mboard_protocol::{Expect, Response};
use mboard_server::Limits;
use mboard_tests::{Peer, TestServer, cli, gate};

/// A server that applies the rule to loopback, as it does to every other source by default.
fn strict() -> TestServer {
    TestServer::builder()
        .limits(Limits {
            amplification_loopback: true,
            ..Limits::default()
        })
        .start()
}

#[test]
// The measured figure is shown with `--nocapture`.
#[allow(clippy::print_stdout)]
fn every_request_type_stays_within_the_allowance() {
    let _gate = gate::plain();
    let server = strict();
    // Content to amplify: long texts, many messages.
    let seeder = Peer::new(server.addr);
    for i in 0..30 {
        seeder.ask(format!("1:message {i} {}", "x".repeat(i * 40)));
    }
    let sid = "3f2b8c1e-9a4d-4e6f-8b1a-2c3d4e5f6a7b";
    let requests: Vec<Vec<u8>> = [
        "1:hi",
        "2:0",
        "2:1",
        "3:0",
        "3:29",
        "3:99",
        "4:0",
        "4:1",
        "4:30",
        "x",
        "9:x",
        "0:",
        "2:-1",
        "a:1000:100",
        "a:99999999999:1",
        &format!("b:{sid}:0:x"),
        &format!("c:{sid}"),
        &format!("g:{sid}:0"),
        &format!("x:{sid}"),
        "c:NOT-A-SID",
    ]
    .iter()
    .map(|r| r.as_bytes().to_vec())
    .collect();
    let mut worst = (0.0f64, String::new());
    for request in &requests {
        // A fresh address each time: none of them is validated.
        let reply = Peer::new(server.addr).ask(request);
        let allowance = (3 * request.len()).max(64);
        let shown = String::from_utf8_lossy(request).into_owned();
        assert!(
            reply.len() <= allowance,
            "{shown} got {} bytes, allowed {allowance}",
            reply.len()
        );
        let ratio = reply.len() as f64 / request.len() as f64;
        if ratio > worst.0 {
            worst = (ratio, shown);
        }
    }
    // Recorded in docs/SECURITY.md; the bound that matters is the 64-byte floor above.
    println!(
        "worst ratio for an unvalidated address: {:.1} ({})",
        worst.0, worst.1
    );
    assert!(worst.0 < 32.0);
}

#[test]
fn fetching_an_offer_validates_the_address() {
    let _gate = gate::plain();
    let server = strict();
    let p = Peer::new(server.addr);
    assert_eq!(p.ask_str(format!("1:{}", "y".repeat(200))), "0:0");
    // 3 bytes asked, ~230 due: an offer instead.
    let reply = Response::parse(Bytes::from(p.ask("3:0")), Expect::Entry).expect("reply");
    let Response::Offer(offer) = reply else {
        panic!("expected an offer, got {reply:?}")
    };
    let whole = p.fetch(&offer, 0..offer.blocks()).expect("fetch");
    assert!(whole.ends_with(&[b'y'; 200]));
    // Having echoed our session id, the address now gets direct replies.
    let direct = p.ask_str("3:0");
    assert!(
        direct.starts_with("0:") && direct.ends_with(&"y".repeat(200)),
        "{direct}"
    );
    // Another port on the same host is another address, and is not validated.
    assert!(Peer::new(server.addr).ask_str("3:0").starts_with("d:"));
}

#[test]
fn loopback_is_exempt_by_default_and_factor_zero_turns_the_rule_off() {
    let _gate = gate::plain();
    for server in [
        TestServer::builder().start(),
        TestServer::builder()
            .limits(Limits {
                amplification_loopback: true,
                amplification_factor: 0,
                ..Limits::default()
            })
            .start(),
    ] {
        let p = Peer::new(server.addr);
        p.ask(format!("1:{}", "z".repeat(300)));
        assert!(p.ask_str("3:0").starts_with("0:"));
    }
}

#[test]
fn the_cli_works_unchanged_under_the_rule() {
    let _gate = gate::plain();
    let server = strict();
    let a = server.addr;
    for text in [
        "first message, long enough to exceed the allowance of a short request",
        "second",
    ] {
        let out = cli(a, &["publish", text], b"");
        assert_eq!(out.code, Some(0), "{}", out.stderr);
    }
    assert_eq!(
        cli(a, &["get", "0"], b"").out(),
        "first message, long enough to exceed the allowance of a short request"
    );
    assert_eq!(cli(a, &["ids"], b"").out(), "0\n1\n");
    let last = cli(a, &["last"], b"").out();
    assert_eq!(last.lines().count(), 2, "{last}");
    assert!(last.ends_with("  second\n"), "{last}");
    assert!(
        cli(a, &["--json", "get", "1"], b"")
            .out()
            .contains("\"text\":\"second\"")
    );
    let raw = cli(a, &["raw", "4:2"], b"");
    assert!(
        raw.out().starts_with("0:2:0:"),
        "raw follows the offer: {}",
        raw.out()
    );
}

//! Sessions over real sockets: large uploads and downloads, expiry, limits, garbage.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use mboard_protocol::{Expect, Response};
use mboard_server::Limits;
use mboard_tests::{Peer, ServerProcess, TestServer, binary, gate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn one_mib_upload_shuffled_with_duplicates_reads_back_identical() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let p = Peer::new(server.addr);
    let mut rng = StdRng::seed_from_u64(1);
    let mut pdu = b"1:".to_vec();
    pdu.extend((0..(1 << 20) - 2).map(|_| rng.random::<u8>()));
    // Every tenth block is sent twice.
    let upload = p
        .upload_shuffled(&pdu, 1_400, 10, &mut rng)
        .expect("upload");
    assert_eq!(upload.block_size, 1_400);
    assert_eq!(upload.commit, "0:0");
    assert_eq!(p.ask_str(format!("c:{}", upload.sid)), "0:0");
    assert_eq!(p.ask_str("2:0"), "0:0", "stored once");

    let Response::Offer(offer) =
        Response::parse(Bytes::from(p.ask("3:0")), Expect::Entry).expect("reply")
    else {
        panic!("expected a download offer")
    };
    let reply = p.fetch(&offer, (0..offer.blocks()).rev()).expect("fetch");
    let Response::Entry(entry) = Response::parse(Bytes::from(reply), Expect::Entry).expect("entry")
    else {
        panic!("entry")
    };
    assert_eq!(entry.text.len(), pdu.len() - 2);
    assert!(entry.text == pdu[2..], "text differs");
    assert_eq!(entry.from, p.addr());
}

#[test]
fn idle_sessions_expire_after_the_timeout() {
    // Within a 1 s session timeout, 500 ms apart.
    let _gate = gate::timed();
    let server = TestServer::builder()
        .limits(Limits {
            session_timeout: Duration::from_secs(1),
            ..Limits::default()
        })
        .start();
    let p = Peer::new(server.addr);
    let (idle, _) = p.open(10, 5).expect("open");
    let (kept, _) = p.open(10, 5).expect("open");
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            p.ask_str(format!("b:{kept}:0:1:abc")),
            format!("0:{kept}:0:1")
        );
    }
    assert_eq!(p.ask_str(format!("b:{idle}:0:1:abc")), "4:unknown session");
    assert_eq!(p.ask_str(format!("x:{idle}")), "0:");
    std::thread::sleep(Duration::from_millis(1_300));
    assert_eq!(p.ask_str(format!("c:{kept}")), "4:unknown session");
}

#[test]
fn opens_beyond_the_per_source_limit_are_busy() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let (p, q) = (Peer::new(server.addr), Peer::new(server.addr));
    let mut sids = Vec::new();
    for _ in 0..64 {
        sids.push(p.open(100, 10).expect("within the limit").0);
    }
    assert_eq!(p.ask_str("a:100:10"), "4:busy");
    q.open(100, 10).expect("another source is not affected");
    assert_eq!(p.ask_str(format!("x:{}", sids[0])), "0:");
    p.open(100, 10).expect("room again after a close");
}

#[test]
fn garbage_never_stops_the_server() {
    // Ten thousand datagrams as fast as they go.
    let _gate = gate::load();
    let server = TestServer::builder().start();
    let noise = Peer::new(server.addr);
    let mut rng = StdRng::seed_from_u64(7);
    for i in 0..10_000 {
        let len = rng.random_range(0..200);
        let mut datagram: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Some with a plausible prefix, so the parsers past the code byte are exercised too.
        if i % 3 == 0 && datagram.len() >= 2 {
            datagram[0] = b"1234abcgx"[rng.random_range(0..9)];
            datagram[1] = b':';
        }
        noise.send(&datagram);
        if i % 500 == 0 {
            // Let the receive buffer drain now and then so the load stays realistic.
            while noise.recv_within(Duration::from_millis(1)).is_some() {}
        }
    }
    let p = Peer::new(server.addr);
    assert_eq!(
        p.ask_str("3:18446744073709551615"),
        "2:no message 18446744073709551615"
    );
    let id = p.ask_str("1:still here");
    assert!(id.starts_with("0:"), "{id}");
    assert!(
        p.ask_str(format!("3:{}", &id[2..]))
            .ends_with(":still here")
    );
}

#[test]
fn ipv6_sources_are_bracketed() {
    let _gate = gate::plain();
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        // No IPv6 loopback on this host: nothing to test.
        return;
    }
    let server = TestServer::builder().listen("[::1]:0").start();
    let p = Peer::new(server.addr);
    assert_eq!(p.ask_str("1:over v6"), "0:0");
    let reply = p.ask_str("3:0");
    assert!(
        reply.ends_with(&format!(":[::1]:{}:over v6", p.addr().port())),
        "{reply}"
    );
    let Response::Entry(entry) = Response::parse(Bytes::from(reply), Expect::Entry).expect("entry")
    else {
        panic!("entry")
    };
    assert_eq!(entry.from, p.addr());
}

#[test]
fn the_binary_serves_and_stops_on_sigterm() {
    // The server listens for SIGTERM only once its main thread gets on after logging that it
    // serves: a SIGTERM sent while a busy machine holds that thread back kills it outright.
    let _gate = gate::alone();
    let server = ServerProcess::must_start(&[
        "--in-memory",
        "--log-level",
        "info",
        "--session-timeout",
        "500ms",
    ]);
    let p = Peer::new(server.addr);
    assert_eq!(p.ask_str("1:Hello world!"), "0:0");
    assert_eq!(p.ask_str("9:x"), "3:unknown request 9");
    assert_eq!(server.stop(), Some(0), "clean exit on SIGTERM");
}

#[test]
fn the_binary_refuses_bad_options_clearly() {
    let _gate = gate::plain();
    let out = Command::new(binary("mboard-server"))
        .args(["--listen", "127.0.0.1:0", "--max-datagram", "50"])
        .env("NO_COLOR", "1")
        .output()
        .expect("run mboard-server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max datagram must be between 128 and 65507 bytes, not 50"),
        "{err}"
    );
    let out = Command::new(binary("mboard-server"))
        .args(["--session-timeout", "soon"])
        .output()
        .expect("run mboard-server");
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    let out = Command::new(binary("mboard-server"))
        .args(["--fsync", "sometimes"])
        .output()
        .expect("run mboard-server");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown fsync policy \"sometimes\" (use always or never)"),
        "{err}"
    );
    let out = Command::new(binary("mboard-server"))
        .args(["--in-memory", "--data-dir", "/tmp/x"])
        .output()
        .expect("run mboard-server");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a memory board takes no data directory"
    );
}

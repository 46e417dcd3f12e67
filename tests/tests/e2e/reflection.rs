//! Reflection loops: a spoofed datagram naming another UDP service (an echo service, or
//! another mboard) as its source makes the two answer each other. Every mboard reply that
//! comes back is answered with an error or a publish, so without a limit the loop would
//! never end; the per-destination limit on error replies ends it.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use mboard_server::RateLimit;
use mboard_tests::{TestServer, gate, scrape};

/// Plays an echo service that the server was tricked into talking to: sends `first`, then
/// echoes whatever the server sends, until `quiet` passes without a datagram or `cap`
/// passes in all. Returns how many datagrams the server sent and whether it fell quiet.
fn echo_loop(
    server: std::net::SocketAddr,
    first: &[u8],
    quiet: Duration,
    cap: Duration,
) -> (u64, bool) {
    let echo = UdpSocket::bind("127.0.0.1:0").expect("bind");
    echo.set_read_timeout(Some(quiet)).expect("timeout");
    echo.send_to(first, server).expect("send");
    let started = Instant::now();
    let mut buf = vec![0u8; 65_536];
    let mut received = 0;
    while started.elapsed() < cap {
        match echo.recv_from(&mut buf) {
            Ok((n, from)) => {
                received += 1;
                echo.send_to(&buf[..n], from).expect("echo");
            }
            Err(_) => return (received, true),
        }
    }
    (received, false)
}

#[test]
fn a_loop_with_an_echo_service_dies_out() {
    // How long the loop lasts depends on how fast the limit refills meanwhile.
    let _gate = gate::timed();
    let server = TestServer::builder().metrics().start();
    let (sent, ended) = echo_loop(
        server.addr,
        b"1:hi",
        Duration::from_millis(500),
        Duration::from_secs(10),
    );
    assert!(
        ended,
        "the loop was still going after 10 s ({sent} datagrams)"
    );
    // Each turn is `0:<id>`, `3:unknown request 0`, `1:bad number`: two error replies, so
    // the burst of 200 lasts about 100 turns.
    assert!(sent <= 400, "{sent} datagrams before the loop ended");
    let s = scrape(server.metrics.expect("metrics")).expect("scrape");
    let dropped = s
        .value("mboard_datagrams_dropped_total{reason=\"error_reply_limit\"}")
        .unwrap_or(0.0);
    assert!(dropped >= 1.0, "{}", s.body);
}

#[test]
fn without_the_limit_the_loop_does_not_end() {
    // A datagram loop as fast as it goes, counted over one second.
    let _gate = gate::load();
    // The test above can fail: with the limit off, the same datagram loops indefinitely.
    let server = TestServer::builder()
        .error_limit(RateLimit {
            rate: 0.0,
            ..RateLimit::ERROR_REPLIES
        })
        .start();
    let (sent, ended) = echo_loop(
        server.addr,
        b"1:hi",
        Duration::from_millis(500),
        Duration::from_secs(1),
    );
    assert!(!ended, "the loop ended on its own after {sent} datagrams");
    assert!(sent > 400, "only {sent} datagrams in a second");
}

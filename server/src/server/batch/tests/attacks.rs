//! Batches as an attacker or a careless operator makes them: answers of every kind mixed in
//! one batch, destinations the kernel refuses, empty datagrams, IPv4 seen through an IPv6
//! socket.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mboard_protocol::ErrorCode;
use tokio::net::UdpSocket;
use tokio::time::timeout;

use super::super::{Sent, send_all, transient};
use super::{bound, drain};
use crate::limiter::{RateLimit, RateLimiter};
use crate::metrics::{Metrics, Totals};
use crate::reply::Reply;
use crate::server::sender::{Outbox, Sender, Source};

/// A sender on `socket` counting into fresh metrics, with `errors` as its error-reply limit.
fn sender(socket: UdpSocket, errors: RateLimit, batch: usize) -> Sender {
    Sender {
        socket: Arc::new(socket),
        metrics: Arc::new(Metrics::new(1)),
        shard: 0,
        errors: Arc::new(RateLimiter::new(errors)),
        batch,
    }
}

fn source(from: SocketAddr) -> Source {
    Source {
        kind: None,
        len: 3,
        from,
        received: Instant::now(),
    }
}

fn ok(text: &str) -> Reply {
    Reply::ok(Bytes::from(format!("0:{text}")))
}

/// The datagrams `peer` has received within a moment, in order.
async fn received(peer: &UdpSocket) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while let Ok(Ok((n, _))) = timeout(Duration::from_millis(200), peer.recv_from(&mut buf)).await {
        got.push(buf[..n].to_vec());
    }
    got
}

/// What the counters should say of `delivered` (the bytes of each reply that arrived) and
/// `refused` replies the kernel would not send.
fn assert_counted(t: &Totals, delivered: &[Vec<u8>], refused: u64) {
    let bytes: usize = delivered.iter().map(Vec::len).sum();
    assert_eq!(t.sent_bytes, bytes as u64, "mboard_sent_bytes: {t:?}");
    assert_eq!(t.send_errors, refused, "send errors: {t:?}");
    assert_eq!(t.sent_datagrams, delivered.len() as u64, "{t:?}");
}

// `deliver_all` once walked the outcomes of the replies that were sent with one step for
// *every* reply, sent or not: a held `6:` (a silent answer) ahead of a reply in the same
// batch took that reply's outcome, and the last reply sent was counted as nothing.
#[tokio::test]
async fn a_held_request_ahead_of_a_reply_in_a_batch_leaves_that_reply_counted() {
    for batch in [1, 32] {
        let peer = bound().await;
        let to = peer.local_addr().expect("addr");
        let sender = sender(bound().await, RateLimit::ERROR_REPLIES, batch);
        let mut outbox = Outbox::default();
        outbox.push(None, source(to));
        outbox.push(Some(ok("first")), source(to));
        outbox.push(None, source(to));
        outbox.push(Some(ok("second reply")), source(to));
        sender.deliver_all(&mut outbox).await.expect("sent");
        let got = received(&peer).await;
        assert_eq!(got, [b"0:first".to_vec(), b"0:second reply".to_vec()]);
        assert_counted(&sender.metrics.totals(), &got, 0);
    }
}

// The same fault, the other way in: an error reply that the per-destination limit held
// back shifted the count of every reply after it in the batch.
#[tokio::test]
async fn an_error_reply_over_its_limit_does_not_shift_the_counts_of_the_others() {
    let one = RateLimit {
        rate: 0.001,
        burst: 1.0,
        max_sources: 16,
    };
    let peer = bound().await;
    let to = peer.local_addr().expect("addr");
    let sender = sender(bound().await, one, 32);
    let mut outbox = Outbox::default();
    let refusal = || Reply::error(ErrorCode::BadFormat, "bad number");
    outbox.push(Some(refusal()), source(to));
    outbox.push(Some(refusal()), source(to)); // over the limit: not sent
    outbox.push(Some(ok("1")), source(to));
    outbox.push(Some(ok("22")), source(to));
    sender.deliver_all(&mut outbox).await.expect("sent");
    let got = received(&peer).await;
    assert_eq!(
        got,
        [b"1:bad number".to_vec(), b"0:1".to_vec(), b"0:22".to_vec()]
    );
    assert_counted(&sender.metrics.totals(), &got, 0);
}

// With a silent answer first, the refused datagram's `Dropped` was once skipped: the
// refused reply was counted as sent with the next reply's bytes, and no send error was
// counted at all.
#[tokio::test]
async fn a_refused_destination_after_a_held_request_is_counted_as_a_send_error() {
    let peer = bound().await;
    let to = peer.local_addr().expect("addr");
    let elsewhere: SocketAddr = "[::1]:9".parse().expect("addr");
    let sender = sender(bound().await, RateLimit::ERROR_REPLIES, 32);
    let mut outbox = Outbox::default();
    outbox.push(None, source(to));
    outbox.push(Some(ok("lost")), source(elsewhere));
    outbox.push(Some(ok("kept")), source(to));
    sender.deliver_all(&mut outbox).await.expect("sent");
    let got = received(&peer).await;
    assert_eq!(got, [b"0:kept".to_vec()]);
    assert_counted(&sender.metrics.totals(), &got, 1);
}

// A broadcast destination is refused with EACCES. When `transient` did not know it,
// `send_all` returned it as the socket's error and the receive loop (and with it the
// server) stopped. The kernel hands the server datagrams from a broadcast source
// (a spoofed one from afar when reverse-path filtering is off; `127.255.255.255` on
// loopback from a raw socket), and a firewall rule on output (EPERM) does the same for
// every datagram from the hosts it blocks.
#[tokio::test]
async fn a_broadcast_destination_loses_only_its_own_datagram() {
    for batch in [1, 8] {
        let server = bound().await;
        let peer = bound().await;
        let to = peer.local_addr().expect("addr");
        let broadcast: SocketAddr = "127.255.255.255:9".parse().expect("addr");
        let datagrams: Vec<(&[u8], SocketAddr)> =
            vec![(b"0:a", to), (b"0:b", broadcast), (b"0:c", to)];
        let mut outcome = Vec::new();
        let sent = send_all(&server, &datagrams, batch, &mut outcome).await;
        assert!(sent.is_ok(), "batch {batch}: {sent:?}");
        assert_eq!(
            outcome,
            [Sent::Bytes(3), Sent::Dropped, Sent::Bytes(3)],
            "batch {batch}"
        );
        let got = drain(&peer, 4, 2, &mut Vec::new()).await;
        let bytes: Vec<&[u8]> = got.iter().map(|(b, _)| b.as_slice()).collect();
        assert_eq!(bytes, [b"0:a".as_slice(), b"0:c"]);
    }
}

// The classification behind the test above.
#[test]
fn refusals_by_permission_concern_one_destination() {
    for errno in [1, 13] {
        // EPERM (a firewall rule on output), EACCES (a broadcast address)
        let e = io::Error::from_raw_os_error(errno);
        assert!(transient(&e), "{e}");
    }
}

#[cfg(unix)]
#[test]
fn refusals_of_one_datagram_are_known_by_name() {
    use nix::errno::Errno;
    for errno in [
        Errno::ENOBUFS,
        Errno::EMSGSIZE,
        Errno::EINVAL,
        Errno::EAFNOSUPPORT,
    ] {
        let e = io::Error::from_raw_os_error(errno as i32);
        assert!(transient(&e), "{e}");
    }
    // The socket's own failure is not: the loop stops on it.
    assert!(!transient(&io::Error::from_raw_os_error(
        Errno::EBADF as i32
    )));
}

// A call the kernel refused sent no datagram, and once counted as a sending call all the
// same, so that `mboard_socket_calls_total{op="send"}` could exceed the datagrams sent (one
// refused destination at a time: as many calls as datagrams, none sent).
#[tokio::test]
async fn calls_that_sent_nothing_are_not_counted_as_sending_calls() {
    let elsewhere: SocketAddr = "[::1]:9".parse().expect("addr");
    let sender = sender(bound().await, RateLimit::ERROR_REPLIES, 32);
    let mut outbox = Outbox::default();
    for _ in 0..4 {
        outbox.push(Some(ok("x")), source(elsewhere));
    }
    sender.deliver_all(&mut outbox).await.expect("sent");
    let t = sender.metrics.totals();
    assert_eq!(t.send_errors, 4, "{t:?}");
    assert!(t.send_calls <= t.sent_datagrams, "{t:?}");
}

#[tokio::test]
async fn empty_datagrams_keep_their_place_and_source_in_a_batch() {
    let server = bound().await;
    let to = server.local_addr().expect("addr");
    let (a, b) = (bound().await, bound().await);
    let sent: Vec<(&[u8], &UdpSocket)> =
        vec![(b"", &a), (b"2:0", &b), (b"", &b), (b"", &a), (b"3:1", &a)];
    for (bytes, from) in &sent {
        from.send_to(bytes, to).await.expect("send");
    }
    let mut calls = Vec::new();
    let got = drain(&server, 32, sent.len(), &mut calls).await;
    let want: Vec<(Vec<u8>, SocketAddr)> = sent
        .iter()
        .map(|(bytes, from)| (bytes.to_vec(), from.local_addr().expect("addr")))
        .collect();
    assert_eq!(got, want, "calls {calls:?}");
}

#[tokio::test]
async fn ipv4_through_a_dual_stack_socket_is_answered_at_its_mapped_address() {
    let server = UdpSocket::bind("[::]:0").await.expect("bind [::]");
    let port = server.local_addr().expect("addr").port();
    let v4 = bound().await;
    let v6 = UdpSocket::bind("[::1]:0").await.expect("bind [::1]");
    for i in 0..6u8 {
        let (from, to): (&UdpSocket, SocketAddr) = if i % 2 == 0 {
            (&v4, SocketAddr::from(([127, 0, 0, 1], port)))
        } else {
            (&v6, SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)))
        };
        from.send_to(&[b'0' + i], to).await.expect("send");
    }
    let got = drain(&server, 32, 6, &mut Vec::new()).await;
    let v4_port = v4.local_addr().expect("addr").port();
    for (i, (bytes, from)) in got.iter().enumerate() {
        assert_eq!(bytes, &[b'0' + i as u8]);
        match from {
            SocketAddr::V6(a) if i % 2 == 0 => {
                assert_eq!(a.ip().to_ipv4_mapped(), Some([127, 0, 0, 1].into()));
                assert_eq!(a.port(), v4_port);
            }
            SocketAddr::V6(a) => assert!(a.ip().is_loopback(), "{a}"),
            other => panic!("an IPv6 socket reported {other}"),
        }
    }
    // The replies go back in one batch, each to its own family.
    let replies: Vec<(&[u8], SocketAddr)> =
        got.iter().map(|(b, from)| (b.as_slice(), *from)).collect();
    let mut outcome = Vec::new();
    send_all(&server, &replies, 32, &mut outcome)
        .await
        .expect("sent");
    assert!(outcome.iter().all(|o| *o == Sent::Bytes(1)), "{outcome:?}");
    let v4_got = drain(&v4, 4, 3, &mut Vec::new()).await;
    let v6_got = drain(&v6, 4, 3, &mut Vec::new()).await;
    let bytes = |got: &[(Vec<u8>, SocketAddr)]| got.iter().map(|(b, _)| b[0]).collect::<Vec<_>>();
    assert_eq!(bytes(&v4_got), b"024");
    assert_eq!(bytes(&v6_got), b"135");
}

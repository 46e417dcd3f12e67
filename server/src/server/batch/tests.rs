use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::timeout;

use super::*;

async fn bound() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.expect("bind")
}

/// Everything queued on `socket`, taken through an [`Inbox`] of `batch`, until `want`
/// datagrams came; each receive's count is noted in `calls`.
async fn drain(
    socket: &UdpSocket,
    batch: usize,
    want: usize,
    calls: &mut Vec<usize>,
) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut inbox = Inbox::new(batch);
    let mut out = Vec::new();
    while out.len() < want {
        match inbox.try_receive(socket) {
            Ok(n) => {
                calls.push(n);
                out.extend(inbox.datagrams().map(|(b, from)| (b.to_vec(), from)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                timeout(Duration::from_secs(5), socket.readable())
                    .await
                    .expect("datagrams arrive")
                    .expect("readable");
            }
            Err(e) => panic!("receive: {e}"),
        }
    }
    out
}

#[tokio::test]
async fn a_batch_receives_everything_queued_in_order_with_its_sources() {
    for batch in [1, 4, 32] {
        let server = bound().await;
        let to = server.local_addr().expect("addr");
        let (a, b) = (bound().await, bound().await);
        let mut sent = Vec::new();
        for i in 0..10u8 {
            let from = if i % 3 == 0 { &b } else { &a };
            let bytes = vec![i; usize::from(i) * 100 + 1];
            from.send_to(&bytes, to).await.expect("send");
            sent.push((bytes, from.local_addr().expect("addr")));
        }
        let mut calls = Vec::new();
        let got = drain(&server, batch, sent.len(), &mut calls).await;
        assert_eq!(got, sent, "batch {batch}");
        assert!(calls.iter().all(|&n| (1..=batch).contains(&n)), "{calls:?}");
        if batch > 1 && cfg!(target_os = "linux") {
            assert!(
                calls.len() < sent.len(),
                "batch {batch} took one at a time: {calls:?}"
            );
        }
    }
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_batch_that_empties_the_queue_says_so() {
    // What the loop counts as keeping up: a call that took what was queued and found no
    // more, against one that filled its batch with more waiting.
    let server = bound().await;
    let to = server.local_addr().expect("addr");
    let client = bound().await;
    for _ in 0..40 {
        client.send_to(b"4:1", to).await.expect("send");
    }
    let mut inbox = Inbox::new(32);
    timeout(Duration::from_secs(5), server.readable())
        .await
        .expect("datagrams arrive")
        .expect("readable");
    assert_eq!(inbox.try_receive(&server).expect("a batch"), 32);
    assert!(!inbox.drained(), "eight more are queued");
    assert_eq!(inbox.try_receive(&server).expect("the rest"), 8);
    assert!(inbox.drained());
    // The drained call cleared the readiness: the loop waits rather than asking again.
    let again = inbox.try_receive(&server).expect_err("nothing queued");
    assert_eq!(again.kind(), io::ErrorKind::WouldBlock);
    assert!(!inbox.drained(), "a call that took nothing says nothing");
}

#[tokio::test]
async fn a_datagram_as_large_as_udp_allows_arrives_whole() {
    let server = bound().await;
    let client = bound().await;
    let big = vec![7u8; 65_507];
    client
        .send_to(&big, server.local_addr().expect("addr"))
        .await
        .expect("send");
    client
        .send_to(b"1:x", server.local_addr().expect("addr"))
        .await
        .expect("send");
    let got = drain(&server, 8, 2, &mut Vec::new()).await;
    assert_eq!(got[0].0, big);
    assert_eq!(got[1].0, b"1:x");
}

#[tokio::test]
async fn sending_delivers_each_datagram_to_its_own_destination() {
    for batch in [1, 3, 32] {
        let server = bound().await;
        let peers = [bound().await, bound().await, bound().await];
        let addrs: Vec<SocketAddr> = peers
            .iter()
            .map(|p| p.local_addr().expect("addr"))
            .collect();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| format!("0:{i}").into_bytes()).collect();
        let datagrams: Vec<(&[u8], SocketAddr)> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_slice(), addrs[i % 3]))
            .collect();
        let mut outcome = Vec::new();
        let calls = send_all(&server, &datagrams, batch, &mut outcome)
            .await
            .expect("send");
        if cfg!(target_os = "linux") {
            assert_eq!(calls, datagrams.len().div_ceil(batch), "batch {batch}");
        }
        let expected: Vec<Sent> = payloads.iter().map(|p| Sent::Bytes(p.len())).collect();
        assert_eq!(outcome, expected, "batch {batch}");
        for (k, peer) in peers.iter().enumerate() {
            let want: Vec<Vec<u8>> = payloads.iter().skip(k).step_by(3).cloned().collect();
            let got = drain(peer, 1, want.len(), &mut Vec::new()).await;
            let from = server.local_addr().expect("addr");
            assert!(got.iter().all(|(_, f)| *f == from));
            let bytes: Vec<Vec<u8>> = got.into_iter().map(|(b, _)| b).collect();
            assert_eq!(bytes, want, "batch {batch}, peer {k}");
        }
    }
}

#[tokio::test]
async fn a_destination_the_socket_cannot_reach_loses_only_its_own_datagram() {
    for batch in [1, 8] {
        let server = bound().await;
        let peer = bound().await;
        let to = peer.local_addr().expect("addr");
        // An IPv4 socket cannot send to an IPv6 address: the kernel refuses that one.
        let elsewhere: SocketAddr = "[::1]:9".parse().expect("addr");
        let datagrams: Vec<(&[u8], SocketAddr)> = vec![
            (b"0:a", to),
            (b"0:b", elsewhere),
            (b"0:c", to),
            (b"0:d", elsewhere),
        ];
        let mut outcome = Vec::new();
        send_all(&server, &datagrams, batch, &mut outcome)
            .await
            .expect("only those two are refused");
        assert_eq!(
            outcome,
            [Sent::Bytes(3), Sent::Dropped, Sent::Bytes(3), Sent::Dropped],
            "batch {batch}"
        );
        let got = drain(&peer, 4, 2, &mut Vec::new()).await;
        let bytes: Vec<&[u8]> = got.iter().map(|(b, _)| b.as_slice()).collect();
        assert_eq!(bytes, [b"0:a".as_slice(), b"0:c"]);
    }
}

#[tokio::test]
async fn nothing_to_send_sends_nothing() {
    let server = bound().await;
    let mut outcome = vec![Sent::Dropped];
    send_all(&server, &[], 32, &mut outcome)
        .await
        .expect("send");
    assert!(outcome.is_empty());
}

#[test]
fn the_batch_is_at_least_one_and_at_most_the_cap() {
    assert_eq!(Inbox::new(0).bufs.len(), 1);
    assert_eq!(Inbox::new(IO_BATCH_MAX + 5).bufs.len(), IO_BATCH_MAX);
}

mod attacks;

//! `--io-batch` under attack: bursts that mix every kind of answer in one batch (held
//! requests, replies over the error-reply limit, empty and maximum-size datagrams, IPv4
//! through a dual-stack socket), each peer answered with exactly its own reply and every
//! reply counted.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use mboard_server::RateLimit;
use mboard_tests::{Peer, Scrape, TestServer, gate, scrape};

use super::metrics::eventually;

/// The first reply `peer` gets.
fn reply(peer: &Peer) -> Vec<u8> {
    peer.recv_within(Duration::from_secs(5)).expect("a reply")
}

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).into_owned()
}

fn value(s: &Scrape, series: &str) -> f64 {
    s.value(series)
        .unwrap_or_else(|| panic!("no {series}:\n{}", s.body))
}

fn socket(op: &str) -> (String, String) {
    (
        format!("mboard_socket_calls_total{{op=\"{op}\"}}"),
        format!("mboard_socket_datagrams_total{{op=\"{op}\"}}"),
    )
}

// A held `6:` is a silent answer, and `Sender::deliver_all` once stepped through the sent
// datagrams' outcomes once for every reply, sent or not: a reply after a held request in
// the same batch was counted with the next one's bytes, and the last as nothing.
// Followers re-arming among other traffic make such batches all day.
#[test]
fn sent_bytes_count_every_reply_when_held_requests_share_a_batch() {
    let _gate = gate::timed();
    let server = TestServer::builder().metrics().io_batch(32).start();
    let metrics = server.metrics.expect("metrics endpoint");
    let (receive_calls, received) = socket("receive");
    let (_, sent) = socket("send");
    let (mut bytes, mut replies) = (0usize, 0usize);
    // Held until the server stops: kept so that their ports stay theirs.
    let mut followers = Vec::new();
    let mut batched = false;
    for _ in 0..20 {
        let pairs: Vec<(Peer, Peer)> = (0..40)
            .map(|_| (Peer::new(server.addr), Peer::new(server.addr)))
            .collect();
        // Sent before any reply is read, so the loops find them queued together.
        for (follower, reader) in &pairs {
            follower.send(b"6:0:0:25000");
            reader.send(b"2:0");
        }
        for (_, reader) in &pairs {
            let got = reply(reader);
            assert_eq!(text(&got), "0:");
            bytes += got.len();
            replies += 1;
        }
        followers.extend(pairs.into_iter().map(|(follower, _)| follower));
        let s = scrape(metrics).expect("scrape");
        if value(&s, &received) - value(&s, &receive_calls) >= 40.0 {
            batched = true;
            break;
        }
    }
    assert!(batched, "the loops never took several datagrams at once");
    eventually(metrics, |s| {
        if value(s, &sent) != replies as f64 {
            bail!("{sent}: want {replies}");
        }
        let counted = value(s, "mboard_sent_bytes_total");
        if counted != bytes as f64 {
            bail!(
                "mboard_sent_bytes_total: want {bytes} (the bytes the readers got), have {counted}"
            );
        }
        Ok(())
    });
    for follower in &followers {
        assert_eq!(follower.recv_within(Duration::from_millis(1)), None);
    }
}

#[test]
fn a_mixed_burst_over_the_error_limit_answers_each_peer_only_its_own() {
    let _gate = gate::timed();
    for batch in [4, 32] {
        let server = TestServer::builder()
            .metrics()
            .io_batch(batch)
            .error_limit(RateLimit {
                rate: 0.001,
                burst: 3.0,
                max_sources: 1_024,
            })
            .start();
        let metrics = server.metrics.expect("metrics endpoint");
        let noisy = Peer::new(server.addr);
        let peers: Vec<Peer> = (0..80).map(|_| Peer::new(server.addr)).collect();
        for (i, peer) in peers.iter().enumerate() {
            noisy.send(b"9x");
            match i % 4 {
                0 => peer.send(format!("1:from {i}").as_bytes()),
                1 => peer.send(b"6:0:0:25000"),
                2 => peer.send(b"2:x"),
                _ => peer.send(format!("3:{}", 1_000 + i).as_bytes()),
            }
        }
        let mut replies = 0;
        let mut ids = Vec::new();
        for (i, peer) in peers.iter().enumerate() {
            if i % 4 == 1 {
                continue;
            }
            let got = text(&reply(peer));
            replies += 1;
            match i % 4 {
                0 => ids.push(
                    got.strip_prefix("0:")
                        .and_then(|id| id.parse::<u64>().ok())
                        .unwrap_or_else(|| panic!("batch {batch}, peer {i}: {got}")),
                ),
                2 => assert_eq!(got, "1:bad number", "batch {batch}"),
                _ => assert_eq!(got, format!("2:no message {}", 1_000 + i)),
            }
        }
        ids.sort();
        assert_eq!(ids, (0..20).collect::<Vec<_>>(), "batch {batch}");
        // The noisy peer gets its burst of refusals and no more.
        for _ in 0..3 {
            assert_eq!(text(&reply(&noisy)), "1:missing ':' after the code");
            replies += 1;
        }
        assert_eq!(noisy.recv_within(Duration::from_millis(300)), None);
        // The held followers were woken by the first publish of the burst, or are held
        // still: either way each gets one `0:` of messages, then nothing.
        for (i, peer) in peers.iter().enumerate().filter(|(i, _)| i % 4 == 1) {
            let got = text(&reply(peer));
            assert!(got.starts_with("0:"), "batch {batch}, follower {i}: {got}");
            replies += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
        for (i, peer) in peers.iter().enumerate() {
            assert_eq!(peer.recv_within(Duration::from_millis(1)), None, "peer {i}");
        }
        let (_, sent) = socket("send");
        eventually(metrics, |s| {
            if value(s, &sent) != replies as f64 {
                bail!("{sent}: want {replies}");
            }
            Ok(())
        });
    }
}

#[test]
fn empty_and_largest_datagrams_in_one_burst_are_each_answered_in_kind() {
    let _gate = gate::timed();
    let server = TestServer::builder().io_batch(32).start();
    let peers: Vec<Peer> = (0..30).map(|_| Peer::new(server.addr)).collect();
    // The largest UDP payload over IPv4: a publish of 65,505 bytes of text. Only two, as
    // the default receive buffer (208 KiB) holds no more than three of them.
    let largest = [b"1:".as_slice(), &vec![b'x'; 65_505]].concat();
    for (i, peer) in peers.iter().enumerate() {
        match i % 3 {
            0 => peer.send(b""),
            1 if i == 10 || i == 19 => peer.send(&largest),
            _ => peer.send(b"1:small"),
        }
    }
    let mut ids = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let got = text(&reply(peer));
        match i % 3 {
            0 => assert_eq!(got, "1:too short"),
            _ => ids.push(
                got.strip_prefix("0:")
                    .and_then(|id| id.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("peer {i}: {got}")),
            ),
        }
    }
    ids.sort();
    assert_eq!(ids, (0..20).collect::<Vec<_>>());
    let board = mboard_tests::board_contents(server.addr).expect("board");
    let mut lens: Vec<usize> = board.iter().map(|m| m.entry.text.len()).collect();
    lens.sort();
    assert_eq!(lens, [vec![5; 18], vec![65_505; 2]].concat());
}

#[test]
fn ipv4_and_ipv6_peers_of_a_dual_stack_server_each_get_their_own_reply() {
    let _gate = gate::timed();
    let server = TestServer::builder().listen("[::]:0").io_batch(32).start();
    let port = server.addr.port();
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let peers: Vec<Peer> = (0..60)
        .map(|i| Peer::new(if i % 2 == 0 { v4 } else { v6 }))
        .collect();
    for (i, peer) in peers.iter().enumerate() {
        peer.send(format!("1:from {i}").as_bytes());
    }
    let mut given = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let got = text(&reply(peer));
        let id: u64 = got
            .strip_prefix("0:")
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("peer {i}: {got}"));
        given.push((id, i));
    }
    // Each text is stored under the id its own publisher was given, from its own address.
    let reader = Peer::new(v4);
    for (id, i) in given {
        let got = text(&reader.ask(format!("3:{id}")));
        let port = peers[i].addr().port();
        // An IPv4 peer is seen through the IPv6 socket at its mapped address.
        let from = if i % 2 == 0 {
            "[::ffff:127.0.0.1]"
        } else {
            "[::1]"
        };
        assert!(
            got.ends_with(&format!(":{from}:{port}:from {i}")),
            "peer {i} ({from}): {got}"
        );
    }
}

//! Many datagrams per system call (`--io-batch`): bursts from many sockets, and a publish
//! waking many held requests, each answered exactly once with exactly its own reply, with
//! batching and without.

use std::collections::BTreeSet;
use std::time::Duration;

use mboard_server::{Fsync, JournalConfig, Store};
use mboard_tests::{DataDir, Peer, TestServer, board_contents, gate};

const BATCHES: [usize; 3] = [1, 4, 32];

/// The first reply `peer` gets.
fn reply(peer: &Peer) -> String {
    let reply = peer.recv_within(Duration::from_secs(5)).expect("a reply");
    String::from_utf8_lossy(&reply).into_owned()
}

/// Checks that none of `peers` got a second reply.
fn no_more(peers: &[Peer]) {
    std::thread::sleep(Duration::from_millis(300));
    for (i, peer) in peers.iter().enumerate() {
        let extra = peer.recv_within(Duration::from_millis(1));
        assert_eq!(extra, None, "peer {i} answered twice");
    }
}

#[test]
fn a_burst_from_many_sockets_is_answered_once_each_with_its_own_reply() {
    let _gate = gate::timed();
    for batch in BATCHES {
        burst(TestServer::builder().io_batch(batch).start(), batch);
    }
}

/// The same on the journal, whose publishes wait for their group commit and reach the
/// socket through the completions' sender, and on its `--fsync always` groups.
#[test]
fn a_burst_of_publishes_waiting_for_the_disk_is_answered_once_each() {
    let _gate = gate::timed();
    for batch in [1, 32] {
        for fsync in [Fsync::Never, Fsync::Always] {
            let dir = DataDir::new();
            let store = Store::Journal(JournalConfig {
                fsync,
                ..JournalConfig::new(dir.path().to_owned())
            });
            burst(
                TestServer::builder().store(store).io_batch(batch).start(),
                batch,
            );
        }
    }
}

/// 120 sockets send a publish, a malformed request or a read for a missing id, all before
/// any reply is read; each gets exactly its own reply, and the board each publish once.
fn burst(server: TestServer, batch: usize) {
    {
        let peers: Vec<Peer> = (0..120).map(|_| Peer::new(server.addr)).collect();
        // All sent before any reply is read, so the server finds them queued together.
        for (i, peer) in peers.iter().enumerate() {
            match i % 3 {
                0 => peer.send(format!("1:from {i}").as_bytes()),
                1 => peer.send(b"2:x"),
                _ => peer.send(format!("3:{}", 1_000 + i).as_bytes()),
            }
        }
        let mut ids = BTreeSet::new();
        let mut given = Vec::new();
        for (i, peer) in peers.iter().enumerate() {
            let reply = &reply(peer);
            match i % 3 {
                0 => {
                    let id: u64 = reply
                        .strip_prefix("0:")
                        .and_then(|id| id.parse().ok())
                        .unwrap_or_else(|| panic!("batch {batch}: {reply}"));
                    assert!(ids.insert(id), "batch {batch}: id {id} twice");
                    given.push((id, peer.addr(), format!("from {i}")));
                }
                1 => assert_eq!(reply, "1:bad number", "batch {batch}"),
                _ => assert_eq!(reply, &format!("2:no message {}", 1_000 + i)),
            }
        }
        assert_eq!(ids, (0..40).collect(), "batch {batch}: one id per publish");
        no_more(&peers);
        // And the board holds each text once, under the id its own publisher was given.
        let mut board: Vec<_> = board_contents(server.addr)
            .expect("board")
            .into_iter()
            .map(|m| {
                (
                    m.id.0,
                    m.entry.from,
                    String::from_utf8_lossy(&m.entry.text).into_owned(),
                )
            })
            .collect();
        board.sort();
        given.sort();
        assert_eq!(board, given, "batch {batch}");
    }
}

#[test]
fn one_publish_wakes_every_held_request_once_with_the_same_bytes() {
    let _gate = gate::timed();
    for batch in BATCHES {
        let server = TestServer::builder().io_batch(batch).start();
        let writer = Peer::new(server.addr);
        assert_eq!(writer.ask_str("1:before"), "0:0");
        let followers: Vec<Peer> = (0..150).map(|_| Peer::new(server.addr)).collect();
        for follower in &followers {
            follower.send(b"6:0:0:25000");
        }
        // Each is held: nothing comes back before the publish.
        assert_eq!(followers[0].recv_within(Duration::from_millis(300)), None);
        assert_eq!(writer.ask_str("1:wake"), "0:1");
        let port = writer.addr().port();
        let first = reply(&followers[0]);
        assert!(first.starts_with("0:1:1:"), "batch {batch}: {first}");
        assert!(
            first.ends_with(&format!(":127.0.0.1:{port}:4:wake")),
            "{first}"
        );
        for follower in &followers[1..] {
            assert_eq!(reply(follower), first, "batch {batch}");
        }
        no_more(&followers);
    }
}

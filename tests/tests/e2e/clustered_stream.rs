//! The stream a clustered board lives in, as an operator may have made or changed it:
//! a server's replica holds a run of consecutive ids, so a message deleted on its own
//! would be a hole whose older neighbours the replica would drop. Streams mboard creates
//! refuse single deletes; a stream that allows them, or has holes, is refused at start-up
//! in one line that says what to do, and once purged past its holes it serves. A replica
//! cut off while the stream trimmed comes back holding exactly what the stream keeps.

use mboard_tests::nats::NatsCluster;
use mboard_tests::{Peer, ServerProcess, gate};

use crate::clustered::{id_of, mboard};

/// The last line of a server that failed to start.
fn refused(args: &[&str]) -> String {
    match ServerProcess::start(args) {
        Ok(_) => panic!("started with {args:?}"),
        Err((code, log)) => {
            assert_eq!(code, Some(1), "{log}");
            log.lines().last().unwrap_or_default().to_owned()
        }
    }
}

/// A JetStream API request that must succeed.
fn api(nats: &NatsCluster, subject: &str, body: &str) -> String {
    let reply = nats
        .request(0, subject, body)
        .unwrap_or_else(|| panic!("no reply to {subject}"));
    assert!(!reply.contains("\"error\""), "{subject} {body}: {reply}");
    reply
}

#[test]
fn a_stream_mboard_creates_refuses_single_deletes() {
    let _gate = gate::plain();
    let nats = NatsCluster::start(1);
    let server = mboard(&nats, &[]);
    let p = Peer::new(server.addr);
    for i in 1..=3u64 {
        assert_eq!(id_of(&p.ask_str(format!("1:m{i}"))), i);
    }
    let reply = nats
        .request(0, "$JS.API.STREAM.MSG.DELETE.mboard", r#"{"seq":2}"#)
        .expect("a reply");
    assert!(reply.contains("\"error\""), "{reply}");
    assert!(p.ask_str("3:2").ends_with(":m2"));
    // A later server loads all three.
    let late = mboard(&nats, &[]);
    assert!(Peer::new(late.addr).ask_str("3:1").ends_with(":m1"));
}

#[test]
fn a_stream_with_holes_is_refused_until_purged_past_them() {
    let _gate = gate::plain();
    let nats = NatsCluster::start(1);
    let config = |deny_delete: bool| {
        format!(
            r#"{{"name":"holey","subjects":["holey.messages"],"retention":"limits","max_consumers":-1,"max_msgs":-1,"max_bytes":-1,"max_age":0,"max_msg_size":-1,"storage":"file","discard":"old","num_replicas":1,"duplicate_window":3600000000000,"deny_delete":{deny_delete}}}"#
        )
    };
    api(&nats, "$JS.API.STREAM.CREATE.holey", &config(false));
    for text in ["first", "second", "third"] {
        api(&nats, "holey.messages", text);
    }
    let urls = nats.urls();
    let args = ["--nats", urls.as_str(), "--nats-stream", "holey"];
    let line = refused(&args);
    assert!(
        line.starts_with("error: ") && line.contains("--deny-delete"),
        "{line}"
    );
    // Message 2 deleted, then deletes denied: the hole stays.
    api(&nats, "$JS.API.STREAM.MSG.DELETE.holey", r#"{"seq":2}"#);
    api(&nats, "$JS.API.STREAM.UPDATE.holey", &config(true));
    let line = refused(&args);
    assert!(
        line.contains("1 messages deleted in its middle") && line.contains("purge"),
        "{line}"
    );
    // Purged below 3: what is left is a run of ids again.
    api(&nats, "$JS.API.STREAM.PURGE.holey", r#"{"seq":3}"#);
    let server = ServerProcess::must_start(&args);
    let p = Peer::new(server.addr);
    assert!(p.ask_str("3:3").ends_with(":third"), "{}", p.ask_str("3:3"));
    assert_eq!(p.ask_str("3:1"), "2:no longer kept");
    assert_eq!(p.ask_str("3:0"), "2:no message 0", "ids start at 1");
    assert_eq!(id_of(&p.ask_str("1:fourth")), 4);
}

#[test]
fn a_replica_that_was_cut_off_while_the_stream_trimmed_serves_what_the_stream_keeps() {
    let _gate = gate::load();
    let mut nats = NatsCluster::start(3);
    let retain = ["--retain-messages", "5", "--nats-replicas", "3"];
    let (url_a, url_b) = (nats.url(0), nats.url(2));
    let a = ServerProcess::must_start(&[&["--nats", url_a.as_str()][..], &retain].concat());
    let b = ServerProcess::must_start(&[&["--nats", url_b.as_str()][..], &retain].concat());
    let (pa, pb) = (Peer::new(a.addr), Peer::new(b.addr));
    for i in 1..=3u64 {
        assert_eq!(id_of(&pa.ask_str(format!("1:m{i}"))), i);
    }
    assert!(crate::clustered::eventually(
        std::time::Duration::from_secs(5),
        || pb.ask_str("3:3").ends_with(":m3")
    ));
    // b's NATS node goes away; the stream (R3) goes on without it and trims to 5.
    nats.kill(2);
    let mut published = 3;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while published < 33 {
        assert!(
            std::time::Instant::now() < deadline,
            "publishes did not resume"
        );
        let reply = pa.ask_str(format!("1:m{}", published + 1));
        if reply.starts_with("0:") {
            published = id_of(&reply);
        } else {
            assert_eq!(reply, "4:storage unavailable");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    // Back: b's replica is 30 ids behind a stream that kept only the last 5.
    nats.start_node(2);
    // a's own replica may be catching up too (its consumer may have lived on the node).
    let kept: Vec<u64> = (published - 4..=published).collect();
    let mut want = Vec::new();
    assert!(
        crate::clustered::eventually(std::time::Duration::from_secs(20), || {
            want = mboard_tests::board_contents(a.addr).unwrap_or_default();
            want.iter().map(|m| m.id.0).eq(kept.iter().copied())
        }),
        "a: {want:?}"
    );
    assert!(
        crate::clustered::eventually(std::time::Duration::from_secs(20), || {
            mboard_tests::board_contents(b.addr).is_ok_and(|have| have == want)
        }),
        "b: {:?}",
        mboard_tests::board_contents(b.addr)
    );
    assert_eq!(pb.ask_str("3:2"), "2:no longer kept");
    assert_eq!(
        pb.ask_str(format!("3:{}", published - 5)),
        "2:no longer kept"
    );
}

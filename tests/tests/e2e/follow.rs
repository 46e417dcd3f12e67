//! `6:<after>:<max>:<wait>` over real sockets: answered at once, held and woken by a
//! publish from another socket, timed out, replaced by a resend, refused busy, offered
//! when large, not held inside an upload; and the one trailing newline of §1.

use std::time::Duration;

use mboard_server::Limits;
use mboard_tests::{Peer, TestServer, gate};

/// The part of one `4:`-format record after its timestamp: `ip:port:len:text`.
fn tail(peer: &Peer, text: &str) -> String {
    format!(":{}:{}:{}", peer.addr(), text.len(), text)
}

#[test]
fn answered_at_once_in_the_format_of_4() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let (p, q) = (Peer::new(server.addr), Peer::new(server.addr));
    assert_eq!(p.ask_str("1:hello"), "0:0");
    assert_eq!(q.ask_str("1:hi"), "0:1");
    let reply = p.ask_str("6:0:10:0");
    assert!(reply.starts_with("0:1:1:"), "{reply}");
    assert!(reply.ends_with(&tail(&q, "hi")), "{reply}");
    // After the last id with no wait: at once, empty.
    assert_eq!(p.ask_str("6:1:10:0"), "0:0");
    // The same bytes as `4:` gives for the same messages.
    let all = p.ask_str("4:0");
    let after_nothing = p.ask_str("6:0:0:0");
    assert_eq!(all.matches(":hello").count(), 1);
    assert!(
        all.ends_with(&after_nothing[4..]),
        "{all} vs {after_nothing}"
    );
    // At most `max`, oldest first.
    assert!(p.ask_str("6:0:1:0").ends_with(&tail(&q, "hi")));
}

#[test]
fn held_then_woken_by_a_publish_from_another_socket() {
    let _gate = gate::timed();
    let server = TestServer::builder().start();
    let (reader, writer) = (Peer::new(server.addr), Peer::new(server.addr));
    assert_eq!(writer.ask_str("1:hello"), "0:0");
    reader.send(b"6:0:10:25000");
    assert_eq!(reader.recv_within(Duration::from_millis(300)), None, "held");
    assert_eq!(writer.ask_str("1:yo"), "0:1");
    let woken = reader.recv_within(Duration::from_secs(5)).expect("woken");
    let woken = String::from_utf8_lossy(&woken).into_owned();
    assert!(woken.starts_with("0:1:1:"), "{woken}");
    assert!(woken.ends_with(&tail(&writer, "yo")), "{woken}");
    // Answered once.
    assert_eq!(reader.recv_within(Duration::from_millis(300)), None);
}

#[test]
fn a_wait_that_runs_out_is_answered_0_0() {
    let _gate = gate::timed();
    let server = TestServer::builder().start();
    let reader = Peer::new(server.addr);
    reader.send(b"6:44:10:1000");
    assert_eq!(reader.recv_within(Duration::from_millis(500)), None, "held");
    let reply = reader
        .recv_within(Duration::from_secs(5))
        .expect("timed out");
    assert_eq!(reply, b"0:0");
}

#[test]
fn a_resend_replaces_the_held_request_so_it_is_answered_once() {
    let _gate = gate::timed();
    let server = TestServer::builder().start();
    let (reader, writer) = (Peer::new(server.addr), Peer::new(server.addr));
    reader.send(b"6:0:10:20000");
    reader.send(b"6:0:10:20000");
    reader.send(b"6:0:10:20000\n");
    std::thread::sleep(Duration::from_millis(100));
    writer.ask_str("1:first");
    writer.ask_str("1:second");
    let reply = reader.recv_within(Duration::from_secs(5)).expect("woken");
    assert!(
        reply.starts_with(b"0:1:1:"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(
        reader.recv_within(Duration::from_millis(500)),
        None,
        "one reply"
    );
}

#[test]
fn held_requests_are_bounded_per_source_and_in_all() {
    let _gate = gate::plain();
    // One receive loop: with two, b's held request and c's could be handled in either
    // order, and c's held instead of refused.
    let server = TestServer::builder()
        .limits(Limits {
            max_held: 3,
            max_held_per_source: 2,
            ..Limits::default()
        })
        .workers(1)
        .start();
    let (a, b, c) = (
        Peer::new(server.addr),
        Peer::new(server.addr),
        Peer::new(server.addr),
    );
    a.send(b"6:10:0:20000");
    a.send(b"6:11:0:20000");
    assert_eq!(a.ask_str("6:12:0:20000"), "4:busy");
    b.send(b"6:10:0:20000");
    assert_eq!(c.ask_str("6:10:0:20000"), "4:busy");
    // A request that need not wait is answered whatever the bounds.
    assert_eq!(c.ask_str("6:10:0:0"), "0:0");
}

#[test]
fn a_large_reply_is_a_download_offer() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let p = Peer::new(server.addr);
    for _ in 0..3 {
        p.ask_str(format!("1:{}", "x".repeat(1000)));
    }
    let reply = p.ask_str("6:0:0:0");
    assert!(reply.starts_with("d:"), "{reply}");
}

#[test]
fn inside_an_upload_it_is_answered_without_waiting() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let p = Peer::new(server.addr);
    let request = b"6:100:10:30000";
    let (sid, _) = p.open(request.len(), 1000).expect("open");
    let mut block = format!("b:{sid}:0:").into_bytes();
    block.extend_from_slice(request);
    assert!(p.ask_str(&block).ends_with(":0:1"));
    assert_eq!(p.ask_str(format!("c:{sid}")), "0:0");
}

#[test]
fn one_trailing_newline_after_numbers_only() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let p = Peer::new(server.addr);
    assert_eq!(p.ask_str("1:hi\n"), "0:0");
    assert_eq!(p.ask_str("2:10\n"), "0:0");
    assert_eq!(p.ask_str("2:10\r\n"), "0:0");
    assert!(
        p.ask_str("3:0\n").ends_with(":hi\n"),
        "the text keeps its newline"
    );
    assert!(p.ask_str("4:1\r\n").starts_with("0:1:0:"));
    assert_eq!(p.ask_str("6:0:1:0\n"), "0:0");
    assert_eq!(p.ask_str("2:10\n\n"), "1:bad number");
    assert_eq!(p.ask_str("2:10\r"), "1:bad number");
}

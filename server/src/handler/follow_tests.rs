//! `6:` through the handler on a manual clock: answered at once, held, woken, timed out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Handler;
use super::tests::run;
use crate::board::MemoryBoard;
use crate::config::Limits;
use crate::held::WakeCause;
use crate::reply::Reply;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

struct Sim {
    h: Arc<Handler<MemoryBoard>>,
    t0: Instant,
}

impl Sim {
    fn new(limits: Limits) -> Self {
        Sim {
            h: Arc::new(Handler::new(MemoryBoard::new(), limits, 1)),
            t0: Instant::now(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// The reply `pdu` from `from` gets at `ms`, or `None` when it is held.
    fn ask(&self, ms: u64, from: SocketAddr, pdu: &str) -> Option<String> {
        let datagram = Bytes::copy_from_slice(pdu.as_bytes());
        let answer = run(async { self.h.handle(self.at(ms), from, datagram).await.answer });
        run(answer.resolve()).map(|r| String::from_utf8_lossy(r.bytes()).into_owned())
    }

    /// What the driver would send at `ms`: each due held request and its reply.
    fn due(&self, ms: u64) -> Vec<(u16, WakeCause, String)> {
        let now = self.at(ms);
        self.h
            .follow_due(now)
            .into_iter()
            .map(|wake| {
                let reply = run(self.h.answer_wake(now, wake).resolve()).map(Reply::into_bytes);
                let text = String::from_utf8_lossy(&reply.expect("a reply")).into_owned();
                (wake.to.port(), wake.cause, text)
            })
            .collect()
    }
}

#[test]
fn answered_at_once_when_there_is_something_to_read() {
    let s = Sim::new(Limits::default());
    assert_eq!(s.ask(0, addr(9), "1:hello").as_deref(), Some("0:0"));
    assert_eq!(s.ask(0, addr(9), "1:hi").as_deref(), Some("0:1"));
    let reply = s.ask(0, addr(1), "6:0:10:25000").expect("at once");
    assert!(
        reply.starts_with("0:1:1:") && reply.ends_with(":127.0.0.1:9:2:hi"),
        "{reply}"
    );
    // From before the first id, at most one.
    let reply = s.ask(0, addr(1), "6:0:1:0").expect("at once");
    assert!(reply.starts_with("0:1:1:"), "{reply}");
    assert_eq!(
        s.ask(0, addr(1), "6:1:10:0").as_deref(),
        Some("0:0"),
        "no wait: at once"
    );
    assert!(s.due(0).is_empty());
}

#[test]
fn held_until_a_publish_then_answered_once_with_what_was_published() {
    let s = Sim::new(Limits::default());
    s.ask(0, addr(9), "1:old");
    assert_eq!(s.ask(0, addr(1), "6:0:10:25000"), None, "held");
    assert_eq!(
        s.ask(5, addr(2), "6:0:10:25000\n"),
        None,
        "held, newline ignored"
    );
    assert!(s.due(10).is_empty());
    assert_eq!(s.ask(20, addr(9), "1:yo").as_deref(), Some("0:1"));
    let due = s.due(20);
    assert_eq!(due.len(), 2);
    for (_, cause, reply) in &due {
        assert_eq!(*cause, WakeCause::Published);
        assert!(
            reply.starts_with("0:1:1:") && reply.ends_with(":2:yo"),
            "{reply}"
        );
    }
    // Answered once: nothing later, not even at the deadline.
    assert!(s.due(30_000).is_empty());
    assert_eq!(s.h.hold_counts().woken, 2);
}

#[test]
fn a_wait_that_runs_out_is_answered_empty() {
    let s = Sim::new(Limits::default());
    assert_eq!(s.ask(0, addr(1), "6:44:10:1000"), None);
    assert_eq!(s.h.next_hold_deadline(), Some(s.at(1000)));
    assert!(s.due(999).is_empty());
    assert_eq!(s.due(1000), [(1, WakeCause::TimedOut, "0:0".to_owned())]);
    // The longest hold caps what is asked.
    let s = Sim::new(Limits {
        max_hold: Duration::from_secs(2),
        ..Limits::default()
    });
    assert_eq!(s.ask(0, addr(1), "6:0:0:99999999"), None);
    assert_eq!(s.due(2000), [(1, WakeCause::TimedOut, "0:0".to_owned())]);
}

#[test]
fn a_resend_replaces_the_held_request() {
    let s = Sim::new(Limits::default());
    assert_eq!(s.ask(0, addr(1), "6:0:10:1000"), None);
    assert_eq!(s.ask(800, addr(1), "6:0:10:1000"), None);
    assert!(
        s.due(1000).is_empty(),
        "the first is replaced, not answered"
    );
    assert_eq!(s.due(1800).len(), 1);
}

#[test]
fn bounds_refuse_busy() {
    let s = Sim::new(Limits {
        max_held: 3,
        max_held_per_source: 2,
        ..Limits::default()
    });
    assert_eq!(s.ask(0, addr(1), "6:0:0:5000"), None);
    assert_eq!(s.ask(0, addr(1), "6:1:0:5000"), None);
    assert_eq!(s.ask(0, addr(1), "6:2:0:5000").as_deref(), Some("4:busy"));
    assert_eq!(s.ask(0, addr(2), "6:0:0:5000"), None);
    assert_eq!(s.ask(0, addr(3), "6:0:0:5000").as_deref(), Some("4:busy"));
    assert_eq!(s.h.hold_counts().refused, 2);
    assert_eq!(s.h.hold_counts().held, 3);
}

#[test]
fn inside_an_upload_it_is_answered_without_waiting() {
    let s = Sim::new(Limits::default());
    let open = s.ask(0, addr(1), "a:8:100").expect("open");
    let sid = &open[2..38];
    let block = s
        .ask(0, addr(1), &format!("b:{sid}:0:6:0:1:50"))
        .expect("ack");
    assert!(block.ends_with(":0:1"), "{block}");
    assert_eq!(
        s.ask(0, addr(1), &format!("c:{sid}")).as_deref(),
        Some("0:0")
    );
    assert_eq!(s.h.hold_counts().held, 0);
}

#[test]
fn held_replies_obey_the_datagram_size_and_the_amplification_rule() {
    for loopback_checked in [false, true] {
        let s = Sim::new(Limits {
            amplification_loopback: loopback_checked,
            ..Limits::default()
        });
        s.ask(0, addr(9), "1:first");
        // Too large for a datagram: an offer, whoever asked.
        assert_eq!(s.ask(0, addr(1), "6:0:0:5000"), None);
        s.ask(1, addr(9), &format!("1:{}", "x".repeat(3000)));
        let due = s.due(1);
        assert!(due[0].2.starts_with("d:"), "{}", due[0].2);
        // 250 bytes fit a datagram, but not three times the 12-byte request: an address
        // that never echoed a session id is offered it instead.
        assert_eq!(s.ask(2, addr(2), "6:1:10:5000"), None);
        s.ask(3, addr(9), &format!("1:{}", "y".repeat(200)));
        let reply = &s.due(3)[0].2;
        assert_eq!(reply.starts_with("d:"), loopback_checked, "{reply}");
    }
}

#[test]
fn followers_woken_for_the_same_messages_share_one_encoding() {
    let s = Sim::new(Limits::default());
    s.ask(0, addr(9), "1:old");
    for port in [1, 2] {
        assert_eq!(s.ask(0, addr(port), "6:0:0:25000"), None);
    }
    // Another `<max>` covering the same messages is the same reply too.
    assert_eq!(s.ask(0, addr(3), "6:0:5:25000"), None);
    s.ask(10, addr(9), "1:new");
    let now = s.at(10);
    let replies: Vec<Reply> =
        s.h.follow_due(now)
            .into_iter()
            .map(|wake| run(s.h.answer_wake(now, wake).resolve()).expect("a reply"))
            .collect();
    assert_eq!(replies.len(), 3);
    assert!(replies[0].bytes().ends_with(b":3:new"), "{replies:?}");
    for r in &replies[1..] {
        assert_eq!(r, &replies[0]);
        assert_eq!(r.bytes().as_ptr(), replies[0].bytes().as_ptr(), "shared");
    }
    // Woken by two publishes at once, the same `<after>` with a smaller `<max>` covers
    // fewer messages: not the other's reply.
    assert_eq!(s.ask(20, addr(1), "6:1:0:25000"), None);
    assert_eq!(s.ask(20, addr(2), "6:1:1:25000"), None);
    s.ask(30, addr(9), "1:newer");
    s.ask(30, addr(9), "1:newest");
    let mut due = s.due(30);
    due.sort_by_key(|(port, ..)| *port);
    assert!(
        due[0].2.starts_with("0:2:2:") && due[0].2.ends_with(":6:newest"),
        "{due:?}"
    );
    assert!(
        due[1].2.starts_with("0:1:2:") && due[1].2.ends_with(":5:newer"),
        "{due:?}"
    );
}

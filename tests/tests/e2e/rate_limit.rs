//! Per-source rate limiting with the real binary: over the limit, datagrams are dropped
//! without a reply and reported; other sources are unaffected.

use std::time::Duration;

use mboard_tests::{Peer, ServerProcess, gate};

#[test]
fn a_source_over_its_limit_is_dropped_and_others_are_not() {
    // How many are answered depends on how fast the bucket refills meanwhile.
    let _gate = gate::timed();
    let server =
        ServerProcess::must_start(&["--in-memory", "--rate-limit", "100", "--rate-burst", "10"]);
    let greedy = Peer::new(server.addr);
    for _ in 0..50 {
        greedy.send(b"2:0");
    }
    let mut answered = 0;
    while greedy.recv_within(Duration::from_millis(200)).is_some() {
        answered += 1;
    }
    // The burst of 10, plus what 100/s refills while the 50 are sent and read.
    assert!((10..=30).contains(&answered), "{answered} of 50 answered");

    let polite = Peer::new(server.addr);
    assert_eq!(
        polite.ask_str("2:0"),
        "0:",
        "another source has its own bucket"
    );
    // The greedy source is answered again once its bucket refills.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(greedy.ask_str("2:0"), "0:");

    // The drops are reported within a second or so.
    std::thread::sleep(Duration::from_millis(1_200));
    let log = server.log();
    assert!(log.contains("rate limit: datagrams dropped"), "{log}");
}

#[test]
fn unworkable_limits_stop_the_binary_with_one_line() {
    let _gate = gate::plain();
    for (args, says) in [
        (
            &["--rate-burst", "0.5"][..],
            "error: invalid configuration: rate burst must be a number of at least 1 while its rate is above 0, not 0.5\n",
        ),
        (
            &["--error-reply-rate", "nan"],
            "error: invalid configuration: error reply rate must be a number of at least 0",
        ),
        (
            &["--max-datagram", "100"],
            "error: invalid configuration: max datagram must be between",
        ),
    ] {
        let mut all = vec!["--in-memory"];
        all.extend_from_slice(args);
        let Err((code, log)) = ServerProcess::start(&all) else {
            panic!("{args:?}: started");
        };
        assert_eq!(code, Some(1), "{args:?}: {log}");
        assert!(log.contains(says), "{args:?}: {log}");
        assert!(!log.contains("Stack backtrace"), "{args:?}: {log}");
    }
}

//! Retention with the real binary: each limit on both stores, trimmed ids on the wire,
//! restarts, options and their environment variables, metrics.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use mboard_tests::{DataDir, Peer, ServerProcess, binary, gate, scrape};

/// Publishes `n` texts `m<i>` (`len` bytes or more) one at a time; returns the ids.
fn publish(p: &Peer, n: usize, len: usize) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let mut text = format!("m{i}");
            while text.len() < len {
                text.push('.');
            }
            let reply = p.ask_str(format!("1:{text}"));
            reply
                .strip_prefix("0:")
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("publish {i}: {reply}"))
        })
        .collect()
}

/// `2:0` as ids.
fn kept(p: &Peer) -> Vec<u64> {
    let reply = p.ask_str("2:0");
    let ids = reply.strip_prefix("0:").expect("ids");
    ids.split(':')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("id"))
        .collect()
}

/// Waits until `2:0` says `want`, as the trimming thread gets to it.
fn until_kept(p: &Peer, want: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = kept(p);
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "kept {now:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What every store must answer once ids below `oldest` are trimmed and `next` is next.
fn trimmed_answers(p: &Peer, oldest: u64, next: u64) {
    assert_eq!(p.ask_str(format!("3:{}", oldest - 1)), "2:no longer kept");
    assert_eq!(p.ask_str("3:0"), "2:no longer kept");
    let get = p.ask_str(format!("3:{oldest}"));
    assert!(get.starts_with("0:") || get.starts_with("d:"), "{get}");
    assert_eq!(
        p.ask_str(format!("3:{next}")),
        format!("2:no message {next}")
    );
    let last = p.ask_whole("4:0");
    let count = next - oldest;
    assert!(
        last.starts_with(format!("0:{count}:{oldest}:").as_bytes()),
        "4:0 starts at the oldest kept: {}",
        String::from_utf8_lossy(&last[..last.len().min(80)])
    );
    // `6:` below the oldest kept starts at the oldest kept: the gap shows in the ids.
    let after = p.ask_whole("6:0:1:0");
    assert!(after.starts_with(format!("0:1:{oldest}:").as_bytes()));
}

/// The arguments for the memory board and for a durable one in `dir`, each with `limit`.
fn both<'a>(dir: &'a DataDir, limit: &[&'a str]) -> [Vec<&'a str>; 2] {
    let with = |store: &[&'a str]| store.iter().chain(limit).copied().collect();
    [with(&["--in-memory"]), with(&["--data-dir", dir.arg()])]
}

#[test]
fn the_count_limit_on_both_stores() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    for args in both(&dir, &["--retain-messages", "5"]) {
        let server = ServerProcess::must_start(&args);
        let p = Peer::new(server.addr);
        assert_eq!(publish(&p, 12, 10), (0..12).collect::<Vec<_>>());
        until_kept(&p, &[7, 8, 9, 10, 11]);
        trimmed_answers(&p, 7, 12);
    }
}

#[test]
fn the_byte_limit_on_both_stores() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    // 16 MiB at least (the largest message); 1 MiB texts, so 16 or so fit.
    let text = "b".repeat(60_000);
    for args in [
        vec!["--in-memory", "--retain-bytes", "16MiB"],
        vec![
            "--data-dir",
            dir.arg(),
            "--retain-bytes",
            "16MiB",
            "--segment-size",
            "1MiB",
        ],
    ] {
        let server = ServerProcess::must_start(&args);
        let p = Peer::new(server.addr);
        for i in 0..600 {
            assert_eq!(p.ask_str(format!("1:{text}")), format!("0:{i}"));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let ids = loop {
            let ids = kept(&p);
            if ids.len() as u64 * 60_000 <= 16 << 20 || Instant::now() > deadline {
                break ids;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            (250..=280).contains(&ids.len()),
            "{} kept of 600 ({args:?})",
            ids.len()
        );
        assert_eq!(ids.last(), Some(&599));
        trimmed_answers(&p, ids[0], 600);
    }
    // The durable board deleted whole segments to get there.
    assert!(dir.segments()[0] > 0, "{:?}", dir.segments());
    assert!(dir.segments().len() <= 20, "{:?}", dir.segments());
}

#[test]
fn the_age_limit_on_both_stores() {
    let _gate = gate::timed();
    let dir = DataDir::new();
    for args in both(&dir, &["--retain-age", "2s"]) {
        let server = ServerProcess::must_start(&args);
        let p = Peer::new(server.addr);
        publish(&p, 3, 10);
        // More than a second apart: the journal keeps times to the second, rounded up.
        std::thread::sleep(Duration::from_millis(1_200));
        publish(&p, 2, 10);
        // The first three go two seconds after their publish, the other two later.
        let started = Instant::now();
        until_kept(&p, &[3, 4]);
        until_kept(&p, &[]);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(p.ask_str("3:4"), "2:no longer kept");
        assert_eq!(p.ask_str("4:0"), "0:0");
        assert_eq!(p.ask_str("1:later"), "0:5", "ids go on");
    }
}

#[test]
fn a_restart_after_trimming_keeps_ids_and_what_was_trimmed() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    let server = ServerProcess::must_start(&[
        "--data-dir",
        dir.arg(),
        "--retain-messages",
        "3",
        "--segment-size",
        "64KiB",
    ]);
    let p = Peer::new(server.addr);
    publish(&p, 2_000, 100);
    until_kept(&p, &[1_997, 1_998, 1_999]);
    assert!(dir.segments()[0] > 1_000, "{:?}", dir.segments());
    assert_eq!(server.stop(), Some(0));
    // Started again without any limit: nothing trimmed comes back, and no id is reused.
    let server = ServerProcess::must_start(&["--data-dir", dir.arg()]);
    let p = Peer::new(server.addr);
    assert_eq!(kept(&p), vec![1_997, 1_998, 1_999]);
    trimmed_answers(&p, 1_997, 2_000);
    assert_eq!(p.ask_str("1:after"), "0:2000");
    let log = server.log();
    assert!(
        log.contains("oldest=1997") && log.contains("next=2000"),
        "{log}"
    );
    server.kill();
    // Everything trimmed, then a restart: still the next id.
    let server = ServerProcess::must_start(&["--data-dir", dir.arg(), "--retain-age", "1s"]);
    let p = Peer::new(server.addr);
    until_kept(&p, &[]);
    // The note of what was trimmed rides along with the next commit, or goes alone
    // within a second; then the server is killed, not stopped.
    std::thread::sleep(Duration::from_millis(1_500));
    server.kill();
    let server = ServerProcess::must_start(&["--data-dir", dir.arg()]);
    let p = Peer::new(server.addr);
    assert_eq!(kept(&p), Vec::<u64>::new());
    assert_eq!(p.ask_str("1:next"), "0:2001");
}

#[test]
fn trimmed_messages_leave_the_metrics() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    let server = ServerProcess::must_start(&[
        "--data-dir",
        dir.arg(),
        "--retain-messages",
        "10",
        "--segment-size",
        "64KiB",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = server.metrics_addr().expect("metrics");
    let p = Peer::new(server.addr);
    publish(&p, 1_000, 100);
    until_kept(&p, &(990..1_000).collect::<Vec<_>>());
    let s = scrape(metrics).expect("scrape");
    assert_eq!(s.value("mboard_messages"), Some(10.0));
    assert_eq!(s.value("mboard_oldest_id"), Some(990.0));
    assert_eq!(s.value("mboard_trimmed_messages_total"), Some(990.0));
    assert_eq!(s.value("mboard_store_state{state=\"writable\"}"), Some(1.0));
    assert_eq!(s.value("mboard_store_state{state=\"full\"}"), Some(0.0));
    let bytes = s.value("mboard_retained_bytes").expect("bytes");
    assert!((1_000.0..3_000.0).contains(&bytes), "{bytes}");
    let segments = s.value("mboard_journal_segments").expect("segments");
    assert!(segments <= 3.0, "{segments}");
    assert!(
        s.value("mboard_journal_segments_deleted_total")
            .expect("deleted")
            >= 1.0
    );
    assert_eq!(
        s.value("mboard_journal_write_failures_total{cause=\"full\"}"),
        Some(0.0)
    );
    // The memory board reports the same series, its bytes by its own count.
    let mem = ServerProcess::must_start(&["--in-memory", "--metrics", "127.0.0.1:0"]);
    let addr = mem.metrics_addr().expect("metrics");
    publish(&Peer::new(mem.addr), 3, 100);
    let s = scrape(addr).expect("scrape");
    assert_eq!(
        s.value("mboard_retained_bytes"),
        Some(3.0 * (100.0 + 128.0))
    );
    assert_eq!(s.value("mboard_oldest_id"), Some(0.0));
}

/// Runs the server with `args` and `env` until it logs `until` or exits.
fn run(args: &[&str], env: &[(&str, &str)]) -> Result<ServerProcess, (Option<i32>, String)> {
    let mut cmd = Command::new(binary("mboard-server"));
    cmd.args(["--listen", "127.0.0.1:0"]).args(args);
    for var in [
        "MBOARD_RETAIN_MESSAGES",
        "MBOARD_RETAIN_BYTES",
        "MBOARD_RETAIN_AGE",
        "MBOARD_SEGMENT_SIZE",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    ServerProcess::start_command(cmd)
}

fn addr_of(server: &ServerProcess) -> SocketAddr {
    server.addr
}

#[test]
fn retention_options_take_environment_variables_and_refuse_what_cannot_work() {
    let _gate = gate::plain();
    let server = run(&["--in-memory"], &[("MBOARD_RETAIN_MESSAGES", "2")]).expect("start");
    let p = Peer::new(addr_of(&server));
    publish(&p, 4, 5);
    until_kept(&p, &[2, 3]);
    // A flag wins over its variable.
    let server = run(
        &["--in-memory", "--retain-messages", "3"],
        &[("MBOARD_RETAIN_MESSAGES", "2")],
    )
    .expect("start");
    let p = Peer::new(server.addr);
    publish(&p, 4, 5);
    until_kept(&p, &[1, 2, 3]);
    for (args, env, want) in [
        (
            vec!["--in-memory", "--retain-bytes", "1MiB"],
            vec![],
            "error: invalid configuration: retain bytes must be at least the max request size (16777216 bytes), not 1048576",
        ),
        (
            vec!["--in-memory", "--retain-messages", "0"],
            vec![],
            "error: invalid configuration: retain messages must be at least 1",
        ),
        (
            vec!["--in-memory"],
            vec![("MBOARD_RETAIN_AGE", "0s")],
            "error: invalid configuration: retain age must be longer than zero",
        ),
        (
            vec!["--segment-size", "1KiB"],
            vec![],
            "error: invalid configuration: segment size must be between 65536 and 1099511627776 bytes, not 1024",
        ),
        (
            vec!["--in-memory", "--max-queued-publishes", "0"],
            vec![],
            "error: invalid configuration: max queued publishes must be at least 1",
        ),
    ] {
        let Err((code, log)) = run(&args, &env) else {
            panic!("{args:?} {env:?} started")
        };
        assert_eq!(code, Some(1), "{log}");
        let last = log.trim_end().lines().last().unwrap_or_default();
        assert_eq!(last, want, "{args:?} {env:?}");
        assert_eq!(
            log.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{log}"
        );
    }
    let Err((code, log)) = run(&["--in-memory", "--retain-bytes", "lots"], &[]) else {
        panic!("started")
    };
    assert_eq!(code, Some(2), "clap refuses a bad size: {log}");
    assert!(log.contains("\"lots\" is not a size"), "{log}");
}

/// A config file holding `text`.
fn config_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), text).expect("write config");
    file
}

/// The memory board and a durable one in `dir`, as a config file says them.
fn stores_in_a_file(dir: &DataDir) -> [String; 2] {
    [
        "in-memory = true\n".to_owned(),
        format!("data-dir = {:?}\n", dir.arg()),
    ]
}

/// Rewrites `file` as `text`, sends SIGHUP, and waits for the log to say `until`.
fn reload(server: &ServerProcess, file: &tempfile::NamedTempFile, text: &str, until: &str) {
    std::fs::write(file.path(), text).expect("rewrite config");
    server.signal("HUP");
    let log = server.log_until(until, Duration::from_secs(10));
    assert!(log.contains(until), "{until}: {log}");
}

#[test]
fn sighup_lowers_and_raises_the_retention_on_both_stores() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    let stores = stores_in_a_file(&dir);
    for store in stores {
        let file = config_file(&format!("{store}retain-messages = 10\n"));
        let path = file.path().to_str().expect("utf-8 path");
        let server = ServerProcess::must_start(&["--config", path]);
        let p = Peer::new(server.addr);
        publish(&p, 10, 20);
        assert_eq!(kept(&p), (0..10).collect::<Vec<_>>(), "{store}");

        reload(
            &server,
            &file,
            &format!("{store}retain-messages = 3\n"),
            "changed=retain-messages: 10 → 3",
        );
        // Trimmed without another publish: by the store's own trimming.
        until_kept(&p, &[7, 8, 9]);
        trimmed_answers(&p, 7, 10);
        assert!(p.ask_str("3:7").starts_with("0:"), "{store}");

        reload(
            &server,
            &file,
            &format!("{store}retain-messages = 100\nretain-bytes = \"1GiB\"\n"),
            "changed=retain-messages: 3 → 100, retain-bytes: (unset) → 1GiB",
        );
        assert_eq!(publish(&p, 5, 20), (10..15).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(kept(&p), (7..15).collect::<Vec<_>>(), "nothing comes back");
        assert_eq!(p.ask_str("3:6"), "2:no longer kept");

        // Back to no limit at all.
        reload(
            &server,
            &file,
            &store,
            "retain-messages: 100 → none, retain-bytes: 1GiB → (unset)",
        );
        publish(&p, 100, 20);
        assert_eq!(kept(&p).len(), 108, "{store}");
        let log = server.log();
        assert!(!log.contains("take a restart"), "{log}");
        assert!(!log.contains("ERROR"), "{log}");
    }
}

#[test]
fn a_retention_that_cannot_work_on_sighup_keeps_the_old_one() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    let stores = stores_in_a_file(&dir);
    for (i, store) in stores.iter().enumerate() {
        let file = config_file(&format!("{store}retain-messages = 5\n"));
        let path = file.path().to_str().expect("utf-8 path");
        let server = ServerProcess::must_start(&["--config", path]);
        let p = Peer::new(server.addr);
        let mut refusals = vec![
            (
                "retain-messages = 0\n",
                "invalid configuration: retain messages must be at least 1",
            ),
            (
                "retain-messages = 2\nretain-bytes = \"1MiB\"\n",
                "invalid configuration: retain bytes must be at least the max request size (16777216 bytes), not 1048576",
            ),
            (
                "retain-messages = 2\nretain-age = \"0s\"\n",
                "invalid configuration: retain age must be longer than zero",
            ),
        ];
        if i == 1 {
            refusals.push((
                "retain-messages = 2\nretain-age = \"1h\"\n",
                "retain age cannot be set by a reload on a journal started without one (it keeps no publish times in memory); restart to set it",
            ));
        }
        for (text, why) in refusals {
            let line = format!("SIGHUP: config file not reloaded, nothing changed: {why}");
            reload(&server, &file, &format!("{store}{text}"), &line);
            let log = server.log();
            let errors: Vec<_> = log.lines().filter(|l| l.contains(why)).collect();
            assert_eq!(errors.len(), 1, "one line: {log}");
            assert!(errors[0].contains("ERROR"), "{}", errors[0]);
        }
        publish(&p, 10, 20);
        until_kept(&p, &[5, 6, 7, 8, 9]);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(kept(&p), vec![5, 6, 7, 8, 9], "still five: {store}");
        assert!(!server.log().contains("config file reloaded"));
    }
}

//! The server as an operator runs it, with the real binary: options from the command
//! line, the environment and a config file; SIGHUP; options refused at start-up; the
//! access log; the man page.

use std::io::Write;
use std::time::Duration;

use mboard_tests::{DataDir, Peer, ServerProcess, binary, gate};

const WAIT: Duration = Duration::from_secs(10);

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

fn path(file: &tempfile::NamedTempFile) -> &str {
    file.path().to_str().expect("utf-8 path")
}

/// The value of `name` in the start-up line `configuration: name=value …`.
fn configured<'a>(log: &'a str, name: &str) -> Option<&'a str> {
    let line = log.lines().find(|l| l.contains(" configuration: "))?;
    let key = format!(" {name}=");
    let at = line.find(&key)? + key.len();
    line[at..].split_whitespace().next()
}

#[test]
fn the_command_line_wins_over_the_environment_which_wins_over_the_file() {
    let _gate = gate::plain();
    let file = config_file(
        "in-memory = true\nmax-sessions = 10\nrate-burst = 50.5\nrate-limit = 100\nmax-hold = \"5s\"\n",
    );
    let server = ServerProcess::start_with_env(
        &["--config", path(&file), "--max-sessions", "30"],
        &[("MBOARD_MAX_SESSIONS", "20"), ("MBOARD_RATE_BURST", "40")],
    )
    .unwrap_or_else(|(code, log)| panic!("exit {code:?}: {log}"));
    let log = server.log();
    assert_eq!(configured(&log, "max-sessions"), Some("30"), "{log}");
    assert_eq!(configured(&log, "rate-burst"), Some("40"), "{log}");
    assert_eq!(configured(&log, "rate-limit"), Some("100"), "{log}");
    assert_eq!(configured(&log, "max-hold"), Some("5s"), "{log}");
    assert_eq!(
        configured(&log, "max-held"),
        Some("10000"),
        "a default: {log}"
    );
    assert!(
        log.contains(
            "(from the command line: listen,max-sessions,config; from the environment: rate-burst;"
        ),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "from {}: in-memory,max-hold,rate-limit)",
            path(&file)
        )),
        "{log}"
    );
    assert!(log.contains("board is kept in memory"), "{log}");
    assert_eq!(Peer::new(server.addr).ask_str("1:hello"), "0:0");
}

#[test]
fn every_option_has_an_environment_variable() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    let server = ServerProcess::start_with_env(
        &[],
        &[
            ("MBOARD_DATA_DIR", dir.arg()),
            ("MBOARD_FSYNC", "never"),
            ("MBOARD_MAX_TOKENS", "77"),
            ("MBOARD_LOG_LEVEL", "warn,mboard_server=info"),
        ],
    )
    .unwrap_or_else(|(code, log)| panic!("exit {code:?}: {log}"));
    let log = server.log();
    assert_eq!(configured(&log, "data-dir"), Some(dir.arg()), "{log}");
    assert_eq!(configured(&log, "fsync"), Some("never"), "{log}");
    assert_eq!(configured(&log, "max-tokens"), Some("77"), "{log}");
    assert_eq!(Peer::new(server.addr).ask_str("1:kept"), "0:0");
    assert!(dir.journal().exists());
    // A switch's variable may be `1`; `0` is as good as unset, so it conflicts with nothing.
    let memory = ServerProcess::start_with_env(&[], &[("MBOARD_IN_MEMORY", "1")])
        .unwrap_or_else(|(code, log)| panic!("exit {code:?}: {log}"));
    assert!(memory.log().contains("board is kept in memory"));
    drop(server);
    let off =
        ServerProcess::start_with_env(&["--data-dir", dir.arg()], &[("MBOARD_IN_MEMORY", "0")])
            .unwrap_or_else(|(code, log)| panic!("exit {code:?}: {log}"));
    assert_eq!(
        Peer::new(off.addr).ask_str("2:0"),
        "0:0",
        "the journal was read"
    );
}

/// Sends `n` requests at once from one source and counts the replies.
fn answered_of(server: &ServerProcess, n: usize) -> usize {
    let peer = Peer::new(server.addr);
    for _ in 0..n {
        peer.send(b"2:0");
    }
    let mut answered = 0;
    while peer.recv_within(Duration::from_millis(300)).is_some() {
        answered += 1;
    }
    answered
}

#[test]
fn sighup_reloads_the_rate_limit_and_the_log_filter_and_says_what_changed() {
    // Counts replies against a rate.
    let _gate = gate::timed();
    let file = config_file("in-memory = true\nlog-level = \"info\"\n");
    let server = ServerProcess::must_start(&["--config", path(&file)]);
    assert_eq!(answered_of(&server, 20), 20, "no limit to speak of yet");
    assert!(!server.log().contains(" request from="));

    std::fs::write(
        file.path(),
        "in-memory = true\nlog-level = \"info,mboard_server::access=debug\"\nrate-limit = 1\nrate-burst = 3\nmax-sessions = 5\n",
    )
    .expect("rewrite");
    server.signal("HUP");
    let log = server.log_until("SIGHUP: these changes take a restart", WAIT);
    assert!(
        log.contains("changed=rate-limit: 50000 → 1, rate-burst: 50000 → 3, log-level: info → info,mboard_server::access=debug"),
        "{log}"
    );
    assert!(log.contains("changed=max-sessions: 100000 → 5"), "{log}");
    let answered = answered_of(&server, 20);
    assert!((3..=5).contains(&answered), "{answered} of 20 answered");
    let log = server.log_until(" request from=", WAIT);
    assert!(
        log.contains("request=ids reply=0 bytes_in=3 bytes_out=2 micros="),
        "the access log is on: {log}"
    );

    // Back to the defaults: the options left out of the file return to them.
    std::fs::write(file.path(), "in-memory = true\n").expect("rewrite");
    server.signal("HUP");
    let log = server.log_until("rate-burst: 3 → 50000", WAIT);
    assert!(
        log.contains("log-level: info,mboard_server::access=debug → (unset)"),
        "{log}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(answered_of(&server, 20), 20);
}

#[test]
fn a_config_file_that_cannot_work_on_sighup_changes_nothing() {
    let _gate = gate::plain();
    let file = config_file("in-memory = true\nrate-limit = 7\n");
    let mut server = ServerProcess::must_start(&["--config", path(&file)]);
    for (text, why) in [
        (
            "rate-limit = \"fast\"",
            "`rate-limit` has an invalid value `fast`: invalid float literal",
        ),
        (
            "rate-sources = 0",
            "invalid configuration: rate sources must be at least 1",
        ),
        ("rate-limit = ", "line 2, column 14"),
        ("colour = \"blue\"", "unknown option `colour`"),
    ] {
        std::fs::write(file.path(), format!("in-memory = true\n{text}\n")).expect("rewrite");
        server.signal("HUP");
        let log = server.log_until(why, WAIT);
        let line = log
            .lines()
            .find(|l| l.contains(why))
            .unwrap_or_else(|| panic!("{why}: {log}"));
        assert!(line.contains("ERROR"), "{line}");
        assert!(
            line.contains("SIGHUP: config file not reloaded, nothing changed: config file")
                || line.contains("nothing changed: invalid configuration"),
            "{line}"
        );
    }
    std::fs::remove_file(file.path()).expect("remove");
    server.signal("HUP");
    let log = server.log_until("cannot read config file", WAIT);
    assert!(log.contains("No such file or directory"), "{log}");
    assert!(server.running());
    assert_eq!(Peer::new(server.addr).ask_str("1:still here"), "0:0");
    assert!(!log.contains("config file reloaded"), "{log}");
}

#[test]
fn sighup_without_a_config_file_only_says_so() {
    let _gate = gate::plain();
    let mut server = ServerProcess::must_start(&["--in-memory"]);
    server.signal("HUP");
    let log = server.log_until("nothing to reload", WAIT);
    assert!(log.contains("SIGHUP: started without --config"), "{log}");
    assert!(server.running(), "SIGHUP does not stop the server");
    assert_eq!(Peer::new(server.addr).ask_str("1:up"), "0:0");
    assert_eq!(server.stop(), Some(0));
}

/// Starts the server with `args`, which must stop it with exit code 1 and an error as
/// the last line; returns the log.
fn stopped(args: &[&str]) -> String {
    match ServerProcess::start(args) {
        Ok(_) => panic!("{args:?} was accepted"),
        Err((code, log)) => {
            assert_eq!(code, Some(1), "{args:?}: {log}");
            let last = log.lines().last().unwrap_or_default();
            assert!(last.starts_with("error: "), "{args:?}: {log}");
            log
        }
    }
}

/// [`stopped`] before logging anything: the error is the only line.
fn refused(args: &[&str]) -> String {
    let log = stopped(args);
    assert_eq!(log.lines().count(), 1, "{args:?}: one line, not {log}");
    log.trim_end().to_owned()
}

#[test]
fn options_that_cannot_work_are_refused_at_start_up_in_one_line() {
    let _gate = gate::plain();
    let m = "--in-memory";
    let cases: &[(&[&str], &str)] = &[
        (
            &[m, "--max-session-memory", "100"],
            "max session memory must be at least twice max datagram (2944 bytes), not 100",
        ),
        (
            &[m, "--rate-sources", "0"],
            "rate sources must be at least 1",
        ),
        (&[m, "--workers", "0"], "workers must be at least 1"),
        (
            &[m, "--rate-burst", "0"],
            "rate burst must be a number of at least 1 while its rate is above 0, not 0",
        ),
        (
            &[m, "--rate-limit=-1"],
            "rate limit must be a number of at least 0 (0 turns it off), not -1",
        ),
        (
            &[m, "--error-reply-burst", "0.5"],
            "error reply burst must be a number of at least 1",
        ),
        (
            &[m, "--validation-ttl", "0s"],
            "validation ttl must be longer than zero",
        ),
        (
            &[m, "--max-validated", "0"],
            "max validated must be at least 1",
        ),
        (
            &[m, "--max-datagram", "64"],
            "max datagram must be between 128 and 65507 bytes, not 64",
        ),
        (
            &[m, "--config", "/nonexistent/mboard.toml"],
            "cannot read config file /nonexistent/mboard.toml: No such file or directory (os error 2)",
        ),
    ];
    for (args, expected) in cases {
        let line = refused(args);
        assert!(line.contains(expected), "{args:?}: {line}");
    }
    let file = config_file("in-memory = true\nmax_sessions = 5\n");
    let line = refused(&["--config", path(&file)]);
    assert!(
        line.ends_with("unknown option `max_sessions` (did you mean `max-sessions`?)"),
        "{line}"
    );
}

#[test]
fn data_directory_errors_say_their_cause_once() {
    let _gate = gate::plain();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let line = refused(&["--data-dir", path(&file)]);
    assert!(line.ends_with("is not a directory"), "{line}");
    // The journal finds these as it opens, once the configuration has been logged.
    let under_a_file = format!("{}/sub", path(&file));
    let log = stopped(&["--data-dir", &under_a_file]);
    assert_eq!(log.matches("Not a directory").count(), 1, "{log}");
    let log = stopped(&["--data-dir", "/proc/mboard-cannot-be-here"]);
    assert_eq!(log.matches("No such file or directory").count(), 1, "{log}");
}

#[test]
fn the_access_log_has_a_line_per_request_at_debug_and_a_summary_at_info() {
    let _gate = gate::plain();
    let debug = ServerProcess::must_start(&[
        "--in-memory",
        "--log-level",
        "debug",
        "--summary-interval",
        "200ms",
    ]);
    let peer = Peer::new(debug.addr);
    assert_eq!(peer.ask_str("1:hello"), "0:0");
    assert_eq!(peer.ask_str("3:9"), "2:no message 9");
    let log = debug.log_until(" summary ", WAIT);
    let from = format!("from={}", peer.addr());
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(&from) && l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle}: {log}"))
            .to_owned()
    };
    let publish = line("request=publish");
    assert!(
        publish.contains("DEBUG mboard_server::access: request"),
        "{publish}"
    );
    assert!(
        publish.contains("reply=0 bytes_in=7 bytes_out=3 micros="),
        "{publish}"
    );
    assert!(line("request=get").contains("reply=2 bytes_in=3 bytes_out=14"));
    let summary = log
        .lines()
        .find(|l| l.contains(" summary "))
        .expect("summary");
    assert!(summary.contains("INFO mboard_server::access: summary seconds=0.2 requests=2 publishes=1 errors=1 drops=0 bytes_in=10 bytes_out=17"), "{summary}");

    let info = ServerProcess::must_start(&["--in-memory", "--summary-interval", "200ms"]);
    let peer = Peer::new(info.addr);
    assert_eq!(peer.ask_str("1:x"), "0:0");
    let log = info.log_until(" summary ", WAIT);
    assert!(
        log.contains("summary seconds=0.2 requests=1 publishes=1"),
        "{log}"
    );
    assert!(
        !log.contains(" request from="),
        "no request lines at info: {log}"
    );
}

#[test]
fn the_man_page_and_completions_come_from_the_binary() {
    let _gate = gate::plain();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(binary("mboard-server"))
        .arg("--manpage")
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let page = dir.path().join("mboard-server.1");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        page.display().to_string()
    );
    let text = std::fs::read_to_string(&page).expect("page");
    assert!(text.contains(".TH mboard-server 1"), "{text}");
    for option in [
        "rate\\-limit",
        "MBOARD_RATE_LIMIT",
        "config",
        "SIGHUP",
        "ENVIRONMENT",
    ] {
        assert!(text.contains(option), "no {option} in the page");
    }
    assert!(!text.contains("manpage"), "packaging flags are hidden");
    let bash = std::process::Command::new(binary("mboard-server"))
        .args(["--completions", "bash"])
        .output()
        .expect("run");
    let script = String::from_utf8_lossy(&bash.stdout);
    assert!(
        bash.status.success() && script.contains("--summary-interval"),
        "{script}"
    );
}

#[test]
fn metrics_answer_in_the_format_the_scraper_asks_for() {
    let _gate = gate::plain();
    let server = mboard_tests::TestServer::builder().metrics().start();
    let metrics = server.metrics.expect("metrics endpoint");
    assert_eq!(Peer::new(server.addr).ask_str("1:counted"), "0:0");
    let get = |accept: Option<&str>| {
        mboard_tests::http_accepting(metrics, "GET", "/metrics", accept).expect("scrape")
    };

    let openmetrics = get(Some(mboard_tests::PROMETHEUS_ACCEPT));
    assert_eq!(
        openmetrics.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(openmetrics.body.ends_with("# EOF\n"));
    assert!(
        openmetrics
            .body
            .contains("# TYPE mboard_publishes counter\n")
    );

    for accept in [
        Some("text/plain;version=0.0.4;q=0.3,*/*;q=0.1"),
        Some("*/*"),
        None,
    ] {
        let text = get(accept);
        assert_eq!(
            text.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8"),
            "{accept:?}"
        );
        assert_eq!(text.header("vary"), Some("accept"));
        assert!(!text.body.contains("# EOF"), "{accept:?}");
        assert!(
            text.body
                .contains("# TYPE mboard_publishes_total counter\n")
        );
        assert!(text.body.contains("# HELP mboard_publishes_total "));
        // The samples are the same in both formats.
        assert_eq!(text.value("mboard_publishes_total"), Some(1.0));
        assert_eq!(openmetrics.value("mboard_publishes_total"), Some(1.0));
    }
}

#[test]
fn the_example_config_file_is_accepted_as_it_is_shipped() {
    let _gate = gate::plain();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/mboard.toml");
    let dir = DataDir::new();
    // Its data directory is the system's; the command line wins over it here.
    let server = ServerProcess::must_start(&["--config", example, "--data-dir", dir.arg()]);
    let log = server.log();
    assert!(
        log.contains(
            "/deploy/mboard.toml: fsync,rate-limit,rate-burst,log-level,summary-interval)"
        ),
        "{log}"
    );
    assert_eq!(Peer::new(server.addr).ask_str("1:configured"), "0:0");
}

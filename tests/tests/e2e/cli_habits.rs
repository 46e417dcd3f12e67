//! `mboard-client` as people use it: deadlines, closed ports, names, flags where they are
//! typed, terminals, pipes, completions and man pages — with the real binary.
//!
//! Terminal behaviour runs in a real pseudo-terminal made by util-linux `script`, sized
//! with `stty`; nothing in the client is forced into terminal mode.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mboard_tests::{DataDir, Peer, TestServer, binary, board_contents, cli, gate};

/// A path that lets one client datagram through every `gap`: a slow link on which a
/// transfer keeps making progress and is never silent for long. Stops on drop.
struct SlowPath {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl SlowPath {
    fn start(server: SocketAddr, gap: Duration) -> SlowPath {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind"));
        let up = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind"));
        up.connect(server).expect("connect");
        for s in [&front, &up] {
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
        }
        let addr = front.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (f, u, c, s) = (front.clone(), up.clone(), client.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = f.recv_from(&mut buf) {
                    *c.lock().expect("client") = Some(from);
                    std::thread::sleep(gap);
                    let _ = u.send(&buf[..n]);
                }
            }
        });
        let s = stop.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = up.recv(&mut buf)
                    && let Some(to) = *client.lock().expect("client")
                {
                    let _ = front.send_to(&buf[..n], to);
                }
            }
        });
        SlowPath { addr, stop }
    }
}

impl Drop for SlowPath {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An address where nothing is bound: the kernel refuses datagrams to it.
fn closed_port() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr")
}

fn run(args: &[&str]) -> Output {
    Command::new(binary("mboard-client"))
        .args(args)
        .env_remove("MBOARD_SERVER")
        .env_remove("MBOARD_CLASSIC")
        .output()
        .expect("run mboard-client")
}

/// Runs the client in a pseudo-terminal `cols` wide: standard output and standard error
/// are both the terminal. Returns the exit code and what the terminal received, with the
/// terminal's `\r\n` line ends turned back into `\n`.
fn in_terminal(cols: u16, args: &[&str]) -> (Option<i32>, String) {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let exe = binary("mboard-client");
    let words: Vec<String> = args.iter().map(|a| quote(a)).collect();
    let line = format!(
        "stty cols {cols} rows 24; exec {} {}",
        quote(&exe.to_string_lossy()),
        words.join(" ")
    );
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_remove("MBOARD_SERVER")
        .env_remove("MBOARD_CLASSIC")
        .stdin(Stdio::null())
        .output()
        .expect("run script (util-linux)");
    let shown = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    (out.status.code(), shown)
}

#[test]
fn a_slow_transfer_still_making_progress_outlives_the_timeout() {
    let _gate = gate::timed();
    let server = TestServer::builder().start();
    let path = SlowPath::start(server.addr, Duration::from_millis(2));
    let text = vec![b'z'; 1_500_000];
    let started = Instant::now();
    // About 1,100 blocks at 2 ms each: well past a 1 s timeout, never 1 s silent.
    let out = cli(path.addr, &["--timeout", "1s", "publish", "-"], &text);
    assert_eq!(
        (out.code, out.out()),
        (Some(0), "0\n".into()),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let board = board_contents(server.addr).expect("board");
    assert_eq!(board.len(), 1);
    assert!(board[0].entry.text == text);

    // --max-time is a deadline for the whole command, however lively the server.
    let started = Instant::now();
    let args = ["--timeout", "5s", "--max-time", "700ms", "publish", "-"];
    let out = cli(path.addr, &args, &text);
    assert_eq!(out.code, Some(3));
    assert_eq!(
        out.stderr,
        format!(
            "error: {} did not finish within the time allowed (700ms)\n",
            path.addr
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_silent_server_runs_out_the_timeout_or_the_max_time_whichever_is_first() {
    let _gate = gate::timed();
    // Bound, and never answering.
    let quiet = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = quiet.local_addr().expect("addr");
    binary("mboard-client");
    let out = cli(addr, &["--timeout", "1s", "ids"], b"");
    assert_eq!(out.code, Some(3));
    assert_eq!(
        out.stderr,
        format!("error: no reply from {addr} within 1s\n")
    );
    let started = Instant::now();
    let out = cli(addr, &["--timeout", "10s", "--max-time", "1s", "ids"], b"");
    assert_eq!(out.code, Some(3));
    assert_eq!(
        out.stderr,
        format!("error: {addr} did not finish within the time allowed (1s)\n")
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_closed_port_is_reported_within_about_a_second() {
    let _gate = gate::timed();
    let addr = closed_port();
    binary("mboard-client");
    let started = Instant::now();
    let out = cli(addr, &["ids"], b"");
    let elapsed = started.elapsed();
    assert_eq!(out.code, Some(3));
    assert_eq!(
        out.stderr,
        format!("error: connection refused by {addr} (is mboard-server running?)\n")
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "the 5 s timeout was waited out: {elapsed:?}"
    );
}

#[test]
fn a_brief_restart_is_ridden_out() {
    let _gate = gate::timed();
    let first = TestServer::builder().start();
    let addr = first.addr;
    drop(first);
    let child = Command::new(binary("mboard-client"))
        .args(["--server", &addr.to_string(), "publish", "after", "restart"])
        .env_remove("MBOARD_CLASSIC")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    // Refused for 300 ms, then served again on the same port.
    std::thread::sleep(Duration::from_millis(300));
    let _second = TestServer::builder().listen(&addr.to_string()).start();
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"0\n");
    assert_eq!(
        Peer::new(addr).ask_str("3:0").rsplit(':').next(),
        Some("after restart")
    );
}

#[test]
fn names_and_a_missing_port_resolve_as_people_expect() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let name = format!("localhost:{}", server.addr.port());
    assert_eq!(run(&["--server", &name, "publish", "named"]).stdout, b"0\n");
    // No port: 7777, whatever answers there (maybe nothing).
    let out = run(&["--server", "127.0.0.1", "--max-time", "1s", "ids"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("127.0.0.1:7777"),
        "{stderr}"
    );
}

#[test]
fn flags_and_words_go_where_people_put_them() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let s = server.addr.to_string();
    let out = run(&["publish", "hello", "world", "--server", &s]);
    assert_eq!(
        out.stdout,
        b"0\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        run(&["publish", "--server", &s, "--", "-n", "5"]).stdout,
        b"1\n"
    );
    assert_eq!(run(&["get", "0", "--server", &s]).stdout, b"hello world");
    assert_eq!(run(&["get", "--server", &s, "1"]).stdout, b"-n 5");
    let json = run(&[
        "last",
        "--server",
        &s,
        "--json",
        "--timeout",
        "2s",
        "-n",
        "1",
    ]);
    let json = String::from_utf8_lossy(&json.stdout).into_owned();
    assert!(
        json.starts_with("{\"id\":1,") && json.ends_with("\"text\":\"-n 5\"}\n"),
        "{json}"
    );
    assert_eq!(run(&["ids", "--json", "--server", &s]).stdout, b"[0,1]\n");
}

#[test]
fn last_on_a_terminal_fits_its_width_and_pipes_get_everything() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let p = Peer::new(server.addr);
    p.ask("1:short");
    p.ask(format!("1:{}", "x".repeat(500)));
    p.ask("1:\u{202e}txt.exe");
    let s = server.addr.to_string();
    let (code, shown) = in_terminal(72, &["last", "--server", &s]);
    assert_eq!(code, Some(0), "{shown}");
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 3, "{shown}");
    assert!(lines[0].ends_with("  short"), "{shown}");
    assert!(lines[1].ends_with("x… [500 bytes]"), "{shown}");
    for line in &lines {
        assert!(
            line.chars().count() <= 72,
            "wider than the terminal: {line}"
        );
    }
    assert!(lines[2].ends_with("  \\u{202e}txt.exe"), "{shown}");
    let (_, full) = in_terminal(72, &["last", "--full", "--server", &s]);
    assert!(full.contains(&"x".repeat(500)), "{full}");
    let piped = cli(server.addr, &["last"], b"").out();
    assert!(
        piped.contains(&format!("  {}\n", "x".repeat(500))),
        "{piped}"
    );
    assert!(piped.contains("\\u{202e}"), "escaped in pipes too");
}

#[test]
fn get_keeps_binary_off_a_terminal_and_ends_text_with_a_newline() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let p = Peer::new(server.addr);
    p.ask(b"1:\xff\xfebinary\x00".as_slice());
    p.ask("1:plain text");
    let s = server.addr.to_string();
    let (code, shown) = in_terminal(80, &["get", "0", "--server", &s]);
    assert_eq!(code, Some(2), "{shown}");
    assert_eq!(
        shown,
        "error: message 0 is binary (not UTF-8 text); not writing it to a terminal (use -o \
         FILE, a pipe, or --force)\n"
    );
    let (code, _) = in_terminal(80, &["get", "0", "--force", "--server", &s]);
    assert_eq!(code, Some(0));
    let dir = DataDir::new();
    std::fs::create_dir_all(dir.path()).expect("dir");
    let file = dir.path().join("out.bin");
    let (code, shown) = in_terminal(
        80,
        &["get", "0", "-o", &file.to_string_lossy(), "--server", &s],
    );
    assert_eq!((code, shown.as_str()), (Some(0), ""));
    assert_eq!(
        std::fs::read(&file).expect("written"),
        b"\xff\xfebinary\x00"
    );
    assert_eq!(
        cli(server.addr, &["get", "0"], b"").stdout,
        b"\xff\xfebinary\x00"
    );
    // Text gets a newline on a terminal, and none in a pipe.
    assert_eq!(
        in_terminal(80, &["get", "1", "--server", &s]).1,
        "plain text\n"
    );
    assert_eq!(cli(server.addr, &["get", "1"], b"").stdout, b"plain text");
}

#[test]
fn the_progress_bar_shows_rate_and_time_left_then_clears() {
    let _gate = gate::timed();
    let server = TestServer::builder().start();
    let path = SlowPath::start(server.addr, Duration::from_millis(1));
    let dir = DataDir::new();
    std::fs::create_dir_all(dir.path()).expect("dir");
    let file = dir.path().join("big");
    std::fs::write(&file, vec![b'b'; 1_600_000]).expect("write");
    let (file, s) = (file.to_string_lossy().into_owned(), path.addr.to_string());
    let (code, shown) = in_terminal(100, &["publish", "--file", &file, "--server", &s]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(
        shown.contains("/s  ") && shown.contains(" left\x1b[K"),
        "{shown:?}"
    );
    assert!(
        shown.ends_with("\r\x1b[K0\n"),
        "cleared before the id: {shown:?}"
    );
    // An error erases the bar first, so it never shares the bar's line.
    let args = [
        "publish",
        "--file",
        &file,
        "--server",
        &s,
        "--max-time",
        "600ms",
    ];
    let (code, shown) = in_terminal(100, &args);
    assert_eq!(code, Some(3), "{shown}");
    assert!(shown.contains("\x1b[K\r\x1b[Kerror: "), "{shown:?}");
}

#[test]
fn errors_say_what_went_wrong_for_the_text_given() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let out = cli(server.addr, &["publish", "-"], &vec![b'q'; 16 << 20]);
    assert_eq!(out.code, Some(1));
    assert_eq!(
        out.stderr,
        "error: text too large: 16777216 bytes, the server takes at most 16777177\n"
    );
    // And the largest text it names does fit.
    let out = cli(
        server.addr,
        &["--timeout", "30s", "publish", "-"],
        &vec![b'q'; (16 << 20) - 39],
    );
    assert_eq!(
        (out.code, out.out()),
        (Some(0), "0\n".into()),
        "{}",
        out.stderr
    );

    let out = cli(server.addr, &["raw", &"x".repeat(65_508)], b"");
    assert_eq!(out.code, Some(2));
    assert_eq!(
        out.stderr,
        "error: PDU too large for one datagram: 65508 bytes, at most 65507\n"
    );
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let _gate = gate::plain();
    let server = TestServer::builder().start();
    let p = Peer::new(server.addr);
    for i in 0..300 {
        p.ask(format!("1:{i} {}", "p".repeat(1_000)));
    }
    // 300 kB of output: far more than a pipe holds, so the reader's leaving is seen.
    let mut child = Command::new(binary("mboard-client"))
        .args(["--server", &server.addr.to_string(), "last", "-n", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("one line");
    assert!(first.starts_with("#0  "), "{first}");
    // The reader is gone (as `head -1` goes); the client's next writes fail with EPIPE.
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn completions_and_man_pages_come_from_the_binary() {
    let _gate = gate::plain();
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("mboard-client") && script.contains("publish"),
            "{shell}"
        );
    }
    assert_eq!(run(&["completions", "tcsh"]).status.code(), Some(2));
    let page = run(&["manpage"]);
    assert!(page.status.success());
    assert!(String::from_utf8_lossy(&page.stdout).contains(".TH mboard-client 1"));
    let dir = DataDir::new();
    let out = run(&["manpage", dir.arg()]);
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    for page in [
        "mboard-client.1",
        "mboard-client-publish.1",
        "mboard-client-get.1",
    ] {
        assert!(dir.path().join(page).exists(), "{page} in {listed}");
        assert!(listed.contains(page), "{listed}");
    }
}

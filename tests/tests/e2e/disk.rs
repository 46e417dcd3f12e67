//! Disk accidents with the real binary on filesystems the tests make: a disk that fills,
//! a file size limit, a filesystem gone read-only, a disk that stalls, a data directory
//! or lock removed under the server, and a journal cut in the middle of a text made of
//! copies of its own records.
//!
//! The mounts need root (CI runs as root); without it these fail saying so.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mboard_client::{Client, ClientConfig};
use mboard_tests::disk::{Ext4, Tmpfs};
use mboard_tests::{DataDir, Peer, ServerProcess, binary, board_contents, gate, scrape};

fn start(data: &Path, extra: &[&str]) -> ServerProcess {
    let data = data.to_str().expect("utf-8 path");
    let mut args = vec!["--data-dir", data, "--metrics", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    ServerProcess::must_start(&args)
}

/// Publishes `text` until the reply is not `0:<id>`; returns the ids acknowledged (and
/// their texts) and the reply that ended it.
fn publish_until_refused(p: &Peer, text: &str, acked: &mut BTreeMap<u64, String>) -> String {
    for _ in 0..10_000 {
        let reply = p.ask_str(format!("1:{text}"));
        match reply.strip_prefix("0:").and_then(|id| id.parse().ok()) {
            Some(id) => {
                acked.insert(id, text.to_owned());
            }
            None => return reply,
        }
    }
    panic!("never refused")
}

/// Reads still answered, with what was acknowledged.
fn reads_go_on(p: &Peer, acked: &BTreeMap<u64, String>) {
    let ids = p.ask_str("2:0");
    let want: Vec<String> = acked.keys().map(u64::to_string).collect();
    assert_eq!(ids, format!("0:{}", want.join(":")));
    let (first, text) = acked.iter().next().expect("acked");
    let get = p.ask_whole(format!("3:{first}"));
    assert!(get.ends_with(format!(":{text}").as_bytes()));
    assert!(p.ask_whole("4:1").starts_with(b"0:1:"));
}

/// After a restart the board holds exactly what was acknowledged.
fn holds_exactly(server: &ServerProcess, acked: &BTreeMap<u64, String>) {
    let board: BTreeMap<u64, String> = board_contents(server.addr)
        .expect("board")
        .into_iter()
        .map(|m| (m.id.0, String::from_utf8_lossy(&m.entry.text).into_owned()))
        .collect();
    assert_eq!(&board, acked);
    assert!(
        !server.log().contains("torn"),
        "nothing half-written: {}",
        server.log()
    );
}

fn metric(server: &ServerProcess, series: &str) -> f64 {
    let addr = server.metrics_addr().expect("metrics");
    scrape(addr)
        .expect("scrape")
        .value(series)
        .unwrap_or_else(|| panic!("no {series}"))
}

fn lines_with(server: &ServerProcess, needle: &str) -> usize {
    server.log().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_full_disk_is_refused_reads_go_on_and_publishing_resumes_when_space_returns() {
    let _gate = gate::timed();
    let fs = Tmpfs::mount("8m");
    let data = fs.path().join("data");
    let server = start(&data, &["--segment-size", "1MiB"]);
    let p = Peer::new(server.addr);
    let mut acked = BTreeMap::new();
    for i in 0..10 {
        assert_eq!(p.ask_str(format!("1:before {i}")), format!("0:{i}"));
        acked.insert(i, format!("before {i}"));
    }
    let filler = fs.fill("filler");
    let text = "f".repeat(1_000);
    assert_eq!(
        publish_until_refused(&p, &text, &mut acked),
        "4:storage full"
    );
    // A flood of publishes while full: each refused at once, none logged.
    for _ in 0..2_000 {
        assert_eq!(p.ask_str(format!("1:{text}")), "4:storage full");
    }
    reads_go_on(&p, &acked);
    assert_eq!(metric(&server, "mboard_store_state{state=\"full\"}"), 1.0);
    assert!(
        metric(
            &server,
            "mboard_journal_write_failures_total{cause=\"full\"}"
        ) >= 1.0
    );
    assert_eq!(
        lines_with(&server, "the disk is full"),
        1,
        "{}",
        server.log()
    );
    assert!(server.log().lines().count() < 20, "{}", server.log());
    // Room again: publishing resumes by itself.
    std::fs::remove_file(filler).expect("rm filler");
    let deadline = Instant::now() + Duration::from_secs(5);
    let next = *acked.keys().last().expect("acked") + 1;
    loop {
        let reply = p.ask_str("1:after");
        if reply == format!("0:{next}") {
            acked.insert(next, "after".into());
            break;
        }
        assert_eq!(reply, "4:storage full");
        assert!(Instant::now() < deadline, "did not resume");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(&server, "mboard_store_state{state=\"writable\"}"),
        1.0
    );
    assert!(
        server.log().contains("journal writable again"),
        "{}",
        server.log()
    );
    assert_eq!(server.stop(), Some(0));
    holds_exactly(&start(&data, &[]), &acked);
}

#[test]
fn retention_frees_a_full_disk_and_publishing_resumes() {
    let _gate = gate::timed();
    let fs = Tmpfs::mount("8m");
    let data = fs.path().join("data");
    let server = start(&data, &["--segment-size", "256KiB", "--retain-age", "3s"]);
    let p = Peer::new(server.addr);
    let text = "r".repeat(60_000);
    for i in 0..50 {
        assert_eq!(p.ask_str(format!("1:{text}")), format!("0:{i}"));
    }
    let _filler = fs.fill("filler");
    let mut acked = BTreeMap::new();
    assert_eq!(
        publish_until_refused(&p, &text, &mut acked),
        "4:storage full"
    );
    // Nobody frees anything; the messages age out and their segments are deleted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = p.ask_str("1:after retention");
        if reply.starts_with("0:") {
            break;
        }
        assert_eq!(reply, "4:storage full");
        assert!(Instant::now() < deadline, "retention did not make room");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metric(&server, "mboard_journal_segments_deleted_total") >= 5.0);
}

#[test]
fn a_file_size_limit_is_a_full_disk_too() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    // RLIMIT_FSIZE of 1 MB, with SIGXFSZ ignored so that the write fails with EFBIG
    // instead of killing the server: what a quota does, and no mount needed.
    let server_args = format!(
        "exec prlimit --fsize=1000000 -- {} --listen 127.0.0.1:0 --data-dir {}",
        binary("mboard-server").display(),
        dir.arg()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &format!("trap '' XFSZ; {server_args}")]);
    let server = ServerProcess::start_command(cmd).unwrap_or_else(|(c, log)| panic!("{c:?} {log}"));
    let p = Peer::new(server.addr);
    let mut acked = BTreeMap::new();
    let text = "z".repeat(50_000);
    assert_eq!(
        publish_until_refused(&p, &text, &mut acked),
        "4:storage full"
    );
    assert!((15..=20).contains(&acked.len()), "{}", acked.len());
    reads_go_on(&p, &acked);
    server.kill();
    let server = ServerProcess::must_start(&["--data-dir", dir.arg()]);
    holds_exactly(&server, &acked);
}

#[test]
fn a_read_only_filesystem_is_refused_and_reads_go_on() {
    let _gate = gate::plain();
    let fs = Ext4::mount(64);
    let data = fs.path().join("data");
    let server = start(&data, &[]);
    let p = Peer::new(server.addr);
    let mut acked = BTreeMap::new();
    for i in 0..5 {
        assert_eq!(p.ask_str(format!("1:kept {i}")), format!("0:{i}"));
        acked.insert(i, format!("kept {i}"));
    }
    fs.fail_read_only();
    assert_eq!(p.ask_str("1:refused"), "4:storage read-only");
    for _ in 0..500 {
        assert_eq!(p.ask_str("1:refused"), "4:storage read-only");
    }
    reads_go_on(&p, &acked);
    assert_eq!(
        metric(&server, "mboard_store_state{state=\"read_only\"}"),
        1.0
    );
    assert!(
        metric(
            &server,
            "mboard_journal_write_failures_total{cause=\"read_only\"}"
        ) >= 1.0
    );
    assert_eq!(lines_with(&server, "read-only"), 1, "{}", server.log());
}

#[test]
fn a_stalled_disk_never_holds_up_reads_and_shutdown_waits_only_its_grace() {
    let _gate = gate::timed();
    let fs = Ext4::mount(64);
    let data = fs.path().join("data");
    let mut server = start(
        &data,
        &["--max-queued-publishes", "32", "--shutdown-grace", "1s"],
    );
    let p = Peer::new(server.addr);
    let mut acked = BTreeMap::new();
    for i in 0..5 {
        assert_eq!(p.ask_str(format!("1:kept {i}")), format!("0:{i}"));
        acked.insert(i, format!("kept {i}"));
    }
    let frozen = fs.freeze();
    // 32 publishes wait for the disk, unanswered; every one after them is answered
    // busy at once, never waiting for a place in the queue.
    let waiting = Peer::new(server.addr);
    for i in 0..32 {
        waiting.send(format!("1:stalled {i}").as_bytes());
    }
    assert_eq!(waiting.recv_within(Duration::from_millis(300)), None);
    let started = Instant::now();
    for i in 0..200 {
        assert_eq!(p.ask_str(format!("1:more {i}")), "4:busy");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Reads and anything else are answered at once.
    let started = Instant::now();
    reads_go_on(&p, &acked);
    assert_eq!(p.ask_str("9:x"), "3:unknown request 9");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // SIGTERM: the disk is given a second, then the server stops serving without
    // acknowledging what is stuck.
    server.terminate();
    let deadline = Instant::now() + Duration::from_secs(8);
    while !server
        .log()
        .contains("did not take the queued publishes within the grace")
    {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let quiet = Peer::new(server.addr);
    quiet.send(b"2:0");
    assert_eq!(
        quiet.recv_within(Duration::from_millis(500)),
        None,
        "still serving"
    );
    // The stuck write can only end once the disk thaws; then the process is gone.
    frozen.thaw();
    assert!(
        server.wait_timeout(Duration::from_secs(10)).is_some(),
        "did not exit"
    );
    let server = start(&data, &[]);
    let board = board_contents(server.addr).expect("board");
    for (id, text) in &acked {
        assert_eq!(board[*id as usize].entry.text, text.as_bytes());
    }
    let next = Peer::new(server.addr).ask_str("1:after");
    let id: u64 = next
        .strip_prefix("0:")
        .and_then(|n| n.parse().ok())
        .expect("id");
    assert!(id >= 5, "{next}");
}

#[test]
fn a_data_directory_removed_while_running_stops_publishing_and_no_id_is_reused() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    let server = start(dir.path(), &[]);
    let p = Peer::new(server.addr);
    let mut acked = BTreeMap::new();
    for i in 0..5 {
        assert_eq!(p.ask_str(format!("1:m{i}")), format!("0:{i}"));
        acked.insert(i, format!("m{i}"));
    }
    std::fs::remove_dir_all(dir.path()).expect("rm -r");
    for _ in 0..100 {
        assert_eq!(p.ask_str("1:into the void"), "4:storage unavailable");
    }
    reads_go_on(&p, &acked);
    assert_eq!(metric(&server, "mboard_store_state{state=\"lost\"}"), 1.0);
    assert_eq!(
        lines_with(&server, "no longer this server's"),
        1,
        "{}",
        server.log()
    );
    // The directory holds the next id now, and this server's lock.
    let Err((_, log)) = ServerProcess::start(&["--data-dir", dir.arg()]) else {
        panic!("a second server started beside it")
    };
    assert!(log.contains("in use by another mboard-server"), "{log}");
    assert_eq!(server.stop(), Some(0));
    let server = start(dir.path(), &[]);
    let p = Peer::new(server.addr);
    assert_eq!(p.ask_str("2:0"), "0:");
    assert_eq!(
        p.ask_str("1:after the restart"),
        "0:5",
        "acknowledged ids are not reused"
    );
}

#[test]
fn a_lock_file_removed_while_running_stops_the_writer() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    let first = start(dir.path(), &[]);
    let p = Peer::new(first.addr);
    for i in 0..3 {
        assert_eq!(p.ask_str(format!("1:m{i}")), format!("0:{i}"));
    }
    std::fs::remove_file(dir.path().join("LOCK")).expect("rm LOCK");
    assert_eq!(p.ask_str("1:two writers"), "4:storage unavailable");
    // Another server may now use the directory; the first never writes again.
    let second = start(dir.path(), &[]);
    let q = Peer::new(second.addr);
    assert_eq!(q.ask_str("1:from the second"), "0:3");
    assert_eq!(p.ask_str("1:from the first"), "4:storage unavailable");
    assert_eq!(q.ask_str("2:0"), "0:0:1:2:3");
    drop(first);
    drop(second);
    let server = start(dir.path(), &[]);
    assert_eq!(Peer::new(server.addr).ask_str("2:0"), "0:0:1:2:3");
}

#[test]
fn a_text_of_copied_records_cut_mid_write_is_repaired_as_a_torn_tail() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    let server = start(dir.path(), &[]);
    let p = Peer::new(server.addr);
    for i in 0..3 {
        assert_eq!(p.ask_str(format!("1:m{i}")), format!("0:{i}"));
    }
    // A live copy of the journal, published back to it a few hundred times over: the
    // text is full of this journal's own records, salt and all.
    let copy = std::fs::read(dir.segment(0)).expect("segment");
    let text: Vec<u8> = copy.iter().copied().cycle().take(2 << 20).collect();
    let mut client = Client::new(server.addr, ClientConfig::default()).expect("client");
    assert_eq!(client.publish(&text).expect("publish").0, 3);
    assert_eq!(server.stop(), Some(0));
    // The server died halfway through writing it.
    let len = std::fs::metadata(dir.segment(0)).expect("segment").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.segment(0))
        .expect("open");
    f.set_len(len - (1 << 20)).expect("cut");
    drop(f);
    let server = start(dir.path(), &[]);
    assert!(
        server.log().contains("torn final record cut off"),
        "{}",
        server.log()
    );
    let p = Peer::new(server.addr);
    assert_eq!(p.ask_str("2:0"), "0:0:1:2");
    assert_eq!(p.ask_str("1:next"), "0:3");
}

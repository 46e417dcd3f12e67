//! The durable board, with the real binary: crashes, torn tails, corruption, restarts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mboard_client::{Client, ClientConfig};
use mboard_protocol::{Expect, Response};
use mboard_tests::{DataDir, Peer, ServerProcess, board_contents, gate};

fn start(dir: &DataDir) -> ServerProcess {
    ServerProcess::must_start(&["--data-dir", dir.arg()])
}

/// Every message the server acknowledged, by id.
type Acked = Mutex<BTreeMap<u64, Vec<u8>>>;

/// Publisher `t`: publishes until `stop` is set or a publish fails, recording what was
/// acknowledged. Sizes go from a few bytes to several blocks; odd publishers publish
/// single datagrams, even ones through sessions.
/// Publishes until told to stop; returns why it stopped early, if it did.
fn publish_until_stopped(
    addr: SocketAddr,
    t: usize,
    acked: &Acked,
    stop: &AtomicBool,
) -> Option<String> {
    let config = ClientConfig {
        timeout: Duration::from_millis(1_500),
        ..ClientConfig::default()
    };
    let mut client = Client::new(addr, config).expect("client");
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut text = format!(
            "publisher {t} message {i} {}",
            "x".repeat((i * 131 + t * 17) % 5_000)
        )
        .into_bytes();
        let result = if t.is_multiple_of(2) {
            client.publish(&text)
        } else {
            // What fits one datagram.
            text.truncate(1_400);
            client.publish_datagram(&text)
        };
        match result {
            Ok(id) => {
                acked.lock().expect("acked").insert(id.0, text);
            }
            // The server was killed: whatever was not acknowledged is not promised.
            Err(e) => return (!stop.load(Ordering::Relaxed)).then(|| e.to_string()),
        }
    }
    None
}

#[test]
fn acknowledged_publishes_survive_sigkill() {
    // A publisher that waits 1.5 s for a reply stops, and 300 acknowledgements are needed.
    let _gate = gate::timed();
    let dir = DataDir::new();
    let server = start(&dir);
    let acked: Arc<Acked> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = server.addr;
    let publishers: Vec<_> = (0..8)
        .map(|t| {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || publish_until_stopped(addr, t, &acked, &stop))
        })
        .collect();
    while acked.lock().expect("acked").len() < 300 {
        // Every publisher gave up before the kill: say why rather than wait for ever.
        if publishers.iter().all(|p| p.is_finished()) {
            let why: Vec<_> = publishers.into_iter().map(|p| p.join()).collect();
            panic!("every publisher stopped before the kill: {why:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill();
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        let _ = p.join().expect("publisher");
    }
    let acked = acked.lock().expect("acked").clone();

    let server = start(&dir);
    let board = board_contents(server.addr).expect("board");
    let stored: BTreeMap<u64, Vec<u8>> = board
        .iter()
        .map(|m| (m.id.0, m.entry.text.to_vec()))
        .collect();
    for (id, text) in &acked {
        assert_eq!(
            stored.get(id),
            Some(text),
            "acknowledged message {id} lost or changed"
        );
    }
    let max_acked = *acked.keys().last().expect("some acks");
    let next = Client::new(server.addr, ClientConfig::default())
        .expect("client")
        .publish(b"after restart")
        .expect("publish");
    assert!(
        next.0 > max_acked,
        "next id {next} must exceed every acknowledged id ({max_acked})"
    );
    assert!(
        server.log().contains("journal replayed"),
        "{}",
        server.log()
    );
}

/// The answer to `q`, with a download offer (whose sid is random) replaced by what it offers.
fn answer(p: &Peer, q: &str) -> Vec<u8> {
    let reply = p.ask(q);
    match Response::parse(Bytes::from(reply.clone()), Expect::Closed) {
        Ok(Response::Offer(offer)) => p.fetch(&offer, 0..offer.blocks()).expect("fetch"),
        _ => reply,
    }
}

#[test]
fn restart_keeps_every_answer_identical() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    let server = start(&dir);
    let p = Peer::new(server.addr);
    for text in ["Hello world!", "a:b:c", "third\nline"] {
        assert!(p.ask_str(format!("1:{text}")).starts_with("0:"));
    }
    let long = [b"1:".as_slice(), &[b'z'; 3_000]].concat();
    assert_eq!(p.ask_str(&long), "0:3");
    let questions = [
        "2:0", "2:2", "3:0", "3:1", "3:2", "3:3", "3:99", "4:2", "4:3", "4:0", "2:x",
    ];
    let answers: Vec<Vec<u8>> = questions.iter().map(|q| answer(&p, q)).collect();
    assert!(
        answers[5].ends_with(&[b'z'; 3_000]),
        "the long message came through its offer"
    );
    let whole = board_contents(server.addr).expect("board");
    assert_eq!(server.stop(), Some(0), "clean exit on SIGTERM");

    let server = start(&dir);
    let p = Peer::new(server.addr);
    for (q, before) in questions.iter().zip(&answers) {
        assert_eq!(
            &answer(&p, q),
            before,
            "answer to {q} changed across the restart"
        );
    }
    assert_eq!(board_contents(server.addr).expect("board"), whole);
}

#[test]
fn torn_tails_are_cut_off_with_a_warning() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    let server = start(&dir);
    let p = Peer::new(server.addr);
    for i in 0..5 {
        assert_eq!(p.ask_str(format!("1:message {i}")), format!("0:{i}"));
    }
    server.stop();
    let segment = dir.segment(0);
    let good = std::fs::metadata(&segment).expect("segment").len();

    // Bytes appended after the last record, as by a write that never finished.
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes.extend_from_slice(b"MBR3\x10\x00\x00\x00garbage");
    std::fs::write(&segment, &bytes).expect("write");
    let server = start(&dir);
    let log = server.log();
    assert!(
        log.contains(&format!(
            "torn final record cut off: dropped 15 bytes at offset {good}"
        )),
        "{log}"
    );
    assert_eq!(Peer::new(server.addr).ask_str("2:0"), "0:0:1:2:3:4");
    server.stop();
    assert_eq!(std::fs::metadata(&segment).expect("segment").len(), good);

    // The file cut in the middle of its last record.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open");
    f.set_len(good - 5).expect("cut");
    drop(f);
    let server = start(&dir);
    assert!(
        server.log().contains("torn final record cut off"),
        "{}",
        server.log()
    );
    let p = Peer::new(server.addr);
    assert_eq!(p.ask_str("2:0"), "0:0:1:2:3");
    assert!(p.ask_str("3:3").ends_with(":message 3"));
    assert_eq!(
        p.ask_str("1:message 4 again"),
        "0:4",
        "ids continue after the surviving ones"
    );
}

#[test]
fn corruption_stops_start_up_and_changes_nothing() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    let server = start(&dir);
    let p = Peer::new(server.addr);
    for i in 0..20 {
        p.ask(format!("1:message number {i}"));
    }
    server.stop();
    let segment = dir.segment(0);
    let mut bytes = std::fs::read(&segment).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&segment, &bytes).expect("write");
    let snapshot = |d: &DataDir| {
        let mut files: Vec<(String, Vec<u8>)> = ["journal", "LOCK"]
            .iter()
            .map(|name| d.path().join(name))
            .chain(d.segments().into_iter().map(|s| d.segment(s)))
            .map(|path| {
                let bytes = std::fs::read(&path).expect("file");
                (path.display().to_string(), bytes)
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot(&dir);
    let Err((code, log)) = ServerProcess::start(&["--data-dir", dir.arg()]) else {
        panic!("a corrupt journal must stop start-up")
    };
    assert_ne!(code, Some(0));
    let path = segment.display().to_string();
    assert!(
        log.contains(&format!("journal {path} is corrupt at offset ")),
        "{log}"
    );
    assert_eq!(snapshot(&dir), before, "nothing on disk changed");
}

#[test]
fn one_server_per_data_directory() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    let first = start(&dir);
    let Err((code, log)) = ServerProcess::start(&["--data-dir", dir.arg()]) else {
        panic!("a second server must be refused")
    };
    assert_ne!(code, Some(0));
    assert!(log.contains("is in use by another mboard-server"), "{log}");
    // The first is unaffected.
    assert_eq!(Peer::new(first.addr).ask_str("1:still serving"), "0:0");
    assert_eq!(Peer::new(first.addr).ask_str("2:0"), "0:0");
}

#[test]
fn fsync_never_also_survives_a_process_crash() {
    let _gate = gate::plain();
    let dir = DataDir::new();
    let server = ServerProcess::must_start(&["--data-dir", dir.arg(), "--fsync", "never"]);
    let p = Peer::new(server.addr);
    for i in 0..50 {
        assert_eq!(p.ask_str(format!("1:n{i}")), format!("0:{i}"));
    }
    server.kill();
    let server = start(&dir);
    let board = board_contents(server.addr).expect("board");
    assert_eq!(board.len(), 50);
    assert!(
        board
            .iter()
            .enumerate()
            .all(|(i, m)| m.entry.text == format!("n{i}").as_bytes())
    );
}

#[test]
fn an_unusable_data_directory_is_named_in_the_error() {
    let _gate = gate::plain();
    let Err((code, log)) = ServerProcess::start(&["--data-dir", "/proc/mboard-cannot-be-here"])
    else {
        panic!("a data directory that cannot be created must stop start-up")
    };
    assert_ne!(code, Some(0));
    assert!(log.contains("/proc/mboard-cannot-be-here"), "{log}");
}

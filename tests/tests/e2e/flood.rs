//! A flood of large publishes against the memory board: its byte limit holds the
//! server's memory, whatever the rate.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mboard_tests::{ServerProcess, gate, scrape};

/// What the server may hold besides the board's 64 MiB: the quarter over the limit past
/// which publishes are refused as busy (so that a trimming thread starved of CPU cannot
/// let memory run away), and 192 MiB for the process itself: an idle server is 20 MiB,
/// the receive loops' buffers up to 8 MiB (`--io-batch`), and jemalloc hands freed texts
/// back to the system only after its decay time (10 s), so under a flood it holds some
/// seconds' worth of trimmed texts, more the faster the flood. Measured peaks: 174 MiB
/// with 13–15 GB published in the 15 s; 166–217 MiB with 27–29 GB, on a quiet machine
/// (docs/OPERATIONS.md). Memory that grew with the flood would pass this within a second.
const LIMIT: u64 = 64 << 20;
const MARGIN: u64 = LIMIT / 4 + (192 << 20);

#[test]
#[allow(clippy::print_stderr)] // what the flood did, for `--nocapture`
fn fifteen_seconds_of_60_kb_publishes_stay_within_the_byte_limit() {
    let _gate = gate::load();
    let server = ServerProcess::must_start(&[
        "--in-memory",
        "--retain-bytes",
        "64MiB",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = server.metrics_addr().expect("metrics");
    let idle = server.resident_bytes().expect("rss");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..2)
        .map(|t| {
            let (stop, sent, to) = (stop.clone(), sent.clone(), server.addr);
            std::thread::spawn(move || {
                let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
                let mut datagram = b"1:".to_vec();
                datagram.extend(std::iter::repeat_n(b'a' + t, 60_000));
                while !stop.load(Ordering::Relaxed) {
                    if socket.send_to(&datagram, to).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut peak = idle;
    while started.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(server.resident_bytes().expect("rss"));
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().expect("sender");
    }
    let s = scrape(metrics).expect("scrape");
    let published = s.value("mboard_publishes_total").expect("publishes");
    let retained = s.value("mboard_retained_bytes").expect("retained");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "flood: {} datagrams sent, {published} published ({:.0} MiB), resident peak {:.1} MiB (idle {:.1} MiB), board {:.1} MiB",
        sent.load(Ordering::Relaxed),
        published * 60_000.0 / (1 << 20) as f64,
        mib(peak),
        mib(idle),
        retained / (1 << 20) as f64,
    );
    assert!(
        published * 60_000.0 > 4.0 * LIMIT as f64,
        "the flood published only {published} messages"
    );
    assert!(retained <= (LIMIT + LIMIT / 4) as f64, "{retained}");
    assert!(
        peak < LIMIT + MARGIN,
        "resident memory reached {:.1} MiB, over {:.1} MiB",
        mib(peak),
        mib(LIMIT + MARGIN)
    );
}

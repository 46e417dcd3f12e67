//! Replication lag of the clustered store: from a publish acknowledged by one server to
//! the message being readable on another. A `6:` is held on the second server, a `1:` is
//! published on the first, and the lag is the time from the first's reply to the wake on
//! the second (the first answers only once its own replica has the message).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Lag percentiles over `samples` publishes.
pub(crate) struct Lag {
    pub(crate) samples: usize,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) max_us: f64,
}

fn socket(to: SocketAddr) -> Result<UdpSocket> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(to)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

fn ask(s: &UdpSocket, pdu: &[u8], buf: &mut [u8]) -> Result<usize> {
    s.send(pdu)?;
    s.recv(buf).context("no reply within 5 s")
}

pub(crate) fn run(publisher: SocketAddr, reader: SocketAddr, duration: Duration) -> Result<Lag> {
    let (p, r) = (socket(publisher)?, socket(reader)?);
    let mut buf = vec![0u8; 65_536];
    let mut lags = Vec::new();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        // The newest id, from the publisher: the read is held after it.
        let n = ask(&p, b"2:1", &mut buf)?;
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        let newest: u64 = reply
            .rsplit(':')
            .next()
            .and_then(|id| id.parse().ok())
            .unwrap_or(0);
        r.send(format!("6:{newest}:1:5000").as_bytes())?;
        // Let the hold reach the reader before the publish.
        std::thread::sleep(Duration::from_millis(2));
        let n = ask(&p, b"1:lag probe", &mut buf)?;
        let acked = Instant::now();
        if !buf[..n].starts_with(b"0:") {
            bail!("publish refused: {}", String::from_utf8_lossy(&buf[..n]));
        }
        let n = r
            .recv(&mut buf)
            .context("the held read was not woken within 5 s")?;
        let seen = Instant::now();
        if !buf[..n].starts_with(b"0:1:") {
            bail!("unexpected wake: {}", String::from_utf8_lossy(&buf[..n]));
        }
        lags.push(seen.saturating_duration_since(acked).as_secs_f64() * 1e6);
    }
    lags.sort_by(f64::total_cmp);
    let at = |q: f64| {
        lags.get(((lags.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Lag {
        samples: lags.len(),
        p50_us: at(0.5),
        p99_us: at(0.99),
        max_us: at(1.0),
    })
}

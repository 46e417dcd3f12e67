//! Reading a metrics endpoint with plain HTTP/1.1, as Prometheus would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// One HTTP response from a metrics endpoint.
#[derive(Debug)]
pub struct Scrape {
    /// The status line, e.g. `HTTP/1.1 200 OK`.
    pub status: String,
    /// Header lines, as sent.
    pub headers: Vec<String>,
    /// The body.
    pub body: String,
}

impl Scrape {
    /// The value of the sample named exactly `series` (name and labels, as printed), if
    /// the body has it.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.body.lines().find_map(|line| {
            let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    /// The value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| {
            let (key, value) = h.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// The `Accept` header Prometheus (3.x) scrapes with: OpenMetrics first.
pub const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";

/// Sends `<method> <path> HTTP/1.1` to a metrics endpoint with Prometheus's `Accept`
/// header and reads the whole response (the request asks the server to close the
/// connection after it).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> Result<Scrape> {
    http_accepting(addr, method, path, Some(PROMETHEUS_ACCEPT))
}

/// [`http`] with this `Accept` header, or none.
pub fn http_accepting(
    addr: SocketAddr,
    method: &str,
    path: &str,
    accept: Option<&str>,
) -> Result<Scrape> {
    let mut stream = TcpStream::connect(addr).context("connect to metrics")?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .context("read metrics response")?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .context("response without a blank line after its headers")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_owned();
    Ok(Scrape {
        status,
        headers: lines.map(str::to_owned).collect(),
        body: body.to_owned(),
    })
}

/// `GET /metrics`, which must answer 200.
pub fn scrape(addr: SocketAddr) -> Result<Scrape> {
    let s = http(addr, "GET", "/metrics")?;
    if !s.status.contains(" 200 ") {
        bail!("scrape answered {}", s.status);
    }
    Ok(s)
}

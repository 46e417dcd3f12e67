use std::io::{Read, Write};
use std::net::TcpStream as StdStream;

use super::*;

/// An endpoint with nothing but its own series, on a runtime of its own.
fn endpoint(limits: EndpointLimits) -> (tokio::runtime::Runtime, SocketAddr) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    runtime.spawn(async move {
        let listener = TcpListener::from_std(listener).expect("listener");
        serve_metrics(listener, Registry::default(), limits).await
    });
    (runtime, addr)
}

/// One keep-alive `GET /metrics`, read to the end of its body.
fn keep_alive_get(stream: &mut StdStream) -> String {
    stream
        .write_all(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\n\r\n",
        )
        .expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4_096];
    loop {
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "closed mid-response");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if text.ends_with("# EOF\n") {
            return text;
        }
    }
}

/// A scrape on a connection of its own, closed after it.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = StdStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    text
}

/// Whether the server has closed `stream` (a reset counts).
fn closed(stream: &mut StdStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    match stream.read(&mut [0u8; 64]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
    }
}

const ONE: EndpointLimits = EndpointLimits {
    connections: 1,
    connections_per_ip: 1,
};

#[test]
fn an_idle_keep_alive_connection_gives_way_and_is_counted() {
    let (_runtime, addr) = endpoint(ONE);
    let mut idle = StdStream::connect(addr).expect("connect");
    let first = keep_alive_get(&mut idle);
    assert!(first.contains("mboard_metrics_connections 1\n"), "{first}");
    let text = scrape(addr);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    let evicted = "mboard_metrics_connections_evicted_total{reason=\"per_ip\",state=\"idle\"} 1\n";
    assert!(text.contains(evicted), "{text}");
    assert!(closed(&mut idle));
}

#[test]
fn a_connection_sending_its_request_slowly_gives_way_and_is_counted() {
    let (_runtime, addr) = endpoint(ONE);
    let mut slow = StdStream::connect(addr).expect("connect");
    slow.write_all(b"GET /metr").expect("send");
    // Until the server has read those bytes, the connection still looks idle.
    std::thread::sleep(Duration::from_millis(200));
    let text = scrape(addr);
    let evicted =
        "mboard_metrics_connections_evicted_total{reason=\"per_ip\",state=\"reading\"} 1\n";
    assert!(text.contains(evicted), "{text}");
    assert!(text.contains("mboard_metrics_connections_refused_total{reason=\"full\"} 0\n"));
    assert!(closed(&mut slow));
}

#[test]
fn responses_keep_their_content_length_and_head_has_no_body() {
    let (_runtime, addr) = endpoint(EndpointLimits::default());
    let mut stream = StdStream::connect(addr).expect("connect");
    let text = keep_alive_get(&mut stream);
    let (head, body) = text.split_once("\r\n\r\n").expect("head");
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    // The same connection is reused: the first response left it idle, not closed.
    stream
        .write_all(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut rest = String::new();
    stream.read_to_string(&mut rest).expect("read");
    assert!(rest.starts_with("HTTP/1.1 200 "), "{rest}");
    assert!(rest.ends_with("\r\n\r\n"), "{rest}");
}

//! How a message's publishing time and address travel with it in the stream: as headers,
//! so that every server renders the same `<ts>:<ip>:<port>:<text>` record.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::SystemTime;

use async_nats::HeaderMap;
use bytes::Bytes;
use mboard_protocol::{Entry, Timestamp};

/// Microseconds since the Unix epoch, by the publishing server's clock.
const TIME: &str = "Mboard-Pub-Time";
/// The publisher's IP address as its server saw it.
const ADDR: &str = "Mboard-Pub-Addr";
/// The publisher's port.
const PORT: &str = "Mboard-Pub-Port";

/// The headers of a message published now from `from`.
pub(super) fn encode(from: SocketAddr, time: Timestamp) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(TIME, time.0.to_string().as_str());
    h.insert(ADDR, from.ip().to_string().as_str());
    h.insert(PORT, from.port().to_string().as_str());
    h
}

/// The entry a stream message stands for. A message published to the subject by something
/// other than mboard (no or unreadable headers) gets the time it arrived here and the
/// unspecified address, rather than being dropped: ids must stay consecutive.
pub(super) fn decode(headers: Option<&HeaderMap>, text: Bytes) -> Entry {
    let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let time = get(TIME)
        .and_then(|t| t.parse().ok())
        .map(Timestamp)
        .unwrap_or_else(|| Timestamp::from_system_time(SystemTime::now()));
    let ip = get(ADDR)
        .and_then(|a| a.parse::<IpAddr>().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let port = get(PORT).and_then(|p| p.parse().ok()).unwrap_or(0);
    Entry {
        time,
        from: SocketAddr::new(ip, port),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_its_headers() {
        let from: SocketAddr = "[2001:db8::7]:4242".parse().expect("addr");
        let h = encode(from, Timestamp(1_700_000_000_123_456));
        let e = decode(Some(&h), Bytes::from_static(b"hi"));
        assert_eq!(e.from, from);
        assert_eq!(e.time, Timestamp(1_700_000_000_123_456));
        assert_eq!(&e.text[..], b"hi");
    }

    #[test]
    fn a_foreign_message_still_reads() {
        let e = decode(None, Bytes::from_static(b"raw"));
        assert_eq!(
            e.from,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
        );
        assert!(e.time.0 > 0);
        let mut bad = HeaderMap::new();
        bad.insert(PORT, "lots");
        assert_eq!(decode(Some(&bad), Bytes::new()).from.port(), 0);
    }
}

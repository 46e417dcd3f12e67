//! How a message's publishing time and address travel with it in the stream: as a
//! header, so that every server renders the same `<ts>:<ip>:<port>:<text>` record.
//!
//! One header, `Mboard-Pub: <microseconds> <address>:<port>` (an IPv6 address in
//! brackets), because every header is parsed into a map on each server that receives the
//! message: three were a measurable part of what a replica spends per message. Messages
//! published by earlier versions carry three headers instead, which are still read.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::SystemTime;

use async_nats::HeaderMap;
use bytes::Bytes;
use mboard_protocol::{Entry, Timestamp};

/// `<microseconds since the Unix epoch, by the publishing server's clock> <address>`,
/// the address being the publisher's as its server saw it.
const PUBLISHED: &str = "Mboard-Pub";
/// Earlier versions' headers: the time, the IP address and the port, each on its own.
const OLD_TIME: &str = "Mboard-Pub-Time";
const OLD_ADDR: &str = "Mboard-Pub-Addr";
const OLD_PORT: &str = "Mboard-Pub-Port";

/// The headers of a message published at `time` from `from`.
pub(super) fn encode(from: SocketAddr, time: Timestamp) -> HeaderMap {
    let mut value = String::with_capacity(64);
    // Writing into a String cannot fail.
    let _ = write!(value, "{} {from}", time.0);
    let mut h = HeaderMap::new();
    h.insert(PUBLISHED, value);
    h
}

/// The entry a stream message stands for. A message published to the subject by something
/// other than mboard (no or unreadable headers) gets the time it arrived here and the
/// unspecified address, rather than being dropped: ids must stay consecutive.
pub(super) fn decode(headers: Option<&HeaderMap>, text: Bytes) -> Entry {
    let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let (time, from) = match get(PUBLISHED).and_then(|v| v.split_once(' ')) {
        Some((time, from)) => (time.parse().ok(), from.parse().ok()),
        None => {
            let ip = get(OLD_ADDR).and_then(|a| a.parse::<IpAddr>().ok());
            let port = get(OLD_PORT).and_then(|p| p.parse().ok());
            let time = get(OLD_TIME).and_then(|t| t.parse().ok());
            let from = ip.map(|ip| SocketAddr::new(ip, port.unwrap_or(0)));
            (time, from)
        }
    };
    Entry {
        time: time
            .map(Timestamp)
            .unwrap_or_else(|| Timestamp::from_system_time(SystemTime::now())),
        from: from.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_its_header() {
        for from in [
            "[2001:db8::7]:4242",
            "192.0.2.9:65535",
            "[::ffff:192.0.2.1]:1",
        ] {
            let from: SocketAddr = from.parse().expect("addr");
            let h = encode(from, Timestamp(1_700_000_000_123_456));
            assert_eq!(h.iter().count(), 1, "one header");
            let e = decode(Some(&h), Bytes::from_static(b"hi"));
            assert_eq!(e.from, from);
            assert_eq!(e.time, Timestamp(1_700_000_000_123_456));
            assert_eq!(&e.text[..], b"hi");
        }
        let h = encode("[::1]:7".parse().expect("addr"), Timestamp(5));
        assert_eq!(
            h.get(PUBLISHED).map(|v| v.as_str().to_owned()),
            Some("5 [::1]:7".to_owned())
        );
    }

    #[test]
    fn messages_of_earlier_versions_still_read() {
        let mut old = HeaderMap::new();
        old.insert(OLD_TIME, "1700000000000001");
        old.insert(OLD_ADDR, "2001:db8::1");
        old.insert(OLD_PORT, "4000");
        let e = decode(Some(&old), Bytes::from_static(b"old"));
        assert_eq!(
            e.from,
            "[2001:db8::1]:4000".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(e.time, Timestamp(1_700_000_000_000_001));
    }

    #[test]
    fn a_foreign_message_still_reads() {
        let unspecified = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        let e = decode(None, Bytes::from_static(b"raw"));
        assert_eq!(e.from, unspecified);
        assert!(e.time.0 > 0);
        let mut bad = HeaderMap::new();
        bad.insert(OLD_ADDR, "127.0.0.1");
        bad.insert(OLD_PORT, "lots");
        assert_eq!(decode(Some(&bad), Bytes::new()).from.port(), 0);
        // An unreadable part of the header is replaced on its own: (value, time 12 kept,
        // address kept).
        for (value, time, from) in [
            ("", false, false),
            ("12", false, false),
            ("soon 127.0.0.1:1", false, true),
            ("12 nowhere", true, false),
            ("12 127.0.0.1", true, false),
        ] {
            let mut bad = HeaderMap::new();
            bad.insert(PUBLISHED, value);
            let e = decode(Some(&bad), Bytes::new());
            assert_eq!(e.time == Timestamp(12), time, "{value:?}");
            assert!(e.time.0 > 0, "{value:?}");
            assert_eq!(e.from != unspecified, from, "{value:?}");
        }
    }
}

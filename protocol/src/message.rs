//! Messages as they appear in `3:` and `4:` replies: timestamp, publisher address, text.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::field::{self, Fields};
use crate::ids::MessageId;

/// A publishing time: microseconds since the Unix epoch, written `<secs>.<6 digits>`
/// (and read with 1 to 9 decimals, see [`Timestamp::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The timestamp of a wall-clock time, truncated to the microsecond.
    ///
    /// A clock set before 1970 gives the epoch itself rather than failing a publish.
    pub fn from_system_time(t: SystemTime) -> Self {
        let micros = t
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_micros();
        Timestamp(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    /// The wall-clock time this timestamp names.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.0)
    }

    /// Parses `<secs>.<1 to 9 digits>`, to the microsecond.
    ///
    /// This server always writes six decimals, but classic servers write what their
    /// language's float formatting gives (`1795301705.09`, `1795301705.0912345`); readers
    /// accept any of them, padding short fractions and truncating past the microsecond.
    pub fn parse(field: &[u8]) -> Option<Self> {
        let dot = field.iter().position(|&b| b == b'.')?;
        let (secs, frac) = (&field[..dot], &field[dot + 1..]);
        if !(1..=9).contains(&frac.len()) {
            return None;
        }
        let secs = field::parse_u64(secs)?;
        let mut micros = 0;
        for i in 0..6 {
            let digit = frac.get(i).copied().unwrap_or(b'0');
            micros = micros * 10 + u64::from(digit.wrapping_sub(b'0'));
        }
        // Every digit, the truncated ones included, must be a digit.
        if !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        secs.checked_mul(1_000_000)?
            .checked_add(micros)
            .map(Timestamp)
    }

    /// Appends the wire form.
    pub fn encode(self, out: &mut Vec<u8>) {
        field::put_u64(out, self.0 / 1_000_000);
        out.push(b'.');
        let micros = self.0 % 1_000_000;
        for _ in field::digits(micros)..6 {
            out.push(b'0');
        }
        field::put_u64(out, micros);
    }

    /// Bytes the wire form takes.
    pub fn encoded_len(self) -> usize {
        field::digits(self.0 / 1_000_000) + 7
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// Appends `<ip>:<port>`: dotted IPv4, or IPv6 in brackets.
pub(crate) fn encode_addr(addr: SocketAddr, out: &mut Vec<u8>) {
    use std::io::Write;
    match addr.ip() {
        // Every record of a `4:` reply carries one: four small numbers beat the formatter.
        IpAddr::V4(ip) => {
            let [a, b, c, d] = ip.octets();
            field::put_u64(out, u64::from(a));
            for octet in [b, c, d] {
                out.push(b'.');
                field::put_u64(out, u64::from(octet));
            }
        }
        // Writing to a Vec cannot fail.
        IpAddr::V6(ip) => {
            let _ = write!(out, "[{ip}]");
        }
    }
    out.push(b':');
    field::put_u64(out, u64::from(addr.port()));
}

/// Bytes `<ip>:<port>` takes on the wire.
pub(crate) fn addr_encoded_len(addr: SocketAddr) -> usize {
    let ip = match addr.ip() {
        IpAddr::V4(ip) => {
            ip.octets()
                .iter()
                .map(|&o| field::digits(u64::from(o)))
                .sum::<usize>()
                + 3
        }
        // Rare enough that formatting it to count is fine.
        IpAddr::V6(ip) => ip.to_string().len() + 2,
    };
    ip + 1 + field::digits(u64::from(addr.port()))
}

/// Reads `<ip>:<port>` from the fields.
pub(crate) fn parse_addr(fields: &mut Fields) -> Option<SocketAddr> {
    let first = fields.next()?;
    let ip = if first.first() == Some(&b'[') {
        // An IPv6 address contains ':' itself, so gather fields until the closing bracket.
        let mut text = first.to_vec();
        while text.last() != Some(&b']') {
            text.push(b':');
            text.extend_from_slice(&fields.next()?);
            if text.len() > 64 {
                return None;
            }
        }
        let inner = std::str::from_utf8(&text[1..text.len() - 1]).ok()?;
        IpAddr::V6(inner.parse::<Ipv6Addr>().ok()?)
    } else {
        IpAddr::V4(std::str::from_utf8(&first).ok()?.parse().ok()?)
    };
    let port = u16::try_from(field::parse_u64(&fields.next()?)?).ok()?;
    Some(SocketAddr::new(ip, port))
}

/// A stored message without its id: what `3:<id>` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When the server published it.
    pub time: Timestamp,
    /// The publisher's address as the server saw it.
    pub from: SocketAddr,
    /// The text, exactly as published.
    pub text: Bytes,
}

impl Entry {
    /// Appends `<ts>:<ip>:<port>:<text>`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.time.encode(out);
        out.push(b':');
        encode_addr(self.from, out);
        out.push(b':');
        out.extend_from_slice(&self.text);
    }

    /// Bytes [`Entry::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        self.time.encoded_len() + 1 + addr_encoded_len(self.from) + 1 + self.text.len()
    }

    /// Parses `<ts>:<ip>:<port>:<text>`; the text runs to the end.
    pub(crate) fn parse(mut fields: Fields) -> Option<Self> {
        let time = Timestamp::parse(&fields.next()?)?;
        let from = parse_addr(&mut fields)?;
        Some(Entry {
            time,
            from,
            text: fields.rest(),
        })
    }
}

/// A stored message with its id: one record of a `4:<n>` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its id.
    pub id: MessageId,
    /// Time, publisher and text.
    pub entry: Entry,
}

impl Entry {
    /// Appends this entry as message `id`'s `4:` record (see [`Message::encode_record`]),
    /// for stores that encode from where they keep entries, without building a [`Message`].
    pub fn encode_record(&self, id: MessageId, out: &mut Vec<u8>) {
        out.push(b':');
        id.encode(out);
        out.push(b':');
        self.time.encode(out);
        out.push(b':');
        encode_addr(self.from, out);
        out.push(b':');
        field::put_u64(out, self.text.len() as u64);
        out.push(b':');
        out.extend_from_slice(&self.text);
    }
}

impl Message {
    /// Appends one `4:` record: `:<id>:<ts>:<ip>:<port>:<len>:<text>` (leading `:` included).
    pub fn encode_record(&self, out: &mut Vec<u8>) {
        self.entry.encode_record(self.id, out);
    }

    /// Bytes [`Message::encode_record`] appends.
    ///
    /// Stores keep running sums of this so they can size a `4:<n>` reply without building it.
    pub fn record_len(&self) -> usize {
        Self::record_len_of(
            self.id,
            self.entry.time,
            self.entry.from,
            self.entry.text.len(),
        )
    }

    /// [`Message::record_len`] from the parts, for stores that index without the text.
    pub fn record_len_of(
        id: MessageId,
        time: Timestamp,
        from: SocketAddr,
        text_len: usize,
    ) -> usize {
        1 + id.encoded_len()
            + 1
            + time.encoded_len()
            + 1
            + addr_encoded_len(from)
            + 1
            + field::digits(text_len as u64)
            + 1
            + text_len
    }

    /// Parses one record (after its leading `:` has been consumed).
    pub(crate) fn parse_record(fields: &mut Fields) -> Option<Self> {
        let id = MessageId::parse(&fields.next()?)?;
        let time = Timestamp::parse(&fields.next()?)?;
        let from = parse_addr(fields)?;
        let len = usize::try_from(field::parse_u64(&fields.next()?)?).ok()?;
        let text = fields.take(len)?;
        Some(Message {
            id,
            entry: Entry { time, from, text },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_six_decimals() {
        let mut out = Vec::new();
        Timestamp(1_763_743_499_000_001).encode(&mut out);
        assert_eq!(out, b"1763743499.000001");
        assert_eq!(Timestamp(1_763_743_499_000_001).encoded_len(), out.len());
        assert_eq!(
            Timestamp::parse(b"1763743500.123456"),
            Some(Timestamp(1_763_743_500_123_456))
        );
        assert_eq!(Timestamp::parse(b"0.000000"), Some(Timestamp(0)));
        assert_eq!(Timestamp::parse(b"1763743500"), None);
        assert_eq!(Timestamp::parse(b"1763743500."), None);
        assert_eq!(Timestamp::parse(b".123456"), None);
    }

    #[test]
    fn timestamps_of_classic_servers_have_one_to_nine_decimals() {
        for (wire, micros) in [
            ("1795301705.0", 1_795_301_705_000_000),
            ("1795301705.09", 1_795_301_705_090_000),
            ("1795301705.12345", 1_795_301_705_123_450),
            ("1795301705.0912345", 1_795_301_705_091_234),
            ("1795301705.999999999", 1_795_301_705_999_999),
        ] {
            assert_eq!(
                Timestamp::parse(wire.as_bytes()),
                Some(Timestamp(micros)),
                "{wire}"
            );
        }
        assert_eq!(
            Timestamp::parse(b"1795301705.1234567890"),
            None,
            "ten decimals"
        );
        assert_eq!(Timestamp::parse(b"1795301705.12x"), None);
        assert_eq!(
            Timestamp::parse(b"1795301705.1234567x"),
            None,
            "past the microsecond too"
        );
        assert_eq!(Timestamp::parse(b"-1.5"), None);
        // Writing is unchanged: always six decimals.
        let mut out = Vec::new();
        Timestamp(1_795_301_705_090_000).encode(&mut out);
        assert_eq!(out, b"1795301705.090000");
    }

    #[test]
    fn addresses_of_both_families() {
        for (addr, wire) in [
            ("127.0.0.1:40154", "127.0.0.1:40154"),
            ("[::1]:7", "[::1]:7"),
            ("[2001:db8::8:1]:65535", "[2001:db8::8:1]:65535"),
        ] {
            let addr: SocketAddr = addr.parse().expect("test address");
            let mut out = Vec::new();
            encode_addr(addr, &mut out);
            assert_eq!(out, wire.as_bytes());
            assert_eq!(addr_encoded_len(addr), out.len());
            let mut fields = Fields::new(Bytes::from(format!("{wire}:rest")));
            assert_eq!(parse_addr(&mut fields), Some(addr));
            assert_eq!(fields.rest(), Bytes::from_static(b"rest"));
        }
    }
}

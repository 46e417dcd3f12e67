//! The ids in a `4:`-format reply, read without building the messages.
//!
//! A thousand followers read every message the publishers store; parsing each into a
//! [`mboard_protocol::Message`] would spend the load generator's share of the two cores
//! on allocation. Only the ids matter here, so the records are walked by their lengths.

/// Calls `each` with every record's id in `reply` (`0:<count>` then
/// `:<id>:<ts>:<ip>:<port>:<len>:<text>` per record), oldest first; `None` if the reply
/// is not of that shape (its records then may have been partly reported).
pub(crate) fn for_each_id(reply: &[u8], mut each: impl FnMut(u64)) -> Option<()> {
    let mut rest = reply.strip_prefix(b"0:")?;
    let count = if let Some(at) = rest.iter().position(|&b| b == b':') {
        let count = number(&rest[..at])?;
        rest = &rest[at..];
        count
    } else {
        let count = number(rest)?;
        rest = &[];
        count
    };
    for _ in 0..count {
        rest = rest.strip_prefix(b":")?;
        let (id, r) = field(rest)?;
        let (_ts, r) = field(r)?;
        // An IPv6 address comes in brackets and holds colons of its own.
        let r = if r.first() == Some(&b'[') {
            let close = r.iter().position(|&b| b == b']')?;
            r[close + 1..].strip_prefix(b":")?
        } else {
            field(r)?.1
        };
        let (_port, r) = field(r)?;
        let (len, r) = field(r)?;
        let len = usize::try_from(number(len)?).ok()?;
        each(number(id)?);
        rest = r.get(len..)?;
    }
    rest.is_empty().then_some(())
}

/// The bytes before the next `:`, and what follows that `:`.
fn field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == b':')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use mboard_protocol::{Entry, Message, MessageId, Response, Timestamp};

    use super::*;

    fn message(id: u64, from: &str, text: &[u8]) -> Message {
        Message {
            id: MessageId(id),
            entry: Entry {
                time: Timestamp(1_795_285_846_905_202),
                from: from.parse::<SocketAddr>().expect("address"),
                text: Bytes::copy_from_slice(text),
            },
        }
    }

    fn ids(reply: &[u8]) -> Option<Vec<u64>> {
        let mut ids = Vec::new();
        for_each_id(reply, |id| ids.push(id))?;
        Some(ids)
    }

    #[test]
    fn reads_the_ids_of_what_the_protocol_encodes() {
        let messages = vec![
            message(41, "127.0.0.1:40154", b"plain"),
            // Texts hold colons, digits and brackets; the length says where they end.
            message(42, "[::1]:7", b":1:2:[3]:"),
            message(43, "[2001:db8::1]:65535", b""),
            message(18_446_744_073_709_551_615, "10.0.0.1:1", b"\n\0"),
        ];
        let reply = Response::Messages(messages).to_bytes();
        assert_eq!(
            ids(&reply),
            Some(vec![41, 42, 43, 18_446_744_073_709_551_615])
        );
        assert_eq!(
            ids(&Response::Messages(Vec::new()).to_bytes()),
            Some(vec![])
        );
    }

    #[test]
    fn refuses_what_is_not_a_list_of_messages() {
        let one = Response::Messages(vec![message(7, "127.0.0.1:1", b"abc")]).to_bytes();
        assert_eq!(ids(&one), Some(vec![7]));
        for bad in [
            &one[..one.len() - 1],          // text cut short
            &[&one[..], b"x"].concat()[..], // bytes after the last record
            b"0:2:7:1.0:127.0.0.1:1:1:a",   // fewer records than counted
            b"4:busy",
            b"0:",
            b"0:x",
        ] {
            assert_eq!(ids(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}

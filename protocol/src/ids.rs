//! Newtypes for the identifiers on the wire.

use std::fmt;

use uuid::Uuid;

use crate::field;

/// The id of a message on the board: assigned in publish order, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u64);

impl MessageId {
    /// Parses the wire form: a protocol number.
    pub fn parse(field: &[u8]) -> Option<Self> {
        field::parse_u64(field).map(MessageId)
    }

    /// Appends the wire form.
    pub fn encode(self, out: &mut Vec<u8>) {
        field::put_u64(out, self.0);
    }

    /// Bytes the wire form takes.
    pub fn encoded_len(self) -> usize {
        field::digits(self.0)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A server-allocated session id: a UUID in canonical lowercase hyphenated form on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub Uuid);

impl SessionId {
    /// Length of the canonical form.
    pub const LEN: usize = 36;

    /// Parses exactly the canonical form: 36 bytes, lowercase hex, hyphens at 8, 13, 18, 23.
    ///
    /// Stricter than `Uuid::parse_str`, which also takes upper case, braces, URNs and the
    /// simple form; the protocol names one spelling so that a sid compares byte for byte.
    pub fn parse(field: &[u8]) -> Option<Self> {
        if field.len() != Self::LEN {
            return None;
        }
        let mut value: u128 = 0;
        for (i, &b) in field.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if b != b'-' {
                    return None;
                }
                continue;
            }
            let nibble = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => return None,
            };
            value = (value << 4) | u128::from(nibble);
        }
        Some(SessionId(Uuid::from_u128(value)))
    }

    /// Appends the canonical form.
    pub fn encode(self, out: &mut Vec<u8>) {
        let mut buf = [0u8; Self::LEN];
        out.extend_from_slice(self.0.hyphenated().encode_lower(&mut buf).as_bytes());
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A client-chosen publish token (`5:<token>:<text>`): a UUID in the same canonical form as
/// a [`SessionId`], drawn afresh for each message and kept for its every resend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishToken(pub Uuid);

impl PublishToken {
    /// Length of the canonical form.
    pub const LEN: usize = SessionId::LEN;

    /// Parses exactly the canonical form (see [`SessionId::parse`]).
    pub fn parse(field: &[u8]) -> Option<Self> {
        SessionId::parse(field).map(|sid| PublishToken(sid.0))
    }

    /// Appends the canonical form.
    pub fn encode(self, out: &mut Vec<u8>) {
        SessionId(self.0).encode(out);
    }
}

impl fmt::Display for PublishToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &[u8] = b"3f2b8c1e-9a4d-4e6f-8b1a-2c3d4e5f6a7b";

    #[test]
    fn canonical_session_ids_round_trip() {
        let sid = SessionId::parse(SID).expect("canonical");
        let mut out = Vec::new();
        sid.encode(&mut out);
        assert_eq!(out, SID);
        assert_eq!(sid.to_string().as_bytes(), SID);
    }

    #[test]
    fn other_spellings_are_refused() {
        assert!(SessionId::parse(b"3F2B8C1E-9A4D-4E6F-8B1A-2C3D4E5F6A7B").is_none());
        assert!(SessionId::parse(b"3f2b8c1e9a4d4e6f8b1a2c3d4e5f6a7b").is_none());
        assert!(SessionId::parse(b"{3f2b8c1e-9a4d-4e6f-8b1a-2c3d4e5f6a7b}").is_none());
        assert!(SessionId::parse(b"3f2b8c1e-9a4d-4e6f-8b1a-2c3d4e5f6a7g").is_none());
        assert!(SessionId::parse(b"3f2b8c1e_9a4d-4e6f-8b1a-2c3d4e5f6a7b").is_none());
        assert!(SessionId::parse(b"").is_none());
    }
}

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

/// The value of each lowercase hex digit; `0xff` for every other byte.
const NIBBLE: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Where each of the 16 bytes of a UUID starts in its canonical form (two hex digits each,
/// around the hyphens at 8, 13, 18 and 23).
const BYTE_AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

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
        let field: &[u8; Self::LEN] = field.try_into().ok()?;
        if [field[8], field[13], field[18], field[23]] != [b'-'; 4] {
            return None;
        }
        // Every `5:` carries one of these, so it is decoded a byte pair at a time through a
        // table rather than a digit at a time into a u128 (a quarter of the instructions).
        let mut bytes = [0u8; 16];
        let mut invalid = 0u8;
        for (byte, &at) in bytes.iter_mut().zip(BYTE_AT.iter()) {
            let (high, low) = (
                NIBBLE[usize::from(field[at])],
                NIBBLE[usize::from(field[at + 1])],
            );
            invalid |= high | low;
            *byte = (high << 4) | low;
        }
        (invalid & !0x0f == 0).then(|| SessionId(Uuid::from_bytes(bytes)))
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

    #[test]
    fn parses_as_the_uuid_crate_does_and_refuses_a_wrong_byte_anywhere() {
        for n in [
            0u128,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
            0x3f2b_8c1e_9a4d_4e6f_8b1a_2c3d_4e5f_6a7b,
        ] {
            let text = Uuid::from_u128(n).hyphenated().to_string();
            assert_eq!(
                SessionId::parse(text.as_bytes()),
                Some(SessionId(Uuid::from_u128(n)))
            );
            assert_eq!(
                PublishToken::parse(text.as_bytes()),
                Some(PublishToken(Uuid::from_u128(n)))
            );
        }
        for at in 0..SID.len() {
            for bad in [b'g', b'G', b'A', b'F', b':', b'-', b' ', b'/', 0, 0xff] {
                let mut text = SID.to_vec();
                if text[at] == bad {
                    continue;
                }
                text[at] = bad;
                assert!(SessionId::parse(&text).is_none(), "{bad:#x} at {at}");
            }
        }
        assert!(SessionId::parse(&SID[..35]).is_none());
        assert!(SessionId::parse(&[SID, b"0"].concat()).is_none());
    }
}

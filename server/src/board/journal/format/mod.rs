//! The journal's byte layout (format 3), and the one check every reader applies to a record.
//!
//! All integers are little-endian:
//!
//! ```text
//! stub     "MBOARD\0J" (8) | version u32 (= 3) | reserved u32 | salt u64 | newest segment u64 | crc u32
//! segment  "MBOARD\0S" (8) | version u32 (= 3) | reserved u32 | salt u64 | first id u64 | crc u32 | reserved u32
//! record   "MBR3" | body_len u32 | salt u64 | header_crc u32 | body_crc u32 | body
//! body     kind u8 | batch u32 | id u64 | time_micros u64 | by kind:
//!   0      family u8 (4|6) | ip (4|16) | port u16 | text          a message
//!   1      token (16) | family | ip | port | text                  a message published by `5:`
//!   2      token (16)                                              a token note: `id` was published under it
//!   3      (nothing)                                               a kept note: ids below `id` were trimmed
//! ```
//!
//! The **salt** is drawn at random when the journal is created and is the same in every
//! header and record of it. A record counts only if its salt is the journal's and both
//! checksums hold: `header_crc` covers the magic, the length and the salt, and then the
//! record's place (its segment's first id and its offset in the segment, which are not
//! stored); `body_crc` covers the body. So a copy of records inside a published text is
//! never taken for one: its author never saw the salt, and even a copy of this journal's
//! own records sits at another place. `batch` is how many bytes before this record its
//! group commit began: start-up uses it to tell a torn last write from damage to a
//! written one.
//!
//! Start-up, the forward search after damage and reads all judge a record with
//! [`record_at`], so they cannot disagree about what an intact record is.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use mboard_protocol::{Message, MessageId, PublishToken, Timestamp};
use uuid::Uuid;

use super::address;
use super::window::Window;

/// The magic of the file named `journal` (the stub now, the whole journal before format 3).
pub(super) const STUB_MAGIC: &[u8; 8] = b"MBOARD\0J";
const SEGMENT_MAGIC: &[u8; 8] = b"MBOARD\0S";
/// The journal format this server writes.
pub(super) const VERSION: u32 = 3;
/// Bytes of the stub.
pub(super) const STUB_LEN: usize = 36;
/// Bytes before a segment's first record.
pub(super) const SEGMENT_HEADER: u64 = 40;
const RECORD_MAGIC: &[u8; 4] = b"MBR3";
/// Bytes before a record's body.
pub(super) const RECORD_HEADER: usize = 24;
/// Bytes of a body before what its kind adds.
const BODY_FIXED: usize = 1 + 4 + 8 + 8;
/// The most text a record holds: `body_len` is a u32.
pub(super) const MAX_TEXT: usize = u32::MAX as usize - 64;
/// Enough of a record to size its entry without its text: the header, the fixed body,
/// a token, family, an IPv6 address and the port.
pub(super) const RECORD_HEAD: usize = RECORD_HEADER + BODY_FIXED + 16 + 1 + 16 + 2;

const KIND_MESSAGE: u8 = 0;
const KIND_MESSAGE_TOKEN: u8 = 1;
const KIND_TOKEN_NOTE: u8 = 2;
const KIND_KEPT_NOTE: u8 = 3;

/// A journal's identity, in every header and record it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Salt(pub(super) u64);

impl Salt {
    /// A new journal's.
    pub(super) fn random() -> Salt {
        Salt(rand::random())
    }
}

/// Where a record is: the journal, the segment (by its first id) and the offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Place {
    pub(super) salt: Salt,
    pub(super) segment: u64,
    pub(super) offset: u64,
}

impl Place {
    /// The checksum of a record header at this place.
    fn header_crc(&self, h: &[u8]) -> u32 {
        let crc = crc32c::crc32c(&h[..16]);
        let crc = crc32c::crc32c_append(crc, &self.segment.to_le_bytes());
        crc32c::crc32c_append(crc, &self.offset.to_le_bytes())
    }

    /// The same segment, `n` bytes further on.
    pub(super) fn plus(self, n: u64) -> Place {
        Place {
            offset: self.offset + n,
            ..self
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// The stub: what the file `journal` holds once the journal is in segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stub {
    pub(super) salt: Salt,
    /// The first id of the newest segment when the stub was written: start-up refuses a
    /// journal whose newest segment is older (the last one was removed).
    pub(super) newest: u64,
}

impl Stub {
    pub(super) fn encode(&self) -> [u8; STUB_LEN] {
        let mut b = [0; STUB_LEN];
        b[..8].copy_from_slice(STUB_MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.salt.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.newest.to_le_bytes());
        let crc = crc32c::crc32c(&b[..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The stub in `b` (the whole file), if it is one and its checksum holds.
    pub(super) fn decode(b: &[u8]) -> Option<Stub> {
        let ok = b.len() == STUB_LEN
            && &b[..8] == STUB_MAGIC
            && u32_at(b, 8) == VERSION
            && crc32c::crc32c(&b[..32]) == u32_at(b, 32);
        ok.then(|| Stub {
            salt: Salt(u64_at(b, 16)),
            newest: u64_at(b, 24),
        })
    }
}

/// The version the file `journal` declares (1 and 2: a whole journal; 3: a stub), or
/// `None` if it does not start as one.
pub(super) fn declared_version(b: &[u8]) -> Option<u32> {
    (b.len() >= 12 && &b[..8] == STUB_MAGIC).then(|| u32_at(b, 8))
}

/// A segment's header.
pub(super) fn segment_header(salt: Salt, first: u64) -> [u8; SEGMENT_HEADER as usize] {
    let mut b = [0; SEGMENT_HEADER as usize];
    b[..8].copy_from_slice(SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&salt.0.to_le_bytes());
    b[24..32].copy_from_slice(&first.to_le_bytes());
    let crc = crc32c::crc32c(&b[..32]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The salt and first id a segment header declares, or why it is not one.
pub(super) fn read_segment_header(b: &[u8]) -> Result<(Salt, u64), String> {
    if b.len() < SEGMENT_HEADER as usize || &b[..8] != SEGMENT_MAGIC {
        return Err("not a journal segment".into());
    }
    if crc32c::crc32c(&b[..32]) != u32_at(b, 32) {
        return Err("segment header fails its checksum".into());
    }
    match u32_at(b, 8) {
        VERSION => Ok((Salt(u64_at(b, 16)), u64_at(b, 24))),
        v => Err(format!(
            "segment of format version {v}; this server reads {VERSION}"
        )),
    }
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A message: its text runs from `text_at` to the record's end.
    Message {
        token: Option<PublishToken>,
        from: SocketAddr,
        text_at: usize,
    },
    /// `id` was published under `token` (kept for a trimmed message's token).
    TokenNote { token: PublishToken },
    /// Every id below `id` was trimmed.
    KeptNote,
}

/// An intact record of this journal, as found at some offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) kind: Kind,
    pub(super) id: MessageId,
    pub(super) time: Timestamp,
    /// Bytes between the start of its group commit and this record.
    pub(super) batch: u32,
    /// The whole record: header and body.
    pub(super) len: usize,
}

impl Record {
    /// The size of its `4:` record in a reply, if it is a message.
    pub(super) fn reply_len(&self) -> Option<u64> {
        match self.kind {
            Kind::Message { from, text_at, .. } => {
                Some(Message::record_len_of(self.id, self.time, from, self.len - text_at) as u64)
            }
            _ => None,
        }
    }
}

/// A record to append.
#[derive(Debug, Clone, Copy)]
pub(super) enum Body<'a> {
    Message {
        from: SocketAddr,
        token: Option<PublishToken>,
        text: &'a [u8],
    },
    TokenNote(PublishToken),
    KeptNote,
}

/// Appends one record to `out`, whose first byte goes to `at` (its salt, segment and
/// offset); `batch` is `out`'s length when the record's group commit began.
pub(super) fn encode(
    out: &mut Vec<u8>,
    at: Place,
    batch: usize,
    id: MessageId,
    time: Timestamp,
    body: Body<'_>,
) {
    let start = out.len();
    let place = at.plus(start as u64);
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&place.salt.0.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    let body_at = out.len();
    let kind = match body {
        Body::Message { token: None, .. } => KIND_MESSAGE,
        Body::Message { token: Some(_), .. } => KIND_MESSAGE_TOKEN,
        Body::TokenNote(_) => KIND_TOKEN_NOTE,
        Body::KeptNote => KIND_KEPT_NOTE,
    };
    out.push(kind);
    let batch = u32::try_from(start - batch).unwrap_or(u32::MAX);
    out.extend_from_slice(&batch.to_le_bytes());
    out.extend_from_slice(&id.0.to_le_bytes());
    out.extend_from_slice(&time.0.to_le_bytes());
    match body {
        Body::Message { from, token, text } => {
            if let Some(token) = token {
                out.extend_from_slice(token.0.as_bytes());
            }
            address::encode(out, from);
            out.extend_from_slice(text);
        }
        Body::TokenNote(token) => out.extend_from_slice(token.0.as_bytes()),
        Body::KeptNote => {}
    }
    let body_len = (out.len() - body_at) as u32;
    out[start + 4..start + 8].copy_from_slice(&body_len.to_le_bytes());
    let header_crc = place.header_crc(&out[start..start + 16]);
    out[start + 16..start + 20].copy_from_slice(&header_crc.to_le_bytes());
    let body_crc = crc32c::crc32c(&out[body_at..]);
    out[start + 20..start + 24].copy_from_slice(&body_crc.to_le_bytes());
}

/// A record header at `place` whose magic, salt and checksum hold: the body length and
/// checksum.
fn header(h: &[u8], place: Place) -> Option<(usize, u32)> {
    if h.len() < RECORD_HEADER
        || &h[..4] != RECORD_MAGIC
        || u64_at(h, 8) != place.salt.0
        || place.header_crc(h) != u32_at(h, 16)
    {
        return None;
    }
    Some((u32_at(h, 4) as usize, u32_at(h, 20)))
}

fn token_at(body: &[u8], at: usize) -> Option<PublishToken> {
    let t: [u8; 16] = body.get(at..at + 16)?.try_into().ok()?;
    Some(PublishToken(Uuid::from_bytes(t)))
}

/// Decodes a body (which may stop anywhere after its fields, for sizing) of a record of
/// `len` bytes in all.
fn decode(body: &[u8], len: usize, exact: bool) -> Option<Record> {
    let fixed = body.get(..BODY_FIXED)?;
    let (id, time) = (MessageId(u64_at(fixed, 5)), Timestamp(u64_at(fixed, 13)));
    let batch = u32_at(fixed, 1);
    let kind = match fixed[0] {
        k @ (KIND_MESSAGE | KIND_MESSAGE_TOKEN) => {
            let (token, at) = if k == KIND_MESSAGE_TOKEN {
                (Some(token_at(body, BODY_FIXED)?), BODY_FIXED + 16)
            } else {
                (None, BODY_FIXED)
            };
            let (from, text_at) = address::decode(body, at)?;
            if RECORD_HEADER + text_at > len {
                return None;
            }
            Kind::Message {
                token,
                from,
                text_at: RECORD_HEADER + text_at,
            }
        }
        KIND_TOKEN_NOTE if !exact || body.len() == BODY_FIXED + 16 => Kind::TokenNote {
            token: token_at(body, BODY_FIXED)?,
        },
        KIND_KEPT_NOTE if !exact || body.len() == BODY_FIXED => Kind::KeptNote,
        _ => return None,
    };
    Some(Record {
        kind,
        id,
        time,
        batch,
        len,
    })
}

/// Whether `b` starts like a record (the magic), the cheap test before [`record_at`].
pub(super) fn looks_like_record(b: &[u8]) -> bool {
    b.starts_with(RECORD_MAGIC)
}

/// What the record check found at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// This journal's salt, both checksums hold and the body decodes.
    Valid(Record),
    /// This journal's salt and both checksums hold, but the body does not decode: no torn
    /// write leaves that.
    Malformed,
    /// Not a record of this journal, a checksum mismatch, or the record runs past the end:
    /// what a torn write leaves, or damage.
    Damaged,
}

/// Checks the record at the start of `bytes`, found at `place`; `Err(n)` asks for `n`
/// bytes to decide.
fn check(bytes: &[u8], place: Place) -> Result<Check, usize> {
    if bytes.len() < RECORD_HEADER {
        return Err(RECORD_HEADER);
    }
    let Some((body_len, body_crc)) = header(bytes, place) else {
        return Ok(Check::Damaged);
    };
    let len = RECORD_HEADER.saturating_add(body_len);
    let body = bytes.get(RECORD_HEADER..len).ok_or(len)?;
    if crc32c::crc32c(body) != body_crc {
        return Ok(Check::Damaged);
    }
    Ok(match decode(body, len, true) {
        Some(record) => Check::Valid(record),
        None => Check::Malformed,
    })
}

/// The one record check: judges the record at `place`, reading through `window` (on that
/// segment) as much of the file as the record needs.
pub(super) fn record_at(window: &mut Window<'_>, place: Place) -> io::Result<Check> {
    let (end, offset) = (window.end(), place.offset);
    let mut need = RECORD_HEADER;
    loop {
        let bytes = window.bytes(offset, need)?;
        match check(bytes, place) {
            Ok(found) => return Ok(found),
            // A window reaching the end that still falls short holds a cut-off record.
            Err(more) if more > bytes.len() && offset + (bytes.len() as u64) < end => {
                need = more;
            }
            Err(_) => return Ok(Check::Damaged),
        }
    }
}

/// The text of `record`, found at `offset` by the last [`record_at`] on `window`.
pub(super) fn text(window: &Window<'_>, offset: u64, record: &Record) -> Bytes {
    match record.kind {
        Kind::Message { text_at, .. } => {
            window.slice(offset + text_at as u64, offset + record.len as u64)
        }
        _ => Bytes::new(),
    }
}

/// The entry length of the message record whose start is `head` (at least
/// [`RECORD_HEAD`] bytes, unless the file ends first): the header's checksum is checked,
/// the body's is not.
///
/// Sizing a reply must not read a 16 MiB text; the read that builds the reply goes
/// through [`record_at`] and checks the body.
pub(super) fn entry_len(head: &[u8], place: Place) -> Option<usize> {
    let (body_len, _) = header(head, place)?;
    let len = RECORD_HEADER + body_len;
    let record = decode(head.get(RECORD_HEADER..)?, len, false)?;
    let Kind::Message { from, text_at, .. } = record.kind else {
        return None;
    };
    let entry = mboard_protocol::Entry {
        time: record.time,
        from,
        text: Bytes::new(),
    };
    Some(entry.encoded_len() + (len - text_at))
}

#[cfg(test)]
mod tests;

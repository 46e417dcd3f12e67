//! The single-file journal of formats 1 and 2, as servers before format 3 wrote it: read
//! once, to upgrade it into segments.
//!
//! All integers are little-endian:
//!
//! ```text
//! header   "MBOARD\0J" (8) | version u32 (1 or 2) | reserved u32
//! record   magic (4) | body_len u32 | header_crc u32 | body_crc u32 | body
//! "MBR2"   id u64 | time_micros u64 | flags u8 | [token (16)] | family u8 (4|6) | ip (4|16) | port u16 | text
//! "MBR1"   id u64 | time_micros u64 | family u8 (4|6) | ip (4|16) | port u16 | text
//! ```
//!
//! `header_crc` is CRC-32C of the magic and the length. Flag bit 0 says a `5:` publish
//! token follows. A version-1 file holds `MBR1` records; a version-2 one may hold `MBR1`
//! records followed by `MBR2` ones. These records carry no salt, so the forward search that
//! tells a torn tail from damage here cannot tell a record from a copy of one inside a text:
//! that is what format 3 fixes.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;

use mboard_protocol::{MessageId, PublishToken, Timestamp};
use tracing::warn;
use uuid::Uuid;

use super::address;
use super::error::{JournalError, io_at};
use super::recovery::Torn;
use super::window::Window;

const FILE_MAGIC: &[u8; 8] = b"MBOARD\0J";
/// The newest single-file format.
const VERSION: u32 = 2;
/// The oldest journal format this server reads (and upgrades).
pub(super) const OLDEST_VERSION: u32 = 1;
/// Where the version sits in the file header.
const VERSION_AT: u64 = 8;
/// Bytes before the first record.
pub(super) const FILE_HEADER: u64 = 16;
/// Record magics, by the record format they name.
const RECORD_V1: &[u8; 4] = b"MBR1";
const RECORD_V2: &[u8; 4] = b"MBR2";
/// Bytes before a record's body.
pub(super) const RECORD_HEADER: usize = 16;
/// Flag bit: a publish token follows the flags.
const HAS_TOKEN: u8 = 1;
/// The header of a version-2 journal.
#[cfg(test)]
pub(super) fn file_header() -> [u8; FILE_HEADER as usize] {
    let mut header = [0; FILE_HEADER as usize];
    header[..8].copy_from_slice(FILE_MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header
}

/// The format version a file header declares, or `None` if it is no journal's header.
pub(super) fn file_version(header: &[u8; FILE_HEADER as usize]) -> Option<u32> {
    (&header[..8] == FILE_MAGIC).then(|| u32_at(header, VERSION_AT as usize))
}

/// Appends one record in the version-2 format, as older servers wrote it.
#[cfg(test)]
pub(super) fn encode_record(
    out: &mut Vec<u8>,
    id: MessageId,
    time: Timestamp,
    from: SocketAddr,
    token: Option<PublishToken>,
    text: &[u8],
) {
    encode(out, RECORD_V2, id, time, from, token, text);
}

/// Appends one record in the version-1 format, as older servers wrote it.
#[cfg(test)]
pub(super) fn encode_record_v1(
    out: &mut Vec<u8>,
    id: MessageId,
    time: Timestamp,
    from: SocketAddr,
    text: &[u8],
) {
    encode(out, RECORD_V1, id, time, from, None, text);
}

#[cfg(test)]
fn encode(
    out: &mut Vec<u8>,
    magic: &[u8; 4],
    id: MessageId,
    time: Timestamp,
    from: SocketAddr,
    token: Option<PublishToken>,
    text: &[u8],
) {
    let start = out.len();
    out.extend_from_slice(magic);
    out.extend_from_slice(&[0; 12]);
    let body = out.len();
    out.extend_from_slice(&id.0.to_le_bytes());
    out.extend_from_slice(&time.0.to_le_bytes());
    if magic == RECORD_V2 {
        match token {
            Some(token) => {
                out.push(HAS_TOKEN);
                out.extend_from_slice(token.0.as_bytes());
            }
            None => out.push(0),
        }
    }
    address::encode(out, from);
    out.extend_from_slice(text);
    let body_len = (out.len() - body) as u32;
    out[start + 4..start + 8].copy_from_slice(&body_len.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[start..start + 8]);
    out[start + 8..start + 12].copy_from_slice(&header_crc.to_le_bytes());
    let body_crc = crc32c::crc32c(&out[body..]);
    out[start + 12..start + 16].copy_from_slice(&body_crc.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// A record header whose own checksum holds.
struct Header {
    /// Whether the body is in the version-2 layout (flags and an optional token).
    v2: bool,
    body_len: usize,
    body_crc: u32,
}

/// The header at the start of `h`, if its magic and checksum hold.
fn header(h: &[u8]) -> Option<Header> {
    if h.len() < RECORD_HEADER || crc32c::crc32c(&h[..8]) != u32_at(h, 8) {
        return None;
    }
    let v2 = match &h[..4] {
        m if m == RECORD_V2 => true,
        m if m == RECORD_V1 => false,
        _ => return None,
    };
    Some(Header {
        v2,
        body_len: u32_at(h, 4) as usize,
        body_crc: u32_at(h, 12),
    })
}

/// The fields before the text, decoded from the start of a body.
struct Fields {
    id: MessageId,
    time: Timestamp,
    token: Option<PublishToken>,
    from: SocketAddr,
    /// Where the text starts in the body.
    text_at: usize,
}

/// Decodes the fields at the start of `body` (which may stop anywhere after them), laid
/// out as version 2 if `v2`, else as version 1.
fn fields(body: &[u8], v2: bool) -> Option<Fields> {
    let id = MessageId(u64_at(body.get(..8)?, 0));
    let time = Timestamp(u64_at(body.get(8..16)?, 0));
    let (token, at) = if v2 {
        match *body.get(16)? {
            0 => (None, 17),
            HAS_TOKEN => {
                let t: [u8; 16] = body.get(17..33)?.try_into().ok()?;
                (Some(PublishToken(Uuid::from_bytes(t))), 33)
            }
            _ => return None,
        }
    } else {
        (None, 16)
    };
    let (from, text_at) = address::decode(body, at)?;
    Some(Fields {
        id,
        time,
        token,
        from,
        text_at,
    })
}

/// An intact record, as found at some offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) id: MessageId,
    pub(super) time: Timestamp,
    /// The `5:` publish token it was stored under, if any.
    pub(super) token: Option<PublishToken>,
    pub(super) from: SocketAddr,
    /// Where the text starts, counted from the record's start.
    pub(super) text_at: usize,
    /// The whole record: header and body.
    pub(super) len: usize,
}

/// What the record check found at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Both checksums hold and the body decodes.
    Valid(Record),
    /// Both checksums hold but the body does not decode: no torn write leaves that.
    Malformed,
    /// No valid header, a checksum mismatch, or the record runs past the end: what a
    /// torn write leaves, or damage.
    Damaged,
}

impl Check {
    /// Whether both checksums hold, decodable or not.
    fn is_intact(&self) -> bool {
        !matches!(self, Check::Damaged)
    }
}

/// Checks the record at the start of `bytes`; `Err(n)` asks for `n` bytes to decide.
fn check(bytes: &[u8]) -> Result<Check, usize> {
    if bytes.len() < RECORD_HEADER {
        return Err(RECORD_HEADER);
    }
    let Some(header) = header(bytes) else {
        return Ok(Check::Damaged);
    };
    let len = RECORD_HEADER.saturating_add(header.body_len);
    let body = bytes.get(RECORD_HEADER..len).ok_or(len)?;
    if crc32c::crc32c(body) != header.body_crc {
        return Ok(Check::Damaged);
    }
    Ok(match fields(body, header.v2) {
        Some(f) => Check::Valid(Record {
            id: f.id,
            time: f.time,
            token: f.token,
            from: f.from,
            text_at: RECORD_HEADER + f.text_at,
            len,
        }),
        None => Check::Malformed,
    })
}

/// The one record check: judges the record at `offset`, reading through `window` as much
/// of the file as the record needs.
fn record_at(window: &mut Window<'_>, offset: u64) -> io::Result<Check> {
    let end = window.end();
    let mut need = RECORD_HEADER;
    loop {
        let bytes = window.bytes(offset, need)?;
        match check(bytes) {
            Ok(found) => return Ok(found),
            // A window reaching the end that still falls short holds a cut-off record.
            Err(more) if more > bytes.len() && offset + (bytes.len() as u64) < end => {
                need = more;
            }
            Err(_) => return Ok(Check::Damaged),
        }
    }
}

/// Start-up reads the file this many bytes at a time.
const CHUNK: usize = 1 << 20;

/// What [`replay`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Replayed {
    /// Messages in the file.
    pub(super) messages: u64,
    /// The torn tail that was cut off, if any.
    pub(super) torn: Option<Torn>,
    /// The format version the file declared.
    pub(super) format: u32,
}

/// What [`replay`] hands every record and its text to.
pub(super) type Visit<'a> = dyn FnMut(&Record, &[u8]) -> Result<(), JournalError> + 'a;

/// Reads a single-file journal once, in order, handing `each` every record and its text,
/// as the servers that wrote it did at start-up: at the first damaged record the rest of
/// the file is searched for an intact one; if there is one the damage is corruption and
/// nothing is changed, otherwise it is a torn tail and is cut off (durably) with a warning.
pub(super) fn replay(
    file: &File,
    path: &Path,
    each: &mut Visit<'_>,
) -> Result<Replayed, JournalError> {
    let len = file.metadata().map_err(io_at(path))?.len();
    let format = check_file_header(file, len, path)?;
    let corrupt = |offset, reason| JournalError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let mut window = Window::new(file, len, CHUNK);
    let mut offset = FILE_HEADER;
    let mut messages = 0;
    while offset < len {
        let record = match record_at(&mut window, offset).map_err(io_at(path))? {
            Check::Valid(record) => record,
            Check::Malformed => return Err(corrupt(offset, "malformed record body".into())),
            Check::Damaged => break,
        };
        if record.id.0 != messages {
            let reason = format!("expected message id {messages}, found {}", record.id);
            return Err(corrupt(offset, reason));
        }
        let text = window.slice(offset + record.text_at as u64, offset + record.len as u64);
        each(&record, &text)?;
        messages += 1;
        offset += record.len as u64;
    }
    if offset >= len {
        return Ok(Replayed {
            messages,
            torn: None,
            format,
        });
    }
    if let Some(valid) = find_record_after(file, offset + 1, len).map_err(io_at(path))? {
        return Err(corrupt(
            offset,
            format!(
                "damaged record (checksum mismatch) followed by a valid record at offset {valid}"
            ),
        ));
    }
    Ok(Replayed {
        messages,
        torn: Some(cut_torn_tail(file, path, offset, len)?),
        format,
    })
}

/// Cuts the file at `offset`, where a torn final record starts, durably and with a
/// warning.
fn cut_torn_tail(file: &File, path: &Path, offset: u64, len: u64) -> Result<Torn, JournalError> {
    let torn = Torn {
        segment: None,
        offset,
        dropped: len - offset,
    };
    warn!(
        journal = %path.display(),
        offset = torn.offset,
        dropped = torn.dropped,
        "torn final record cut off: dropped {} bytes at offset {}",
        torn.dropped,
        torn.offset
    );
    file.set_len(torn.offset)
        .and_then(|()| file.sync_all())
        .map_err(io_at(path))?;
    Ok(torn)
}

/// The file's format version; refuses a file that is not a single-file journal.
fn check_file_header(file: &File, len: u64, path: &Path) -> Result<u32, JournalError> {
    let mut header = [0u8; FILE_HEADER as usize];
    let version = if len < FILE_HEADER || file.read_exact_at(&mut header, 0).is_err() {
        None
    } else {
        file_version(&header)
    };
    match version {
        Some(v) if (OLDEST_VERSION..=VERSION).contains(&v) => Ok(v),
        Some(found) => Err(JournalError::Version {
            path: path.to_path_buf(),
            found,
        }),
        None => Err(JournalError::NotAJournal {
            path: path.to_path_buf(),
        }),
    }
}

/// The offset of the first intact record starting in `from..len`, if any.
fn find_record_after(file: &File, from: u64, len: u64) -> io::Result<Option<u64>> {
    let mut window = Window::new(file, len, CHUNK);
    let last = len.saturating_sub(RECORD_HEADER as u64);
    for at in from..=last {
        if record_at(&mut window, at)?.is_intact() {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;

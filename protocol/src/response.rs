//! Response PDUs: codes `0`–`4` and download offers `d:`.
//!
//! A `0:` payload cannot be read without knowing what was asked (`0:5` is an id after a
//! publish and a one-id list after `2:`), so parsing takes the [`Expect`]ed shape.

use bytes::Bytes;

use crate::code::{ErrorCode, ReplyCode};
use crate::field::{self, Fields};
use crate::ids::{MessageId, SessionId};
use crate::message::{Entry, Message};

/// A download offer: the response is `size` bytes, fetch it with `g:` in `block_size` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// The download session.
    pub sid: SessionId,
    /// Total bytes of the response PDU.
    pub size: u64,
    /// Bytes per block; the last block may be shorter.
    pub block_size: u64,
}

impl Offer {
    /// How many `g:` blocks the response takes.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(self.block_size.max(1))
    }
}

/// Which `0:` payload shape a reply should have, decided by the request that was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// After `1:`: `0:<id>`.
    Published,
    /// After `2:`: `0:<id>:<id>:…` or `0:`.
    Ids,
    /// After `3:`: `0:<ts>:<ip>:<port>:<text>`.
    Entry,
    /// After `4:`: `0:<count>` and records.
    Messages,
    /// After `a:`: `0:<sid>:<block_size>`.
    Opened,
    /// After `b:`: `0:<sid>:<index>:<received>`.
    Acked,
    /// After `g:`: `0:<sid>:<index>:<bytes>`.
    Data,
    /// After `x:`: `0:`.
    Closed,
}

impl std::fmt::Display for Expect {
    /// What a person would call the reply: `expected a message id`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Expect::Published => "a message id",
            Expect::Ids => "a list of ids",
            Expect::Entry => "a message",
            Expect::Messages => "a list of messages",
            Expect::Opened => "an upload session",
            Expect::Acked => "a block acknowledgement",
            Expect::Data => "a download block",
            Expect::Closed => "an empty reply",
        })
    }
}

impl crate::request::BoardRequest {
    /// The reply shape this request gets (also after it is committed from an upload).
    pub fn expect(&self) -> Expect {
        use crate::request::BoardRequest::*;
        match self {
            Publish(_) => Expect::Published,
            Ids(_) => Expect::Ids,
            Get(_) => Expect::Entry,
            Last(_) | After { .. } => Expect::Messages,
            PublishOnce { .. } => Expect::Published,
        }
    }
}

/// Any response datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `0:<id>`: published.
    Published(MessageId),
    /// `0:<id>:…`: ids, oldest first.
    Ids(Vec<MessageId>),
    /// `0:<ts>:<ip>:<port>:<text>`: one message.
    Entry(Entry),
    /// `0:<count>:<record>…`: messages, oldest first.
    Messages(Vec<Message>),
    /// `0:<sid>:<block_size>`: upload opened.
    Opened {
        /// The new session.
        sid: SessionId,
        /// The block size in force.
        block_size: u64,
    },
    /// `0:<sid>:<index>:<received>`: block stored (or already held).
    Acked {
        /// The upload session.
        sid: SessionId,
        /// The block acknowledged.
        index: u64,
        /// Distinct blocks the server now holds.
        received: u64,
    },
    /// `0:<sid>:<index>:<bytes>`: one download block.
    Data {
        /// The download session.
        sid: SessionId,
        /// The block's number.
        index: u64,
        /// The block's bytes.
        data: Bytes,
    },
    /// `0:`: session closed.
    Closed,
    /// `d:<sid>:<size>:<block_size>`: fetch the response in blocks.
    Offer(Offer),
    /// `<code>:<reason>`: an error.
    Error {
        /// Which error.
        code: ErrorCode,
        /// Text for people; programs act on the code.
        reason: Bytes,
    },
}

/// Why a response datagram could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The datagram was empty.
    #[error("empty response")]
    Empty,
    /// The code byte is not `0`–`4` or `d`, or is not followed by `:`.
    #[error("unknown response code")]
    UnknownCode,
    /// A `0:` payload does not have the expected shape.
    #[error("expected {0}")]
    Malformed(Expect),
    /// A `d:` offer does not have the shape `d:<sid>:<size>:<block_size>`.
    #[error("malformed download offer")]
    MalformedOffer,
}

fn number(field: Option<Bytes>) -> Option<u64> {
    field::parse_u64(&field?)
}

impl Response {
    /// The code its first byte carries.
    pub fn code(&self) -> ReplyCode {
        match self {
            Response::Offer(_) => ReplyCode::Offer,
            Response::Error { code, .. } => ReplyCode::Error(*code),
            _ => ReplyCode::Ok,
        }
    }

    /// An error response with a reason.
    pub fn error(code: ErrorCode, reason: impl Into<Bytes>) -> Self {
        Response::Error {
            code,
            reason: reason.into(),
        }
    }

    /// Parses a response to a request whose OK shape is `expect`.
    ///
    /// Errors and offers parse the same whatever was expected; a bare code with no `:`
    /// (as older servers send) is read as an empty payload.
    pub fn parse(datagram: Bytes, expect: Expect) -> Result<Response, ResponseError> {
        let code = *datagram.first().ok_or(ResponseError::Empty)?;
        let payload = match datagram.get(1) {
            None => Bytes::new(),
            Some(b':') => datagram.slice(2..),
            Some(_) => return Err(ResponseError::UnknownCode),
        };
        if let Some(code) = ErrorCode::from_byte(code) {
            return Ok(Response::Error {
                code,
                reason: payload,
            });
        }
        match code {
            b'0' => Self::parse_ok(payload, expect).ok_or(ResponseError::Malformed(expect)),
            b'd' => Self::parse_offer(payload).ok_or(ResponseError::MalformedOffer),
            _ => Err(ResponseError::UnknownCode),
        }
    }

    fn parse_offer(payload: Bytes) -> Option<Response> {
        let mut f = Fields::new(payload);
        let sid = SessionId::parse(&f.next()?)?;
        let size = number(f.next())?;
        let block_size = number(Some(f.rest()))?;
        (size > 0 && block_size > 0).then_some(Response::Offer(Offer {
            sid,
            size,
            block_size,
        }))
    }

    fn parse_ok(payload: Bytes, expect: Expect) -> Option<Response> {
        let mut f = Fields::new(payload.clone());
        Some(match expect {
            Expect::Published => Response::Published(MessageId::parse(&payload)?),
            Expect::Ids => {
                let mut ids = Vec::new();
                if !payload.is_empty() {
                    while let Some(field) = f.next() {
                        ids.push(MessageId::parse(&field)?);
                    }
                    ids.push(MessageId::parse(&f.rest())?);
                }
                Response::Ids(ids)
            }
            Expect::Entry => Response::Entry(Entry::parse(f)?),
            Expect::Messages => Response::Messages(Self::parse_messages(payload)?),
            Expect::Opened => {
                let sid = SessionId::parse(&f.next()?)?;
                Response::Opened {
                    sid,
                    block_size: number(Some(f.rest()))?,
                }
            }
            Expect::Acked => {
                let sid = SessionId::parse(&f.next()?)?;
                let index = number(f.next())?;
                Response::Acked {
                    sid,
                    index,
                    received: number(Some(f.rest()))?,
                }
            }
            Expect::Data => {
                let sid = SessionId::parse(&f.next()?)?;
                let index = number(f.next())?;
                Response::Data {
                    sid,
                    index,
                    data: f.rest(),
                }
            }
            Expect::Closed => {
                if !payload.is_empty() {
                    return None;
                }
                Response::Closed
            }
        })
    }

    /// `<count>` then that many `4:` records, and nothing after them.
    fn parse_messages(payload: Bytes) -> Option<Vec<Message>> {
        let mut f = Fields::new(payload.clone());
        let count = match f.next() {
            // `0:0:` would be a zero count followed by a stray separator.
            Some(count) => number(Some(count)).filter(|&n| n > 0)?,
            None => {
                let count = number(Some(payload.clone()))?;
                f = Fields::new(Bytes::new());
                count
            }
        };
        // Each record takes at least 12 bytes, so a huge count cannot reserve much.
        let mut messages = Vec::with_capacity(count.min(payload.len() as u64 / 12) as usize);
        for i in 0..count {
            if i > 0 {
                f.colon()?;
            }
            messages.push(Message::parse_record(&mut f)?);
        }
        f.is_empty().then_some(messages)
    }

    /// Appends the wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Response::Published(id) => {
                out.extend_from_slice(b"0:");
                id.encode(out);
            }
            Response::Ids(ids) => encode_ids(ids.iter().copied(), out),
            Response::Entry(entry) => {
                out.extend_from_slice(b"0:");
                entry.encode(out);
            }
            Response::Messages(messages) => encode_messages(messages.iter(), out),
            Response::Opened { sid, block_size } => {
                out.extend_from_slice(b"0:");
                sid.encode(out);
                out.push(b':');
                field::put_u64(out, *block_size);
            }
            Response::Acked {
                sid,
                index,
                received,
            } => {
                out.extend_from_slice(b"0:");
                sid.encode(out);
                out.push(b':');
                field::put_u64(out, *index);
                out.push(b':');
                field::put_u64(out, *received);
            }
            Response::Data { sid, index, data } => {
                out.extend_from_slice(b"0:");
                sid.encode(out);
                out.push(b':');
                field::put_u64(out, *index);
                out.push(b':');
                out.extend_from_slice(data);
            }
            Response::Closed => out.extend_from_slice(b"0:"),
            Response::Offer(offer) => {
                out.extend_from_slice(b"d:");
                offer.sid.encode(out);
                out.push(b':');
                field::put_u64(out, offer.size);
                out.push(b':');
                field::put_u64(out, offer.block_size);
            }
            Response::Error { code, reason } => {
                out.push(code.byte());
                out.push(b':');
                out.extend_from_slice(reason);
            }
        }
    }

    /// The wire form as a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::new();
        self.encode(&mut out);
        Bytes::from(out)
    }
}

/// Appends a `2:` reply for these ids.
pub fn encode_ids(ids: impl IntoIterator<Item = MessageId>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"0:");
    for (i, id) in ids.into_iter().enumerate() {
        if i > 0 {
            out.push(b':');
        }
        id.encode(out);
    }
}

/// Appends a `4:` reply for these messages.
pub fn encode_messages<'a>(
    messages: impl ExactSizeIterator<Item = &'a Message>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"0:");
    field::put_u64(out, messages.len() as u64);
    for m in messages {
        m.encode_record(out);
    }
}

/// Appends the `4:` reply for `entries`, which are messages `first`, `first + 1`, … (the same
/// bytes as [`encode_messages`], for stores that keep entries rather than messages).
pub fn encode_entries<'a>(
    first: MessageId,
    entries: impl ExactSizeIterator<Item = &'a Entry>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"0:");
    field::put_u64(out, entries.len() as u64);
    for (entry, id) in entries.zip(first.0..) {
        entry.encode_record(MessageId(id), out);
    }
}

/// Bytes of a `4:` reply holding `count` records whose [`Message::record_len`]s sum to `records`.
pub fn messages_reply_len(count: u64, records: u64) -> u64 {
    2 + field::digits(count) as u64 + records
}

/// Bytes of a `2:` reply whose ids' digits sum to `digits` over `count` ids.
pub fn ids_reply_len(count: u64, digits: u64) -> u64 {
    2 + digits + count.saturating_sub(1)
}

/// Header bytes of a `g:` reply with the widest index: `0:<sid>:<20 digits>:`.
pub const DATA_HEADER_MAX: usize = 2 + SessionId::LEN + 1 + field::MAX_DIGITS + 1;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8], expect: Expect) -> Result<Response, ResponseError> {
        Response::parse(Bytes::copy_from_slice(s), expect)
    }

    #[test]
    fn bare_codes_are_accepted() {
        assert_eq!(
            parse(b"2", Expect::Entry),
            Ok(Response::error(ErrorCode::MsgNotFound, Bytes::new()))
        );
        assert_eq!(parse(b"0", Expect::Ids), Ok(Response::Ids(vec![])));
        assert_eq!(parse(b"0", Expect::Closed), Ok(Response::Closed));
        assert_eq!(
            parse(b"0", Expect::Published),
            Err(ResponseError::Malformed(Expect::Published))
        );
        assert_eq!(parse(b"", Expect::Published), Err(ResponseError::Empty));
        assert_eq!(
            parse(b"7:x", Expect::Published),
            Err(ResponseError::UnknownCode)
        );
        assert_eq!(
            parse(b"0x", Expect::Published),
            Err(ResponseError::UnknownCode)
        );
    }

    #[test]
    fn errors_read_as_words_not_debug_output() {
        assert_eq!(
            ResponseError::Malformed(Expect::Entry).to_string(),
            "expected a message"
        );
        assert_eq!(
            ResponseError::Malformed(Expect::Published).to_string(),
            "expected a message id"
        );
        assert_eq!(Expect::Acked.to_string(), "a block acknowledgement");
    }

    #[test]
    fn contract_examples_parse() {
        assert_eq!(
            parse(b"0:0", Expect::Published),
            Ok(Response::Published(MessageId(0)))
        );
        assert_eq!(
            parse(b"0:0:1", Expect::Ids),
            Ok(Response::Ids(vec![MessageId(0), MessageId(1)]))
        );
        let Ok(Response::Entry(e)) =
            parse(b"0:1763743500.123456:127.0.0.1:40154:a:b:c", Expect::Entry)
        else {
            panic!("entry")
        };
        assert_eq!(e.text, Bytes::from_static(b"a:b:c"));
        assert_eq!(e.from, "127.0.0.1:40154".parse().expect("addr"));
        let wire: &[u8] = b"0:2:0:1763743499.000001:127.0.0.1:40153:12:Hello world!:1:1763743500.123456:127.0.0.1:40154:5:a:b:c";
        let Ok(Response::Messages(ms)) = parse(wire, Expect::Messages) else {
            panic!("messages")
        };
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[0].entry.text, Bytes::from_static(b"Hello world!"));
        assert_eq!(ms[1].entry.text, Bytes::from_static(b"a:b:c"));
        let mut out = Vec::new();
        encode_messages(ms.iter(), &mut out);
        assert_eq!(out, wire);
        let records: usize = ms.iter().map(Message::record_len).sum();
        assert_eq!(messages_reply_len(2, records as u64), wire.len() as u64);
    }

    #[test]
    fn messages_count_must_match() {
        assert_eq!(
            parse(b"0:0", Expect::Messages),
            Ok(Response::Messages(vec![]))
        );
        assert!(parse(b"0:1", Expect::Messages).is_err());
        assert!(parse(b"0:1:0:1.000000:1.2.3.4:5:2:abX", Expect::Messages).is_err());
        assert!(parse(b"0:18446744073709551615", Expect::Messages).is_err());
    }

    #[test]
    fn ids_reply_len_counts_separators() {
        for ids in [
            vec![],
            vec![MessageId(7)],
            vec![MessageId(9), MessageId(10), MessageId(11)],
        ] {
            let mut out = Vec::new();
            encode_ids(ids.iter().copied(), &mut out);
            let digits: usize = ids.iter().map(|id| id.encoded_len()).sum();
            assert_eq!(
                ids_reply_len(ids.len() as u64, digits as u64),
                out.len() as u64
            );
        }
    }
}

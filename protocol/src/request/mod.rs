//! Request PDUs of both layers, parsed in the order PROTOCOL.md §2 prescribes.

use bytes::Bytes;

use crate::code::{ErrorCode, RequestKind};
use crate::field::{self, Fields};
use crate::ids::{MessageId, PublishToken, SessionId};

/// Why a request datagram was refused by the parser.
///
/// The `Display` text is the reason sent on the wire after the error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer than two bytes: there is no room for `<code>:`.
    #[error("too short")]
    TooShort,
    /// The second byte is not `:`.
    #[error("missing ':' after the code")]
    MissingColon,
    /// The code byte names no request (answered `3`, the only non-`1` parse error).
    #[error("unknown request {}", Printable(*.0))]
    UnknownCode(u8),
    /// A number field is not 1–20 digits fitting in a u64.
    #[error("bad number")]
    BadNumber,
    /// A session id field is not a canonical lowercase UUID.
    #[error("bad session id")]
    BadSessionId,
    /// `1:` (or `5:<token>:`) with nothing after it.
    #[error("empty text")]
    EmptyText,
    /// A publish token field is not a canonical lowercase UUID.
    #[error("bad token")]
    BadToken,
    /// A field the request needs is absent.
    #[error("missing {0}")]
    MissingField(&'static str),
    /// `a:` with a size of zero.
    #[error("size must be at least 1")]
    ZeroSize,
    /// `a:` with a block size of zero.
    #[error("block size must be at least 1")]
    ZeroBlockSize,
}

impl ParseError {
    /// The response code this error is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ParseError::UnknownCode(_) => ErrorCode::UnknownControl,
            _ => ErrorCode::BadFormat,
        }
    }
}

/// A datagram the parser refused, and the request its code byte named if it named one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The request the datagram claimed to be (`None`: too short, no `:`, unknown code).
    pub kind: Option<RequestKind>,
    /// Why it was refused.
    pub error: ParseError,
}

impl Rejected {
    fn unnamed(error: ParseError) -> Self {
        Rejected { kind: None, error }
    }
}

/// Shows a code byte as itself when printable, else as hex, so reasons stay ASCII.
struct Printable(u8);

impl std::fmt::Display for Printable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "{}", self.0 as char)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

/// A layer-1 board request: one datagram in, one response out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoardRequest {
    /// `1:<text>`: publish a text of one or more bytes.
    Publish(Bytes),
    /// `2:<n>`: ids of the newest `n` messages (0 = all), oldest first.
    Ids(u64),
    /// `3:<id>`: one message.
    Get(MessageId),
    /// `4:<n>`: the newest `n` messages (0 = all), oldest first.
    Last(u64),
    /// `5:<token>:<text>`: publish `text` exactly once per `token`.
    PublishOnce {
        /// The client's token for this message, the same in every resend.
        token: PublishToken,
        /// The text, one or more bytes.
        text: Bytes,
    },
    /// `6:<after>:<max>:<wait>`: up to `max` messages (0 = no limit) with ids above
    /// `after`, oldest first; if there are none, wait up to `wait_ms` for one.
    After {
        /// Only messages with ids above this one.
        after: MessageId,
        /// At most this many (0 = no limit).
        max: u64,
        /// How long to wait for a message when there is none yet, in milliseconds.
        wait_ms: u64,
    },
}

/// A layer-2 session request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRequest {
    /// `a:<size>:<block_size>`: open an upload of a `size`-byte request PDU.
    Open {
        /// Total bytes of the request PDU to upload (at least 1).
        size: u64,
        /// Bytes per block the client proposes (at least 1); the server may lower it.
        block_size: u64,
    },
    /// `b:<sid>:<index>:<bytes>`: one block of an upload.
    Block {
        /// The upload session.
        sid: SessionId,
        /// Block number, from 0.
        index: u64,
        /// The block's bytes (any bytes, `:` included).
        data: Bytes,
    },
    /// `c:<sid>`: execute the assembled request (exactly once).
    Commit(SessionId),
    /// `g:<sid>:<index>`: one block of a download.
    Fetch {
        /// The download session.
        sid: SessionId,
        /// Block number, from 0.
        index: u64,
    },
    /// `x:<sid>`: close a session.
    Close(SessionId),
}

impl SessionRequest {
    /// The session this request names, if any (`a:` names none yet).
    pub fn sid(&self) -> Option<SessionId> {
        match self {
            SessionRequest::Open { .. } => None,
            SessionRequest::Block { sid, .. }
            | SessionRequest::Commit(sid)
            | SessionRequest::Fetch { sid, .. }
            | SessionRequest::Close(sid) => Some(*sid),
        }
    }
}

/// Any request datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Layer 1.
    Board(BoardRequest),
    /// Layer 2.
    Session(SessionRequest),
}

fn number(field: Option<Bytes>, name: &'static str) -> Result<u64, ParseError> {
    field::parse_u64(&field.ok_or(ParseError::MissingField(name))?).ok_or(ParseError::BadNumber)
}

/// A payload of numbers only may end in one `\n` or `\r\n`, so that a line typed into
/// `nc -u` works; nowhere else is a newline ignored.
fn without_newline(payload: Bytes) -> Bytes {
    let cut = if payload.ends_with(b"\r\n") {
        2
    } else if payload.ends_with(b"\n") {
        1
    } else {
        0
    };
    payload.slice(..payload.len() - cut)
}

fn sid(field: Option<Bytes>) -> Result<SessionId, ParseError> {
    SessionId::parse(&field.ok_or(ParseError::MissingField("session id"))?)
        .ok_or(ParseError::BadSessionId)
}

impl Request {
    /// Parses one request datagram.
    ///
    /// Takes `Bytes` so that text and block data come out as slices of the datagram.
    pub fn parse(datagram: Bytes) -> Result<Request, ParseError> {
        Self::parse_classified(datagram).map_err(|rejected| rejected.error)
    }

    /// Parses one request datagram; a refusal also says which request its code byte named,
    /// so that a server can count a malformed `b:` as a block without reading it again.
    pub fn parse_classified(datagram: Bytes) -> Result<Request, Rejected> {
        if datagram.len() < 2 {
            return Err(Rejected::unnamed(ParseError::TooShort));
        }
        if datagram[1] != b':' {
            return Err(Rejected::unnamed(ParseError::MissingColon));
        }
        let code = datagram[0];
        let Some(kind) = RequestKind::from_byte(code) else {
            return Err(Rejected::unnamed(ParseError::UnknownCode(code)));
        };
        Self::parse_payload(kind, datagram).map_err(|error| Rejected {
            kind: Some(kind),
            error,
        })
    }

    /// Which request this is.
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Board(BoardRequest::Publish(_)) => RequestKind::Publish,
            Request::Board(BoardRequest::Ids(_)) => RequestKind::Ids,
            Request::Board(BoardRequest::Get(_)) => RequestKind::Get,
            Request::Board(BoardRequest::Last(_)) => RequestKind::Last,
            Request::Board(BoardRequest::PublishOnce { .. }) => RequestKind::PublishOnce,
            Request::Board(BoardRequest::After { .. }) => RequestKind::After,
            Request::Session(SessionRequest::Open { .. }) => RequestKind::Open,
            Request::Session(SessionRequest::Block { .. }) => RequestKind::Block,
            Request::Session(SessionRequest::Commit(_)) => RequestKind::Commit,
            Request::Session(SessionRequest::Fetch { .. }) => RequestKind::Fetch,
            Request::Session(SessionRequest::Close(_)) => RequestKind::Close,
        }
    }

    fn parse_payload(kind: RequestKind, datagram: Bytes) -> Result<Request, ParseError> {
        let mut payload = datagram.slice(2..);
        if matches!(
            kind,
            RequestKind::Ids | RequestKind::Get | RequestKind::Last | RequestKind::After
        ) {
            payload = without_newline(payload);
        }
        let mut fields = Fields::new(payload.clone());
        Ok(match kind {
            RequestKind::Publish if payload.is_empty() => return Err(ParseError::EmptyText),
            RequestKind::Publish => Request::Board(BoardRequest::Publish(payload)),
            RequestKind::Ids => Request::Board(BoardRequest::Ids(number(Some(payload), "count")?)),
            RequestKind::Get => {
                Request::Board(BoardRequest::Get(MessageId(number(Some(payload), "id")?)))
            }
            RequestKind::Last => {
                Request::Board(BoardRequest::Last(number(Some(payload), "count")?))
            }
            RequestKind::PublishOnce => {
                // A token is 36 bytes: take them at once rather than scan them for the `:`.
                // A shorter field puts its `:` inside them, which no token holds, so the
                // errors are those of the scan.
                let token = if payload.get(PublishToken::LEN) == Some(&b':') {
                    let token = fields.take(PublishToken::LEN);
                    fields.colon();
                    token
                } else {
                    fields.next()
                };
                let token = token.ok_or(ParseError::MissingField("text"))?;
                let token = PublishToken::parse(&token).ok_or(ParseError::BadToken)?;
                let text = fields.rest();
                if text.is_empty() {
                    return Err(ParseError::EmptyText);
                }
                Request::Board(BoardRequest::PublishOnce { token, text })
            }
            RequestKind::After => {
                let after = MessageId(number(fields.next(), "max")?);
                let max = number(fields.next(), "wait")?;
                let wait_ms = number(Some(fields.rest()), "wait")?;
                Request::Board(BoardRequest::After {
                    after,
                    max,
                    wait_ms,
                })
            }
            _ => Request::Session(Self::parse_session(kind, payload, fields)?),
        })
    }

    fn parse_session(
        kind: RequestKind,
        payload: Bytes,
        mut fields: Fields,
    ) -> Result<SessionRequest, ParseError> {
        Ok(match kind {
            RequestKind::Open => {
                let size = number(fields.next(), "block size")?;
                let block_size = number(Some(fields.rest()), "block size")?;
                if size == 0 {
                    return Err(ParseError::ZeroSize);
                }
                if block_size == 0 {
                    return Err(ParseError::ZeroBlockSize);
                }
                SessionRequest::Open { size, block_size }
            }
            RequestKind::Block => {
                let sid = sid(fields.next())?;
                let index = number(fields.next(), "block data")?;
                SessionRequest::Block {
                    sid,
                    index,
                    data: fields.rest(),
                }
            }
            RequestKind::Commit => SessionRequest::Commit(sid(Some(payload))?),
            RequestKind::Fetch => {
                let sid = sid(fields.next())?;
                let index = number(Some(fields.rest()), "index")?;
                SessionRequest::Fetch { sid, index }
            }
            RequestKind::Close => SessionRequest::Close(sid(Some(payload))?),
            // Board kinds are parsed by the caller; they never reach here.
            RequestKind::Publish
            | RequestKind::Ids
            | RequestKind::Get
            | RequestKind::Last
            | RequestKind::PublishOnce
            | RequestKind::After => return Err(ParseError::UnknownCode(kind.byte())),
        })
    }

    /// Appends the wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Request::Board(r) => Self::encode_board(r, out),
            Request::Session(r) => Self::encode_session(r, out),
        }
    }

    fn encode_board(r: &BoardRequest, out: &mut Vec<u8>) {
        match r {
            BoardRequest::Publish(text) => {
                out.extend_from_slice(b"1:");
                out.extend_from_slice(text);
            }
            BoardRequest::Ids(n) => {
                out.extend_from_slice(b"2:");
                field::put_u64(out, *n);
            }
            BoardRequest::Get(id) => {
                out.extend_from_slice(b"3:");
                id.encode(out);
            }
            BoardRequest::Last(n) => {
                out.extend_from_slice(b"4:");
                field::put_u64(out, *n);
            }
            BoardRequest::PublishOnce { token, text } => {
                out.extend_from_slice(b"5:");
                token.encode(out);
                out.push(b':');
                out.extend_from_slice(text);
            }
            BoardRequest::After {
                after,
                max,
                wait_ms,
            } => {
                out.extend_from_slice(b"6:");
                after.encode(out);
                out.push(b':');
                field::put_u64(out, *max);
                out.push(b':');
                field::put_u64(out, *wait_ms);
            }
        }
    }

    fn encode_session(r: &SessionRequest, out: &mut Vec<u8>) {
        match r {
            SessionRequest::Open { size, block_size } => {
                out.extend_from_slice(b"a:");
                field::put_u64(out, *size);
                out.push(b':');
                field::put_u64(out, *block_size);
            }
            SessionRequest::Block { sid, index, data } => {
                out.extend_from_slice(b"b:");
                sid.encode(out);
                out.push(b':');
                field::put_u64(out, *index);
                out.push(b':');
                out.extend_from_slice(data);
            }
            SessionRequest::Commit(sid) => {
                out.extend_from_slice(b"c:");
                sid.encode(out);
            }
            SessionRequest::Fetch { sid, index } => {
                out.extend_from_slice(b"g:");
                sid.encode(out);
                out.push(b':');
                field::put_u64(out, *index);
            }
            SessionRequest::Close(sid) => {
                out.extend_from_slice(b"x:");
                sid.encode(out);
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

impl BoardRequest {
    /// The wire form as a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::new();
        Request::encode_board(self, &mut out);
        Bytes::from(out)
    }
}

impl SessionRequest {
    /// The wire form as a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::new();
        Request::encode_session(self, &mut out);
        Bytes::from(out)
    }
}

impl From<BoardRequest> for Request {
    fn from(r: BoardRequest) -> Self {
        Request::Board(r)
    }
}

impl From<SessionRequest> for Request {
    fn from(r: SessionRequest) -> Self {
        Request::Session(r)
    }
}

#[cfg(test)]
mod tests;

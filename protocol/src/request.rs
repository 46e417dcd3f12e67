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
        let request = match kind {
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
                let token = fields.next().ok_or(ParseError::MissingField("text"))?;
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
            RequestKind::Open => {
                let size = number(fields.next(), "block size")?;
                let block_size = number(Some(fields.rest()), "block size")?;
                if size == 0 {
                    return Err(ParseError::ZeroSize);
                }
                if block_size == 0 {
                    return Err(ParseError::ZeroBlockSize);
                }
                Request::Session(SessionRequest::Open { size, block_size })
            }
            RequestKind::Block => {
                let sid = sid(fields.next())?;
                let index = number(fields.next(), "block data")?;
                Request::Session(SessionRequest::Block {
                    sid,
                    index,
                    data: fields.rest(),
                })
            }
            RequestKind::Commit => Request::Session(SessionRequest::Commit(sid(Some(payload))?)),
            RequestKind::Fetch => {
                let sid = sid(fields.next())?;
                let index = number(Some(fields.rest()), "index")?;
                Request::Session(SessionRequest::Fetch { sid, index })
            }
            RequestKind::Close => Request::Session(SessionRequest::Close(sid(Some(payload))?)),
        };
        Ok(request)
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

/// Header bytes of a `b:` datagram with the widest index: `b:<sid>:<20 digits>:`.
pub const BLOCK_HEADER_MAX: usize = 2 + SessionId::LEN + 1 + field::MAX_DIGITS + 1;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Result<Request, ParseError> {
        Request::parse(Bytes::copy_from_slice(s))
    }

    const SID: &str = "3f2b8c1e-9a4d-4e6f-8b1a-2c3d4e5f6a7b";

    #[test]
    fn classification_order() {
        assert_eq!(parse(b""), Err(ParseError::TooShort));
        assert_eq!(parse(b"x"), Err(ParseError::TooShort));
        // Rule 1 comes before rule 2: an unknown code without ':' is still a format error.
        assert_eq!(parse(b"9x"), Err(ParseError::MissingColon));
        assert_eq!(parse(b"9:x"), Err(ParseError::UnknownCode(b'9')));
        assert_eq!(parse(b"0:"), Err(ParseError::UnknownCode(b'0')));
        assert_eq!(parse(b"d:x"), Err(ParseError::UnknownCode(b'd')));
        assert_eq!(parse(b"2:x"), Err(ParseError::BadNumber));
    }

    #[test]
    fn reasons_match_the_contract() {
        assert_eq!(ParseError::TooShort.to_string(), "too short");
        assert_eq!(ParseError::BadNumber.to_string(), "bad number");
        assert_eq!(
            ParseError::UnknownCode(b'9').to_string(),
            "unknown request 9"
        );
        assert_eq!(
            ParseError::UnknownCode(0xff).to_string(),
            "unknown request 0xff"
        );
        assert_eq!(
            ParseError::UnknownCode(b'9').code(),
            ErrorCode::UnknownControl
        );
        assert_eq!(ParseError::BadNumber.code(), ErrorCode::BadFormat);
    }

    #[test]
    fn board_requests() {
        assert_eq!(
            parse(b"1:a:b:c"),
            Ok(Request::Board(BoardRequest::Publish(Bytes::from_static(
                b"a:b:c"
            ))))
        );
        assert_eq!(parse(b"1:"), Err(ParseError::EmptyText));
        assert_eq!(parse(b"2:0"), Ok(Request::Board(BoardRequest::Ids(0))));
        assert_eq!(parse(b"2:-1"), Err(ParseError::BadNumber));
        assert_eq!(parse(b"2:"), Err(ParseError::BadNumber));
        assert_eq!(
            parse(b"3:99"),
            Ok(Request::Board(BoardRequest::Get(MessageId(99))))
        );
        assert_eq!(parse(b"3:1:"), Err(ParseError::BadNumber));
        assert_eq!(parse(b"4:2"), Ok(Request::Board(BoardRequest::Last(2))));
        assert_eq!(parse(b"4:99999999999999999999"), Err(ParseError::BadNumber));
    }

    #[test]
    fn session_requests() {
        let sid = SessionId::parse(SID.as_bytes()).expect("sid");
        assert_eq!(
            parse(b"a:7:2"),
            Ok(Request::Session(SessionRequest::Open {
                size: 7,
                block_size: 2
            }))
        );
        assert_eq!(parse(b"a:0:2"), Err(ParseError::ZeroSize));
        assert_eq!(parse(b"a:7:0"), Err(ParseError::ZeroBlockSize));
        assert_eq!(parse(b"a:7"), Err(ParseError::MissingField("block size")));
        assert_eq!(parse(b"a:7:2:1"), Err(ParseError::BadNumber));
        assert_eq!(
            parse(format!("b:{SID}:0:1:").as_bytes()),
            Ok(Request::Session(SessionRequest::Block {
                sid,
                index: 0,
                data: Bytes::from_static(b"1:")
            }))
        );
        assert_eq!(
            parse(format!("b:{SID}:0").as_bytes()),
            Err(ParseError::MissingField("block data"))
        );
        assert_eq!(
            parse(format!("c:{SID}").as_bytes()),
            Ok(Request::Session(SessionRequest::Commit(sid)))
        );
        assert_eq!(parse(b"c:not-a-uuid"), Err(ParseError::BadSessionId));
        assert_eq!(
            parse(format!("c:{}", SID.to_uppercase()).as_bytes()),
            Err(ParseError::BadSessionId)
        );
        assert_eq!(
            parse(format!("c:{SID}:").as_bytes()),
            Err(ParseError::BadSessionId)
        );
        assert_eq!(
            parse(format!("g:{SID}:3").as_bytes()),
            Ok(Request::Session(SessionRequest::Fetch { sid, index: 3 }))
        );
        assert_eq!(
            parse(format!("x:{SID}").as_bytes()),
            Ok(Request::Session(SessionRequest::Close(sid)))
        );
        assert_eq!(parse(b"x:"), Err(ParseError::BadSessionId));
        assert_eq!(parse(b"b:"), Err(ParseError::MissingField("session id")));
    }

    fn classify(pdu: &[u8]) -> Result<RequestKind, Rejected> {
        Request::parse_classified(Bytes::copy_from_slice(pdu)).map(|r| r.kind())
    }

    #[test]
    fn refusals_name_the_request_their_code_byte_names() {
        assert_eq!(classify(b"2:10"), Ok(RequestKind::Ids));
        assert_eq!(
            classify(b"x:not-a-sid").unwrap_err().kind,
            Some(RequestKind::Close)
        );
        let bad_block = classify(b"b:zz:0:x").unwrap_err();
        assert_eq!(bad_block.kind, Some(RequestKind::Block));
        assert_eq!(bad_block.error, ParseError::BadSessionId);
        for pdu in [&b"x"[..], b"1-", b"9:x"] {
            assert_eq!(classify(pdu).unwrap_err().kind, None, "{pdu:?}");
        }
    }

    #[test]
    fn session_and_board_requests_encode_as_requests_do() {
        let open = SessionRequest::Open {
            size: 7,
            block_size: 2,
        };
        assert_eq!(open.to_bytes(), Request::Session(open.clone()).to_bytes());
        assert_eq!(&open.to_bytes()[..], b"a:7:2");
        let last = BoardRequest::Last(3);
        assert_eq!(&last.to_bytes()[..], b"4:3");
    }

    const TOKEN: &str = "0b7f5d2e-8c4a-4f1e-9d3b-6a2c1e0f9b8d";

    #[test]
    fn version_2_examples_parse() {
        let Ok(Request::Board(BoardRequest::PublishOnce { token, text })) =
            parse(format!("5:{TOKEN}:hi").as_bytes())
        else {
            panic!("5: parses")
        };
        assert_eq!((token.to_string().as_str(), &text[..]), (TOKEN, &b"hi"[..]));
        // The text is the last field: colons and newlines are part of it.
        let Ok(Request::Board(BoardRequest::PublishOnce { text, .. })) =
            parse(format!("5:{TOKEN}:a:b\n").as_bytes())
        else {
            panic!("5: parses")
        };
        assert_eq!(&text[..], b"a:b\n");
        assert_eq!(
            parse(b"6:41:10:0"),
            Ok(Request::Board(BoardRequest::After {
                after: MessageId(41),
                max: 10,
                wait_ms: 0
            }))
        );
    }

    #[test]
    fn version_2_refusals() {
        let refusal = |pdu: &[u8]| parse(pdu).unwrap_err().to_string();
        assert_eq!(refusal(b"5:not-a-uuid:hi"), "bad token");
        assert_eq!(refusal(format!("5:{TOKEN}:").as_bytes()), "empty text");
        assert_eq!(refusal(format!("5:{TOKEN}").as_bytes()), "missing text");
        let upper = format!("5:{}:hi", TOKEN.to_uppercase());
        assert_eq!(refusal(upper.as_bytes()), "bad token");
        assert_eq!(refusal(b"6:41:10"), "missing wait");
        assert_eq!(refusal(b"6:41"), "missing max");
        assert_eq!(refusal(b"6:41:10:-1"), "bad number");
        assert_eq!(refusal(b"6:x:10:0"), "bad number");
    }

    #[test]
    fn one_trailing_newline_is_ignored_after_numbers_only() {
        assert_eq!(parse(b"2:10\n"), Ok(Request::Board(BoardRequest::Ids(10))));
        assert_eq!(
            parse(b"3:1\r\n"),
            Ok(Request::Board(BoardRequest::Get(MessageId(1))))
        );
        assert_eq!(parse(b"4:2\n"), Ok(Request::Board(BoardRequest::Last(2))));
        assert!(matches!(
            parse(b"6:1:2:3\r\n"),
            Ok(Request::Board(BoardRequest::After { wait_ms: 3, .. }))
        ));
        // One only, and never a lone `\r` or a newline inside.
        assert_eq!(parse(b"2:10\n\n"), Err(ParseError::BadNumber));
        assert_eq!(parse(b"2:10\r"), Err(ParseError::BadNumber));
        assert_eq!(parse(b"2:\n"), Err(ParseError::BadNumber));
        assert_eq!(parse(b"6:1\n:2:3"), Err(ParseError::BadNumber));
        // In a text it is part of the text; in session requests it is refused.
        assert_eq!(
            parse(b"1:hi\n"),
            Ok(Request::Board(BoardRequest::Publish(Bytes::from_static(
                b"hi\n"
            ))))
        );
        assert!(parse(b"a:7:2\n").is_err());
    }
}

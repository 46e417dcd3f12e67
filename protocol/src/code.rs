//! The shared vocabulary of both directions: request kinds, error codes, reply codes.
//!
//! A leaf module, so that requests and responses can both name codes without importing
//! each other, and so that a server can count and limit by typed values.

/// The error codes of PROTOCOL.md §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `1`: the request could not be parsed.
    BadFormat,
    /// `2`: no message with that id.
    MsgNotFound,
    /// `3`: the code byte is not a known request.
    UnknownControl,
    /// `4`: session or transmission error (unknown session, too large, busy, ...).
    ErrTransm,
}

impl ErrorCode {
    /// The code byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            ErrorCode::BadFormat => b'1',
            ErrorCode::MsgNotFound => b'2',
            ErrorCode::UnknownControl => b'3',
            ErrorCode::ErrTransm => b'4',
        }
    }

    /// The code a response byte names, if it is an error code.
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'1' => ErrorCode::BadFormat,
            b'2' => ErrorCode::MsgNotFound,
            b'3' => ErrorCode::UnknownControl,
            b'4' => ErrorCode::ErrTransm,
            _ => return None,
        })
    }
}

/// What a response says in its first byte: success, an error, or a download offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyCode {
    /// `0`.
    Ok,
    /// `1`–`4`.
    Error(ErrorCode),
    /// `d`: the response is fetched in blocks.
    Offer,
}

impl ReplyCode {
    /// The code byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            ReplyCode::Ok => b'0',
            ReplyCode::Error(code) => code.byte(),
            ReplyCode::Offer => b'd',
        }
    }

    /// Whether this answers malformed input (`1` bad format, `3` unknown request): the
    /// replies a server limits per destination, since another server answers them in kind.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            ReplyCode::Error(ErrorCode::BadFormat | ErrorCode::UnknownControl)
        )
    }
}

/// Which request a datagram is, by its code byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `1:` publish.
    Publish,
    /// `2:` newest ids.
    Ids,
    /// `3:` one message.
    Get,
    /// `4:` newest messages.
    Last,
    /// `5:` publish exactly once per token.
    PublishOnce,
    /// `6:` messages after an id, waiting for one if there are none.
    After,
    /// `a:` open an upload.
    Open,
    /// `b:` one upload block.
    Block,
    /// `c:` commit an upload.
    Commit,
    /// `g:` fetch a download block.
    Fetch,
    /// `x:` close a session.
    Close,
}

impl RequestKind {
    /// Every kind, in the order of their code bytes (layer 1, then layer 2).
    pub const ALL: [RequestKind; 11] = [
        RequestKind::Publish,
        RequestKind::Ids,
        RequestKind::Get,
        RequestKind::Last,
        RequestKind::PublishOnce,
        RequestKind::After,
        RequestKind::Open,
        RequestKind::Block,
        RequestKind::Commit,
        RequestKind::Fetch,
        RequestKind::Close,
    ];

    /// The kind a code byte names, if any.
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'1' => RequestKind::Publish,
            b'2' => RequestKind::Ids,
            b'3' => RequestKind::Get,
            b'4' => RequestKind::Last,
            b'5' => RequestKind::PublishOnce,
            b'6' => RequestKind::After,
            b'a' => RequestKind::Open,
            b'b' => RequestKind::Block,
            b'c' => RequestKind::Commit,
            b'g' => RequestKind::Fetch,
            b'x' => RequestKind::Close,
            _ => return None,
        })
    }

    /// The code byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            RequestKind::Publish => b'1',
            RequestKind::Ids => b'2',
            RequestKind::Get => b'3',
            RequestKind::Last => b'4',
            RequestKind::PublishOnce => b'5',
            RequestKind::After => b'6',
            RequestKind::Open => b'a',
            RequestKind::Block => b'b',
            RequestKind::Commit => b'c',
            RequestKind::Fetch => b'g',
            RequestKind::Close => b'x',
        }
    }

    /// A lowercase name for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Publish => "publish",
            RequestKind::Ids => "ids",
            RequestKind::Get => "get",
            RequestKind::Last => "last",
            RequestKind::PublishOnce => "publish_once",
            RequestKind::After => "after",
            RequestKind::Open => "open",
            RequestKind::Block => "block",
            RequestKind::Commit => "commit",
            RequestKind::Fetch => "fetch",
            RequestKind::Close => "close",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        for kind in RequestKind::ALL {
            assert_eq!(RequestKind::from_byte(kind.byte()), Some(kind));
        }
        for code in [
            ErrorCode::BadFormat,
            ErrorCode::MsgNotFound,
            ErrorCode::UnknownControl,
            ErrorCode::ErrTransm,
        ] {
            assert_eq!(ErrorCode::from_byte(code.byte()), Some(code));
            assert_eq!(ReplyCode::Error(code).byte(), code.byte());
        }
        assert_eq!(RequestKind::from_byte(b'0'), None);
        assert_eq!(RequestKind::from_byte(b'7'), None);
        assert_eq!(ErrorCode::from_byte(b'0'), None);
    }

    #[test]
    fn only_bad_format_and_unknown_request_are_refusals() {
        assert!(ReplyCode::Error(ErrorCode::BadFormat).is_refusal());
        assert!(ReplyCode::Error(ErrorCode::UnknownControl).is_refusal());
        assert!(!ReplyCode::Error(ErrorCode::MsgNotFound).is_refusal());
        assert!(!ReplyCode::Error(ErrorCode::ErrTransm).is_refusal());
        assert!(!ReplyCode::Ok.is_refusal());
        assert!(!ReplyCode::Offer.is_refusal());
    }
}

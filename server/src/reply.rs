//! One reply datagram with its code, so that nothing downstream reads the code back from
//! the bytes.

use bytes::Bytes;
use mboard_protocol::{ErrorCode, ReplyCode, Response};

/// An encoded reply and the code its first byte carries.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct Reply {
    code: ReplyCode,
    bytes: Bytes,
}

impl Reply {
    /// The encoding of `response`.
    pub(crate) fn new(response: &Response) -> Self {
        Reply {
            code: response.code(),
            bytes: response.to_bytes(),
        }
    }

    /// An error reply with a reason.
    pub(crate) fn error(code: ErrorCode, reason: impl Into<Bytes>) -> Self {
        Reply::new(&Response::error(code, reason))
    }

    /// An OK reply encoded elsewhere (a large `0:` built straight from the board).
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn ok(bytes: Bytes) -> Self {
        debug_assert_eq!(bytes.first(), Some(&b'0'));
        Reply {
            code: ReplyCode::Ok,
            bytes,
        }
    }

    /// Its code.
    pub(crate) fn code(&self) -> ReplyCode {
        self.code
    }

    /// Its bytes.
    pub(crate) fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Its bytes, owned.
    pub(crate) fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

impl From<Response> for Reply {
    fn from(response: Response) -> Self {
        Reply::new(&response)
    }
}

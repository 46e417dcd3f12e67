//! Why a session request is refused, in the words the wire carries.

use mboard_protocol::ErrorCode;

use crate::reply::Reply;

/// A refused session request. Its message is the reason sent after the code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub enum SessionError {
    /// No such session: never opened, closed, or expired.
    #[error("unknown session")]
    UnknownSession,
    /// The session was opened from another address (IP and port).
    #[error("session belongs to another address")]
    ForeignAddress,
    /// No room in the session limits now; the client may try again later.
    #[error("busy")]
    Busy,
    /// The session moved slower than the progress floor and was dropped to make room for
    /// another; its owner may start again.
    #[error("expired: too slow while the server was full")]
    Reclaimed,
    /// The session was one its host held beyond its share of the server, taken back for a
    /// host within its share while the server was full; its owner may start again.
    #[error("expired: its host held more than its share while the server was full")]
    Recalled,
    /// An upload larger than the request size limit.
    #[error("too large: max {max} bytes")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// A commit before every block arrived.
    #[error("incomplete: {missing} of {total} blocks missing")]
    Incomplete {
        /// Blocks not received yet.
        missing: u64,
        /// Blocks in the upload.
        total: u64,
    },
    /// A block or commit naming a download.
    #[error("not an upload session")]
    NotUpload,
    /// A fetch naming an upload (or a download not filled yet).
    #[error("not a download session")]
    NotDownload,
    /// A block or fetch beyond the last block.
    #[error("block index past the end")]
    IndexPastEnd,
    /// A block of the wrong length: every block but the last is the block size.
    #[error("block {index} must be {want} bytes")]
    BlockLength {
        /// The block.
        index: u64,
        /// Its length in the upload's shape.
        want: u64,
    },
}

impl SessionError {
    /// The response code this error is answered with.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            SessionError::IndexPastEnd | SessionError::BlockLength { .. } => ErrorCode::BadFormat,
            _ => ErrorCode::ErrTransm,
        }
    }
}

impl From<SessionError> for Reply {
    fn from(e: SessionError) -> Self {
        Reply::error(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_encode_to_their_wire_replies() {
        for (e, wire) in [
            (SessionError::UnknownSession, "4:unknown session"),
            (
                SessionError::ForeignAddress,
                "4:session belongs to another address",
            ),
            (SessionError::Busy, "4:busy"),
            (
                SessionError::Reclaimed,
                "4:expired: too slow while the server was full",
            ),
            (
                SessionError::Recalled,
                "4:expired: its host held more than its share while the server was full",
            ),
            (
                SessionError::TooLarge { max: 1000 },
                "4:too large: max 1000 bytes",
            ),
            (
                SessionError::Incomplete {
                    missing: 2,
                    total: 4,
                },
                "4:incomplete: 2 of 4 blocks missing",
            ),
            (SessionError::NotUpload, "4:not an upload session"),
            (SessionError::NotDownload, "4:not a download session"),
            (SessionError::IndexPastEnd, "1:block index past the end"),
            (
                SessionError::BlockLength { index: 3, want: 1 },
                "1:block 3 must be 1 bytes",
            ),
        ] {
            let reply = Reply::from(e);
            assert_eq!(reply.bytes().as_ref(), wire.as_bytes());
            assert_eq!(reply.code().byte(), wire.as_bytes()[0]);
        }
    }
}

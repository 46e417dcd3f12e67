//! Why an operation failed, in words a person can act on.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use mboard_protocol::{ErrorCode, Expect, Response};

use crate::output::one_line;

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing came from the server for the silence timeout.
    #[error("no reply from {server} within {}", humantime::format_duration(*.after))]
    Timeout {
        /// The server asked.
        server: String,
        /// The silence that was tolerated.
        after: Duration,
    },
    /// The operation ran past its total deadline, however lively the server was.
    #[error("{server} did not finish within the time allowed ({})", humantime::format_duration(*.after))]
    MaxTime {
        /// The server asked.
        server: String,
        /// The total deadline.
        after: Duration,
    },
    /// The server's port refused every datagram (ICMP port unreachable) for a while.
    #[error("connection refused by {server} (is mboard-server running?)")]
    Refused {
        /// The server asked.
        server: String,
    },
    /// The server answered with an error code.
    #[error("{}", server_reason(*.code, .reason))]
    Server {
        /// The code it sent.
        code: ErrorCode,
        /// Its reason, as sent.
        reason: Bytes,
    },
    /// The server refused a text over its size limit.
    #[error("text too large: {size} bytes, the server takes at most {max}")]
    TooLarge {
        /// The text's size.
        size: u64,
        /// The largest text the server takes.
        max: u64,
    },
    /// The request cannot go in one datagram, which this operation needs.
    #[error("{what} too large for one datagram: {size} bytes, at most {max}")]
    DatagramTooLarge {
        /// What was too large (`text`, `PDU`).
        what: &'static str,
        /// Its size.
        size: usize,
        /// The most that fits.
        max: usize,
    },
    /// A reply came that cannot be read, or is not what the request allows.
    #[error("malformed reply from {server}: {detail}")]
    Malformed {
        /// The server that sent it.
        server: String,
        /// What was wrong, for people.
        detail: String,
    },
    /// The server does not know a request the operation needs: it speaks protocol
    /// version 1 (`6:` for following and paging).
    #[error(
        "{server} does not know `{request}` requests: it speaks protocol version 1, and {what} needs version 2"
    )]
    Unsupported {
        /// The server asked.
        server: String,
        /// The request it does not know (`6:`).
        request: &'static str,
        /// What needed it, for people (`following`).
        what: &'static str,
    },
    /// Classic mode speaks only `1:` `2:` `3:`, and the operation needs more.
    #[error("{what} needs protocol version 2, which classic mode does not speak")]
    ClassicMode {
        /// What was asked, for people.
        what: &'static str,
    },
    /// The operation was interrupted on request ([`crate::Client::interrupt_when`]).
    #[error("interrupted")]
    Interrupted,
    /// The server address could not be resolved.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// The local socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

impl ClientError {
    /// This error as a person publishing a `size`-byte text should read it: an upload
    /// refused as `too large: max <n> bytes` counts the whole request (`1:` and the text),
    /// so a file of exactly the limit "fails at the limit"; say the largest text instead.
    pub fn for_text(self, size: usize) -> ClientError {
        self.for_request(size, 2)
    }

    /// [`ClientError::for_text`] for a request of `overhead` bytes besides its text (`1:`
    /// is 2, `5:<token>:` 39).
    pub(crate) fn for_request(self, size: usize, overhead: u64) -> ClientError {
        match self {
            ClientError::Server {
                code: ErrorCode::ErrTransm,
                reason,
            } => match text_limit(&reason, overhead) {
                Some(max) => ClientError::TooLarge {
                    size: size as u64,
                    max,
                },
                None => ClientError::Server {
                    code: ErrorCode::ErrTransm,
                    reason,
                },
            },
            other => other,
        }
    }

    /// Whether this is the server saying it no longer has the session named: it does not
    /// know it (a server that restarted has forgotten every session), or it dropped it to
    /// make room while it was full (`expired: …`: too slow, or held beyond its host's
    /// share). Either way the operation may start again.
    pub(crate) fn is_lost_session(&self) -> bool {
        matches!(self, ClientError::Server { code: ErrorCode::ErrTransm, reason }
            if reason.starts_with(b"unknown session") || reason.starts_with(b"expired:"))
    }

    /// Whether this is a server refusing for now what it may take later (`4:busy`).
    pub(crate) fn is_busy(&self) -> bool {
        matches!(self, ClientError::Server { code: ErrorCode::ErrTransm, reason }
            if reason.starts_with(b"busy"))
    }
}

fn server_reason(code: ErrorCode, reason: &[u8]) -> String {
    if reason.is_empty() {
        let name = match code {
            ErrorCode::BadFormat => "bad format",
            ErrorCode::MsgNotFound => "no such message",
            ErrorCode::UnknownControl => "unknown request",
            ErrorCode::ErrTransm => "transmission error",
        };
        name.to_string()
    } else {
        one_line(reason)
    }
}

/// A reply, described for people (never Rust's debug output).
pub(crate) fn describe(resp: &Response) -> String {
    match resp {
        Response::Published(id) => format!("message id {id}"),
        Response::Ids(ids) => format!("a list of {} ids", ids.len()),
        Response::Entry(_) => "a message".into(),
        Response::Messages(ms) => format!("a list of {} messages", ms.len()),
        Response::Opened { block_size, .. } => {
            format!("an upload session with {block_size}-byte blocks")
        }
        Response::Acked { index, .. } => format!("an acknowledgement of block {index}"),
        Response::Data { index, .. } => format!("download block {index}"),
        Response::Closed => "an empty reply".into(),
        Response::Offer(offer) => format!("a download offer of {} bytes", offer.size),
        Response::Error { code, reason } => {
            format!(
                "error {}: {}",
                code.byte() as char,
                server_reason(*code, reason)
            )
        }
    }
}

/// The start of a datagram, printable, for a message about it.
pub(crate) fn excerpt(datagram: &[u8]) -> String {
    const SHOWN: usize = 40;
    let shown = one_line(&datagram[..datagram.len().min(SHOWN)]);
    if datagram.len() > SHOWN {
        format!("\"{shown}…\" ({} bytes)", datagram.len())
    } else {
        format!("\"{shown}\"")
    }
}

/// `got` where `want` was expected.
pub(crate) fn unexpected_detail(got: &Response, want: Expect) -> String {
    format!("{} where {want} was expected", describe(got))
}

/// The largest text a `too large: max <n> bytes` refusal of an upload allows: the upload
/// carries the whole request, `1:` (or `5:<token>:`) and the text, so the text gets that
/// much less.
fn text_limit(reason: &[u8], overhead: u64) -> Option<u64> {
    let text = std::str::from_utf8(reason)
        .ok()?
        .strip_prefix("too large")?;
    let after = text.split("max ").nth(1)?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<u64>().ok()?.checked_sub(overhead)
}

#[cfg(test)]
mod tests {
    use mboard_protocol::{Offer, SessionId};

    use super::*;

    #[test]
    fn replies_are_described_in_words() {
        let offer = Response::Offer(Offer {
            sid: SessionId::parse(b"3f2b8c1e-9a4d-4e6f-8b1a-2c3d4e5f6a7b").expect("sid"),
            size: 5000,
            block_size: 1412,
        });
        let detail = unexpected_detail(&offer, Expect::Published);
        assert_eq!(
            detail,
            "a download offer of 5000 bytes where a message id was expected"
        );
        for text in [detail, describe(&Response::Closed)] {
            assert!(!text.contains('{') && !text.contains('('), "{text}");
        }
        assert_eq!(
            describe(&Response::error(ErrorCode::MsgNotFound, "")),
            "error 2: no such message"
        );
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        assert_eq!(excerpt(b"0:x\n\xff"), "\"0:x\\n\\xff\"");
        let long = excerpt(&[b'a'; 100]);
        assert!(long.ends_with("…\" (100 bytes)"), "{long}");
    }

    #[test]
    fn the_limit_is_stated_for_the_text() {
        assert_eq!(
            text_limit(b"too large: max 16777216 bytes", 2),
            Some(16_777_214)
        );
        assert_eq!(
            text_limit(b"too large: max 16777216 bytes", 39),
            Some(16_777_177)
        );
        assert_eq!(text_limit(b"too large", 2), None);
        assert_eq!(text_limit(b"too large: max 1 bytes", 2), None);
        assert_eq!(text_limit(b"busy: max 5 sessions", 2), None);
        let refused = ClientError::Server {
            code: ErrorCode::ErrTransm,
            reason: Bytes::from_static(b"too large: max 16777216 bytes"),
        };
        let e = refused.for_text(16_777_216);
        assert_eq!(
            e.to_string(),
            "text too large: 16777216 bytes, the server takes at most 16777214"
        );
        let busy = ClientError::Server {
            code: ErrorCode::ErrTransm,
            reason: Bytes::from_static(b"busy"),
        };
        assert_eq!(busy.for_text(5).to_string(), "busy", "other refusals pass");
    }

    #[test]
    fn deadlines_say_which_ran_out() {
        let server = "127.0.0.1:7777".to_string();
        let silence = ClientError::Timeout {
            server: server.clone(),
            after: Duration::from_secs(5),
        };
        assert_eq!(
            silence.to_string(),
            "no reply from 127.0.0.1:7777 within 5s"
        );
        let total = ClientError::MaxTime {
            server: server.clone(),
            after: Duration::from_secs(30),
        };
        assert_eq!(
            total.to_string(),
            "127.0.0.1:7777 did not finish within the time allowed (30s)"
        );
        assert_eq!(
            ClientError::Refused { server }.to_string(),
            "connection refused by 127.0.0.1:7777 (is mboard-server running?)"
        );
    }

    #[test]
    fn a_session_the_server_no_longer_has_may_be_started_again() {
        let refused = |code, reason: &'static [u8]| ClientError::Server {
            code,
            reason: Bytes::from_static(reason),
        };
        for lost in [
            &b"unknown session"[..],
            b"expired: too slow while the server was full",
            b"expired: its host held more than its share while the server was full",
        ] {
            assert!(refused(ErrorCode::ErrTransm, lost).is_lost_session());
        }
        assert!(!refused(ErrorCode::ErrTransm, b"busy").is_lost_session());
        assert!(
            !refused(ErrorCode::ErrTransm, b"session belongs to another address").is_lost_session()
        );
        assert!(!refused(ErrorCode::BadFormat, b"unknown session").is_lost_session());
    }
}

//! Publishing: exactly once with `5:` (one datagram when it fits in a block, else an
//! upload of the `5:` request), the version-1 upload of `1:` for servers without `5:`, and
//! the classic `1:` datagram.

use bytes::Bytes;
use mboard_protocol::{ErrorCode, Expect, MessageId, PublishToken, Response};
use uuid::Uuid;

use super::{Client, MAX_DATAGRAM_TEXT};
use crate::error::ClientError;

/// Bytes of a `5:` request besides its text: `5:`, the token, `:`.
const PUBLISH_ONCE_OVERHEAD: usize = 3 + PublishToken::LEN;

/// Times an upload of a `5:` request is started over because the server lost its session.
/// Each start is a server restart (or a session dropped to make room), so a handful means
/// something else is wrong.
const MAX_UPLOAD_RESTARTS: u32 = 8;

impl Client {
    /// Publishes `text` exactly once, whatever is lost, duplicated or resent.
    ///
    /// With `5:` ([`Client::publish_once`]); a server that does not know `5:` (protocol
    /// version 1) gets the text through an upload session instead, which is exactly once
    /// as long as the server does not restart in the middle, and [`Client::on_warning`]
    /// hears of it once. In classic mode, one `1:` datagram ([`Client::publish_datagram`]).
    ///
    /// A text over the server's size limit is refused as [`ClientError::TooLarge`], with the
    /// largest text the server takes.
    pub fn publish(&mut self, text: &[u8]) -> Result<MessageId, ClientError> {
        if self.config.classic {
            return self.publish_datagram(text);
        }
        if !self.without_publish_once {
            match self.publish_once(text) {
                Err(ClientError::Server {
                    code: ErrorCode::UnknownControl,
                    ..
                }) => {
                    self.without_publish_once = true;
                    let server = self.link.name();
                    self.warning(&format!(
                        "{server} does not know the exactly-once publish `5:` (protocol \
                         version 1); publishing through an upload session instead"
                    ));
                }
                result => return result,
            }
        }
        self.publish_uploaded(text)
    }

    /// Publishes `text` with `5:` under a new token: stored exactly once, even when the
    /// server restarts in the middle (a durable server remembers the token). Needs a
    /// protocol version 2 server: one without `5:` answers
    /// [`ClientError::Server`] with [`ErrorCode::UnknownControl`].
    pub fn publish_once(&mut self, text: &[u8]) -> Result<MessageId, ClientError> {
        self.publish_once_as(PublishToken(Uuid::new_v4()), text)
    }

    /// [`Client::publish_once`] under a token the caller chose: a program that gave up on a
    /// publish (a timeout) may try again later with the same token and still store the
    /// text once, within the server's deduplication window.
    ///
    /// A request that fits in one upload block ([`crate::ClientConfig::block_size`]) is one
    /// datagram, resent as it is until answered. A larger one is uploaded through a
    /// session; if the server has lost the session (it restarted), the upload starts over,
    /// and the token makes the new one commit to the message the first one stored.
    pub fn publish_once_as(
        &mut self,
        token: PublishToken,
        text: &[u8],
    ) -> Result<MessageId, ClientError> {
        if self.config.classic {
            return Err(ClientError::ClassicMode {
                what: "publishing exactly once (`5:`)",
            });
        }
        self.begin()?;
        let mut pdu = Vec::with_capacity(PUBLISH_ONCE_OVERHEAD + text.len());
        pdu.extend_from_slice(b"5:");
        token.encode(&mut pdu);
        pdu.push(b':');
        pdu.extend_from_slice(text);
        let pdu = Bytes::from(pdu);
        let reply = if pdu.len() <= self.config.block_size {
            self.request_pdu(pdu, Expect::Published)
        } else {
            self.upload_again_when_lost(pdu)
        };
        let reply = reply.map_err(|e| e.for_request(text.len(), PUBLISH_ONCE_OVERHEAD as u64))?;
        match reply {
            Response::Published(id) => Ok(id),
            other => Err(self.unexpected(&other, Expect::Published)),
        }
    }

    /// Uploads a `5:` request, from the start again whenever the server answers that it
    /// does not know the session: after a restart, a resent `c:` gets `4:unknown session`
    /// although the message may be stored, and only the token can tell.
    fn upload_again_when_lost(&mut self, pdu: Bytes) -> Result<Response, ClientError> {
        let mut restarts = 0;
        loop {
            match self.upload(pdu.clone(), Expect::Published) {
                Err(e) if e.is_lost_session() && restarts < MAX_UPLOAD_RESTARTS => {
                    restarts += 1;
                    // Late replies about the lost session must not meet the new `a:`.
                    self.fresh_socket()?;
                }
                result => return result,
            }
        }
    }

    /// The version-1 publish: `1:<text>` through an upload session, whose commit is
    /// exactly once within the session.
    fn publish_uploaded(&mut self, text: &[u8]) -> Result<MessageId, ClientError> {
        self.begin()?;
        let mut pdu = Vec::with_capacity(text.len() + 2);
        pdu.extend_from_slice(b"1:");
        pdu.extend_from_slice(text);
        let reply = self
            .upload(Bytes::from(pdu), Expect::Published)
            .map_err(|e| e.for_request(text.len(), 2))?;
        match reply {
            Response::Published(id) => Ok(id),
            other => Err(self.unexpected(&other, Expect::Published)),
        }
    }

    /// Publishes `text` as one `1:` datagram: one round trip, but at-least-once (resent
    /// only when no reply comes, and then it may be stored twice). For texts that fit.
    pub fn publish_datagram(&mut self, text: &[u8]) -> Result<MessageId, ClientError> {
        if text.len() > MAX_DATAGRAM_TEXT {
            return Err(ClientError::DatagramTooLarge {
                what: "text",
                size: text.len(),
                max: MAX_DATAGRAM_TEXT,
            });
        }
        match self.board(mboard_protocol::BoardRequest::Publish(
            Bytes::copy_from_slice(text),
        ))? {
            Response::Published(id) => Ok(id),
            other => Err(self.unexpected(&other, Expect::Published)),
        }
    }
}

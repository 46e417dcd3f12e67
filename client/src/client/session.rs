//! The session layer and the I/O loop: single exchanges, uploads and downloads.

use std::time::{Duration, Instant};

use bytes::Bytes;
use mboard_protocol::{Expect, Offer, Response, SessionId, SessionRequest};

use super::{Client, INTERRUPT_CHECK};
use crate::deadline::Expiry;
use crate::engine::{Hold, Transfer};
use crate::error::{ClientError, excerpt};
use crate::link::Event;

/// What a reply means to the transfer in progress.
pub(super) enum Verdict<T> {
    /// It answers item `index`, with this value.
    Answer(u64, T),
    /// It matches nothing outstanding: ignore it.
    Ignore,
}

/// Whether a datagram is a late reply to an earlier step of the same operation — a
/// duplicated or stray `a:` reply, a block acknowledgement, the `0:` of a close, a
/// duplicated offer — which the network may deliver at any time and which is ignored.
/// Anything else that is not the reply expected is reported as malformed.
///
/// On a follower's socket (`following`), which carries one `6:` after another and the
/// downloads of their offers, a late reply to an earlier `6:` and a late download block
/// may come as well.
pub(super) fn stale(r: &Bytes, following: bool) -> bool {
    let of_a_session = [Expect::Opened, Expect::Acked, Expect::Closed]
        .into_iter()
        .any(|e| {
            matches!(
                Response::parse(r.clone(), e),
                Ok(Response::Opened { .. }
                    | Response::Acked { .. }
                    | Response::Closed
                    | Response::Offer(_))
            )
        });
    of_a_session
        || following
            && (matches!(
                Response::parse(r.clone(), Expect::Messages),
                Ok(Response::Messages(_))
            ) || matches!(
                Response::parse(r.clone(), Expect::Data),
                Ok(Response::Data { .. })
            ))
}

/// Whether a datagram is the late reply to a session step — the `0:` of a close, a block
/// acknowledgement, a download block — which never answers a first request. A socket is
/// new for each operation, but the kernel may give it the port an earlier one just had,
/// and with it that operation's last reply (the `0:` of its parting `x:`, say).
pub(super) fn late(r: &Bytes) -> bool {
    [Expect::Closed, Expect::Acked, Expect::Data]
        .into_iter()
        .any(|e| {
            matches!(
                Response::parse(r.clone(), e),
                Ok(Response::Closed | Response::Acked { .. } | Response::Data { .. })
            )
        })
}

/// The reply `r` as `expect`, ignored if it is stale, else malformed.
fn expected_or_stale(
    r: Bytes,
    expect: Expect,
    following: bool,
) -> Result<Verdict<Response>, String> {
    match Response::parse(r.clone(), expect) {
        Ok(resp) => Ok(Verdict::Answer(0, resp)),
        Err(_) if stale(&r, following) => Ok(Verdict::Ignore),
        Err(e) => Err(format!("{e}, got {}", excerpt(&r))),
    }
}

impl Client {
    /// Uploads a request PDU through a session, commits it, and returns its response.
    pub(super) fn upload(&mut self, pdu: Bytes, expect: Expect) -> Result<Response, ClientError> {
        let wanted = self.config.block_size as u64;
        let open = SessionRequest::Open {
            size: pdu.len() as u64,
            block_size: wanted,
        };
        // The first exchange of the operation: only what can never answer it is ignored.
        let opened = self.exchange(open.to_bytes(), |r| {
            match Response::parse(r.clone(), Expect::Opened) {
                Ok(resp) => Ok(Verdict::Answer(0, resp)),
                Err(_) if late(&r) => Ok(Verdict::Ignore),
                Err(e) => Err(format!("{e}, got {}", excerpt(&r))),
            }
        })?;
        let (sid, block_size) = match opened {
            Response::Opened { sid, block_size } if block_size > 0 && block_size <= wanted => {
                (sid, block_size as usize)
            }
            Response::Opened { block_size, .. } => {
                return Err(self.malformed(format!(
                    "a block size of {block_size} where at most {wanted} was asked"
                )));
            }
            other => return Err(self.unexpected(&other, Expect::Opened)),
        };
        self.uploading = Some(sid);
        let result = self.upload_blocks(sid, &pdu, block_size).and_then(|()| {
            let commit = SessionRequest::Commit(sid).to_bytes();
            let following = self.following;
            let reply = self.exchange(commit, |r| expected_or_stale(r, expect, following))?;
            self.settle(reply, expect)
        });
        self.uploading = None;
        // Free the server's state now rather than at expiry; if this is lost, expiry does it.
        self.close(sid);
        result
    }

    fn upload_blocks(
        &mut self,
        sid: SessionId,
        pdu: &Bytes,
        block_size: usize,
    ) -> Result<(), ClientError> {
        let blocks = pdu.len().div_ceil(block_size) as u64;
        let total = pdu.len() as u64;
        let mut t = Transfer::new(
            blocks,
            self.config.window,
            self.deadline.clone(),
            self.rtt.clone(),
        );
        let make = |i: u64, _: Duration| {
            let start = i as usize * block_size;
            let data = pdu.slice(start..(start + block_size).min(pdu.len()));
            SessionRequest::Block {
                sid,
                index: i,
                data,
            }
            .to_bytes()
        };
        let result = self.drive(
            &mut t,
            make,
            |client, r| match Response::parse(r.clone(), Expect::Acked) {
                Ok(Response::Acked { sid: s, index, .. }) if s == sid => {
                    Ok(Verdict::Answer(index, ()))
                }
                Ok(Response::Error { code, reason }) => Err(ClientError::Server { code, reason }),
                _ if stale(&r, client.following) => Ok(Verdict::Ignore),
                Ok(other) => Err(client.unexpected(&other, Expect::Acked)),
                Err(e) => Err(client.malformed(format!("{e}, got {}", excerpt(&r)))),
            },
            |client, acked| client.report((acked * block_size as u64).min(total), total),
        );
        self.finish(&t);
        result
    }

    /// Fetches every block of a download offer and returns the assembled response.
    pub(super) fn download(&mut self, offer: Offer) -> Result<Bytes, ClientError> {
        let size = usize::try_from(offer.size).unwrap_or(usize::MAX);
        // A client bounds what a server can make it allocate: nothing in the protocol needs
        // more than the largest request plus framing, and 1 GiB is far beyond that.
        if size > 1 << 30 || offer.block_size == 0 {
            return Err(self.malformed(format!("an implausible offer of {size} bytes")));
        }
        let mut out = vec![0u8; size];
        let mut t = Transfer::new(
            offer.blocks(),
            self.config.window,
            self.deadline.clone(),
            self.rtt.clone(),
        );
        let sid = offer.sid;
        let make = |i: u64, _: Duration| SessionRequest::Fetch { sid, index: i }.to_bytes();
        let result = self.drive(
            &mut t,
            make,
            |client, r| match Response::parse(r.clone(), Expect::Data) {
                Ok(Response::Data {
                    sid: s,
                    index,
                    data,
                }) if s == sid => {
                    let start = index.saturating_mul(offer.block_size);
                    let want = offer.block_size.min(offer.size.saturating_sub(start));
                    if start >= offer.size || data.len() as u64 != want {
                        return Err(client.malformed(format!(
                            "download block {index} has {} bytes where {want} were due",
                            data.len()
                        )));
                    }
                    out[start as usize..start as usize + data.len()].copy_from_slice(&data);
                    Ok(Verdict::Answer(index, ()))
                }
                Ok(Response::Error { code, reason }) => Err(ClientError::Server { code, reason }),
                Ok(Response::Data { .. }) => Ok(Verdict::Ignore),
                _ if stale(&r, client.following) => Ok(Verdict::Ignore),
                Ok(other) => Err(client.unexpected(&other, Expect::Data)),
                Err(e) => Err(client.malformed(format!("{e}, got {}", excerpt(&r)))),
            },
            |client, acked| client.report((acked * offer.block_size).min(offer.size), offer.size),
        );
        self.finish(&t);
        self.close(sid);
        result.map(|()| Bytes::from(out))
    }

    /// Sends one request until a reply `verdict` accepts arrives; returns that reply. A
    /// reply `verdict` calls malformed (`Err(detail)`) ends the operation.
    pub(super) fn exchange<T>(
        &mut self,
        pdu: Bytes,
        verdict: impl FnMut(Bytes) -> Result<Verdict<T>, String>,
    ) -> Result<T, ClientError> {
        self.exchange_held(None, |_| pdu.clone(), verdict)
    }

    /// [`Client::exchange`] of a request the server may `hold`: `make` writes it asking
    /// for the wait it is given (all of it, then what is left).
    pub(super) fn exchange_held<T>(
        &mut self,
        hold: Option<Hold>,
        make: impl Fn(Duration) -> Bytes,
        mut verdict: impl FnMut(Bytes) -> Result<Verdict<T>, String>,
    ) -> Result<T, ClientError> {
        let mut t = Transfer::new(1, 1, self.deadline.clone(), self.rtt.clone()).with_hold(hold);
        let mut answer = None;
        let result = self.drive(
            &mut t,
            |_, left| make(left),
            |client, r| match verdict(r) {
                Ok(Verdict::Answer(_, value)) => {
                    answer = Some(value);
                    Ok(Verdict::Answer(0, ()))
                }
                Ok(Verdict::Ignore) => Ok(Verdict::Ignore),
                Err(detail) => Err(client.malformed(detail)),
            },
            |_, _| {},
        );
        self.finish(&t);
        result?;
        answer.ok_or_else(|| self.malformed("no answer recorded"))
    }

    /// Carries a finished phase's round-trip estimate and clocks over to the next one.
    fn finish(&mut self, t: &Transfer) {
        self.rtt = t.rtt().clone();
        self.deadline = t.deadline().clone();
    }

    /// The I/O loop around a [`Transfer`]: send what it says, feed it replies, refusals
    /// and timeouts, until it is done or a limit runs out.
    fn drive(
        &mut self,
        t: &mut Transfer,
        make: impl Fn(u64, Duration) -> Bytes,
        mut on_reply: impl FnMut(&mut Self, Bytes) -> Result<Verdict<()>, ClientError>,
        mut on_ack: impl FnMut(&mut Self, u64),
    ) -> Result<(), ClientError> {
        loop {
            let now = Instant::now();
            while let Some(i) = t.poll_transmit(now) {
                self.link.send(&make(i, t.hold_left(now)))?;
            }
            if t.is_done() {
                return Ok(());
            }
            let mut until = t.poll_timeout();
            if self.interrupt.is_some() {
                if self.interrupted() {
                    return Err(ClientError::Interrupted);
                }
                until = until.min(now + INTERRUPT_CHECK);
            }
            let event = self.link.recv(until)?;
            let now = Instant::now();
            match event {
                Event::Datagram(reply) => match on_reply(self, reply.clone())? {
                    Verdict::Answer(index, ()) => {
                        if t.on_ack(now, index) {
                            on_ack(self, t.acked());
                        }
                    }
                    Verdict::Ignore => {
                        t.on_datagram(now);
                        if let Some(ours) = self.uploading {
                            self.close_stray_open(reply, ours);
                        }
                    }
                },
                Event::Refused => t.on_refused(now),
                Event::Idle => {}
            }
            t.handle_timeout(now).map_err(|e| self.expired(e.expiry))?;
        }
    }

    fn expired(&self, expiry: Expiry) -> ClientError {
        let server = self.link.name();
        match expiry {
            Expiry::Silence(after) => ClientError::Timeout { server, after },
            Expiry::Total(after) => ClientError::MaxTime { server, after },
            Expiry::Refused => ClientError::Refused { server },
        }
    }

    /// Best-effort close: one datagram, no wait.
    fn close(&mut self, sid: SessionId) {
        let _ = self.link.send(&SessionRequest::Close(sid).to_bytes());
    }

    /// A resent `a:` can open a second session; close it instead of leaving it to expire.
    fn close_stray_open(&mut self, reply: Bytes, ours: SessionId) {
        if let Ok(Response::Opened { sid, .. }) = Response::parse(reply, Expect::Opened)
            && sid != ours
        {
            self.close(sid);
        }
    }
}

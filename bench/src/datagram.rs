//! Clients that speak the protocol datagram by datagram on their own socket, as async
//! tasks: single-datagram requests, publishes (`1:`, or `5:` with a token each), and
//! session publishes done step by step.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mboard_protocol::{Expect, MessageId, PublishToken, Response, SessionId, SessionRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use uuid::Builder;

use crate::follow;
use crate::report::Tally;
use crate::run::Window;
use crate::scenario::{self, Load, Pace, Scenario};

/// A request unanswered this long, resends included, counts as failed.
pub(crate) const GIVE_UP: Duration = Duration::from_secs(5);

/// Block size asked for in `a:`, as the CLI asks: fits an Ethernet path unfragmented.
const BLOCK_SIZE: u64 = 1_400;

/// Client `c` of a datagram scenario, until the run stops. Publishers of the follower
/// scenario tell `follow` which ids their publishes got, and when.
pub(crate) async fn client(
    c: usize,
    load: &Load,
    scenario: &Scenario,
    window: &Window,
    follow: Option<&follow::Shared>,
) -> io::Result<Tally> {
    let mut tally = Tally::default();
    let server = load
        .servers
        .get(c % load.servers.len().max(1))
        .copied()
        .unwrap_or(load.server);
    let mut socket = connect(server).await?;
    let mut buf = vec![0u8; 65_536];
    let mut request = Vec::new();
    let session_text = match scenario {
        Scenario::PublishSession { size } => scenario::text(c, *size),
        _ => Vec::new(),
    };
    let mut publisher = Publisher::of(c, load.clients, scenario);
    let mut published = follow::Published::default();
    let mut i = c as u64;
    while !window.is_stopped() {
        if let Some(publisher) = &mut publisher {
            publisher.pace().await;
        }
        let started = Instant::now();
        let resends = tally.timeouts;
        let mut peer = Peer {
            socket: &socket,
            buf: &mut buf,
            tally: &mut tally,
            resend: load.resend,
        };
        let ok = if let Scenario::PublishSession { .. } = scenario {
            peer.session_publish(&session_text).await?
        } else if let Some(publisher) = &mut publisher {
            let id = peer.publish(publisher).await?;
            if let (Some(id), Some(follow)) = (id, follow) {
                follow.published(&mut published, id, window);
            }
            // A resent `1:` may be stored twice, and the second reply, newer than the
            // first, would be taken for the next publish's (and so on, one behind, for
            // the rest of the run): a new socket leaves it behind.
            if publisher.tokens.is_none() && tally.timeouts > resends {
                socket = connect(server).await?;
            }
            id.is_some()
        } else {
            next_request(&mut i, scenario, &mut request);
            peer.single(scenario, &request).await?
        };
        tally.record(window, started, ok);
    }
    if let Some(follow) = follow {
        follow.add_published(published);
    }
    Ok(tally)
}

/// A socket connected to `server`.
pub(crate) async fn connect(server: SocketAddr) -> io::Result<UdpSocket> {
    // The unspecified address lets the kernel pick the interface that routes to the
    // server, which need not be on this host.
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    Ok(socket)
}

/// The request a single-datagram scenario sends next.
fn next_request(i: &mut u64, scenario: &Scenario, out: &mut Vec<u8>) {
    out.clear();
    match scenario {
        Scenario::Echo => out.extend_from_slice(b"3:0"),
        Scenario::Get { messages, first } => {
            *i = (*i + 7919) % (*messages).max(1);
            out.extend_from_slice(format!("3:{}", first + *i).as_bytes());
        }
        Scenario::Last { n } => out.extend_from_slice(format!("4:{n}").as_bytes()),
        _ => {}
    }
}

/// Whether a reply is what the scenario expects (an echo, or OK / a download offer).
fn reply_ok(scenario: &Scenario, request: &[u8], reply: &[u8]) -> bool {
    match scenario {
        Scenario::Echo => reply == request,
        _ => reply.starts_with(b"0:") || reply.starts_with(b"d:"),
    }
}

/// What a publishing client sends: `1:<text>`, or `5:<token>:<text>` with a new token
/// for each publish.
struct Publisher {
    text: Vec<u8>,
    /// Tokens are drawn from a generator of the client's own, seeded from the system:
    /// random enough to never repeat, without a system call per publish.
    tokens: Option<StdRng>,
    /// The id of this client's previous publish: a reply naming it or an older id is a
    /// late answer to a resend, not the answer to the current publish.
    last: Option<MessageId>,
    request: Vec<u8>,
    /// When this client's next publish is due, when paced.
    pace: Option<Pace>,
}

impl Publisher {
    fn of(c: usize, clients: usize, scenario: &Scenario) -> Option<Self> {
        let (size, once, rate) = match scenario {
            Scenario::Publish { size } => (*size, false, None),
            Scenario::PublishOnce { size } => (*size, true, None),
            Scenario::Follow(f) => (f.size, f.once, f.rate.map(|r| (r, clients))),
            _ => return None,
        };
        let pace = rate.map(|(rate, clients)| Pace::new(c, clients, rate));
        Some(Publisher {
            text: scenario::text(c, size),
            tokens: once.then(|| StdRng::from_rng(&mut rand::rng())),
            last: None,
            request: Vec::new(),
            pace,
        })
    }

    /// Waits for this publisher's next slot, when paced.
    async fn pace(&mut self) {
        if let Some(pace) = &mut self.pace {
            pace.wait().await;
        }
    }

    /// The next publish request, in `self.request`.
    fn next(&mut self) {
        self.request.clear();
        match &mut self.tokens {
            Some(rng) => {
                let token = Builder::from_random_bytes(rng.random()).into_uuid();
                self.request.extend_from_slice(b"5:");
                PublishToken(token).encode(&mut self.request);
                self.request.push(b':');
            }
            None => self.request.extend_from_slice(b"1:"),
        }
        self.request.extend_from_slice(&self.text);
    }

    /// Whether `reply` answers the current publish: an id newer than the previous
    /// publish's, or an error.
    fn answers(&self, reply: &[u8]) -> bool {
        match published_id(reply) {
            Some(id) => self.last.is_none_or(|last| id > last),
            None => true,
        }
    }
}

/// The id in a `0:<id>` reply (read without copying it: every publish reply passes here).
fn published_id(reply: &[u8]) -> Option<MessageId> {
    let digits = reply.strip_prefix(b"0:")?;
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits)
        .ok()?
        .parse()
        .ok()
        .map(MessageId)
}

/// Whether `reply` parses, as the reply to a request that expects `expect`, into a
/// response `want` takes.
fn parses(reply: &[u8], expect: Expect, want: impl Fn(&Response) -> bool) -> bool {
    Response::parse(Bytes::copy_from_slice(reply), expect).is_ok_and(|r| want(&r))
}

/// One client's socket and what an operation on it needs.
struct Peer<'a> {
    socket: &'a UdpSocket,
    buf: &'a mut [u8],
    tally: &'a mut Tally,
    resend: Duration,
}

impl Peer<'_> {
    /// Sends `request` until a reply that `accept` takes arrives, resending after
    /// `resend`; `None` after [`GIVE_UP`]. Other replies (late answers to earlier requests)
    /// are skipped. Returns the reply's length in `buf`.
    async fn exchange(
        &mut self,
        request: &[u8],
        accept: impl Fn(&[u8]) -> bool,
    ) -> io::Result<Option<usize>> {
        let give_up = Instant::now() + GIVE_UP;
        loop {
            match self.socket.send(request).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e),
            }
            let resend_at = tokio::time::Instant::now() + self.resend;
            loop {
                match tokio::time::timeout_at(resend_at, self.socket.recv(self.buf)).await {
                    Ok(Ok(n)) if accept(&self.buf[..n]) => return Ok(Some(n)),
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) if e.kind() != io::ErrorKind::ConnectionRefused => return Err(e),
                    _ => break,
                }
            }
            self.tally.timeouts += 1;
            if Instant::now() >= give_up {
                return Ok(None);
            }
        }
    }

    /// One single-datagram request; whether its reply was what the scenario expects.
    async fn single(&mut self, scenario: &Scenario, request: &[u8]) -> io::Result<bool> {
        // Any reply answers a single-datagram request: errors are counted, not skipped.
        let Some(n) = self.exchange(request, |_| true).await? else {
            return Ok(false);
        };
        let reply = &self.buf[..n];
        let ok = reply_ok(scenario, request, reply);
        if !ok {
            self.tally
                .fail(|| format!("reply {:?}", String::from_utf8_lossy(reply)));
        }
        Ok(ok)
    }

    /// One publish, resent as it is (the same token, for `5:`) until answered; the id it
    /// got, or `None` if it failed.
    async fn publish(&mut self, publisher: &mut Publisher) -> io::Result<Option<MessageId>> {
        publisher.next();
        let Some(n) = self
            .exchange(&publisher.request, |r| publisher.answers(r))
            .await?
        else {
            return Ok(None);
        };
        let reply = &self.buf[..n];
        let id = published_id(reply);
        match id {
            Some(id) => publisher.last = Some(id),
            None => self
                .tally
                .fail(|| format!("reply {:?}", String::from_utf8_lossy(reply))),
        }
        Ok(id)
    }

    /// One exactly-once publish through a session, as the CLI does it: `a:`, the blocks,
    /// `c:`, then `x:` without waiting. Returns whether the commit answered with an id.
    async fn session_publish(&mut self, text: &[u8]) -> io::Result<bool> {
        let pdu = [b"1:".as_slice(), text].concat();
        let open = SessionRequest::Open {
            size: pdu.len() as u64,
            block_size: BLOCK_SIZE,
        }
        .to_bytes();
        let opened = |r: &[u8]| parses(r, Expect::Opened, |r| matches!(r, Response::Opened { .. }));
        let Some(n) = self.exchange(&open, opened).await? else {
            return Ok(false);
        };
        let Ok(Response::Opened { sid, block_size }) =
            Response::parse(Bytes::copy_from_slice(&self.buf[..n]), Expect::Opened)
        else {
            return Ok(false);
        };
        if !self.upload_blocks(sid, &pdu, block_size).await? {
            return Ok(false);
        }
        let commit = SessionRequest::Commit(sid).to_bytes();
        let published = |r: &[u8]| {
            parses(r, Expect::Published, |r| {
                matches!(r, Response::Published(_))
            })
        };
        let committed = self.exchange(&commit, published).await?.is_some();
        let _ = self
            .socket
            .send(&SessionRequest::Close(sid).to_bytes())
            .await;
        Ok(committed)
    }

    /// Sends `pdu` in blocks of `block_size`, one at a time, each until acknowledged;
    /// whether every block was.
    async fn upload_blocks(
        &mut self,
        sid: SessionId,
        pdu: &[u8],
        block_size: u64,
    ) -> io::Result<bool> {
        for (index, block) in pdu.chunks(block_size.max(1) as usize).enumerate() {
            let b = SessionRequest::Block {
                sid,
                index: index as u64,
                data: Bytes::copy_from_slice(block),
            }
            .to_bytes();
            let acked = |r: &[u8]| {
                parses(
                    r,
                    Expect::Acked,
                    |r| matches!(r, Response::Acked { sid: s, .. } if *s == sid),
                )
            };
            if self.exchange(&b, acked).await?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

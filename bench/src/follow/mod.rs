//! The follower scenario's followers: sockets that each keep one `6:` request held, and
//! the times at which publishes were answered and followers first saw them.
//!
//! Latency is measured on a sample of ids (every [`SAMPLE_EVERY`]th): a publisher notes
//! when the reply naming a sampled id arrived, every follower notes when it first read
//! that id, and the difference is the follower latency. It can be negative: the server
//! wakes held requests as soon as a message is stored, before the publisher has its reply.

mod fetch;
mod ids;
mod report;

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mboard_protocol::{Expect, MessageId, Response};
use tokio::net::UdpSocket;

pub(crate) use report::{FollowReport, FollowerTally};

use crate::datagram;
use crate::run::Window;
use crate::scenario::{Follow, Load};

/// One id in this many is timed from publish to followers.
const SAMPLE_EVERY: u64 = 16;

/// How long followers may go on reading after the publishers stop, to see what was
/// published in the measured window; what they have not seen by then counts as unseen.
pub(crate) const DRAIN: Duration = Duration::from_secs(2);

/// How long a follower answered `4:busy` waits before asking again.
const BUSY_PAUSE: Duration = Duration::from_millis(10);

fn sampled(id: u64) -> bool {
    id.is_multiple_of(SAMPLE_EVERY)
}

/// What publishers and followers share during a run.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Times are kept as nanoseconds since this instant.
    origin: Instant,
    /// The newest id a publisher has been told.
    newest: AtomicU64,
    /// Set once every publisher has stopped: followers then drain and stop.
    publishers_done: AtomicBool,
    /// Sampled ids published in the measured window, and when their replies arrived.
    published: Mutex<Vec<(u64, u64)>>,
}

/// One publisher's sampled publishes, handed to [`Shared`] when it stops.
#[derive(Debug, Default)]
pub(crate) struct Published(Vec<(u64, u64)>);

impl Shared {
    /// Before the run; followers start after `start`.
    pub(crate) fn new(start: u64) -> Self {
        Shared {
            origin: Instant::now(),
            newest: AtomicU64::new(start),
            publishers_done: AtomicBool::new(false),
            published: Mutex::new(Vec::new()),
        }
    }

    /// Now, as the times kept here are.
    pub(crate) fn nanos(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// The newest id a publisher has been told.
    pub(crate) fn newest(&self) -> u64 {
        self.newest.load(Ordering::Relaxed)
    }

    /// A publisher was just told `id`.
    pub(crate) fn published(&self, mine: &mut Published, id: MessageId, window: &Window) {
        self.published_key(mine, id.0, sampled(id.0), window);
    }

    /// A publisher was just told the id that `key` stands for (keys in the order of the
    /// ids), to be timed if `sample`.
    pub(crate) fn published_key(
        &self,
        mine: &mut Published,
        key: u64,
        sample: bool,
        window: &Window,
    ) {
        self.newest.fetch_max(key, Ordering::Relaxed);
        if window.is_measuring() && sample {
            mine.0.push((key, self.nanos()));
        }
    }

    /// A publisher's samples, when it stops.
    pub(crate) fn add_published(&self, mine: Published) {
        self.published
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(mine.0);
    }

    /// Every publisher has stopped.
    pub(crate) fn publishers_done(&self) {
        self.publishers_done.store(true, Ordering::Relaxed);
    }

    /// The publishers' samples, once they have all stopped.
    pub(crate) fn take_published(&self) -> Vec<(u64, u64)> {
        std::mem::take(
            &mut *self
                .published
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

/// One follower, until the publishers have stopped and it has read what they published
/// (or [`DRAIN`] has passed).
pub(crate) async fn follower(
    load: &Load,
    spec: &Follow,
    shared: &Shared,
    window: &Window,
) -> io::Result<FollowerTally> {
    let socket = datagram::connect(load.server).await?;
    let mut buf = vec![0u8; 65_536];
    let mut me = FollowerTally::default();
    let mut last = spec.start;
    let mut drain_until = None;
    loop {
        if shared.publishers_done.load(Ordering::Relaxed) {
            let until = *drain_until.get_or_insert_with(|| Instant::now() + DRAIN);
            if last >= shared.newest.load(Ordering::Relaxed) || Instant::now() >= until {
                break;
            }
        }
        send(&socket, &arm(last, spec.max, spec.wait_ms)).await?;
        let Some(body) = answer(&socket, &mut buf, load, &mut me).await? else {
            continue;
        };
        let now = shared.nanos();
        let measuring = window.is_measuring();
        let read = ids::for_each_id(&body, |id| {
            if id > last {
                last = id;
                if sampled(id) {
                    me.seen.push((id, now));
                }
                if measuring {
                    me.delivered += 1;
                }
            }
        });
        if read.is_none() {
            me.tally
                .fail(|| format!("follower reply {:?}", String::from_utf8_lossy(&body)));
            me.errors += 1;
        } else if measuring {
            me.replies += 1;
        }
    }
    // Replace the request still held by one that ends at once, so that the server does
    // not keep a thousand requests for sockets that are gone.
    send(&socket, &arm(last, spec.max, 1)).await?;
    Ok(me)
}

/// The answer to the `6:` just sent, fetched if it came as an offer; `None` when it is
/// time to ask again (silence, or `4:busy`).
async fn answer(
    socket: &UdpSocket,
    buf: &mut [u8],
    load: &Load,
    me: &mut FollowerTally,
) -> io::Result<Option<Bytes>> {
    loop {
        // Silence is normal while nothing is published; a request or reply lost on the
        // way is covered by asking again (a resend replaces the request held).
        let Ok(received) = tokio::time::timeout(load.resend, socket.recv(buf)).await else {
            me.tally.timeouts += 1;
            return Ok(None);
        };
        let n = match received {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        };
        let reply = Bytes::copy_from_slice(&buf[..n]);
        // Only offers and errors are parsed here: a list of messages is read by its ids.
        match reply.first() {
            Some(b'd') => {
                if let Ok(Response::Offer(offer)) = Response::parse(reply.clone(), Expect::Messages)
                {
                    // A reply too large for a datagram is fetched, as any client must.
                    me.offers += 1;
                    return fetch::fetch(socket, buf, load, offer, me).await;
                }
            }
            Some(b'4') if reply.starts_with(b"4:busy") => {
                // Over the hold bounds: ask again shortly, as a client would.
                me.busy += 1;
                tokio::time::sleep(BUSY_PAUSE).await;
                return Ok(None);
            }
            // Late answers to a download already had (a block sent twice, the `x:`).
            _ if stale(&reply) => continue,
            _ => {}
        }
        return Ok(Some(reply));
    }
}

/// Whether `reply` answers a session request (`g:`, `x:`) rather than a `6:`.
fn stale(reply: &Bytes) -> bool {
    &reply[..] == b"0:"
        || matches!(
            Response::parse(reply.clone(), Expect::Data),
            Ok(Response::Data { .. })
        )
}

/// `6:<after>:<max>:<wait>`.
fn arm(after: u64, max: u64, wait_ms: u64) -> Vec<u8> {
    format!("6:{after}:{max}:{wait_ms}").into_bytes()
}

async fn send(socket: &UdpSocket, request: &[u8]) -> io::Result<()> {
    match socket.send(request).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
        Err(e) => Err(e),
    }
}

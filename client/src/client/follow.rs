//! Following a board: a start (the newest messages, everything, or what comes after an
//! id), then every message as it is published, each once and in id order, through
//! outages of the server.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mboard_protocol::{BoardRequest, ErrorCode, Expect, Message, MessageId, Response};

use super::after::Paging;
use super::{Client, INTERRUPT_CHECK, Zero};
use crate::error::ClientError;
use crate::link::Link;
use crate::page::{Cursor, Failed, Offers, Pager, Reach};

/// The wait each `6:` of a follower asks for: within the 30 s a server holds a request at
/// most, and within the half-minute that NAT bindings for UDP commonly last, so that the
/// answer still finds its way back.
pub const WAIT: Duration = Duration::from_secs(25);

/// The wait while a follower is at the very beginning (an empty board). `6:0` is not
/// woken by message 0, which only `3:0` reads, so that is asked again after each wait.
const FIRST_WAIT: Duration = Duration::from_secs(1);

/// Where a follower starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With every message on the board.
    Beginning,
    /// With the newest `n` messages; 0: none, only those published from now on.
    Newest(u64),
    /// With the messages after this id.
    After(MessageId),
}

/// What a follower has to say.
#[derive(Debug)]
pub enum FollowEvent {
    /// The next message: in id order, each once.
    Message(Message),
    /// Messages that should have come next were removed (retention) before they could be
    /// read: the first missing id and how many.
    Missed {
        /// The first id missing.
        first: MessageId,
        /// How many.
        count: u64,
    },
    /// The server stopped answering (the error says how); the follower keeps trying, with
    /// pauses that grow to a few seconds, and says [`FollowEvent::Back`] when it answers.
    Lost(ClientError),
    /// The server answers again; following resumes after this id (`None`: from the start).
    Back {
        /// The last message given out before the outage.
        after: Option<MessageId>,
    },
}

#[derive(Debug)]
enum Phase {
    /// Find the newest id, and follow from it.
    Top,
    /// Give the newest `n`, then follow.
    Newest(u64),
    /// Reading the newest messages in pages.
    Starting(Paging, u64),
    /// Following with held `6:` requests.
    Tail,
}

/// A board followed ([`Client::follow`]): an iterator of [`FollowEvent`]s that ends only
/// at an error that will not pass (or the total deadline), or when the client's
/// [`Client::interrupt_when`] says so.
pub struct Follow<'a> {
    client: &'a mut Client,
    /// The follower's own sockets, for all its `6:` requests and the downloads they offer.
    tail: Option<Link>,
    phase: Phase,
    cursor: Cursor,
    pending: VecDeque<FollowEvent>,
    reach: Reach,
    pause: Option<Duration>,
    wait: Duration,
    pager: Pager,
    offers: Offers,
    ended: bool,
}

impl std::fmt::Debug for Follow<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow")
            .field("phase", &self.phase)
            .field("cursor", &self.cursor)
            .finish()
    }
}

/// Failures a follower waits out: the server silent, refusing, busy or short of storage,
/// or the local network down.
pub(crate) fn passing(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Timeout { .. }
            | ClientError::Refused { .. }
            | ClientError::Io(_)
            | ClientError::Server {
                code: ErrorCode::ErrTransm,
                ..
            }
    )
}

impl Client {
    /// Follows the board from `start`: see [`Follow`]. Needs a protocol version 2 server.
    ///
    /// The `6:` requests go out on sockets of the follower's own, kept for as long as it
    /// follows — the one exception to a socket per operation. The server holds a `6:` per
    /// source address and `<after>`, and replaces a held request with its resend from
    /// the same address; from a new port each time, resends would pile up as held requests
    /// of their own. The price is that replies to earlier requests can arrive, and they
    /// are told apart by their ids (a true answer has only ids above its `<after>`).
    /// Everything else (`3:0`, `2:1`, `4:`) runs as operations of their own, as usual.
    ///
    /// `--max-time` ([`crate::ClientConfig::max_time`]) bounds the whole of it.
    pub fn follow(&mut self, start: Start) -> Result<Follow<'_>, ClientError> {
        self.no_classic("following")?;
        self.within = self.config.max_time.map(|d| Instant::now() + d);
        let (phase, cursor) = match start {
            Start::Beginning => (Phase::Tail, Cursor::beginning()),
            Start::Newest(0) => (Phase::Top, Cursor::beginning()),
            Start::Newest(n) => (Phase::Newest(n), Cursor::beginning()),
            Start::After(id) => (Phase::Tail, Cursor::after(id)),
        };
        Ok(Follow {
            client: self,
            tail: None,
            phase,
            cursor,
            pending: VecDeque::new(),
            reach: Reach::new(),
            pause: None,
            wait: WAIT,
            pager: Pager::new(),
            offers: Offers::default(),
            ended: false,
        })
    }
}

impl Follow<'_> {
    /// The wait each `6:` asks for ([`WAIT`] unless changed).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The server followed (the address that answered, once one has).
    pub fn server(&self) -> std::net::SocketAddr {
        self.client.server()
    }

    /// The last message given out, if any.
    pub fn last(&self) -> Option<MessageId> {
        self.cursor.last()
    }

    /// Events ready to be given out without waiting for the server.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    fn step(&mut self) -> Result<(), ClientError> {
        if let Some(pause) = self.pause.take() {
            self.sleep(pause)?;
        }
        match std::mem::replace(&mut self.phase, Phase::Tail) {
            Phase::Top => {
                let result = self.top();
                self.settle(result, Phase::Top)
            }
            Phase::Newest(n) => {
                self.phase = Phase::Starting(Paging::newest(n), n);
                Ok(())
            }
            Phase::Starting(mut paging, n) => match paging.next_page(self.client) {
                Ok(Some(page)) => {
                    self.answered();
                    if let Some(last) = page.messages.last() {
                        self.cursor = Cursor::after(last.id);
                    }
                    self.pager.observe(&page.messages);
                    self.pending
                        .extend(page.messages.into_iter().map(FollowEvent::Message));
                    self.phase = Phase::Starting(paging, n);
                    Ok(())
                }
                Ok(None) => {
                    self.answered();
                    Ok(())
                }
                // Once a message is out, what follows it comes from the tail; before,
                // the start is tried again.
                Err(e) if self.cursor.last().is_none() => self.settle(Err(e), Phase::Newest(n)),
                Err(e) => self.settle(Err(e), Phase::Tail),
            },
            Phase::Tail => {
                let result = self.tail();
                self.settle(result, Phase::Tail)
            }
        }
    }

    /// Takes a phase's outcome: on a failure that may pass, goes on with `then` after a
    /// pause, saying so at the start of an outage.
    fn settle(&mut self, result: Result<(), ClientError>, then: Phase) -> Result<(), ClientError> {
        let Err(e) = result else {
            return Ok(());
        };
        if !passing(&e) {
            return Err(e);
        }
        match self.reach.failed() {
            Failed::GiveUp => Err(e),
            Failed::Retry { report, pause } => {
                if report {
                    self.pending.push_back(FollowEvent::Lost(e));
                }
                self.pause = Some(pause);
                self.phase = then;
                Ok(())
            }
        }
    }

    fn answered(&mut self) {
        if self.reach.answered() {
            self.pending.push_back(FollowEvent::Back {
                after: self.cursor.last(),
            });
        }
    }

    /// Follows from the newest message there is now.
    fn top(&mut self) -> Result<(), ClientError> {
        self.client.begin()?;
        let newest = match self.client.request(BoardRequest::Ids(1))? {
            Response::Ids(ids) => ids.last().copied(),
            other => return Err(self.client.unexpected(&other, Expect::Ids)),
        };
        self.answered();
        self.cursor = newest.map_or(Cursor::beginning(), Cursor::after);
        Ok(())
    }

    /// One held `6:` after the last message given out, on the follower's sockets.
    fn tail(&mut self) -> Result<(), ClientError> {
        let after = self.cursor.asks_after();
        let wait = if self.reach.is_lost() {
            // Probes: answered at once by a server that is back.
            Duration::ZERO
        } else if after.is_none() {
            FIRST_WAIT
        } else {
            self.wait
        };
        let max = self.pager.size();
        let page = self.on_tail(|client, offers| {
            client.after_here(after.unwrap_or(MessageId(0)), max, wait, offers)
        });
        let mut page = match page {
            // Too large a page for the server now: a smaller one at once.
            Err(e) if e.is_busy() && self.pager.refused() => return Ok(()),
            page => page?,
        };
        if after.is_none() {
            self.client.begin()?;
            match self.client.zero_on_this_socket()? {
                Zero::Here(entry) => page.insert(
                    0,
                    Message {
                        id: MessageId(0),
                        entry,
                    },
                ),
                // Later ids exist and 0 does not: it never was a message, nothing missed.
                Zero::Absent if !page.is_empty() => self.cursor = Cursor::after(MessageId(0)),
                Zero::Absent | Zero::Trimmed => {}
            }
        }
        self.answered();
        self.pager.observe(&page);
        let accepted = self
            .cursor
            .accept(page)
            .map_err(|e| self.client.malformed(e.to_string()))?;
        if let Some((first, count)) = accepted.missed {
            self.pending.push_back(FollowEvent::Missed { first, count });
        }
        self.pending
            .extend(accepted.messages.into_iter().map(FollowEvent::Message));
        Ok(())
    }

    /// Runs `f` on the follower's own sockets, under fresh clocks.
    fn on_tail<T>(
        &mut self,
        f: impl FnOnce(&mut Client, &mut Offers) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let tail = match self.tail.take() {
            Some(tail) => tail,
            None => self.client.link.sibling()?,
        };
        let own = std::mem::replace(&mut self.client.link, tail);
        self.client.following = true;
        self.client.deadline = self.client.fresh_deadline(self.client.within);
        let result = f(self.client, &mut self.offers);
        self.client.following = false;
        self.tail = Some(std::mem::replace(&mut self.client.link, own));
        result
    }

    /// Waits `pause`, unless interrupted.
    fn sleep(&mut self, pause: Duration) -> Result<(), ClientError> {
        let until = Instant::now() + pause;
        loop {
            if self.client.interrupted() {
                return Err(ClientError::Interrupted);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            std::thread::sleep((until - now).min(INTERRUPT_CHECK));
        }
    }
}

impl Iterator for Follow<'_> {
    type Item = Result<FollowEvent, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.ended {
                return None;
            }
            if let Err(e) = self.step() {
                self.ended = true;
                return match e {
                    ClientError::Interrupted => None,
                    e => Some(Err(e)),
                };
            }
        }
    }
}

impl Drop for Follow<'_> {
    fn drop(&mut self) {
        self.client.within = None;
        self.client.following = false;
    }
}

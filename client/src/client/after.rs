//! Reading after an id with `6:`: one request ([`Client::after`]), pages of them
//! ([`Pages`], for `since` and for a `last` too large for one reply), and the replies a
//! socket that asks many of them must not take for the answer.

use std::time::Duration;

use bytes::Bytes;
use mboard_protocol::{BoardRequest, ErrorCode, Expect, Message, MessageId, Response};

use super::session::{Verdict, stale};
use super::{Client, Zero};
use crate::engine::Hold;
use crate::error::{ClientError, excerpt};
use crate::page::{Cursor, Offers, Pager};

/// The shortest interval between renewals of a held request.
const MIN_REFRESH: Duration = Duration::from_millis(100);

/// Downloads of offered `6:` replies started over because the session was gone (a late
/// error about an earlier download, or a server that restarted) before giving up.
const MAX_DOWNLOAD_RETRIES: u32 = 8;

/// Whether an error reason is about a session: a `6:` never gets one, but a late block
/// request of a download already closed does.
fn about_a_session(reason: &[u8]) -> bool {
    reason.windows(7).any(|w| w == b"session")
}

/// What a reply means to a `6:<after>:…` request.
///
/// The replies to `6:` name nothing of their request, and a socket that asks one after
/// another may receive a late or duplicated reply to an earlier one. Every message in a
/// true answer is above `after`, so a reply starting at or below it answers an earlier
/// request and is ignored, as are offers already taken and the late replies of a download.
fn after_verdict(r: Bytes, after: MessageId, offers: &Offers) -> Result<Verdict<Response>, String> {
    match Response::parse(r.clone(), Expect::Messages) {
        Ok(Response::Messages(page)) if page.first().is_some_and(|m| m.id <= after) => {
            Ok(Verdict::Ignore)
        }
        Ok(Response::Offer(offer)) if offers.taken(offer.sid) => Ok(Verdict::Ignore),
        Ok(Response::Error {
            code: ErrorCode::ErrTransm,
            reason,
        }) if about_a_session(&reason) => Ok(Verdict::Ignore),
        Ok(resp) => Ok(Verdict::Answer(0, resp)),
        Err(_) if stale(&r, true) => Ok(Verdict::Ignore),
        Err(e) => Err(format!("{e}, got {}", excerpt(&r))),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Client {
    /// The messages with ids above `after`, oldest first, at most `max` (0: no limit). If
    /// there are none yet, the server holds the request for up to `wait` (it caps that,
    /// at 30 s by default) and answers as soon as one is published, or with none when the
    /// wait is over. The silence timeout counts from the end of the wait.
    ///
    /// Needs a protocol version 2 server ([`ClientError::Unsupported`] otherwise).
    pub fn after(
        &mut self,
        after: MessageId,
        max: u64,
        wait: Duration,
    ) -> Result<Vec<Message>, ClientError> {
        self.no_classic("reading after an id (`6:`)")?;
        self.begin()?;
        self.after_here(after, max, wait, &mut Offers::default())
    }

    pub(super) fn no_classic(&self, what: &'static str) -> Result<(), ClientError> {
        if self.config.classic {
            return Err(ClientError::ClassicMode { what });
        }
        Ok(())
    }

    /// One `6:` on the current sockets. A held request is renewed every `--timeout` (the
    /// server replaces it with the renewal), so that one lost on the way, or forgotten by
    /// a server that restarted, is held again.
    pub(super) fn after_here(
        &mut self,
        after: MessageId,
        max: u64,
        wait: Duration,
        offers: &mut Offers,
    ) -> Result<Vec<Message>, ClientError> {
        let hold = Some(Hold {
            wait,
            // However short the timeout, a held request is not renewed more than ten
            // times a second.
            refresh: self.config.timeout.max(MIN_REFRESH),
        });
        let mut retries = 0;
        loop {
            let reply = self.exchange_held(
                hold,
                |left| {
                    BoardRequest::After {
                        after,
                        max,
                        wait_ms: millis(left),
                    }
                    .to_bytes()
                },
                |r| after_verdict(r, after, offers),
            )?;
            let page = match reply {
                Response::Messages(page) => page,
                Response::Offer(offer) => {
                    offers.take(offer.sid);
                    let whole = match self.download(offer) {
                        Err(e) if e.is_lost_session() && retries < MAX_DOWNLOAD_RETRIES => {
                            retries += 1;
                            continue;
                        }
                        whole => whole?,
                    };
                    match self.offered_page(whole)? {
                        // The offered answer to an earlier request: ask again.
                        page if page.first().is_some_and(|m| m.id <= after) => continue,
                        page => page,
                    }
                }
                other => return Err(self.refusal_of_6(other)),
            };
            return Ok(page);
        }
    }

    /// The error a reply to `6:` other than messages or an offer means.
    fn refusal_of_6(&self, reply: Response) -> ClientError {
        match reply {
            Response::Error {
                code: ErrorCode::UnknownControl,
                ..
            } => ClientError::Unsupported {
                server: self.link.name(),
                request: "6:",
                what: "reading after an id",
            },
            Response::Error { code, reason } => ClientError::Server { code, reason },
            other => self.unexpected(&other, Expect::Messages),
        }
    }

    /// A downloaded `6:` reply, read.
    fn offered_page(&self, whole: Bytes) -> Result<Vec<Message>, ClientError> {
        match Response::parse(whole.clone(), Expect::Messages) {
            Ok(Response::Messages(page)) => Ok(page),
            Ok(Response::Error { code, reason }) => Err(ClientError::Server { code, reason }),
            Ok(other) => Err(self.unexpected(&other, Expect::Messages)),
            Err(e) => Err(self.malformed(format!("{e}, got {}", excerpt(&whole)))),
        }
    }

    /// The messages after `after`, oldest first, at most `max` (0: all), in pages of
    /// about one datagram each, so that memory holds one page whatever the board's size.
    /// Each page is a `6:` with no wait; the whole is one operation, under one
    /// `--timeout` and `--max-time`, and it ends at the first empty page. A page whose
    /// first message is not the one after the last says which were no longer kept.
    ///
    /// Needs a protocol version 2 server ([`ClientError::Unsupported`] otherwise).
    pub fn since(&mut self, after: MessageId, max: u64) -> Pages<'_> {
        let state = Paging::new(Mode::Since, Cursor::after(after), max);
        Pages {
            client: self,
            state,
        }
    }

    /// The newest `n` messages, oldest first (`n` = 0: all), as pages arrive.
    ///
    /// `n` > 0 is one `4:<n>` (a download offer if large). When the server cannot afford
    /// that reply (`4:busy`: past its session memory), and for `n` = 0, the messages are
    /// read in pages of `6:` instead (see [`Client::since`]), with memory for one page. A
    /// version-1 server gets `4:0` for `n` = 0. In classic mode, `2:` then a `3:` per id,
    /// each on a socket of its own, as one page.
    pub fn last_pages(&mut self, n: u64) -> Pages<'_> {
        let mode = if self.config.classic {
            Mode::Classic(n)
        } else if n == 0 {
            Mode::All
        } else {
            Mode::Newest(n)
        };
        let state = Paging::new(mode, Cursor::beginning(), n);
        Pages {
            client: self,
            state,
        }
    }
}

/// A page of messages, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// Messages that should have come before these but are no longer kept (retention
    /// removed them): the first missing id and how many. Only [`Client::since`] says.
    pub missed: Option<(MessageId, u64)>,
    /// The messages.
    pub messages: Vec<Message>,
}

/// Messages read in pages ([`Client::since`], [`Client::last_pages`]): each item is the
/// next page, the iteration ends after the last, or at the first error.
pub struct Pages<'a> {
    client: &'a mut Client,
    state: Paging,
}

impl std::fmt::Debug for Pages<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages")
            .field("next", &self.state.cursor.next())
            .finish()
    }
}

impl Iterator for Pages<'_> {
    type Item = Result<Page, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        let page = self.state.next_page(self.client);
        if page.is_err() {
            self.state.done = true;
        }
        page.transpose()
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// `since`: after the cursor, saying what was no longer kept.
    Since,
    /// `last -n 0`: everything.
    All,
    /// `last -n N`: one `4:N`, pages if the server cannot afford it.
    Newest(u64),
    /// The pages of `last -n N` when the server could not afford one reply.
    Pages,
    /// `last` of a classic server.
    Classic(u64),
}

/// What asking for a page brought.
enum Fetched {
    /// A page of `6:`.
    Page(Vec<Message>),
    /// Nothing yet: ask again (a smaller page).
    Again,
    /// Everything at once, from a version-1 server.
    Whole(Page),
}

/// Where a reading in pages is, between pages.
#[derive(Debug)]
pub(super) struct Paging {
    mode: Mode,
    cursor: Cursor,
    /// Messages still wanted (`None`: all there are).
    left: Option<u64>,
    pager: Pager,
    offers: Offers,
    begun: bool,
    done: bool,
}

impl Paging {
    fn new(mode: Mode, cursor: Cursor, max: u64) -> Self {
        Paging {
            mode,
            cursor,
            left: (max > 0).then_some(max),
            pager: Pager::new(),
            offers: Offers::default(),
            begun: false,
            done: false,
        }
    }

    /// The newest `n` messages (`n` > 0), for a follower's start.
    pub(super) fn newest(n: u64) -> Self {
        Paging::new(Mode::Newest(n.max(1)), Cursor::beginning(), n.max(1))
    }

    /// The next page, or `None` after the last.
    pub(super) fn next_page(&mut self, client: &mut Client) -> Result<Option<Page>, ClientError> {
        if self.done {
            return Ok(None);
        }
        if !self.begun {
            self.begun = true;
            if let Some(first) = self.begin(client)? {
                return Ok(first);
            }
        }
        loop {
            let page = match self.fetch(client)? {
                Fetched::Page(page) => page,
                Fetched::Again => continue,
                Fetched::Whole(page) => return Ok(Some(page)),
            };
            if page.is_empty() {
                self.done = true;
                return Ok(None);
            }
            self.pager.observe(&page);
            let mut accepted = self
                .cursor
                .accept(page)
                .map_err(|e| client.malformed(e.to_string()))?;
            if accepted.messages.is_empty() {
                continue;
            }
            if let Some(left) = &mut self.left {
                accepted.messages.truncate(*left as usize);
                *left -= accepted.messages.len() as u64;
                self.done = *left == 0;
            }
            let missed = match self.mode {
                Mode::Since => accepted.missed,
                _ => None,
            };
            return Ok(Some(Page {
                missed,
                messages: accepted.messages,
            }));
        }
    }

    /// Starts the operation; for the modes that are not pages of `6:`, returns their
    /// whole answer (`Some`), else `None`.
    fn begin(&mut self, client: &mut Client) -> Result<Option<Option<Page>>, ClientError> {
        if matches!(self.mode, Mode::Since) {
            client.no_classic("reading after an id")?;
        }
        client.begin()?;
        match self.mode {
            Mode::Newest(n) => self.at_once(client, n).map(Some),
            Mode::Classic(n) => {
                self.done = true;
                let messages = client.last_classic(n)?;
                Ok(Some(Some(Page {
                    missed: None,
                    messages,
                })))
            }
            Mode::Since | Mode::All | Mode::Pages => Ok(None),
        }
    }

    /// The next `6:` page as it came (late replies and pages seen before are dropped by
    /// the caller's cursor).
    fn fetch(&mut self, client: &mut Client) -> Result<Fetched, ClientError> {
        let max = self.pager.size().min(self.left.unwrap_or(u64::MAX));
        let page = match self.cursor.asks_after() {
            Some(after) => client.after_here(after, max, Duration::ZERO, &mut self.offers),
            None => self.first_page(client, max),
        };
        match page {
            Ok(page) => Ok(Fetched::Page(page)),
            Err(ClientError::Unsupported { .. })
                if matches!(self.mode, Mode::All) && self.cursor.next() == 0 =>
            {
                // A version-1 server: all of it in one `4:0`, as before `6:`.
                self.done = true;
                client.fresh_socket()?;
                match client.request(BoardRequest::Last(0))? {
                    Response::Messages(messages) => Ok(Fetched::Whole(Page {
                        missed: None,
                        messages,
                    })),
                    other => Err(client.unexpected(&other, Expect::Messages)),
                }
            }
            Err(e) if e.is_busy() && self.pager.refused() => Ok(Fetched::Again),
            Err(e) => Err(e),
        }
    }

    /// `4:<n>` in one reply, or pages of the newest `n` when the server cannot afford it.
    fn at_once(&mut self, client: &mut Client, n: u64) -> Result<Option<Page>, ClientError> {
        let busy = match client.request(BoardRequest::Last(n)) {
            Ok(Response::Messages(messages)) => {
                self.done = true;
                return Ok(Some(Page {
                    missed: None,
                    messages,
                }));
            }
            Ok(other) => return Err(client.unexpected(&other, Expect::Messages)),
            Err(e) if e.is_busy() => e,
            Err(e) => return Err(e),
        };
        client.fresh_socket()?;
        let newest = match client.request(BoardRequest::Ids(1))? {
            Response::Ids(ids) => ids.last().copied(),
            other => return Err(client.unexpected(&other, Expect::Ids)),
        };
        let Some(newest) = newest else {
            self.done = true;
            return Ok(None);
        };
        // From `n` before the newest, counting the newest: ids are consecutive.
        self.cursor = match (newest.0 + 1).checked_sub(n) {
            Some(first) if first > 0 => Cursor::after(MessageId(first - 1)),
            _ => Cursor::beginning(),
        };
        self.mode = Mode::Pages;
        client.fresh_socket()?;
        match self.next_page(client) {
            // A version-1 server that cannot afford the reply either way: say so.
            Err(ClientError::Unsupported { .. }) => Err(busy),
            page => page,
        }
    }

    /// The first page from the very beginning: `6:0` has every message but 0, so message
    /// 0 comes from a `3:0` (on sockets of its own: a `3:` reply and `6:` replies must not
    /// meet). The `6:` goes first, so that a message 0 published meanwhile is not missed
    /// (ids are given in order) and a version-1 server is found out before anything.
    fn first_page(&mut self, client: &mut Client, max: u64) -> Result<Vec<Message>, ClientError> {
        let rest = client.after_here(MessageId(0), max, Duration::ZERO, &mut self.offers)?;
        client.fresh_socket()?;
        let zero = client.zero_on_this_socket()?;
        client.fresh_socket()?;
        let zero = match zero {
            Zero::Here(entry) => Some(Message {
                id: MessageId(0),
                entry,
            }),
            // Later ids exist and 0 does not: it never was a message, nothing missed.
            Zero::Absent if !rest.is_empty() => {
                self.cursor = Cursor::after(MessageId(0));
                None
            }
            Zero::Absent | Zero::Trimmed => None,
        };
        Ok(zero.into_iter().chain(rest).collect())
    }
}

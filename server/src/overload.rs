//! Fair shedding when the server cannot keep up: the hosts sending most give way.
//!
//! A flood larger than the server can handle fills the socket's receive queue, and the
//! kernel then drops datagrams at random, an honest client's as likely as the flood's: a
//! host sending 95% of the traffic decides what everyone else loses. No per-source limit
//! helps, since the flood comes from many ports (or spoofed addresses) and is only costly
//! in sum. So each receive loop watches whether it keeps up — a loop that keeps up finds
//! the queue empty now and then, a loop that does not never does — and while it does not,
//! it drops the datagrams of every host past its share of the traffic before any work
//! (no parse, no reply), which costs little more than the receive: the loop catches up,
//! the queue stops overflowing, and the hosts within their share are answered.
//!
//! A host is shed only when others were seen lately (a lone host, say a benchmark, has
//! nobody to give way to), and never below an equal share of the hosts seen: hosts that
//! send alike lose alike to the kernel already.
//!
//! A queue that never empties is not yet harm: a closed-loop client with hundreds of
//! requests in flight keeps it from emptying on its own, and the 4 MiB buffer absorbs
//! bursts. Harm is every datagram waiting long behind a crowded queue, or the kernel
//! dropping them when it is full, as the kernel says (fed by the driver through
//! [`Overload::kernel`], read more often while a loop is behind). So a loop begins to shed
//! when, in a busy window, the kernel's count of datagrams dropped for the socket rose —
//! even if the loop found the queue empty now and then, since loops that share the socket,
//! and cores with the flood, drain it in bursts between overflows — or when it never found
//! the queue empty and the queue holds more than a quarter of the buffer. Where the
//! kernel's view cannot be read, never finding the queue empty is enough. Waiting for the
//! drops alone would let a flood fill the whole queue first, at its start and again each
//! time shedding ends: every honest request waits behind all of it, then is dropped at
//! random. Once shedding, never finding the queue empty is enough to go on, since the harm
//! stops because of it.
//!
//! Shedding lasts a while after the loop last fell behind (`hold`), since the loop keeps up
//! *because* it sheds; each time it stops shedding and falls behind again at once, the next
//! hold is twice as long (up to [`MAX_HOLD`]), so a flood that lasts costs a probe's losses
//! at ever longer intervals, and a burst that passed is forgotten.
//!
//! Sans-IO: [`Overload::admit`] and [`Overload::waited`] take `now`. One per receive loop,
//! so no lock is shared; each loop sees its part of the traffic, which is enough to tell
//! who sends most.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::session::HostKey;

/// How long one count of the traffic lasts.
const WINDOW: Duration = Duration::from_millis(50);
/// How long the hosts seen are remembered: shedding needs someone to shed for, and a
/// client that asks once a second is someone.
const EPOCH: Duration = Duration::from_secs(1);
/// Below this many datagrams a window, one loop is not overloaded whatever it finds.
const MIN_ARRIVALS: u32 = 128;
/// The first hold; each immediate relapse doubles it.
const BASE_HOLD: Duration = Duration::from_secs(1);
/// Shedding that begins again this soon after it ended is a relapse: the flood went on.
/// (A full 4 MiB queue takes this long to overflow again under a flood a loop can barely
/// handle.)
const RELAPSE: Duration = Duration::from_secs(1);
/// The longest hold.
const MAX_HOLD: Duration = Duration::from_secs(32);
/// Hosts counted in one window; the rest are let through (a table that grows with spoofed
/// sources would be a cost of its own, and a host of one datagram is within any share).
/// The hosts over their quota in one window are kept in the next one's table from the
/// start, so filling the table does not hide them.
const MAX_HOSTS: usize = 4_096;

/// How the loops shed load, as configured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shedding {
    /// The share of one loop's traffic that one host keeps while the loop is behind, in
    /// percent (it keeps more if there are few hosts: never less than an equal share). 0
    /// turns shedding off; 100 sheds nothing.
    pub host_share: u8,
}

impl Default for Shedding {
    /// A quarter, the same share of the session table and memory a host has.
    fn default() -> Self {
        Shedding { host_share: 25 }
    }
}

/// What the kernel said of the socket's receive queue when it was last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueState {
    /// The datagrams it dropped since the socket was opened; `None` where it cannot be
    /// read.
    pub(crate) drops: Option<u64>,
    /// Whether the queue held more than a quarter of the receive buffer.
    pub(crate) crowded: bool,
}

/// One receive loop's watch over its load.
#[derive(Debug)]
pub(crate) struct Overload {
    share: f64,
    /// The window being counted.
    started: Instant,
    arrivals: u32,
    waits: u32,
    counts: HashMap<HostKey, u32>,
    /// The hosts seen in this epoch's windows so far, and how many the last epoch saw.
    seen: HashSet<HostKey>,
    seen_before: usize,
    epoch_started: Instant,
    /// While shedding: until when, and how many datagrams a host may have a window.
    shedding: Option<(Instant, u32)>,
    /// The share of the traffic a host keeps, as judged at the last roll (the configured
    /// share, or an equal share of the hosts seen if that is more).
    fraction: f64,
    /// When shedding last ended, to tell a relapse from a new overload.
    ended: Option<Instant>,
    hold: Duration,
    /// Set when shedding begins (not when it is prolonged), for the loop to say so.
    began: bool,
    /// The kernel's drop count for the socket as last fed, and as it was at the last roll
    /// (`None`: unknown).
    drops: Option<u64>,
    drops_at_roll: Option<u64>,
    /// Whether the queue was crowded when last read.
    crowded: bool,
    /// The kernel's view of the queue is worth reading often: the loop is behind, harmed,
    /// shedding or just stopped shedding.
    watchful: bool,
}

impl Overload {
    /// A watch that starts counting at `now`.
    pub(crate) fn new(shedding: Shedding, now: Instant) -> Self {
        Overload {
            share: f64::from(shedding.host_share.min(100)) / 100.0,
            started: now,
            arrivals: 0,
            waits: 0,
            counts: HashMap::new(),
            seen: HashSet::new(),
            seen_before: 0,
            epoch_started: now,
            shedding: None,
            fraction: 1.0,
            ended: None,
            hold: BASE_HOLD,
            began: false,
            drops: None,
            drops_at_roll: None,
            crowded: false,
            watchful: false,
        }
    }

    /// The loop found the socket's queue empty: it keeps up.
    pub(crate) fn waited(&mut self) {
        self.waits = self.waits.saturating_add(1);
    }

    /// What the kernel said of the socket's queue when last read.
    pub(crate) fn kernel(&mut self, queue: QueueState) {
        self.drops = queue.drops;
        self.crowded = queue.crowded;
    }

    /// Whether the kernel's view of the queue should be read often, as of the last window.
    pub(crate) fn watchful(&self) -> bool {
        self.watchful
    }

    /// Whether a datagram from `host`, received at `now`, is to be handled (else dropped
    /// unanswered).
    pub(crate) fn admit(&mut self, host: HostKey, now: Instant) -> bool {
        if self.share <= 0.0 {
            return true;
        }
        if now.saturating_duration_since(self.started) >= WINDOW {
            self.roll(now);
        }
        self.arrivals = self.arrivals.saturating_add(1);
        let full = self.counts.len() >= MAX_HOSTS;
        let count = match self.counts.entry(host) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) if !full => e.insert(0),
            Entry::Vacant(_) => return true,
        };
        *count += 1;
        // The quota was counted on the last window; a host within its share of this one's
        // traffic so far keeps it too, or traffic that grows (a crowd of followers coming
        // back at once) would be shed within its share.
        let within = f64::from(*count) <= (f64::from(self.arrivals) * self.fraction).ceil();
        within
            || !self
                .shedding
                .is_some_and(|(until, quota)| now < until && *count > quota)
    }

    /// The share each host keeps while the loop is behind, in percent.
    pub(crate) fn share_percent(&self) -> u8 {
        (self.share * 100.0).round() as u8
    }

    /// If shedding began since the last call: for how long, at first.
    pub(crate) fn began(&mut self) -> Option<Duration> {
        std::mem::take(&mut self.began).then_some(self.hold)
    }

    /// Whether the loop is shedding at `now`.
    #[cfg(test)]
    fn shedding(&self, now: Instant) -> bool {
        self.shedding.is_some_and(|(until, _)| now < until)
    }

    /// Ends the window: decides from it whether to shed during the next, and how much.
    fn roll(&mut self, now: Instant) {
        let hosts = self.hosts_seen(now);
        let (behind, amiss) = self.judge();
        let arrivals = f64::from(self.arrivals);
        // Never less than an equal share: when every host sends alike, random losses are
        // already fair, and shedding would only add to them.
        self.fraction = self.share.max(1.0 / hosts as f64);
        let quota = (arrivals * self.fraction).ceil() as u32;
        if let Some((until, _)) = self.shedding.filter(|&(until, _)| now >= until) {
            self.shedding = None;
            self.ended = Some(until);
        }
        // While anything may be amiss, the queue is worth reading every window: shedding
        // that ended just now may have to begin again soon.
        let relapsing = self
            .ended
            .is_some_and(|ended| now.saturating_duration_since(ended) <= RELAPSE);
        self.watchful = amiss || self.shedding.is_some() || relapsing;
        if behind && hosts > 1 {
            // Doubled once a relapse, when shedding begins again, not for each window.
            if self.shedding.is_none() && relapsing {
                self.hold = (self.hold * 2).min(MAX_HOLD);
            }
            self.began |= self.shedding.is_none();
            let until = self
                .shedding
                .map_or(now + self.hold, |(until, _)| until.max(now + self.hold));
            self.shedding = Some((until, quota));
        } else if let Some((until, kept)) = self.shedding {
            // Still shedding, and keeping up: the quota follows the traffic up, never down.
            // A quiet window says nothing of the next one (a flood pauses, a client sends
            // in bursts), and a quota scaled to it would shed an honest burst while the
            // loop has nothing else to do; a window behind sets it afresh.
            self.shedding = Some((until, kept.max(quota)));
        } else if self
            .ended
            .is_some_and(|ended| now.saturating_duration_since(ended) > self.hold)
        {
            // Kept up for a whole hold without shedding: the overload has passed.
            self.hold = BASE_HOLD;
            self.ended = None;
        }
        self.started = now;
        self.arrivals = 0;
        self.waits = 0;
        // The hosts that went past the quota stay in the table, so that sources sprayed
        // to fill it cannot hide them.
        self.counts.retain(|_, count| *count > quota);
        self.counts.values_mut().for_each(|count| *count = 0);
    }

    /// Whether the window just ended found the loop behind in a way that does harm, and
    /// whether it found anything amiss (the queue never empty, or the kernel dropping).
    fn judge(&mut self) -> (bool, bool) {
        let busy = self.arrivals >= MIN_ARRIVALS;
        let suspect = self.waits == 0 && busy;
        let dropped = match (self.drops, self.drops_at_roll) {
            (Some(now), Some(before)) => Some(now > before),
            (Some(_), None) => Some(false),
            (None, _) => None,
        };
        self.drops_at_roll = self.drops;
        let behind = match dropped {
            // The kernel is losing datagrams: harm, even if this loop found the queue empty
            // now and then. Loops that share the socket, and cores with the flood, drain it
            // in bursts between overflows.
            Some(true) => busy,
            // A queue never empty that is crowded starts shedding; once shedding, a queue
            // never empty is enough to go on (the harm stops because of it).
            Some(false) => suspect && (self.crowded || self.shedding.is_some()),
            // Nothing to tell harm by: being behind is enough.
            None => suspect,
        };
        (behind, suspect || dropped == Some(true))
    }

    /// The hosts seen lately (this epoch or the last), counting the window just ended in.
    fn hosts_seen(&mut self, now: Instant) -> usize {
        for host in self.counts.keys() {
            if self.seen.len() >= MAX_HOSTS {
                break;
            }
            self.seen.insert(*host);
        }
        let hosts = self.seen.len().max(self.seen_before).max(1);
        let age = now.saturating_duration_since(self.epoch_started);
        if age >= EPOCH {
            // An epoch that ended long ago (the loop was idle) says nothing of now.
            self.seen_before = if age < 2 * EPOCH { self.seen.len() } else { 0 };
            self.seen.clear();
            self.epoch_started = now;
        }
        hosts
    }
}

#[cfg(test)]
mod tests;

//! Retention on the journal: the index is trimmed message by message, and a segment file
//! is deleted once nothing kept is in it — whole, never rewritten.
//!
//! Two kinds of notes keep a restart from undoing what was trimmed. A kept note (the
//! oldest id kept) rides along with the next commit, or is written alone after a second,
//! so that a server restarted with looser limits does not bring trimmed messages back. And
//! before a segment goes, the `5:` tokens still inside the deduplication window that it
//! holds are written again as token notes, so that a resend after a restart still gets
//! its id rather than a second copy.

use std::fs;
use std::io;
use std::time::Instant;

use mboard_protocol::{MessageId, PublishToken, Timestamp};
use tracing::warn;

use super::commit::Writer;
use super::warn_limited;
use crate::board::StoreState;
use crate::board::journal::format::{Body, encode};

/// Messages trimmed under one hold of the index's lock, so readers wait microseconds.
pub(super) const TRIM_CHUNK: u64 = 4_096;

impl Writer {
    /// Trims what retention no longer allows at `now`, and deletes the segments that
    /// leaves nothing kept in.
    pub(super) fn retain(&mut self, now: Timestamp) {
        if self.retention.is_limited() {
            loop {
                let Some(mut index) = self.index() else {
                    return;
                };
                let (n, gone) = index.trim(&self.retention, now, TRIM_CHUNK);
                let first = index.sums().first();
                drop(index);
                self.doomed.extend(gone);
                if n > 0 {
                    self.kept = Some(first);
                }
                if n < TRIM_CHUNK {
                    break;
                }
            }
        }
        if !self.doomed.is_empty() && self.health.state() != StoreState::Lost {
            self.delete_doomed(now);
        }
    }

    /// Deletes trimmed segments, oldest first, each once its live tokens are noted.
    fn delete_doomed(&mut self, now: Timestamp) {
        while !self.doomed.is_empty() {
            let (first, path) = (self.doomed[0].first, self.doomed[0].path.clone());
            let end = match self.doomed.get(1) {
                Some(next) => next.first,
                None => self
                    .index
                    .read()
                    .ok()
                    .and_then(|i| i.segments().front().map(|s| s.first))
                    .unwrap_or(u64::MAX),
            };
            let live = {
                let table = self.tokens.table();
                let mut live = table.live_between(first, end, now);
                // Notes it holds of older segments' tokens go on too.
                for token in &self.doomed[0].noted {
                    if let Some((id, at)) = table.live(*token, now) {
                        live.push((*token, id, at));
                    }
                }
                live.sort_by_key(|(token, _, _)| *token);
                live.dedup_by_key(|(token, _, _)| *token);
                live
            };
            if !live.is_empty() && !self.write_notes(live) {
                // Tried again at the next tick; tokens leave the window within minutes.
                return;
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    let key = format!("cannot delete a trimmed segment: {}", e.kind());
                    warn_limited(&self.warnings, &key, |repeats| {
                        warn!(segment = %path.display(), error = %e, "journal: cannot delete a trimmed segment{repeats}");
                    });
                }
            }
            self.doomed.remove(0);
            self.metrics.deleted.inc();
            self.health.room();
        }
        if let Ok(index) = self.index.read() {
            self.metrics.set_size(index.bytes(), index.segments().len());
        }
    }

    /// Writes `notes` (tokens with their ids and times) and the kept note that waits, if
    /// any, as a commit of their own; says whether they are durable.
    pub(super) fn write_notes(&mut self, notes: Vec<(PublishToken, MessageId, Timestamp)>) -> bool {
        if self.health.refusing(Instant::now()).is_some() || !self.lock_ours() {
            return false;
        }
        if let Err(e) = self.prepare() {
            self.disk_failed(&e);
            return false;
        }
        let at = self.place();
        self.buf.clear();
        if let Some(kept) = self.kept {
            let now = Timestamp::from_system_time(std::time::SystemTime::now());
            encode(&mut self.buf, at, 0, MessageId(kept), now, Body::KeptNote);
        }
        let tokens: Vec<PublishToken> = notes.iter().map(|(token, _, _)| *token).collect();
        for (token, id, time) in notes {
            encode(&mut self.buf, at, 0, id, time, Body::TokenNote(token));
        }
        if self.buf.is_empty() {
            return true;
        }
        if let Err(e) = self.append() {
            self.disk_failed(&e);
            return false;
        }
        if !self.owned() {
            self.unwrite();
            self.lose(self.next_id());
            return false;
        }
        let written = self.buf.len() as u64;
        if let Some(mut index) = self.index() {
            index.grow(self.active.len + written);
            index.noted(tokens);
        }
        self.active.len += written;
        self.kept = None;
        self.recovered();
        true
    }
}

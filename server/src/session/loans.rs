//! Taking back loans: what hosts over their share hold beyond it, given back to a host
//! within its share that finds the server full (see `room`).

use std::collections::{HashMap, HashSet};

use mboard_protocol::SessionId;

use super::SessionManager;
use super::hosts::{HostKey, Shares, Usage};
use super::manager::State;
use super::room::{Need, Shortfall};

/// Sessions [`SessionManager::recall`] looks at for one request, at most.
const RECALL_WALK: usize = 4_096;

/// Whether a host holding `usage` is over its share of what `left` lacks: a host lends
/// memory or sessions, not both.
fn lends(shares: &Shares, usage: &Usage, left: Shortfall) -> bool {
    (left.bytes > 0 && usage.reserved > shares.memory)
        || (left.slots > 0 && usage.sessions > shares.sessions)
}

impl SessionManager {
    /// What the hosts over their share (other than `host`) hold beyond it: room they may
    /// be asked to give back, bytes by hosts over their share of memory, slots by hosts
    /// over their share of sessions. At most what recalling frees, give or take the one
    /// session that takes a host back within its share.
    pub(super) fn lent(&self, host: HostKey) -> Shortfall {
        let shares = self.budget.hosts.shares();
        let mut lent = Shortfall::default();
        for (lender, usage) in self.budget.hosts.over_share() {
            if lender != host {
                lent.bytes += usage.reserved.saturating_sub(shares.memory);
                lent.slots += u64::from(usage.sessions.saturating_sub(shares.sessions));
            }
        }
        lent
    }

    /// Room held on loan that makes up `left` for `need`, whose host is within its share:
    /// the youngest sessions of the host most over its share first, each host giving back
    /// only what it holds beyond its share of what is short; never `need`'s own host or
    /// session, a session already in `planned`, or a commit that is executing (nor, for
    /// bytes alone, an executed one's reply). `None` if the loans would not make `left` up.
    ///
    /// Beyond its share a host may take only room that leaves one share free; without
    /// this, a second host filling that share would leave a newcomer nothing until the
    /// first host's sessions turned slow (they may never, if they move).
    pub(super) fn recall(
        &self,
        mut left: Shortfall,
        need: Need,
        planned: &[SessionId],
    ) -> Option<Vec<SessionId>> {
        let shares = self.budget.hosts.shares();
        let planned: HashSet<SessionId> = planned.iter().copied().collect();
        let lenders = self.lenders(left, need.host, &planned);
        let mut recalled = Vec::new();
        // Sessions looked at, at most: bounds the work one request can cause.
        let mut budget = RECALL_WALK;
        for (lender, mut usage) in lenders {
            for sid in self.budget.hosts.youngest(lender) {
                if left.is_met() || !lends(&shares, &usage, left) || budget == 0 {
                    break;
                }
                budget -= 1;
                let Some(session) = self.sessions.get(&sid) else {
                    continue;
                };
                // With only bytes short, an executed commit frees next to nothing (its
                // reply), and its reply is what a resent `c:` needs: a `1:` uploaded by a
                // version-1 client that lost it has no other way to learn it was stored.
                let frees_nothing = left.slots == 0
                    && (session.reserved == 0 || matches!(session.state, State::Committed { .. }));
                if frees_nothing
                    || Some(sid) == need.requester
                    || matches!(session.state, State::Executing(_))
                    || planned.contains(&sid)
                {
                    continue;
                }
                left = left.minus(session.reserved);
                usage.sessions -= 1;
                usage.reserved -= session.reserved;
                recalled.push(sid);
            }
        }
        left.is_met().then_some(recalled)
    }

    /// The hosts (never `host`) over their share of what `left` lacks, with what each holds
    /// once the `planned` slow sessions have gone (a host whose slow session gives way
    /// lends only what it still holds beyond its share), the most over its share first:
    /// in bytes when bytes are short, else in sessions.
    fn lenders(
        &self,
        left: Shortfall,
        host: HostKey,
        planned: &HashSet<SessionId>,
    ) -> Vec<(HostKey, Usage)> {
        let shares = self.budget.hosts.shares();
        let mut given: HashMap<HostKey, Usage> = HashMap::new();
        for session in planned.iter().filter_map(|sid| self.sessions.get(sid)) {
            if let Some(owner) = session.claimant() {
                let gone = given.entry(owner).or_default();
                gone.sessions += 1;
                gone.reserved += session.reserved;
            }
        }
        let mut lenders: Vec<(HostKey, Usage)> = self
            .budget
            .hosts
            .over_share()
            .map(|(lender, usage)| {
                let gone = given.get(&lender).copied().unwrap_or_default();
                let usage = Usage {
                    sessions: usage.sessions.saturating_sub(gone.sessions),
                    reserved: usage.reserved.saturating_sub(gone.reserved),
                };
                (lender, usage)
            })
            .filter(|(lender, usage)| *lender != host && lends(&shares, usage, left))
            .collect();
        let excess = |usage: &Usage| {
            if left.bytes > 0 {
                usage.reserved.saturating_sub(shares.memory)
            } else {
                u64::from(usage.sessions.saturating_sub(shares.sessions))
            }
        };
        lenders.sort_by_key(|(lender, usage)| (std::cmp::Reverse(excess(usage)), *lender));
        lenders
    }
}

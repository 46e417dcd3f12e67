//! Asking JetStream for the stream's newest id, once for many readers.
//!
//! A `3:<id>` above what the replica holds must learn whether the stream has the id
//! (published through another server, not delivered here yet) before it may answer "no
//! such message". Asking JetStream once per such read would let a flood of `3:<huge id>`
//! turn into a flood of stream-info requests to NATS, one per datagram. Instead one
//! question is in flight at a time, and every reader that arrived before it was asked
//! shares its answer. A reader that arrives while one is in flight waits for the next:
//! the one in flight may have been answered before the reader's id was acknowledged
//! elsewhere, and would wrongly say the stream does not have it. So NATS sees at most one
//! request per round trip from each server, whatever the readers do.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

/// Asks JetStream for the stream's newest sequence; `None` when it did not answer.
pub(super) type Ask =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Option<u64>> + Send>> + Send + Sync>;

/// The shared question and its latest answer.
pub(super) struct Probe {
    ask: Ask,
    rounds: Mutex<Rounds>,
    answered: watch::Sender<Answered>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Rounds {
    /// The last round asked (or being asked).
    started: u64,
    /// The latest round some reader waits for.
    wanted: u64,
    /// Whether a task is asking.
    running: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Answered {
    round: u64,
    newest: Option<u64>,
}

impl Probe {
    pub(super) fn new(ask: Ask) -> Arc<Self> {
        Arc::new(Probe {
            ask,
            rounds: Mutex::new(Rounds::default()),
            answered: watch::Sender::new(Answered::default()),
        })
    }

    /// How many questions JetStream was asked.
    #[cfg(test)]
    fn asked(&self) -> u64 {
        self.rounds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .started
    }

    /// The stream's newest sequence as JetStream tells it after this call began; `None`
    /// if it did not answer, or not within `bound`.
    pub(super) async fn newest(self: &Arc<Self>, bound: Duration) -> Option<u64> {
        let mut answered = self.answered.subscribe();
        let round = {
            let mut rounds = self.rounds.lock().unwrap_or_else(PoisonError::into_inner);
            // Not the round in flight, if any: the next one is asked after this moment.
            let round = rounds.started + 1;
            rounds.wanted = rounds.wanted.max(round);
            if !rounds.running {
                rounds.running = true;
                // Its own task, so that a reader that gives up cannot strand the others.
                tokio::spawn(self.clone().ask_while_wanted());
            }
            round
        };
        let got = tokio::time::timeout(bound, answered.wait_for(|a| a.round >= round)).await;
        match got {
            Ok(Ok(answer)) => answer.newest,
            _ => None,
        }
    }

    /// Asks round after round while readers wait for one not asked yet.
    async fn ask_while_wanted(self: Arc<Self>) {
        loop {
            let round = {
                let mut rounds = self.rounds.lock().unwrap_or_else(PoisonError::into_inner);
                if rounds.wanted <= rounds.started {
                    rounds.running = false;
                    return;
                }
                rounds.started += 1;
                rounds.started
            };
            let newest = (self.ask)().await;
            self.answered.send_replace(Answered { round, newest });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::sync::Semaphore;

    use super::*;

    /// A JetStream whose answers the test releases one at a time; each answer is the
    /// number of questions asked so far (a stream that grows between them).
    fn gated() -> (Arc<Probe>, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        let count = Arc::new(AtomicU64::new(0));
        let g = gate.clone();
        let probe = Probe::new(Box::new(move || {
            let (gate, count) = (g.clone(), count.clone());
            Box::pin(async move {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                gate.acquire().await.ok()?.forget();
                Some(n)
            })
        }));
        (probe, gate)
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn many_readers_share_one_question_and_latecomers_the_next() {
        let (probe, gate) = gated();
        let bound = Duration::from_secs(5);
        let first: Vec<_> = (0..100)
            .map(|_| {
                let p = probe.clone();
                tokio::spawn(async move { p.newest(bound).await })
            })
            .collect();
        settle().await;
        assert_eq!(probe.asked(), 1, "one question for a hundred readers");
        // Readers that come while it is in flight wait for a question asked after them.
        let late: Vec<_> = (0..100)
            .map(|_| {
                let p = probe.clone();
                tokio::spawn(async move { p.newest(bound).await })
            })
            .collect();
        settle().await;
        assert_eq!(probe.asked(), 1);
        gate.add_permits(1);
        for reader in first {
            assert_eq!(reader.await.expect("reader"), Some(1));
        }
        settle().await;
        assert_eq!(probe.asked(), 2, "the latecomers' question");
        gate.add_permits(1);
        for reader in late {
            assert_eq!(reader.await.expect("reader"), Some(2));
        }
        settle().await;
        assert_eq!(probe.asked(), 2, "nobody waits: nothing more is asked");
    }

    #[tokio::test]
    async fn a_reader_that_gives_up_strands_nobody() {
        let (probe, gate) = gated();
        assert_eq!(probe.newest(Duration::from_millis(10)).await, None);
        let p = probe.clone();
        let patient = tokio::spawn(async move { p.newest(Duration::from_secs(5)).await });
        settle().await;
        gate.add_permits(2);
        // The question asked for the reader that gave up answers 1, before the patient
        // one came; the patient one gets the question asked after it.
        assert_eq!(patient.await.expect("reader"), Some(2));
    }

    #[tokio::test]
    async fn no_answer_from_jetstream_is_none() {
        let probe = Probe::new(Box::new(|| Box::pin(async { None })));
        assert_eq!(probe.newest(Duration::from_secs(5)).await, None);
        assert_eq!(probe.newest(Duration::from_secs(5)).await, None);
        assert_eq!(probe.asked(), 2);
    }
}

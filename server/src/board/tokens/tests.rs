use uuid::Uuid;

use super::*;

fn token(n: u128) -> PublishToken {
    PublishToken(Uuid::from_u128(n))
}

fn secs(s: u64) -> Timestamp {
    Timestamp(s * 1_000_000)
}

fn table(max_tokens: usize) -> TokenTable {
    TokenTable::new(TokenLimits {
        window: Duration::from_secs(120),
        max_tokens,
    })
}

fn is_new(c: Claim) -> bool {
    matches!(c, Claim::New)
}

fn published_as(c: Claim) -> Option<u64> {
    match c {
        Claim::Published(id) => Some(id.0),
        _ => None,
    }
}

#[test]
fn a_token_publishes_once_within_its_window() {
    let mut t = table(100);
    assert!(is_new(t.claim(token(1), secs(0))));
    let Claim::Pending(waiter) = t.claim(token(1), secs(0)) else {
        panic!("a second claim while the first is stored waits")
    };
    assert_eq!(*waiter.borrow(), None);
    t.published(token(1), MessageId(7), secs(1));
    assert_eq!(*waiter.borrow(), Some(MessageId(7)), "the waiter is told");
    assert_eq!(published_as(t.claim(token(1), secs(120))), Some(7));
    // The window counts from the publish (1 s), not from the claim.
    assert!(is_new(t.claim(token(1), secs(121))));
}

#[test]
fn an_abandoned_publish_can_be_retried() {
    let mut t = table(100);
    assert!(is_new(t.claim(token(1), secs(0))));
    let Claim::Pending(waiter) = t.claim(token(1), secs(0)) else {
        panic!("pending")
    };
    t.abandon(token(1));
    assert!(waiter.has_changed().is_err(), "the waiter sees it closed");
    assert_eq!(t.counts().held, 0);
    assert!(is_new(t.claim(token(1), secs(1))));
    t.published(token(1), MessageId(3), secs(1));
    // Abandoning a published token changes nothing.
    t.abandon(token(1));
    assert_eq!(published_as(t.claim(token(1), secs(2))), Some(3));
}

#[test]
fn a_full_table_forgets_the_oldest_early_and_counts_it() {
    let mut t = table(3);
    for n in 0..4 {
        assert!(is_new(t.claim(token(n), secs(n as u64))));
        t.published(token(n), MessageId(n as u64), secs(n as u64));
    }
    assert_eq!(
        t.counts(),
        TokenCounts {
            held: 3,
            evicted_early: 1
        }
    );
    assert!(
        is_new(t.claim(token(0), secs(4))),
        "the oldest was forgotten"
    );
    assert_eq!(published_as(t.claim(token(2), secs(4))), Some(2));
}

#[test]
fn pending_tokens_are_never_forgotten() {
    let mut t = table(1);
    assert!(is_new(t.claim(token(1), secs(0))));
    for n in 2..10 {
        assert!(is_new(t.claim(token(n), secs(0))));
        t.published(token(n), MessageId(n as u64), secs(0));
    }
    // Neither by a full table nor by age.
    assert!(matches!(t.claim(token(1), secs(1_000)), Claim::Pending(_)));
    t.published(token(1), MessageId(1), secs(1_000));
    assert_eq!(published_as(t.claim(token(1), secs(1_001))), Some(1));
}

#[test]
fn restored_tokens_keep_their_age_and_the_last_record_wins() {
    let mut t = table(100);
    let now = secs(1_000);
    t.restore(token(1), MessageId(1), secs(900), now);
    t.restore(token(2), MessageId(2), secs(870), now);
    t.restore(token(3), MessageId(3), secs(890), now);
    t.restore(token(3), MessageId(4), secs(950), now);
    assert_eq!(published_as(t.claim(token(1), now)), Some(1));
    assert!(
        is_new(t.claim(token(2), now)),
        "its window ended before the restart"
    );
    assert_eq!(published_as(t.claim(token(3), now)), Some(4));
    // Token 1 was published at 900: forgotten at 1,020. Token 3's stale entry (890)
    // does not take the live one (950) with it.
    assert!(is_new(t.claim(token(1), secs(1_020))));
    assert_eq!(published_as(t.claim(token(3), secs(1_020))), Some(4));
    assert!(is_new(t.claim(token(3), secs(1_070))));
}

#[test]
fn expiry_empties_the_table_without_counting_early_evictions() {
    let mut t = table(10);
    for n in 0..10 {
        assert!(is_new(t.claim(token(n), secs(n as u64))));
        t.published(token(n), MessageId(n as u64), secs(n as u64));
    }
    t.expire(secs(125));
    assert_eq!(
        t.counts(),
        TokenCounts {
            held: 4,
            evicted_early: 0
        }
    );
    t.expire(secs(200));
    assert_eq!(t.counts().held, 0);
    assert!(t.order.is_empty());
}

#[test]
fn live_tokens_are_found_by_their_ids() {
    let mut t = table(100);
    for n in 0..6u64 {
        assert!(is_new(t.claim(token(n.into()), secs(n))));
        t.published(token(n.into()), MessageId(n * 10), secs(n));
    }
    let mut live = t.live_between(10, 40, secs(100));
    live.sort_by_key(|(_, id, _)| *id);
    let ids: Vec<(u64, u64)> = live.iter().map(|(_, id, at)| (id.0, at.0)).collect();
    assert_eq!(ids, vec![(10, 1_000_000), (20, 2_000_000), (30, 3_000_000)]);
    // Those whose window has ended are not live, and nothing is forgotten by asking.
    assert_eq!(t.live_between(0, 100, secs(122)).len(), 3);
    assert_eq!(t.live(token(2), secs(100)), Some((MessageId(20), secs(2))));
    assert_eq!(t.live(token(1), secs(121)), None);
    assert_eq!(t.live(token(9), secs(0)), None);
    assert_eq!(t.counts().held, 6);
}

#[test]
fn a_resend_while_pending_is_told_the_id_and_leaves_nothing_behind() {
    let mut t = table(10);
    assert!(is_new(t.claim(token(1), secs(0))));
    let Claim::Pending(mut first) = t.claim(token(1), secs(0)) else {
        panic!("pending")
    };
    let Claim::Pending(second) = t.claim(token(1), secs(0)) else {
        panic!("pending")
    };
    assert_eq!((t.counts().held, t.pending, t.waiters.len()), (1, 1, 1));
    t.published(token(1), MessageId(7), secs(1));
    assert_eq!(*first.borrow_and_update(), Some(MessageId(7)));
    assert_eq!(*second.borrow(), Some(MessageId(7)));
    assert_eq!(published_as(t.claim(token(1), secs(2))), Some(7));
    assert_eq!((t.counts().held, t.pending, t.waiters.len()), (1, 0, 0));
    // Resolving a token that is not pending (published, or never claimed) changes nothing.
    t.published(token(1), MessageId(8), secs(3));
    t.published(token(2), MessageId(9), secs(3));
    t.abandon(token(1));
    assert_eq!(published_as(t.claim(token(1), secs(4))), Some(7));
    assert_eq!(t.counts().held, 1);
}

#[test]
fn a_restored_time_at_the_end_of_time_is_not_taken_for_pending() {
    let mut t = table(10);
    t.restore(
        token(1),
        MessageId(3),
        Timestamp(u64::MAX),
        Timestamp(u64::MAX),
    );
    assert_eq!(
        published_as(t.claim(token(1), Timestamp(u64::MAX))),
        Some(3)
    );
    assert_eq!(t.pending, 0);
}

/// docs/OPERATIONS.md states the table's memory from these sizes: 32 bytes a token in
/// the hash map (plus a control byte and up to half its buckets empty), 24 in the age
/// queue; a full default table measured 90 MiB.
#[test]
fn the_table_costs_what_the_docs_say() {
    assert_eq!(std::mem::size_of::<(PublishToken, Slot)>(), 32);
    assert_eq!(std::mem::size_of::<(u64, PublishToken)>(), 24);
}

#[test]
fn a_dropped_claim_abandons_and_a_waiter_then_publishes_itself() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tokens = Tokens::new(TokenLimits::default());
        let first = tokens.claim(token(1)).await.expect("new");
        let again = tokens.clone();
        let waiter = tokio::spawn(async move { again.claim(token(1)).await.map(|c| c.token()) });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "waits while the first is pending");
        drop(first);
        assert_eq!(waiter.await.expect("task"), Ok(token(1)), "claims it anew");
        // That claim was dropped too: the token is free again, and then published.
        let claimed = tokens.claim(token(1)).await.expect("new");
        claimed.published(MessageId(5), Timestamp::from_system_time(SystemTime::now()));
        assert_eq!(tokens.table().counts().held, 1);
        assert_eq!(
            tokens.claim(token(1)).await.map(|c| c.token()),
            Err(MessageId(5))
        );
    });
}

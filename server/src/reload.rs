//! What a running server takes on without a restart, and how it is told.
//!
//! The owner of a server (`mboard-server` on SIGHUP) sends a new [`Reloadable`] through a
//! [`tokio::sync::watch`] channel given to [`crate::run_reloading`]; the server applies
//! each change from the next datagram on. A setting becomes reloadable by a field here
//! and a line in `apply`, which is handed everything the server shares.

use tokio::sync::watch;

use crate::board::{BoardError, Retention};
use crate::config::{Config, ConfigError, Store};
use crate::limiter::{RateLimit, RateLimiter};

/// The settings a running server changes when told to.
#[derive(Debug, Clone, PartialEq)]
pub struct Reloadable {
    /// Per-source rate limit on incoming datagrams ([`Config::rate_limit`]).
    pub rate_limit: RateLimit,
    /// Per-destination limit on replies to malformed input ([`Config::error_limit`]).
    pub error_limit: RateLimit,
    /// What the board keeps ([`Config::retention`]).
    pub retention: Retention,
}

/// Where a server hears of new [`Reloadable`] settings.
pub type Reloads = watch::Receiver<Reloadable>;

impl Config {
    /// The settings of this configuration that a running server can take on.
    pub fn reloadable(&self) -> Reloadable {
        Reloadable {
            rate_limit: self.rate_limit,
            error_limit: self.error_limit,
            retention: self.retention,
        }
    }

    /// The settings of `next` (already validated) that a server started with this
    /// configuration can take on, or why it cannot take them on while it runs.
    pub fn reload_to(&self, next: &Config) -> Result<Reloadable, ConfigError> {
        let started_timed = self.retention.age.is_some();
        if matches!(self.store, Store::Journal(_)) && !started_timed && next.retention.age.is_some()
        {
            // The journal's index keeps publish times only under an age limit.
            return Err(ConfigError::RetainAgeReload);
        }
        if matches!(self.store, Store::Clustered(_)) && next.retention != self.retention {
            // The stream's limits are shared by every server on it: one server's reload
            // must not change them for all, nor trim its replica below what they keep.
            return Err(ConfigError::ClusteredRetentionReload);
        }
        Ok(next.reloadable())
    }
}

/// A channel that never changes: for a server nobody reloads.
pub(crate) fn fixed(settings: Reloadable) -> Reloads {
    let (_, reloads) = watch::channel(settings);
    reloads
}

/// Hands new retention limits to the board (whatever its type).
pub(crate) type SetRetention = Box<dyn Fn(Retention) -> Result<(), BoardError> + Send + Sync>;

/// What reloading reaches in a running server.
pub(crate) struct Targets {
    pub(crate) limiter: std::sync::Arc<RateLimiter>,
    pub(crate) errors: std::sync::Arc<RateLimiter>,
    pub(crate) retention: SetRetention,
}

impl Targets {
    /// Applies `settings`; the board hears only of limits that changed from `before`, so
    /// that reloading the rate limit does not wake its trimming.
    fn apply(&self, before: &Reloadable, settings: &Reloadable) -> Result<(), BoardError> {
        self.limiter.set_limit(settings.rate_limit);
        self.errors.set_limit(settings.error_limit);
        if settings.retention != before.retention {
            (self.retention)(settings.retention)?;
        }
        Ok(())
    }
}

/// Applies every change sent on `reloads` to a server started with `first`, for as long
/// as it runs.
///
/// Never returns: the server's tasks end it when it stops, and a sender that is gone
/// (nobody will reload) leaves the settings as they are.
pub(crate) async fn apply_reloads(
    mut reloads: Reloads,
    first: Reloadable,
    targets: Targets,
) -> std::io::Result<()> {
    let mut applied = first;
    while reloads.changed().await.is_ok() {
        let mut settings = reloads.borrow_and_update().clone();
        if let Err(e) = targets.apply(&applied, &settings) {
            // Checked before it was sent, so only a store that cannot change its limits
            // (or whose writer has stopped) gets here: it keeps the ones it has.
            tracing::error!(
                "reload: retention not changed, the board keeps its limits: {}",
                e
            );
            settings.retention = applied.retention;
        }
        tracing::debug!(?settings, "reloaded settings applied");
        applied = settings;
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::board::JournalConfig;

    /// Targets whose board records each retention it is given, and refuses `refuse`.
    fn targets(
        config: &Config,
        refuse: Option<Retention>,
    ) -> (Targets, Arc<Mutex<Vec<Retention>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let targets = Targets {
            limiter: Arc::new(RateLimiter::new(config.rate_limit)),
            errors: Arc::new(RateLimiter::new(config.error_limit)),
            retention: Box::new(move |retention| {
                if Some(retention) == refuse {
                    return Err(BoardError::Unsupported(
                        "change its retention while it runs",
                    ));
                }
                record.lock().expect("lock").push(retention);
                Ok(())
            }),
        };
        (targets, seen)
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "{what} never happened");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn keep(messages: u64) -> Retention {
        Retention {
            messages: Some(messages),
            ..Retention::UNLIMITED
        }
    }

    #[tokio::test]
    async fn changes_reach_the_limiters_and_a_dropped_sender_changes_nothing() {
        let config = Config::default();
        let (tx, rx) = watch::channel(config.reloadable());
        let (targets, seen) = targets(&config, None);
        let (limiter, errors) = (targets.limiter.clone(), targets.errors.clone());
        let task = tokio::spawn(apply_reloads(rx, config.reloadable(), targets));
        let tight = RateLimit {
            rate: 1.0,
            burst: 1.0,
            max_sources: 10,
        };
        tx.send(Reloadable {
            rate_limit: tight,
            error_limit: RateLimit {
                rate: 0.0,
                ..RateLimit::ERROR_REPLIES
            },
            retention: config.retention,
        })
        .expect("send");
        until("the change", || limiter.limit() == tight).await;
        assert_eq!(errors.limit().rate, 0.0);
        assert!(
            seen.lock().expect("lock").is_empty(),
            "the board hears of its limits only when they change"
        );
        let from = SocketAddr::from(([192, 0, 2, 1], 9));
        let now = Instant::now();
        assert!(limiter.allow(from, now) && !limiter.allow(from, now));
        drop(tx);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!task.is_finished(), "the task outlives its sender");
        assert_eq!(limiter.limit(), tight);
        task.abort();
    }

    #[tokio::test]
    async fn new_limits_reach_the_board_and_a_refused_change_leaves_the_old_ones() {
        let config = Config::default();
        let (tx, rx) = watch::channel(config.reloadable());
        let (targets, seen) = targets(&config, Some(keep(1)));
        let task = tokio::spawn(apply_reloads(rx, config.reloadable(), targets));
        let with = |retention| Reloadable {
            retention,
            ..config.reloadable()
        };
        tx.send(with(keep(10))).expect("send");
        until("the first change", || seen.lock().expect("lock").len() == 1).await;
        tx.send(with(keep(1))).expect("send");
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The board kept 10 after refusing 1: going back to 10 is no change for it, and
        // another value is.
        tx.send(with(keep(10))).expect("send");
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(with(keep(20))).expect("send");
        until("the second change", || {
            seen.lock().expect("lock").len() == 2
        })
        .await;
        assert_eq!(*seen.lock().expect("lock"), [keep(10), keep(20)]);
        task.abort();
    }

    #[test]
    fn an_age_limit_is_refused_only_on_a_journal_started_without_one() {
        let age = |age: Option<u64>, store: Store| Config {
            store,
            retention: Retention {
                age: age.map(Duration::from_secs),
                ..Retention::UNLIMITED
            },
            ..Config::default()
        };
        let journal = || Store::Journal(JournalConfig::new("data".into()));
        let started = age(None, journal());
        assert_eq!(
            started.reload_to(&age(Some(60), journal())),
            Err(ConfigError::RetainAgeReload)
        );
        let counted = Config {
            retention: keep(5),
            ..started.clone()
        };
        assert_eq!(
            started.reload_to(&counted).map(|r| r.retention),
            Ok(keep(5))
        );
        let timed = age(Some(60), journal());
        assert!(timed.reload_to(&age(Some(5), journal())).is_ok());
        assert!(timed.reload_to(&age(None, journal())).is_ok());
        let memory = age(None, Store::Memory);
        assert!(memory.reload_to(&age(Some(5), Store::Memory)).is_ok());
        let clustered = || Store::Clustered(crate::ClusterConfig::new(vec!["nats://a".into()]));
        let started = age(Some(60), clustered());
        assert_eq!(
            started.reload_to(&age(Some(5), clustered())),
            Err(ConfigError::ClusteredRetentionReload)
        );
        assert!(started.reload_to(&age(Some(60), clustered())).is_ok());
    }
}

//! What a running server takes on without a restart, and how it is told.
//!
//! The owner of a server (`mboard-server` on SIGHUP) sends a new [`Reloadable`] through a
//! [`tokio::sync::watch`] channel given to [`crate::run_reloading`]; the server applies
//! each change from the next datagram on. A setting becomes reloadable by a field here
//! and a line in `apply`, which is handed everything the server shares.

use tokio::sync::watch;

use crate::config::Config;
use crate::limiter::{RateLimit, RateLimiter};

/// The settings a running server changes when told to.
#[derive(Debug, Clone, PartialEq)]
pub struct Reloadable {
    /// Per-source rate limit on incoming datagrams ([`Config::rate_limit`]).
    pub rate_limit: RateLimit,
    /// Per-destination limit on replies to malformed input ([`Config::error_limit`]).
    pub error_limit: RateLimit,
}

/// Where a server hears of new [`Reloadable`] settings.
pub type Reloads = watch::Receiver<Reloadable>;

impl Config {
    /// The settings of this configuration that a running server can take on.
    pub fn reloadable(&self) -> Reloadable {
        Reloadable {
            rate_limit: self.rate_limit,
            error_limit: self.error_limit,
        }
    }
}

/// A channel that never changes: for a server nobody reloads.
pub(crate) fn fixed(settings: Reloadable) -> Reloads {
    let (_, reloads) = watch::channel(settings);
    reloads
}

/// What reloading reaches in a running server.
pub(crate) struct Targets {
    pub(crate) limiter: std::sync::Arc<RateLimiter>,
    pub(crate) errors: std::sync::Arc<RateLimiter>,
}

impl Targets {
    fn apply(&self, settings: &Reloadable) {
        self.limiter.set_limit(settings.rate_limit);
        self.errors.set_limit(settings.error_limit);
    }
}

/// Applies every change sent on `reloads`, for as long as the server runs.
///
/// Never returns: the server's tasks end it when it stops, and a sender that is gone
/// (nobody will reload) leaves the settings as they are.
pub(crate) async fn apply_reloads(mut reloads: Reloads, targets: Targets) -> std::io::Result<()> {
    while reloads.changed().await.is_ok() {
        let settings = reloads.borrow_and_update().clone();
        targets.apply(&settings);
        tracing::debug!(?settings, "reloaded settings applied");
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn changes_reach_the_limiters_and_a_dropped_sender_changes_nothing() {
        let config = Config::default();
        let (tx, rx) = watch::channel(config.reloadable());
        let targets = Targets {
            limiter: Arc::new(RateLimiter::new(config.rate_limit)),
            errors: Arc::new(RateLimiter::new(config.error_limit)),
        };
        let (limiter, errors) = (targets.limiter.clone(), targets.errors.clone());
        let task = tokio::spawn(apply_reloads(rx, targets));
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
        })
        .expect("send");
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while limiter.limit() != tight {
            assert!(Instant::now() < deadline, "the change never arrived");
            tokio::task::yield_now().await;
        }
        assert_eq!(errors.limit().rate, 0.0);
        let from = SocketAddr::from(([192, 0, 2, 1], 9));
        let now = Instant::now();
        assert!(limiter.allow(from, now) && !limiter.allow(from, now));
        drop(tx);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!task.is_finished(), "the task outlives its sender");
        assert_eq!(limiter.limit(), tight);
        task.abort();
    }
}

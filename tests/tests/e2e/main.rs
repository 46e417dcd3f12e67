//! End-to-end tests over real sockets and the real binaries, one module per area.
//!
//! One binary, so that the workspace links once for all of them. Its tests run as threads
//! side by side; each takes [`mboard_tests::gate`] first, so that the ones that load the
//! machine run alone.

mod amplification;
mod bench;
mod classic;
mod cli_habits;
mod client;
mod clustered;
mod conformance;
mod durable;
mod follow;
mod metrics;
mod metrics_fairness;
mod publish_once;
mod rate_limit;
mod reflection;
mod sessions;
mod slow;
mod soak;

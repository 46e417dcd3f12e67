//! End-to-end tests over real sockets and the real binaries, one module per area.
//!
//! One binary, so that the workspace links once for all of them. Its tests run as threads
//! side by side; each takes [`mboard_tests::gate`] first, so that the ones that load the
//! machine run alone.

mod amplification;
mod batching;
mod batching_attacks;
mod bench;
mod classic;
mod cli_habits;
mod client;
mod client_follow;
mod client_pages;
mod client_publish;
mod clustered;
mod clustered_bench;
mod clustered_failover;
mod clustered_reads;
mod clustered_stream;
mod clustered_tls;
mod conformance;
mod disk;
mod durable;
mod flood;
mod follow;
mod hog;
mod lockout;
mod memory_return;
mod metrics;
mod metrics_fairness;
mod operations;
mod publish_once;
mod rate_limit;
mod reflection;
mod retention;
mod sessions;
mod slow;
mod soak;

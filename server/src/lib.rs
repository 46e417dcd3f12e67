//! The mboard server: board store, session manager, request handler and UDP driver.
//!
//! [`run`] is the one entry point: the binary and the end-to-end tests both start the
//! server through it.
#![warn(missing_docs)]

pub mod board;
pub mod config;
pub mod handler;
mod held;
pub mod limiter;
pub mod metrics;
mod reply;
mod server;
pub mod session;

pub use board::{Fsync, JournalConfig, Retention, TokenLimits};
pub use config::{Config, ConfigError, Limits, Store};
pub use held::{HoldCounts, Wake, WakeCause};
pub use limiter::RateLimit;
pub use metrics::EndpointLimits;
pub use reply::Reply;
pub use server::{Listeners, ServerError, run, serve};

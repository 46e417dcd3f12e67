//! The mboard server: board store, session manager, request handler and UDP driver.
//!
//! [`run`] is the one entry point: the binary and the end-to-end tests both start the
//! server through it.
#![warn(missing_docs)]

pub mod board;
pub mod config;
pub mod handler;
pub mod journal;
pub mod limiter;
pub mod metrics;
mod reply;
mod server;
pub mod session;

pub use config::{Config, ConfigError, Limits, Store};
pub use journal::{Fsync, JournalConfig};
pub use limiter::RateLimit;
pub use reply::Reply;
pub use server::{Listeners, ServerError, run, serve};

//! The mboard server: board store, session manager, request handler and UDP driver.
//!
//! [`run`] is the one entry point: the end-to-end tests start the server through it, and
//! the binary through [`run_reloading`], which is `run` taking on new settings on SIGHUP.
#![warn(missing_docs)]

mod access;
pub mod board;
pub mod config;
pub mod handler;
mod held;
pub mod limiter;
pub mod metrics;
mod overload;
pub mod reload;
mod reply;
mod server;
pub mod session;

pub use board::{Fsync, JournalConfig, Retention, TokenLimits};
pub use config::{Config, ConfigError, Limits, Store};
pub use held::{HoldCounts, Wake, WakeCause};
pub use limiter::RateLimit;
pub use metrics::EndpointLimits;
pub use overload::Shedding;
pub use reload::{Reloadable, Reloads};
pub use reply::Reply;
pub use server::{Listeners, ServerError, run, run_reloading, serve, set_receive_buffer};
pub use session::Fairness;

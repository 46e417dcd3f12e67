//! The mboard server: board store, session manager, request handler and UDP driver.
//!
//! [`run`] is the one entry point: the end-to-end tests start the server through it, and
//! the binary through [`run_reloading`], which is `run` taking on new settings on SIGHUP.
//! [`serve`] answers through a [`Handler`] over any [`Board`], which is how the tests
//! put a store of their own (slow, or speaking an older protocol) behind a real socket.
//!
//! Every module is private: what is public is re-exported here, and is what the binary
//! and the end-to-end tests need. The fuzz targets reach the sans-IO session
//! manager through `fuzzing`, which exists only in builds with `--cfg fuzzing`.
#![warn(missing_docs)]

mod access;
mod board;
mod config;
mod handler;
mod held;
mod limiter;
mod metrics;
mod overload;
mod queue_watch;
mod reload;
mod reply;
mod server;
mod session;

pub use board::{
    Board, BoardError, ClusterConfig, ClusterError, Fsync, JournalConfig, MemoryBoard, NatsAuth,
    NatsTls, Published, Refusal, Retention, Secret, Span, Status, StoreState, TokenCounts,
    TokenLimits,
};
pub use config::{
    Config, ConfigError, IO_BATCH, IO_BATCH_MAX, Limits, MEMORY_RETAIN_BYTES, Store, parse_size,
};
pub use handler::Handler;
pub use limiter::RateLimit;
pub use metrics::EndpointLimits;
pub use overload::Shedding;
pub use reload::{Reloadable, Reloads};
pub use server::{Listeners, ServerError, run, run_reloading, serve, set_receive_buffer};
pub use session::Fairness;

/// The internals the fuzz targets drive directly (`cargo fuzz` builds with `--cfg fuzzing`).
#[cfg(fuzzing)]
pub mod fuzzing {
    pub use crate::reply::Reply;
    pub use crate::session::{Outcome, SessionError, SessionManager, Stats};
}

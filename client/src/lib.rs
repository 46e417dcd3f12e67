//! The mboard client library: publish and read over UDP, correctly on a lossy network.
//!
//! [`Client`] speaks both protocol layers. Publishes are `5:` with a token of their own, so
//! a publish is stored exactly once even when replies are lost or the server restarts in
//! the middle (one datagram when it fits, an upload otherwise); download offers are
//! followed transparently. [`Client::since`] and [`Client::last_pages`] read the board in
//! pages of `6:`, and [`Client::follow`] follows it as messages are published. In classic
//! mode it speaks only `1:` `2:` `3:`, for servers that know nothing else. Retransmission
//! is driven by the sans-IO `engine::Transfer` under the limits of a
//! `deadline::Deadline`; reading in pages by the sans-IO `page` types.
//!
//! Every module is private: what is public is re-exported here, and is what the
//! `mboard-client` binary ([`run_cli`]), the bench and the end-to-end tests use.
#![warn(missing_docs)]

mod cli;
mod client;
mod deadline;
mod engine;
mod error;
mod link;
mod output;
mod page;
mod rtt;
mod servers;
mod target;

pub use cli::main as run_cli;

pub use client::{
    Client, ClientConfig, Follow, FollowEvent, INTERRUPT_CHECK, Interrupt, PROGRESS_THRESHOLD,
    Page, Pages, Progress, Start, WAIT, Warn,
};
pub use error::ClientError;
pub use output::json_string;
pub use servers::Servers;
pub use target::{DEFAULT_PORT, Target, resolve, resolve_all};

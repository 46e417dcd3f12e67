//! The mboard client library: publish and read over UDP, correctly on a lossy network.
//!
//! [`Client`] speaks both protocol layers. Publishes are `5:` with a token of their own, so
//! a publish is stored exactly once even when replies are lost or the server restarts in
//! the middle (one datagram when it fits, an upload otherwise); download offers are
//! followed transparently. [`Client::since`] and [`Client::last_pages`] read the board in
//! pages of `6:`, and [`Client::follow`] follows it as messages are published. In classic
//! mode it speaks only `1:` `2:` `3:`, for servers that know nothing else. Retransmission
//! is driven by the sans-IO [`engine::Transfer`] under the limits of a
//! [`deadline::Deadline`]; reading in pages by the sans-IO [`page`] types.
#![warn(missing_docs)]

pub mod cli;
mod client;
pub mod deadline;
pub mod engine;
mod error;
mod link;
pub mod output;
pub mod page;
pub mod rtt;
pub mod servers;
pub mod target;

pub use client::{
    Client, ClientConfig, Follow, FollowEvent, INTERRUPT_CHECK, Interrupt, PROGRESS_THRESHOLD,
    Page, Pages, Progress, Start, WAIT, Warn,
};
pub use error::ClientError;
pub use servers::Servers;
pub use target::{DEFAULT_PORT, Target, resolve, resolve_all};

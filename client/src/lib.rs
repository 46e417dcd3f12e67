//! The mboard client library: publish and read over UDP, correctly on a lossy network.
//!
//! [`Client`] speaks both protocol layers. Publishes go through an upload session, so a
//! publish is stored exactly once even when replies are lost; download offers are followed
//! transparently. In classic mode it speaks only `1:` `2:` `3:`, for servers that know
//! nothing else. Retransmission is driven by the sans-IO [`engine::Transfer`] under the
//! limits of a [`deadline::Deadline`].
#![warn(missing_docs)]

pub mod cli;
mod client;
pub mod deadline;
pub mod engine;
mod error;
mod link;
pub mod output;
pub mod rtt;
pub mod servers;
pub mod target;

pub use client::{Client, ClientConfig, PROGRESS_THRESHOLD, Progress};
pub use error::ClientError;
pub use servers::Servers;
pub use target::{DEFAULT_PORT, Target, resolve, resolve_all};

//! The mboard client library: publish and read over UDP, correctly on a lossy network.
//!
//! [`Client`] speaks both protocol layers. Publishes always go through an upload session, so
//! a publish is stored exactly once even when replies are lost. Download offers are
//! followed transparently. Retransmission is driven by the sans-IO [`engine::Transfer`].
#![warn(missing_docs)]

mod client;
pub mod engine;
pub mod output;
pub mod rtt;

pub use client::{Client, ClientConfig, ClientError, PROGRESS_THRESHOLD, Progress, resolve};

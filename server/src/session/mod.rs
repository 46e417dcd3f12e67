//! The session manager: sans-IO state for uploads, cached commits and downloads.
//!
//! Fed `(now, source, request)`, it says in typed values what to answer ([`Outcome`]);
//! the caller owns the socket, the clock and the encoding. That keeps loss, duplication,
//! reordering and expiry testable on a manual clock, without sleeping.
//!
//! Memory is accounted as *reservations*: an upload reserves its size at its first block,
//! a download before its response is built. Claimed sessions count against their host's
//! share too, and when the server is full, sessions nobody has used yet give way, then
//! sessions that move slower than the progress floor.

mod budget;
mod compact;
mod error;
#[cfg(test)]
mod evict_tests;
mod expiry;
#[cfg(test)]
mod fair_tests;
mod fairness;
mod hosts;
#[cfg(test)]
mod loan_tests;
mod loans;
mod manager;
#[cfg(test)]
mod memo_tests;
mod reclaim;
mod room;
#[cfg(test)]
mod room_tests;
#[cfg(test)]
mod slow_tests;
#[cfg(test)]
mod tests;
mod unclaimed;
mod upload;
mod validated;

// `pub` rather than `pub(crate)` for what `crate::fuzzing` re-exports.
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub use error::SessionError;
pub use fairness::Fairness;
pub(crate) use hosts::HostKey;
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub use manager::{Outcome, SessionManager, Stats};

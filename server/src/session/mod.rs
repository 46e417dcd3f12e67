//! The session manager: sans-IO state for uploads, cached commits and downloads.
//!
//! Fed `(now, source, request)`, it says in typed values what to answer ([`Outcome`]);
//! the caller owns the socket, the clock and the encoding. That keeps loss, duplication,
//! reordering and expiry testable on a manual clock, without sleeping.
//!
//! Memory is accounted as *reservations*: an upload reserves its size at its first block,
//! a download before its response is built, and sessions nobody has used yet give way
//! when the server is full.

mod budget;
mod error;
mod expiry;
mod manager;
#[cfg(test)]
mod tests;
mod upload;
mod validated;

pub use budget::Reservation;
pub use error::SessionError;
pub use manager::{Outcome, SessionManager, Stats};

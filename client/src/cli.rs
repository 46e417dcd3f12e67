//! The `mboard-client` command line: arguments, running a command, and what a terminal gets.
//!
//! The binary is a thin `main` over [`main`]; the argument definitions live here, in the
//! library, so that completions and man pages are generated from the same [`Args`].

mod args;
pub(crate) mod manual;
mod progress;
mod read;
mod run;
mod term;

pub(crate) use args::{Args, Command};
pub use run::main;

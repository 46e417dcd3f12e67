//! The binary's own parts (declared by `main.rs`, not by the library): options layered
//! over the environment and a config file, logging, SIGHUP, man page and completions.

pub(crate) mod args;
pub(crate) mod config;
mod logging;
mod manual;
mod nats;
mod options;
mod reload;

use std::path::Path;

pub(crate) use logging::Logging;
pub(crate) use manual::Packaging;
pub(crate) use nats::NatsArgs;
pub(crate) use options::Options;
pub(crate) use reload::{Loaded, Reloader};

/// The `--help` heading of the options that SIGHUP reloads from the config file; SIGHUP
/// tells them apart by it.
pub(crate) const RELOADED: &str = "Reloaded from the config file on SIGHUP";

/// Checks a log filter as `--log-level` takes it, so that a bad one in the config file is
/// refused with the file's other errors, naming its key.
pub(crate) fn log_filter(spec: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(spec)
        .map(|_| spec.to_owned())
        .map_err(|e| e.to_string())
}

/// An error and its causes in one line, each cause once: some errors repeat their cause
/// in their own message, and it is not worth saying twice.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// Refuses a data directory that is something else, before the journal tries to create
/// files in it.
pub(crate) fn check_data_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            anyhow::bail!("data directory {} is not a directory", dir.display())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Repeats {
        path: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(Repeats {
            path: "/x",
            source: io,
        })
        .context("cannot open");
        assert_eq!(one_line(&e), "cannot open: /x: entity not found");
    }

    #[test]
    fn a_data_directory_that_is_a_file_is_refused() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let message = check_data_dir(file.path()).expect_err("a file").to_string();
        assert!(message.ends_with("is not a directory"), "{message}");
        assert!(check_data_dir(file.path().parent().expect("dir")).is_ok());
        assert!(check_data_dir(Path::new("/nonexistent/created-later")).is_ok());
    }
}

//! Logging to standard error, with a filter that SIGHUP can replace.

use std::io::IsTerminal;

use anyhow::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The installed logger, and the handle that replaces its filter.
pub(crate) struct Logging {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The filter in force, as written.
    current: String,
}

/// The filter `--log-level` gives, else `$RUST_LOG`, else `info`.
fn spec(level: Option<&str>) -> String {
    match level {
        Some(level) => level.to_owned(),
        None => std::env::var("RUST_LOG")
            .ok()
            .filter(|v| EnvFilter::try_new(v).is_ok())
            .unwrap_or_else(|| "info".to_owned()),
    }
}

impl Logging {
    /// Installs the logger for the whole process.
    pub(crate) fn init(level: Option<&str>) -> anyhow::Result<Logging> {
        let current = spec(level);
        let filter = EnvFilter::try_new(&current).context("bad --log-level")?;
        let (filter, handle) = reload::Layer::new(filter);
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init()
            .context("cannot install the logger")?;
        Ok(Logging { handle, current })
    }

    /// Replaces the filter, if `level` changes it.
    pub(crate) fn set(&mut self, level: Option<&str>) -> anyhow::Result<()> {
        let wanted = spec(level);
        if wanted != self.current {
            let filter = EnvFilter::try_new(&wanted).context("bad log level")?;
            self.handle
                .reload(filter)
                .context("cannot replace the log filter")?;
            self.current = wanted;
        }
        Ok(())
    }
}

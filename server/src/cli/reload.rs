//! SIGHUP: read the config file again and take on what can change without a restart.

use anyhow::Context;
use clap::ArgMatches;
use mboard_server::{Config, Reloadable, Reloads};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::logging::Logging;
use super::options::{Options, Value};
use super::{RELOADED, one_line};

/// What a reload needs from the options: the configuration they give, checked, and the
/// log filter.
pub(crate) struct Loaded {
    pub(crate) config: Config,
    pub(crate) log_level: Option<String>,
}

/// Reloads the config file on SIGHUP, for as long as the process runs.
pub(crate) struct Reloader<F> {
    /// The options the server started with: what takes a restart is compared with them.
    started: Options,
    /// The options last taken on.
    applied: Options,
    /// The configuration the server started with: what a reload can change depends on it.
    first: Config,
    logging: Logging,
    settings: watch::Sender<Reloadable>,
    load: F,
}

impl<F> Reloader<F>
where
    F: FnMut(&ArgMatches) -> anyhow::Result<Loaded> + Send + 'static,
{
    /// A reloader starting from `options` (which gave `config`), and where the server
    /// hears of what it reloads.
    pub(crate) fn new(
        options: Options,
        logging: Logging,
        config: &Config,
        load: F,
    ) -> (Reloads, Self) {
        let (settings, reloads) = watch::channel(config.reloadable());
        let reloader = Reloader {
            started: options.clone(),
            applied: options,
            first: config.clone(),
            logging,
            settings,
            load,
        };
        (reloads, reloader)
    }

    /// Handles every SIGHUP from now on (called before the socket is served, so that an
    /// early SIGHUP does not kill the server by the default action).
    #[cfg(unix)]
    pub(crate) fn listen(mut self) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                self.reload();
            }
        });
        Ok(())
    }

    /// No SIGHUP here: nothing to listen for.
    #[cfg(not(unix))]
    pub(crate) fn listen(self) -> anyhow::Result<()> {
        Ok(())
    }

    fn reload(&mut self) {
        let Some(path) = self.applied.file().map(|p| p.display().to_string()) else {
            info!("SIGHUP: started without --config, so there is nothing to reload");
            return;
        };
        match self.try_reload() {
            Ok(Changes { applied, restart }) => {
                if applied.is_empty() {
                    info!(file = %path, "SIGHUP: config file reloaded, no reloadable option changed");
                } else {
                    info!(file = %path, changed = %applied.join(", "), "SIGHUP: config file reloaded");
                }
                if !restart.is_empty() {
                    warn!(
                        file = %path,
                        changed = %restart.join(", "),
                        "SIGHUP: these changes take a restart; the server keeps running with the values it started with"
                    );
                }
            }
            Err(e) => error!(
                file = %path,
                "SIGHUP: config file not reloaded, nothing changed: {}",
                one_line(&e)
            ),
        }
    }

    fn try_reload(&mut self) -> anyhow::Result<Changes> {
        let newer = self.applied.reread()?;
        let loaded = (self.load)(newer.matches())?;
        let settings = self.first.reload_to(&loaded.config)?;
        self.logging.set(loaded.log_level.as_deref())?;
        self.settings.send_if_modified(|current| {
            let changed = *current != settings;
            *current = settings;
            changed
        });
        let changes = Changes::between(
            &self.started.values(),
            &self.applied.values(),
            &newer.values(),
        );
        self.applied = newer;
        Ok(changes)
    }
}

/// What a reload changed, as `name: before → after`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Changes {
    /// Reloadable options, changed since the last reload.
    applied: Vec<String>,
    /// Other options, different from what the server started with.
    restart: Vec<String>,
}

impl Changes {
    fn between(started: &[Value], applied: &[Value], newer: &[Value]) -> Changes {
        let mut changes = Changes::default();
        let was = |list: &[Value], name: &str| {
            list.iter()
                .find(|v| v.name == name)
                .and_then(|v| v.value.clone())
        };
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".to_owned());
        for now in newer {
            let reloadable = now.heading.as_deref() == Some(RELOADED);
            let before = was(if reloadable { applied } else { started }, &now.name);
            if before != now.value {
                let line = format!("{}: {} → {}", now.name, show(&before), show(&now.value));
                if reloadable {
                    changes.applied.push(line);
                } else {
                    changes.restart.push(line);
                }
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(name: &str, value: Option<&str>, reloadable: bool) -> Value {
        Value {
            name: name.to_owned(),
            value: value.map(str::to_owned),
            heading: reloadable.then(|| RELOADED.to_owned()),
        }
    }

    #[test]
    fn reloadable_changes_apply_and_the_others_are_reported_until_restored() {
        let started = [
            value("rate-limit", Some("100"), true),
            value("listen", Some("a"), false),
        ];
        let newer = [
            value("rate-limit", Some("5"), true),
            value("listen", Some("b"), false),
        ];
        let changes = Changes::between(&started, &started, &newer);
        assert_eq!(changes.applied, ["rate-limit: 100 → 5"]);
        assert_eq!(changes.restart, ["listen: a → b"]);
        // Reloading the same file again: nothing new applied, the restart still pending.
        let again = Changes::between(&started, &newer, &newer);
        assert!(again.applied.is_empty());
        assert_eq!(again.restart, ["listen: a → b"]);
        let unset = [
            value("rate-limit", None, true),
            value("listen", Some("a"), false),
        ];
        let back = Changes::between(&started, &newer, &unset);
        assert_eq!(back.applied, ["rate-limit: 5 → (unset)"]);
        assert!(back.restart.is_empty());
    }
}

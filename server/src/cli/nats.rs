//! The clustered store's options (`--nats…`), flattened into the server's own.

use std::path::PathBuf;

use mboard_server::{ClusterConfig, NatsAuth, NatsTls, Secret};

/// How to reach NATS, and which stream to keep the board in.
///
/// Which options need which are checked by [`NatsArgs::check`], not by clap's `requires`:
/// the config file's values are checked one by one, where `requires` cannot hold.
#[derive(Debug, clap::Args)]
pub(crate) struct NatsArgs {
    /// Keep the board in a NATS JetStream stream shared by every server given the same
    /// NATS (comma-separated URLs, `nats://127.0.0.1:4222,nats://…`); reads come from a
    /// replica in memory. See docs/SCALING.md.
    #[arg(long, env = "MBOARD_NATS", value_name = "URL,…", value_delimiter = ',',
          conflicts_with_all = ["in_memory", "data_dir", "fsync", "segment_size", "shutdown_grace"])]
    pub(crate) nats: Vec<String>,

    /// The stream's name (its subject is `NAME.messages`).
    #[arg(
        long,
        env = "MBOARD_NATS_STREAM",
        value_name = "NAME",
        default_value = "mboard"
    )]
    nats_stream: String,

    /// Replicas of the stream when this server creates it (an existing stream is used as
    /// it is).
    #[arg(
        long,
        env = "MBOARD_NATS_REPLICAS",
        value_name = "N",
        default_value_t = 1
    )]
    nats_replicas: usize,

    /// User name for NATS (with --nats-password).
    #[arg(long, env = "MBOARD_NATS_USER", conflicts_with = "nats_token")]
    nats_user: Option<String>,

    /// Password for NATS (prefer the environment variable: arguments are visible to `ps`).
    #[arg(long, env = "MBOARD_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,

    /// Token for NATS (prefer the environment variable).
    #[arg(long, env = "MBOARD_NATS_TOKEN", hide_env_values = true)]
    nats_token: Option<String>,

    /// Use TLS towards NATS, trusting this PEM certificate authority.
    #[arg(long, env = "MBOARD_NATS_CA", value_name = "FILE")]
    nats_ca: Option<PathBuf>,

    /// PEM client certificate for NATS servers that verify clients (with --nats-key).
    #[arg(long, env = "MBOARD_NATS_CERT", value_name = "FILE")]
    nats_cert: Option<PathBuf>,

    /// PEM key of --nats-cert.
    #[arg(long, env = "MBOARD_NATS_KEY", value_name = "FILE")]
    nats_key: Option<PathBuf>,

    /// Require TLS towards NATS, trusting the system's certificate authorities.
    #[arg(long, env = "MBOARD_NATS_TLS")]
    nats_tls: bool,

    /// How long a publish waits for JetStream's acknowledgement before it is answered
    /// `4:storage unavailable` (keep it below the clients' timeout, 5 s by default).
    #[arg(
        long,
        env = "MBOARD_NATS_TIMEOUT",
        value_name = "DURATION",
        default_value_t = defaults().timeout.into()
    )]
    nats_timeout: humantime::Duration,

    /// How long start-up waits for NATS and JetStream to answer.
    #[arg(
        long,
        env = "MBOARD_NATS_CONNECT_TIMEOUT",
        value_name = "DURATION",
        default_value_t = defaults().connect_timeout.into()
    )]
    nats_connect_timeout: humantime::Duration,

    /// How long a `3:` for an id the stream has, but this server's replica has not
    /// received yet, waits for it before being answered `4`.
    #[arg(
        long,
        env = "MBOARD_NATS_CATCH_UP",
        value_name = "DURATION",
        default_value_t = defaults().catch_up.into()
    )]
    nats_catch_up: humantime::Duration,
}

/// The clustered store's defaults, written once in [`ClusterConfig::new`].
fn defaults() -> ClusterConfig {
    ClusterConfig::new(Vec::new())
}

impl NatsArgs {
    /// Whether the clustered store was chosen.
    pub(crate) fn chosen(&self) -> bool {
        !self.nats.is_empty()
    }

    /// Refuses options that need others which are not given, in one line.
    pub(crate) fn check(&self) -> Result<(), String> {
        let given = [
            ("--nats-user", self.nats_user.is_some()),
            ("--nats-password", self.nats_password.is_some()),
            ("--nats-token", self.nats_token.is_some()),
            ("--nats-ca", self.nats_ca.is_some()),
            ("--nats-cert", self.nats_cert.is_some()),
            ("--nats-key", self.nats_key.is_some()),
            ("--nats-tls", self.nats_tls),
        ];
        if !self.chosen()
            && let Some((name, _)) = given.iter().find(|(_, set)| *set)
        {
            return Err(format!("{name} needs --nats (the clustered store)"));
        }
        let pair = |a: (&str, bool), b: (&str, bool)| match (a.1, b.1) {
            (true, false) => Err(format!("{} needs {}", a.0, b.0)),
            (false, true) => Err(format!("{} needs {}", b.0, a.0)),
            _ => Ok(()),
        };
        pair(given[0], given[1])?;
        pair(given[4], given[5])
    }

    /// The clustered store's configuration.
    pub(crate) fn config(&self) -> ClusterConfig {
        let auth = match (&self.nats_user, &self.nats_password, &self.nats_token) {
            (Some(user), Some(password), _) => NatsAuth::UserPassword {
                user: user.clone(),
                password: Secret(password.clone()),
            },
            (_, _, Some(token)) => NatsAuth::Token(Secret(token.clone())),
            _ => NatsAuth::None,
        };
        ClusterConfig {
            servers: self.nats.clone(),
            stream: self.nats_stream.clone(),
            replicas: self.nats_replicas,
            auth,
            tls: NatsTls {
                require: self.nats_tls,
                ca: self.nats_ca.clone(),
                client: self.nats_cert.clone().zip(self.nats_key.clone()),
            },
            timeout: self.nats_timeout.into(),
            connect_timeout: self.nats_connect_timeout.into(),
            catch_up: self.nats_catch_up.into(),
        }
    }
}

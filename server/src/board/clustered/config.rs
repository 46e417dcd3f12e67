//! How to reach NATS and which stream to use: the `--nats…` options.

use std::path::PathBuf;
use std::time::Duration;

/// A secret (a password or token), kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// How the server authenticates to NATS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// A user and password (`authorization { user, password }` on the NATS side).
    UserPassword {
        /// The user name.
        user: String,
        /// Its password.
        password: Secret,
    },
    /// A token (`authorization { token }`).
    Token(Secret),
}

/// TLS towards NATS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// Require TLS even if the server does not ask for it (also implied by the others).
    pub require: bool,
    /// PEM file of the certificate authority the NATS servers' certificates chain to.
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key, for NATS servers that verify clients.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The clustered store's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:port`, `tls://…`); the client moves between them.
    pub servers: Vec<String>,
    /// The stream's name; its subject is `<name>.messages`.
    pub stream: String,
    /// Replicas of the stream, used only when this server creates it.
    pub replicas: usize,
    /// Credentials.
    pub auth: NatsAuth,
    /// TLS.
    pub tls: NatsTls,
    /// How long a publish waits for JetStream's acknowledgement (and any other request to
    /// NATS): past it, the publish is answered `4:storage unavailable`.
    pub timeout: Duration,
    /// How long start-up waits for NATS and its JetStream to answer.
    pub connect_timeout: Duration,
    /// How long a read of an id the stream has but this server's replica does not waits
    /// for the replica before it is answered `4`.
    pub catch_up: Duration,
}

impl ClusterConfig {
    /// Defaults for everything but the servers.
    pub fn new(servers: Vec<String>) -> Self {
        ClusterConfig {
            servers,
            stream: "mboard".into(),
            replicas: 1,
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(15),
            catch_up: Duration::from_secs(2),
        }
    }

    /// The stream's subject.
    pub fn subject(&self) -> String {
        format!("{}.messages", self.stream)
    }

    /// Why this configuration cannot work, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.servers.is_empty() || self.servers.iter().any(|s| s.trim().is_empty()) {
            return Some("--nats needs at least one NATS server URL".into());
        }
        let bad_name = self.stream.is_empty()
            || self
                .stream
                .chars()
                .any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace());
        if bad_name {
            return Some(format!(
                "--nats-stream {:?} is not a stream name (no dots, wildcards, slashes or spaces)",
                self.stream
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Some(format!(
                "--nats-replicas must be 1 to 5, not {}",
                self.replicas
            ));
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() || self.catch_up.is_zero() {
            return Some("--nats-timeout, --nats-connect-timeout and --nats-catch-up must be longer than zero".into());
        }
        None
    }
}

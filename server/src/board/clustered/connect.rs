//! Start-up: connecting to NATS, waiting for JetStream, creating or checking the stream.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, ErrorCode, context::GetStreamErrorKind};
use async_nats::{ConnectOptions, Event};
use tracing::{debug, info, warn};

use super::stream::{self, Needs};
use super::{ClusterConfig, ClusterError, NatsAuth};

/// Longest pause between reconnection attempts: a restarted NATS is found within it.
const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// How long one JetStream request waits while JetStream may still be electing a leader
/// (it answers nothing at all meanwhile), before it is asked again.
const PROBE: Duration = Duration::from_millis(300);

fn options(config: &ClusterConfig) -> ConnectOptions {
    let mut options = ConnectOptions::new()
        .name("mboard-server")
        .connection_timeout(config.timeout)
        .request_timeout(Some(config.timeout))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis(50 << attempt.min(4)).min(MAX_RECONNECT_DELAY)
        })
        .event_callback(|event| async move {
            match event {
                Event::Connected => info!("connected to NATS"),
                Event::Disconnected => {
                    warn!("disconnected from NATS: publishes are refused until it is back")
                }
                Event::ClientError(e) => warn!(error = %e, "NATS client error"),
                other => info!(event = %other, "NATS"),
            }
        });
    options = match &config.auth {
        NatsAuth::None => options,
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.0.clone())
        }
        NatsAuth::Token(token) => options.token(token.0.clone()),
    };
    let tls = &config.tls;
    if let Some(ca) = &tls.ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &tls.client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if tls.require || tls.ca.is_some() || tls.client.is_some() {
        options = options.require_tls(true);
    }
    options
}

/// Connects, and returns the stream to use once JetStream has answered.
pub(super) async fn connect(
    config: &ClusterConfig,
    needs: &Needs,
) -> Result<
    (
        async_nats::Client,
        jetstream::Context,
        jetstream::stream::Stream,
    ),
    ClusterError,
> {
    let client = dial(config).await?;
    stream::check_payload(client.server_info().max_payload, needs)?;
    let js = jetstream::ContextBuilder::new()
        .timeout(config.timeout)
        .build(client.clone());
    let stream = open_stream(config, needs, &client, &js).await?;
    Ok((client, js, stream))
}

/// A start-up failure, naming the servers it was against.
fn failed(config: &ClusterConfig, reason: String) -> ClusterError {
    ClusterError::Connect {
        servers: config.servers.join(","),
        reason,
    }
}

/// The NATS connection, within `--nats-connect-timeout` so a wrong address fails start-up
/// rather than hanging it.
async fn dial(config: &ClusterConfig) -> Result<async_nats::Client, ClusterError> {
    let urls: Vec<async_nats::ServerAddr> = config
        .servers
        .iter()
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|e| failed(config, format!("{s:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    tokio::time::timeout(config.connect_timeout, options(config).connect(urls))
        .await
        .map_err(|_| {
            failed(
                config,
                format!(
                    "no answer within {}",
                    humantime::format_duration(config.connect_timeout)
                ),
            )
        })?
        .map_err(|e| failed(config, e.to_string()))
}

/// The board's stream, found or created: asked again until the connect timeout while
/// JetStream elects its leader (it answers nothing meanwhile) or another server is
/// creating the same stream.
async fn open_stream(
    config: &ClusterConfig,
    needs: &Needs,
    client: &async_nats::Client,
    js: &jetstream::Context,
) -> Result<jetstream::stream::Stream, ClusterError> {
    let deadline = Instant::now() + config.connect_timeout;
    loop {
        let probe = jetstream::ContextBuilder::new()
            .timeout(PROBE)
            .build(client.clone());
        match tokio::time::timeout(PROBE, probe.get_stream(&needs.name)).await {
            Ok(Ok(stream)) => return existing(stream, needs).await,
            Ok(Err(e)) if not_found(e.kind()) => match js.create_stream(needs.config()).await {
                Ok(created) => {
                    info!(stream = %needs.name, replicas = needs.replicas, "created the stream");
                    return Ok(created);
                }
                // Servers started together race to create it, and JetStream may still be
                // placing it: look again (and check what another server created).
                Err(e) if Instant::now() < deadline => {
                    debug!(error = %e, "cannot create the stream yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(ClusterError::Stream(format!(
                        "cannot create stream {}: {e}",
                        needs.name
                    )));
                }
            },
            // No answer yet (JetStream electing its leader), or a transient error.
            Ok(Err(_)) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => return Err(failed(config, format!("jetstream: {e}"))),
            Err(_) => {
                return Err(failed(
                    config,
                    format!(
                        "jetstream did not answer within {} (is it enabled on the NATS servers?)",
                        humantime::format_duration(config.connect_timeout)
                    ),
                ));
            }
        }
    }
}

/// An existing stream, if it is one this board can use: another server's (or an earlier
/// run's) settings must match ours, and a stream with holes cannot be read as a board.
async fn existing(
    mut stream: jetstream::stream::Stream,
    needs: &Needs,
) -> Result<jetstream::stream::Stream, ClusterError> {
    let info = stream
        .info()
        .await
        .map_err(|e| ClusterError::Stream(format!("cannot read stream {}: {e}", needs.name)))?;
    let have = info.config.clone();
    needs.check(&have)?;
    stream::check_holes(&needs.name, info.state.deleted_count)?;
    info!(stream = %needs.name, replicas = have.num_replicas, "using the existing stream");
    Ok(stream)
}

fn not_found(kind: GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

//! The clustered store's baseline: JetStream's own publish rate, from `async-nats`, at the
//! same concurrency and with what mboard sends (three headers and a message id), each
//! publish awaiting its acknowledgement. It publishes to a stream of its own, created for
//! the run and deleted after it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;

use crate::report::{Report, Tally};
use crate::run::{Window, windows};
use crate::scenario::{self, Load, Scenario};

/// Publishes through JetStream at `nats` on a new stream of `replicas` for the run.
pub(crate) fn run(nats: &str, replicas: usize, load: &Load, size: usize) -> Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let urls: Vec<async_nats::ServerAddr> = nats
            .split(',')
            .map(|u| {
                u.trim()
                    .parse()
                    .with_context(|| format!("bad NATS URL {u:?}"))
            })
            .collect::<Result<_>>()?;
        let client = async_nats::connect(urls).await.context("connect to NATS")?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client);
        let name = format!("mboard-bench-{}", std::process::id());
        let subject = format!("{name}.messages");
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            num_replicas: replicas,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        js.create_stream(config)
            .await
            .with_context(|| format!("create stream {name}"))?;
        let window = Arc::new(Window::default());
        let text = Bytes::from(scenario::text(0, size));
        let tasks: Vec<_> = (0..load.clients)
            .map(|c| {
                let (js, subject, text, window) =
                    (js.clone(), subject.clone(), text.clone(), window.clone());
                tokio::spawn(async move { client_loop(c, &js, &subject, text, &window).await })
            })
            .collect();
        let timing = (load.clone(), window.clone());
        let seconds = tokio::task::spawn_blocking(move || windows(&timing.0, &timing.1)).await?;
        let mut all = Tally::default();
        for t in tasks {
            all.merge(t.await?);
        }
        let _ = js.delete_stream(&name).await;
        Ok(Report::new(
            load,
            &Scenario::JetStream { size },
            seconds,
            all,
        ))
    })
}

async fn client_loop(
    c: usize,
    js: &jetstream::Context,
    subject: &str,
    text: Bytes,
    window: &Window,
) -> Tally {
    let mut tally = Tally::default();
    let mut i = 0;
    while !window.is_stopped() {
        i += 1;
        let started = Instant::now();
        let mut headers = HeaderMap::new();
        headers.insert("Mboard-Pub-Time", "1700000000000000");
        headers.insert("Mboard-Pub-Addr", "127.0.0.1");
        headers.insert("Mboard-Pub-Port", "40000");
        let message = PublishMessage::build()
            .headers(headers)
            .message_id(scenario::token(c, i))
            .payload(text.clone());
        let acked = async { js.send_publish(subject.to_owned(), message).await?.await };
        match acked.await {
            Ok(_) => tally.record(window, started, true),
            Err(e) => {
                tally.fail(|| e.to_string());
                tally.record(window, started, false);
            }
        }
    }
    tally
}

//! The clustered store's baseline: JetStream's own publish rate, from `async-nats`, at the
//! same concurrency and with what mboard sends (its header and a message id), each
//! publish awaiting its acknowledgement. It publishes to a stream of its own, created for
//! the run and deleted after it, or to an existing one placed by `place` (the same
//! configuration as a board's, its leader on a chosen node), checked before and after.

mod place;
pub(crate) mod relay;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;

use crate::report::{Report, Tally};
use crate::run::{Window, windows};
use crate::scenario::{self, Load, Scenario};

/// Where the baseline publishes and what it insists on before measuring.
#[derive(Debug, Clone, Default)]
pub(crate) struct Target {
    /// An existing stream (taking `<name>.messages`) instead of a new one.
    pub(crate) stream: Option<String>,
    /// The NATS node the stream's leader must be on, before and after the run.
    pub(crate) leader: Option<String>,
    /// The NATS node the connection must go to.
    pub(crate) via: Option<String>,
}

/// Publishes through JetStream at `nats` on a new stream of `replicas` for the run, or on
/// `target`'s stream; placement lines go to stderr.
pub(crate) fn run(
    nats: &str,
    replicas: usize,
    target: &Target,
    load: &Load,
    size: usize,
) -> Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (_client, js, node) = place::connect(nats).await?;
        if let Some(via) = &target.via
            && *via != node
        {
            bail!("refusing to measure: connected to {node} through {nats}, not to {via}");
        }
        let (name, subject, own) = match &target.stream {
            Some(name) => (name.clone(), place::subject(name), false),
            None => {
                let (stream, subject) = own_stream(&js, "mboard-bench", replicas).await?;
                (stream.cached_info().config.name.clone(), subject, true)
            }
        };
        check(&js, &name, &node, target, "before").await?;
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
        check(&js, &name, &node, target, "after").await?;
        if own {
            let _ = js.delete_stream(&name).await;
        }
        Ok(Report::new(
            load,
            &Scenario::JetStream { size },
            seconds,
            all,
        ))
    })
}

/// A stream for one run, `<prefix>-<pid>` taking `<name>.messages`, on `replicas` nodes;
/// returns it and its subject.
pub(crate) async fn own_stream(
    js: &jetstream::Context,
    prefix: &str,
    replicas: usize,
) -> Result<(stream::Stream, String)> {
    let name = format!("{prefix}-{}", std::process::id());
    let subject = format!("{name}.messages");
    let created = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            num_replicas: replicas,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .with_context(|| format!("create stream {name}"))?;
    Ok((created, subject))
}

/// Prints where the stream and the connection are, when a placement was asked for, and
/// refuses a leader elsewhere. On stderr: stdout is the report, which scripts parse.
#[allow(clippy::print_stderr)]
async fn check(
    js: &jetstream::Context,
    name: &str,
    node: &str,
    target: &Target,
    when: &str,
) -> Result<()> {
    if target.leader.is_none() && target.via.is_none() {
        return Ok(());
    }
    let at = place::locate(js, name).await?;
    if let Some(leader) = &target.leader {
        at.expect(leader)?;
    }
    eprintln!("jetstream {when}: {at}; connected to {node}");
    Ok(())
}

/// `place`: creates the board stream if needed and moves its leader to `leader`
/// (`check`: only looks, and refuses a leader elsewhere, or other than `consumers`
/// consumers all on the leader, when given); prints where it is.
pub(crate) fn place(
    nats: &str,
    stream: &str,
    replicas: usize,
    leader: &str,
    check: bool,
    consumers: Option<usize>,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (_client, js, node) = place::connect(nats).await?;
        let at = if check {
            let at = place::locate(&js, stream).await?;
            at.expect(leader)?;
            if let Some(n) = consumers {
                at.expect_consumers(n)?;
            }
            at
        } else {
            place::place(&js, stream, replicas, leader).await?
        };
        println!("{at}; asked through {node}");
        Ok(())
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
        headers.insert("Mboard-Pub", "1700000000000000 127.0.0.1:40000");
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

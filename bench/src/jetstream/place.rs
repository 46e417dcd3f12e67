//! Where a stream's leader is, so that JetStream's own publishes and `5:` through mboard
//! are measured against a leader on the same NATS node: streams made as an mboard server
//! makes its board's, their leader put on a named node (R1: by that node's `server_tags`;
//! R3: by stepping the leader down until it lands there), and the check that it is still
//! there.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::{self, DeleteStatus, DiscardPolicy, RetentionPolicy};
use async_nats::jetstream::{self, Context as Js};
use futures::TryStreamExt;

/// How long JetStream may take to answer at all (electing its meta leader after start-up)
/// or to elect a stream's leader after a step-down.
const SETTLE: Duration = Duration::from_secs(15);
/// Step-downs before giving up: each hands the leadership to a follower JetStream picks.
const STEPDOWNS: usize = 30;

/// The tag a node must carry in its `server_tags` for an R1 stream to be placed on it.
pub(crate) fn node_tag(node: &str) -> String {
    format!("node:{node}")
}

/// The subject a board stream takes, as mboard-server names it.
pub(crate) fn subject(stream: &str) -> String {
    format!("{stream}.messages")
}

/// The configuration mboard-server creates its board's stream with, at its default
/// options (no retention limits, a 2-minute deduplication window, 16 MiB requests plus
/// 1 KiB of headers), placed on `leader` when R1.
pub(crate) fn board_config(name: &str, replicas: usize, leader: &str) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subject(name)],
        retention: RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: DiscardPolicy::Old,
        num_replicas: replicas,
        max_messages: -1,
        max_bytes: -1,
        max_age: Duration::ZERO,
        duplicate_window: Duration::from_secs(120),
        max_message_size: (16 << 20) + 1024,
        deny_delete: true,
        placement: (replicas == 1).then(|| stream::Placement {
            tags: vec![node_tag(leader)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where a stream is: its leader, its other replicas and its consumers' leaders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Where {
    pub(crate) stream: String,
    pub(crate) leader: String,
    pub(crate) followers: Vec<String>,
    /// `(consumer, its leader)`.
    pub(crate) consumers: Vec<(String, String)>,
}

impl fmt::Display for Where {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream {} led by {}", self.stream, self.leader)?;
        if !self.followers.is_empty() {
            write!(f, " (followers {})", self.followers.join(" "))?;
        }
        if self.consumers.is_empty() {
            write!(f, ", no consumers")
        } else {
            let consumers: Vec<String> = self
                .consumers
                .iter()
                .map(|(c, leader)| format!("{c} on {leader}"))
                .collect();
            write!(f, ", consumers {}", consumers.join(" "))
        }
    }
}

impl Where {
    /// Refuses a stream whose leader is not on `node`, in one line.
    pub(crate) fn expect(&self, node: &str) -> Result<()> {
        if self.leader != node {
            bail!(
                "refusing to measure: {self}, not by {node} as intended (run `mboard-bench place` again)"
            );
        }
        Ok(())
    }

    /// Refuses a stream without exactly `n` consumers, each led by the stream's leader (an
    /// mboard server's consumer lands on any replica; elsewhere than the leader, every
    /// delivery to it takes one more hop).
    pub(crate) fn expect_consumers(&self, n: usize) -> Result<()> {
        let elsewhere = self.consumers.iter().any(|(_, on)| *on != self.leader);
        if self.consumers.len() != n || elsewhere {
            bail!(
                "refusing to measure: {self}, not {n} consumers all on {} as intended",
                self.leader
            );
        }
        Ok(())
    }
}

/// Connects to the NATS URLs (comma-separated) and returns the client, its JetStream
/// context and the name of the node it is connected to.
pub(crate) async fn connect(nats: &str) -> Result<(async_nats::Client, Js, String)> {
    let urls: Vec<async_nats::ServerAddr> = nats
        .split(',')
        .map(|u| {
            u.trim()
                .parse()
                .with_context(|| format!("bad NATS URL {u:?}"))
        })
        .collect::<Result<_>>()?;
    let client = async_nats::connect(urls)
        .await
        .with_context(|| format!("connect to NATS at {nats}"))?;
    let node = client.server_info().server_name;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(client.clone());
    Ok((client, js, node))
}

/// Where `name` is, asked again while it has no leader (an election after a step-down,
/// or JetStream still starting), up to [`SETTLE`].
pub(crate) async fn locate(js: &Js, name: &str) -> Result<Where> {
    let deadline = Instant::now() + SETTLE;
    loop {
        match try_locate(js, name).await {
            Ok(Some(w)) => return Ok(w),
            Ok(None) if Instant::now() < deadline => {}
            Ok(None) => bail!("stream {name} has no leader after {}s", SETTLE.as_secs()),
            Err(_) if Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn try_locate(js: &Js, name: &str) -> Result<Option<Where>> {
    let mut stream = js
        .get_stream(name)
        .await
        .with_context(|| format!("stream {name}"))?;
    let info = stream
        .info()
        .await
        .with_context(|| format!("stream {name}"))?;
    let cluster = info.cluster.clone().unwrap_or_default();
    let Some(leader) = cluster.leader.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let followers = cluster.replicas.iter().map(|p| p.name.clone()).collect();
    let mut consumers = Vec::new();
    let mut list = stream.consumers();
    while let Some(c) = list
        .try_next()
        .await
        .with_context(|| format!("consumers of stream {name}"))?
    {
        let on = c.cluster.and_then(|c| c.leader).unwrap_or_default();
        consumers.push((c.name, on));
    }
    Ok(Some(Where {
        stream: name.to_owned(),
        leader,
        followers,
        consumers,
    }))
}

/// Creates `name` as a board stream of `replicas` if it does not exist, and moves its
/// leader to `leader`. An R1 stream is created on that node and cannot move: an existing
/// one elsewhere is an error.
pub(crate) async fn place(js: &Js, name: &str, replicas: usize, leader: &str) -> Result<Where> {
    create(js, name, replicas, leader).await?;
    let mut at = locate(js, name).await?;
    for _ in 0..STEPDOWNS {
        if at.leader == leader {
            return Ok(at);
        }
        if at.followers.is_empty() {
            bail!(
                "{at}, not by {leader}, and an R1 stream cannot move: delete it or use another name"
            );
        }
        if !at.followers.iter().any(|f| f == leader) {
            bail!("{at}: {leader} holds no replica of it");
        }
        step_down(js, name).await?;
        at = settled(js, name, &at.leader).await?;
    }
    bail!("{at}: still not by {leader} after {STEPDOWNS} step-downs")
}

/// Creates the stream unless it exists, waiting for JetStream to answer after start-up;
/// an existing one must have the replicas asked for.
async fn create(js: &Js, name: &str, replicas: usize, leader: &str) -> Result<()> {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Ok(mut stream) = js.get_stream(name).await {
            let have = stream
                .info()
                .await
                .with_context(|| format!("stream {name}"))?
                .config
                .num_replicas;
            if have != replicas {
                bail!("stream {name} exists with {have} replicas, not {replicas}");
            }
            return Ok(());
        }
        match js.create_stream(board_config(name, replicas, leader)).await {
            Ok(_) => return Ok(()),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!(
                "cannot create stream {name} (R{replicas}, tag {}): {e}",
                node_tag(leader)
            ),
        }
    }
}

/// Asks the stream's leader to step down; JetStream elects one of the followers.
async fn step_down(js: &Js, name: &str) -> Result<()> {
    // The request must be empty: `{}` (an empty map) passes, `null` (what `()` becomes)
    // is a bad request.
    let empty = std::collections::BTreeMap::<&str, &str>::new();
    let answer: Response<DeleteStatus> = js
        .request(format!("STREAM.LEADER.STEPDOWN.{name}"), &empty)
        .await
        .with_context(|| format!("step down the leader of stream {name}"))?;
    match answer {
        Response::Ok(DeleteStatus { success: true }) => Ok(()),
        Response::Ok(_) => bail!("stream {name}: the step-down was not done"),
        Response::Err { error } => bail!("step down the leader of stream {name}: {error}"),
    }
}

/// Where the stream is once a leader other than `old` is elected.
async fn settled(js: &Js, name: &str, old: &str) -> Result<Where> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let at = locate(js, name).await?;
        if at.leader != old || Instant::now() >= deadline {
            return Ok(at);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(leader: &str, consumers: &[(&str, &str)]) -> Where {
        Where {
            stream: "s".into(),
            leader: leader.into(),
            followers: vec!["n2".into(), "n3".into()],
            consumers: consumers
                .iter()
                .map(|(c, l)| ((*c).to_owned(), (*l).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn a_board_stream_is_what_mboard_server_accepts() {
        let c = board_config("b", 3, "n1");
        assert_eq!(c.subjects, vec!["b.messages".to_owned()]);
        assert!(c.deny_delete);
        assert_eq!(c.retention, RetentionPolicy::Limits);
        assert_eq!(c.discard, DiscardPolicy::Old);
        assert_eq!(c.duplicate_window, Duration::from_secs(120));
        assert_eq!(c.placement, None, "R3 moves by step-downs, not tags");
    }

    #[test]
    fn an_r1_board_stream_is_placed_by_its_nodes_tag() {
        let c = board_config("b", 1, "n2");
        assert_eq!(
            c.placement.map(|p| p.tags),
            Some(vec!["node:n2".to_owned()])
        );
    }

    #[test]
    fn where_names_leader_followers_and_consumers() {
        assert_eq!(
            at("n1", &[("c1", "n1")]).to_string(),
            "stream s led by n1 (followers n2 n3), consumers c1 on n1"
        );
        assert_eq!(
            at("n1", &[]).to_string(),
            "stream s led by n1 (followers n2 n3), no consumers"
        );
    }

    #[test]
    fn a_leader_elsewhere_is_refused_in_one_line() {
        assert!(at("n1", &[]).expect("n1").is_ok());
        let e = at("n2", &[]).expect("n1").unwrap_err().to_string();
        assert!(
            e.starts_with("refusing to measure: stream s led by n2"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn consumers_must_all_be_on_the_leader_and_as_many_as_asked() {
        assert!(
            at("n1", &[("a", "n1"), ("b", "n1")])
                .expect_consumers(2)
                .is_ok()
        );
        assert!(
            at("n1", &[("a", "n1"), ("b", "n3")])
                .expect_consumers(2)
                .is_err()
        );
        assert!(at("n1", &[("a", "n1")]).expect_consumers(2).is_err());
        assert!(at("n1", &[]).expect_consumers(0).is_ok());
        let e = at("n1", &[("a", "n2")])
            .expect_consumers(1)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("not 1 consumers all on n1 as intended"), "{e}");
    }
}

//! What the clients do, and against what.

use std::net::SocketAddr;
use std::time::Duration;

/// What each client does, over and over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// Any datagram to the echo ceiling: the reply is the request.
    Echo,
    /// `3:<id>` over ids `first..first + messages`.
    Get {
        /// How many messages to spread the reads over.
        messages: u64,
        /// The first of them (0 on a fresh board; 1 on the clustered store).
        first: u64,
    },
    /// `4:<n>`.
    Last {
        /// Messages per request.
        n: u64,
    },
    /// `1:<text>` in one datagram (at-least-once).
    Publish {
        /// Text bytes.
        size: usize,
    },
    /// `5:<token>:<text>` in one datagram (exactly once per token), a new token per
    /// publish and the same one in its resends.
    PublishOnce {
        /// Text bytes.
        size: usize,
    },
    /// Publishers as in `publish` or `publish-once` at full rate, while followers hold
    /// `6:` requests and re-arm them as they are answered.
    Follow(Follow),
    /// The follower scenario against Redis streams (`XADD`, `XREAD BLOCK`), the peer; `once`
    /// does not apply (`XADD` has no token) and followers start on an empty stream.
    RedisFollow(Follow),
    /// JetStream's own publish, straight from `async-nats` (the clustered store's baseline).
    JetStream {
        /// Text bytes.
        size: usize,
    },
    /// A publish through an upload session (exactly-once), as the CLI does.
    PublishSession {
        /// Text bytes.
        size: usize,
    },
    /// One large publish per operation.
    Upload {
        /// Text bytes.
        size: usize,
    },
    /// One large get per operation, of a message [`crate::run::seed`] publishes first.
    Download {
        /// Text bytes.
        size: usize,
        /// The message to read (set by [`crate::run::seed`]).
        id: u64,
    },
}

impl Scenario {
    /// The scenario's name on the command line.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Scenario::Echo => "echo",
            Scenario::Get { .. } => "get",
            Scenario::Last { .. } => "last",
            Scenario::Publish { .. } => "publish",
            Scenario::PublishOnce { .. } => "publish-once",
            Scenario::Follow(_) => "follow",
            Scenario::RedisFollow(_) => "redis-follow",
            Scenario::JetStream { .. } => "jetstream",
            Scenario::PublishSession { .. } => "publish-session",
            Scenario::Upload { .. } => "upload",
            Scenario::Download { .. } => "download",
        }
    }

    /// Bytes of payload an operation moves (for MB/s), if that is the point of it; such
    /// scenarios run on blocking [`mboard_client::Client`]s, the others as datagram tasks.
    pub(crate) fn payload(&self) -> Option<usize> {
        match self {
            Scenario::Upload { size } | Scenario::Download { size, .. } => Some(*size),
            _ => None,
        }
    }
}

/// The follower scenario's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Follow {
    /// Text bytes per publish.
    pub(crate) size: usize,
    /// Publish with `5:` (a token each) instead of `1:`.
    pub(crate) once: bool,
    /// Follower sockets, each with one `6:` request outstanding.
    pub(crate) followers: usize,
    /// `<max>` of each `6:` (0 = everything after its `<after>`).
    pub(crate) max: u64,
    /// `<wait>` of each `6:`, in milliseconds.
    pub(crate) wait_ms: u64,
    /// Publishes per second, all publishers together; `None` = as fast as answered.
    pub(crate) rate: Option<u64>,
    /// Where the followers start: the newest id when the run begins (set by
    /// [`crate::run::seed`]).
    pub(crate) start: u64,
}

/// How to load the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Load {
    /// The server (or echo ceiling): the first of `servers`.
    pub(crate) server: SocketAddr,
    /// Every server given (`--server a,b,c`): datagram client `c` talks to `c % len`.
    pub(crate) servers: Vec<SocketAddr>,
    /// Concurrent closed-loop clients.
    pub(crate) clients: usize,
    /// Measured time.
    pub(crate) duration: Duration,
    /// Unmeasured time before it, to fill caches and queues.
    pub(crate) warmup: Duration,
    /// Resend a single-datagram request after this long without a reply.
    pub(crate) resend: Duration,
}

/// The slots of one of `clients` publishers that share `rate` publishes a second.
#[derive(Debug)]
pub(crate) struct Pace {
    period: Duration,
    next: tokio::time::Instant,
}

impl Pace {
    /// Publisher `c`'s share: each starts at a different point of its period so that the
    /// publishes spread out.
    pub(crate) fn new(c: usize, clients: usize, rate: u64) -> Self {
        let period = Duration::from_secs_f64(clients.max(1) as f64 / rate.max(1) as f64);
        let offset = period.mul_f64(c as f64 / clients.max(1) as f64);
        Pace {
            period,
            next: tokio::time::Instant::now() + offset,
        }
    }

    /// Waits for the next slot; a slot missed is not made up.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep_until(self.next).await;
        self.next = (self.next + self.period).max(tokio::time::Instant::now());
    }
}

/// The byte client `c` fills its texts with, so that concurrent publishes differ.
pub(crate) fn letter(c: usize) -> u8 {
    b'a' + (c % 26) as u8
}

/// A text of `size` bytes (at least one: the protocol has no empty publish) for client `c`.
pub(crate) fn text(c: usize, size: usize) -> Vec<u8> {
    vec![letter(c); size.max(1)]
}

/// A publish token unique to this run, client `c` and its `i`-th publish: the stream
/// deduplicates tokens across runs within its window, so each run draws its own prefix.
pub(crate) fn token(c: usize, i: u64) -> String {
    use std::sync::OnceLock;
    static RUN: OnceLock<u32> = OnceLock::new();
    let run = RUN.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        t.subsec_nanos() ^ (t.as_secs() as u32) ^ std::process::id().rotate_left(16)
    });
    format!(
        "{run:08x}-{:04x}-4000-8000-{:012x}",
        c & 0xffff,
        i & 0xffff_ffff_ffff
    )
}

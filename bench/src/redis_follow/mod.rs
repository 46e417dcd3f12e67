//! The follower scenario against the peer, Redis streams: publishers `XADD` to a stream
//! made for the run (and deleted after it), one command in flight each, while followers
//! each loop on `XREAD BLOCK <wait> STREAMS <stream> <last id seen>` on a connection of
//! their own; the same shape, bookkeeping and report as [`crate::follow`] against mboard.
//!
//! As there, the follower latency is from the moment a publisher has the reply naming a
//! sampled entry to the moment a follower has the whole reply that first holds it.
//! Followers run on a runtime of their own, so that a thousand of them woken at once do
//! not queue in front of the publishers whose throughput is the measurement.
//!
//! Publishers go through the redis crate. Followers send the crate's encoding of their
//! `XREAD` on a plain TCP connection and read the reply's ids off the wire ([`resp`]): the
//! crate's parse of every entry cost the load generator more than Redis's replies did.

mod entry;
mod resp;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::datagram::GIVE_UP;
use crate::follow::{DRAIN, FollowReport, FollowerTally, Published, Shared};
use crate::report::{Report, Tally};
use crate::run::{Window, small_runtime, windows};
use crate::scenario::{self, Follow, Load, Pace, Scenario};

use entry::EntryId;

/// When the followers should stop: `None` while publishers run, then the end of the drain.
type Stop = watch::Receiver<Option<Instant>>;

/// Runs the follower scenario `spec` against the Redis server at `url`.
pub(crate) fn run(url: &str, load: &Load, spec: &Follow) -> Result<Report> {
    let client = Client::open(url).with_context(|| format!("bad Redis URL {url:?}"))?;
    let (runtime, follow_runtime) = (small_runtime()?, small_runtime()?);
    let (host, port) = plain_address(&client, url)?;
    let stream: Arc<str> = format!("mboard-bench-follow-{}", std::process::id()).into();
    // A load against nothing would report zeros; fail clearly (and promptly) instead.
    let mut admin = runtime
        .block_on(connect(&client, Some(GIVE_UP)))
        .with_context(|| format!("connect to Redis at {url}"))?;
    runtime.block_on(delete(&mut admin, &stream))?;

    // Every connection is made before the clock starts: a thousand handshakes are not
    // what the run measures.
    let shared = Arc::new(Shared::new(0));
    let window = Arc::new(Window::default());
    let (stop_tx, stop_rx) = watch::channel(None);
    let mut followers = Vec::with_capacity(spec.followers);
    for f in 0..spec.followers {
        let conn = follow_runtime
            .block_on(connect_plain(&host, port))
            .with_context(|| {
                format!("connect follower {f} to Redis (each holds a connection: ulimit -n?)")
            })?;
        let (spec, stream, shared, window, stop) = (
            spec.clone(),
            stream.clone(),
            shared.clone(),
            window.clone(),
            stop_rx.clone(),
        );
        followers
            .push(follow_runtime.spawn(async move {
                follower(conn, &spec, &stream, &shared, &window, stop).await
            }));
    }
    let mut publishers = Vec::with_capacity(load.clients);
    for c in 0..load.clients {
        let conn = runtime
            .block_on(connect(&client, Some(GIVE_UP)))
            .with_context(|| format!("connect publisher {c} to Redis"))?;
        let (spec, stream, shared, window) =
            (spec.clone(), stream.clone(), shared.clone(), window.clone());
        let clients = load.clients;
        publishers.push(runtime.spawn(async move {
            publisher(c, clients, conn, &spec, &stream, &shared, &window).await
        }));
    }

    let seconds = windows(load, &window);
    let mut all = Tally::default();
    for p in publishers {
        all.merge(runtime.block_on(p)?);
    }
    shared.publishers_done();
    stop_tx.send_replace(Some(Instant::now() + DRAIN));
    let mut tallies = Vec::with_capacity(followers.len());
    for f in followers {
        tallies.push(follow_runtime.block_on(f)?);
    }
    // Dropping the runtime closes the connections of followers still blocked.
    drop(follow_runtime);
    runtime.block_on(delete(&mut admin, &stream))?;
    let follow = FollowReport::new(tallies, &shared.take_published(), seconds);
    Ok(Report::new(load, &Scenario::RedisFollow(spec.clone()), seconds, all).with_follow(follow))
}

/// Where followers connect: a plain TCP address, with no password and database 0, as
/// followers make no handshake.
fn plain_address(client: &Client, url: &str) -> Result<(String, u16)> {
    let info = client.get_connection_info();
    let settings = info.redis_settings();
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        bail!("redis-follow takes a redis:// URL of plain TCP, not {url:?}");
    };
    if settings.username().is_some() || settings.password().is_some() || settings.db() != 0 {
        bail!("redis-follow takes a URL without user, password or database: {url:?}");
    }
    Ok((host.clone(), *port))
}

async fn connect_plain(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let conn = tokio::time::timeout(GIVE_UP, TcpStream::connect((host, port)))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    // A request is one small write, sent at once.
    conn.set_nodelay(true)?;
    Ok(conn)
}

/// A connection of its own (a multiplexed connection used by one task at a time is one
/// request in flight, as a plain connection would be).
async fn connect(
    client: &Client,
    timeout: Option<Duration>,
) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(GIVE_UP))
        // The crate's default of 500 ms would fail every `XREAD BLOCK` longer than that.
        .set_response_timeout(timeout);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

async fn delete(conn: &mut MultiplexedConnection, stream: &str) -> Result<()> {
    redis::cmd("DEL")
        .arg(stream)
        .query_async::<Value>(conn)
        .await
        .with_context(|| format!("DEL {stream}"))?;
    Ok(())
}

/// Publisher `c` of `clients`: `XADD <stream> * t <text>`, awaiting each reply, until the
/// run stops; tells `shared` the id each reply names.
async fn publisher(
    c: usize,
    clients: usize,
    mut conn: MultiplexedConnection,
    spec: &Follow,
    stream: &str,
    shared: &Shared,
    window: &Window,
) -> Tally {
    let mut tally = Tally::default();
    let mut mine = Published::default();
    let mut pace = spec.rate.map(|rate| Pace::new(c, clients, rate));
    let mut xadd = redis::cmd("XADD");
    xadd.arg(stream)
        .arg("*")
        .arg("t")
        .arg(scenario::text(c, spec.size));
    while !window.is_stopped() {
        if let Some(pace) = &mut pace {
            pace.wait().await;
        }
        let started = std::time::Instant::now();
        let reply = xadd.query_async::<Value>(&mut conn).await;
        let gone = reply.as_ref().is_err_and(|e| e.is_unrecoverable_error());
        match reply
            .map_err(|e| format!("XADD: {e}"))
            .and_then(|v| entry::added(&v))
        {
            Ok(key) => {
                shared.published_key(&mut mine, key, entry::sampled(key), window);
                tally.record(window, started, true);
            }
            Err(why) => {
                tally.fail(|| why);
                tally.record(window, started, false);
            }
        }
        if gone {
            break;
        }
    }
    shared.add_published(mine);
    tally
}

/// One follower, until the publishers have stopped and it has read what they published
/// (or the drain is over), or its connection fails.
async fn follower(
    mut conn: TcpStream,
    spec: &Follow,
    stream: &str,
    shared: &Shared,
    window: &Window,
    mut stop: Stop,
) -> FollowerTally {
    let mut me = FollowerTally::default();
    // The reply to a `BLOCK` comes when there is news or the wait is over.
    let timeout = Duration::from_millis(spec.wait_ms) + GIVE_UP;
    let mut buf = Vec::with_capacity(BUF);
    let mut fresh = Vec::new();
    // The stream is new: everything in it is news.
    let mut last = 0;
    loop {
        if let Some(until) = *stop.borrow()
            && (last >= shared.newest() || Instant::now() >= until)
        {
            break;
        }
        let request = xread(spec, stream, last).get_packed_command();
        let before = last;
        fresh.clear();
        let reply = tokio::select! {
            () = drained(&mut stop, before, shared) => break,
            reply = exchange(&mut conn, &request, &mut buf, timeout, |key| {
                if key > last {
                    last = key;
                    fresh.push(key);
                }
            }) => reply,
        };
        if let Err(why) = reply {
            me.tally.fail(|| why);
            me.errors += 1;
            break;
        }
        let now = shared.nanos();
        me.seen.extend(
            fresh
                .iter()
                .filter(|key| entry::sampled(**key))
                .map(|key| (*key, now)),
        );
        if window.is_measuring() {
            me.delivered += fresh.len() as u64;
            me.replies += 1;
        }
    }
    me
}

/// Bytes read at once.
const BUF: usize = 64 << 10;

/// Sends `request` and reads its reply, calling `each` with the key of every entry in it.
async fn exchange(
    conn: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
    timeout: Duration,
    mut each: impl FnMut(u64),
) -> Result<(), String> {
    conn.write_all(request)
        .await
        .map_err(|e| format!("XREAD: {e}"))?;
    let mut reply = resp::Reply::default();
    loop {
        let (used, done) = reply.feed(buf, &mut each)?;
        buf.drain(..used);
        if done {
            return Ok(());
        }
        if buf.capacity() - buf.len() < BUF / 4 {
            buf.reserve(BUF);
        }
        let n = tokio::time::timeout(timeout, conn.read_buf(buf))
            .await
            .map_err(|_| format!("XREAD: no reply in {timeout:?}"))?
            .map_err(|e| format!("XREAD: {e}"))?;
        if n == 0 {
            return Err("XREAD: Redis closed the connection".into());
        }
    }
}

/// Resolves once the publishers have stopped and either `last` is the newest entry (the
/// `XREAD` held will not be answered before its wait is over) or the drain is over.
async fn drained(stop: &mut Stop, last: u64, shared: &Shared) {
    let Ok(until) = stop.wait_for(Option::is_some).await.map(|until| *until) else {
        return;
    };
    if last < shared.newest()
        && let Some(until) = until
    {
        tokio::time::sleep_until(until).await;
    }
}

/// `XREAD [COUNT <max>] BLOCK <wait> STREAMS <stream> <last>`: no `COUNT` when `max` is 0,
/// everything after `last`, as mboard's `6:<last>:0:<wait>` asks.
fn xread(spec: &Follow, stream: &str, last: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("XREAD");
    if spec.max > 0 {
        cmd.arg("COUNT").arg(spec.max);
    }
    cmd.arg("BLOCK")
        .arg(spec.wait_ms)
        .arg("STREAMS")
        .arg(stream)
        .arg(EntryId::of_key(last).to_string());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max: u64) -> Follow {
        Follow {
            size: 16,
            once: false,
            followers: 1_000,
            max,
            wait_ms: 25_000,
            rate: None,
            start: 0,
        }
    }

    fn words(cmd: &redis::Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn xread_asks_for_everything_after_the_last_id_seen() {
        let last = EntryId {
            ms: 1_795_285_846_905,
            seq: 7,
        };
        let key = last.key().expect("packable");
        assert_eq!(
            words(&xread(&spec(0), "s", key)),
            ["XREAD", "BLOCK", "25000", "STREAMS", "s", "1795285846905-7"]
        );
        assert_eq!(
            words(&xread(&spec(10), "s", 0)),
            [
                "XREAD", "COUNT", "10", "BLOCK", "25000", "STREAMS", "s", "0-0"
            ]
        );
    }

    #[tokio::test]
    async fn drained_waits_for_the_stop_and_then_only_for_news() {
        let shared = Shared::new(0);
        let (tx, mut rx) = watch::channel(None);
        // Publishers still running: not drained.
        let early = tokio::time::timeout(Duration::from_millis(20), drained(&mut rx, 5, &shared));
        assert!(early.await.is_err());
        let mut mine = Published::default();
        shared.published_key(&mut mine, 9, false, &Window::default());
        tx.send_replace(Some(Instant::now() + Duration::from_millis(50)));
        // Caught up: at once.
        let caught_up =
            tokio::time::timeout(Duration::from_millis(20), drained(&mut rx, 9, &shared));
        assert!(caught_up.await.is_ok());
        // Behind: only when the drain is over.
        let started = Instant::now();
        drained(&mut rx, 5, &shared).await;
        assert!(started.elapsed() >= Duration::from_millis(40));
        // The run gone: at once.
        drop(tx);
        let gone = tokio::time::timeout(Duration::from_millis(20), drained(&mut rx, 5, &shared));
        assert!(gone.await.is_ok());
    }
}

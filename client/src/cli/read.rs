//! The commands that print messages: `last`, `since` and `follow`, page by page.

use std::io::{self, IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mboard_protocol::{Message, MessageId};
use rustix::event::{PollFd, PollFlags, Timespec, poll};

use super::run::{Failure, Output};
use crate::client::passing;
use crate::{Client, ClientError, Follow, FollowEvent, Servers, Start, output};

/// One message as `last` prints it: a line (cut to a terminal's width unless `full`), or
/// a JSON object.
fn line(m: &Message, how: Output, full: bool) -> String {
    if how.json {
        output::json(m.id, &m.entry)
    } else if how.term.stdout && !full {
        output::line_fitted(m.id, &m.entry, how.term.width)
    } else {
        output::line(m.id, &m.entry)
    }
}

/// A line on standard error, after what standard output has so far (so that, on one
/// terminal, it lands where it happened).
fn say(out: &mut dyn Write, text: &str) -> Result<(), Failure> {
    out.flush()?;
    let _ = writeln!(io::stderr(), "{text}");
    Ok(())
}

/// `N messages no longer kept (#a to #b)`.
fn missed(first: MessageId, count: u64) -> String {
    let last = first.0 + count - 1;
    match count {
        1 => format!("warning: 1 message no longer kept (#{first})"),
        _ => format!("warning: {count} messages no longer kept (#{first} to #{last})"),
    }
}

/// `last`: streamed as pages arrive.
pub(super) fn last(
    client: &mut Client,
    n: u64,
    full: bool,
    how: Output,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    for page in client.last_pages(n) {
        for m in page?.messages {
            writeln!(out, "{}", line(&m, how, full))?;
        }
        out.flush()?;
    }
    Ok(())
}

/// `since`: the messages after `id`, at most `n`.
pub(super) fn since(
    client: &mut Client,
    id: u64,
    n: Option<u64>,
    full: bool,
    how: Output,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    for page in client.since(MessageId(id), n.unwrap_or(0)) {
        let page = page?;
        if let Some((first, count)) = page.missed {
            say(out, &missed(first, count))?;
        }
        for m in page.messages {
            writeln!(out, "{}", line(&m, how, full))?;
        }
        out.flush()?;
    }
    Ok(())
}

/// Whether standard output is a pipe or terminal nobody reads any more: `follow | head -3`
/// ends once `head` has its lines, not at the next message, which may be hours away.
fn stdout_gone() -> bool {
    let stdout = io::stdout();
    let mut fds = [PollFd::new(&stdout, PollFlags::OUT)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&now)), Ok(n) if n > 0)
        && fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP)
}

/// Set on Ctrl+C: the follower ends, exit code 0.
fn on_ctrl_c() -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    // A second Ctrl+C ends it at once (exit 130), should the first not be seen: a write
    // blocked on a reader that stopped reading, say. Should the handlers not install,
    // Ctrl+C ends the process the default way: the output is flushed message by message,
    // so nothing is lost but the exit code.
    let sigint = signal_hook::consts::SIGINT;
    let _ = signal_hook::flag::register_conditional_shutdown(sigint, 130, interrupted.clone());
    let _ = signal_hook::flag::register(sigint, interrupted.clone());
    interrupted
}

/// Ends `client`'s follower on `interrupted` or once standard output is closed.
fn stop_when(client: &mut Client, interrupted: &Arc<AtomicBool>) {
    let interrupted = interrupted.clone();
    let watch_output = !io::stdout().is_terminal();
    client.interrupt_when(Box::new(move || {
        interrupted.load(Ordering::Relaxed) || (watch_output && stdout_gone())
    }));
}

/// How following one server ended.
enum Followed {
    /// Interrupted, or the output closed.
    Ended,
    /// The server stopped answering and the list has others: go on from the last message
    /// given out.
    Lost {
        server: std::net::SocketAddr,
        error: ClientError,
        last: Option<MessageId>,
    },
}

/// How long a follower whose every server is silent waits before asking them again.
const ALL_SILENT_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// `follow`: from the newest `n` (0: all) or after `after`, until interrupted. With a list
/// of servers, a server that stops answering is left for the next, from the last message
/// printed, so nothing is printed twice or skipped.
pub(super) fn follow(
    servers: &mut Servers,
    n: u64,
    after: Option<u64>,
    full: bool,
    how: Output,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let mut start = match after {
        Some(id) => Start::After(MessageId(id)),
        None if n == 0 => Start::Beginning,
        None => Start::Newest(n),
    };
    let interrupted = on_ctrl_c();
    let many = servers.list().len() > 1;
    let mut moved = false;
    loop {
        let mut client = match servers.client() {
            Ok(client) => client,
            // Once following, a list whose servers are all silent is waited out, as one
            // server is.
            Err(e) if moved && passing(&e) => {
                if interrupted.load(Ordering::Relaxed) {
                    return Ok(());
                }
                std::thread::sleep(ALL_SILENT_PAUSE);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        stop_when(&mut client, &interrupted);
        match follow_one(&mut client, start, many, full, how, out)? {
            Followed::Ended => return Ok(()),
            Followed::Lost {
                server,
                error,
                last,
            } => {
                say(
                    out,
                    &format!("warning: {server}: {error}; following on the next server"),
                )?;
                servers.pass_over_current();
                if let Some(id) = last {
                    start = Start::After(id);
                }
                moved = true;
            }
        }
    }
}

/// Follows one server; with `many`, returns when it stops answering.
fn follow_one(
    client: &mut Client,
    start: Start,
    many: bool,
    full: bool,
    how: Output,
    out: &mut dyn Write,
) -> Result<Followed, Failure> {
    let mut follow = client.follow(start)?;
    while let Some(event) = follow.next() {
        match event? {
            FollowEvent::Message(m) => writeln!(out, "{}", line(&m, how, full))?,
            FollowEvent::Missed { first, count } => say(out, &missed(first, count))?,
            FollowEvent::Lost(error) if many => {
                out.flush()?;
                return Ok(Followed::Lost {
                    server: follow.server(),
                    error,
                    last: Follow::last(&follow),
                });
            }
            FollowEvent::Lost(e) => say(out, &format!("warning: {e}; retrying until it answers"))?,
            FollowEvent::Back { after } => {
                let server = follow.server();
                let from = match after {
                    Some(id) => format!("after #{id}"),
                    None => "from the start".to_string(),
                };
                say(
                    out,
                    &format!("note: {server} answers again; resuming {from}"),
                )?;
            }
        }
        // Live: each message is out as soon as nothing else is ready.
        if follow.buffered() == 0 {
            out.flush()?;
        }
    }
    Ok(Followed::Ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_said_with_their_ids() {
        assert_eq!(
            missed(MessageId(3), 5),
            "warning: 5 messages no longer kept (#3 to #7)"
        );
        assert_eq!(
            missed(MessageId(9), 1),
            "warning: 1 message no longer kept (#9)"
        );
    }
}

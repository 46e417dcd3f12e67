//! The commands that print messages: `last`, `since` and `follow`, page by page.

use std::io::{self, IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mboard_protocol::{Message, MessageId};
use rustix::event::{PollFd, PollFlags, Timespec, poll};

use super::run::{Failure, Output};
use crate::{Client, FollowEvent, Start, output};

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

/// Ends the follower, exit code 0, on Ctrl+C or once standard output is closed.
fn stop_on_ctrl_c_or_closed_output(client: &mut Client) {
    let interrupted = Arc::new(AtomicBool::new(false));
    // A second Ctrl+C ends it at once (exit 130), should the first not be seen: a write
    // blocked on a reader that stopped reading, say. Should the handlers not install,
    // Ctrl+C ends the process the default way: the output is flushed message by message,
    // so nothing is lost but the exit code.
    let sigint = signal_hook::consts::SIGINT;
    let _ = signal_hook::flag::register_conditional_shutdown(sigint, 130, interrupted.clone());
    let _ = signal_hook::flag::register(sigint, interrupted.clone());
    let watch_output = !io::stdout().is_terminal();
    client.interrupt_when(Box::new(move || {
        interrupted.load(Ordering::Relaxed) || (watch_output && stdout_gone())
    }));
}

/// `follow`: from the newest `n` (0: all) or after `after`, until interrupted.
pub(super) fn follow(
    client: &mut Client,
    n: u64,
    after: Option<u64>,
    full: bool,
    how: Output,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let start = match after {
        Some(id) => Start::After(MessageId(id)),
        None if n == 0 => Start::Beginning,
        None => Start::Newest(n),
    };
    stop_on_ctrl_c_or_closed_output(client);
    let mut follow = client.follow(start)?;
    while let Some(event) = follow.next() {
        match event? {
            FollowEvent::Message(m) => writeln!(out, "{}", line(&m, how, full))?,
            FollowEvent::Missed { first, count } => say(out, &missed(first, count))?,
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
    Ok(())
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

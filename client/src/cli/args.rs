//! What `mboard-client` accepts.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand};
use clap_complete::Shell;

/// Shown after `--help`.
const AFTER_HELP: &str = "\
Options may come before or after the command: `mboard-client last --json` works.

Exit codes: 0 success; 1 the server answered with an error, or a reply could not be read;
2 usage error; 3 no server answered (nothing within --timeout, past --max-time, or the
connection was refused).";

/// Publish to and read from an mboard message board over UDP.
#[derive(Debug, Parser)]
#[command(name = "mboard-client", version, after_help = AFTER_HELP)]
pub(crate) struct Args {
    /// Server address: `host:port`, or `host` for port 7777. Every address a name resolves
    /// to is tried until one answers. A comma-separated list names servers of one clustered
    /// board: each command goes to one of them, and starts over on the next when one does
    /// not answer (a publish keeps its token, so it is stored once).
    #[arg(
        long,
        global = true,
        env = "MBOARD_SERVER",
        default_value = "127.0.0.1:7777",
        value_name = "ADDR[,ADDR…]"
    )]
    pub server: String,

    /// The longest silence tolerated: give up when nothing has come from the server for
    /// this long (`5s`, `500ms`, `2m`). A slow transfer that keeps making progress goes on.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// A deadline for the whole command, however lively the server (off by default).
    #[arg(long, global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub max_time: Option<Duration>,

    /// JSON Lines: one JSON value per line (`last`, `since`, `follow`, `get`: an object
    /// per message; `ids`: one array).
    #[arg(long, global = true)]
    pub json: bool,

    /// Speak only the classic protocol (`1:` `2:` `3:`; no sessions, no `4:`), for
    /// classic servers. A publish is then one `1:` datagram, at-least-once: it is resent
    /// only when no reply comes, so a lost reply can store the text twice.
    #[arg(long, global = true, env = "MBOARD_CLASSIC", value_parser = BoolishValueParser::new())]
    pub classic: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Publish a text and print the new message's id.
    Publish {
        /// The text; several words are joined by spaces (`publish hello world`). `-`
        /// reads standard input; after `--`, a text may start with `-`.
        #[arg(
            required_unless_present = "file",
            conflicts_with = "file",
            value_name = "TEXT"
        )]
        text: Vec<String>,
        /// Publish this file's contents.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// The newest N messages, oldest first, one line each.
    Last {
        /// How many (0 = all).
        #[arg(short, default_value_t = 10)]
        n: u64,
        /// Print every text whole; on a terminal, texts are otherwise cut to its width.
        #[arg(long)]
        full: bool,
    },
    /// The newest N messages, then every new one as it is published, until Ctrl+C.
    ///
    /// Each message is printed once, in id order, in the format of `last`. A server that
    /// restarts or cannot be reached for a while is waited for (said once on standard
    /// error, and again when it is back), and following resumes after the last message
    /// printed.
    Follow {
        /// How many to start with (0 = all).
        #[arg(short, default_value_t = 10, value_name = "N")]
        n: u64,
        /// Start with the messages after this id instead of the newest.
        #[arg(long, value_name = "ID", conflicts_with = "n")]
        after: Option<u64>,
        /// Print every text whole; on a terminal, texts are otherwise cut to its width.
        #[arg(long)]
        full: bool,
    },
    /// The messages after ID, oldest first, then exit: the paging primitive for scripts.
    ///
    /// A script keeps the last id it printed and asks `since <that id>` next time.
    /// Messages removed before they could be read are said on standard error.
    Since {
        /// Print the messages after this id.
        id: u64,
        /// At most this many (default: all there are).
        #[arg(short, value_name = "N")]
        n: Option<u64>,
        /// Print every text whole; on a terminal, texts are otherwise cut to its width.
        #[arg(long)]
        full: bool,
    },
    /// One message's text, exactly as stored.
    Get {
        /// The message id.
        id: u64,
        /// Write a binary (non-UTF-8) text to a terminal anyway.
        #[arg(long)]
        force: bool,
        /// Write to FILE instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// The newest N ids, oldest first, one per line.
    Ids {
        /// How many (0 = all).
        #[arg(short, default_value_t = 10)]
        n: u64,
    },
    /// Send one raw datagram and print the reply exactly (download offers are followed).
    Raw {
        /// The PDU, e.g. `2:10` (at most 65,507 bytes).
        pdu: String,
    },
    /// Print a shell completion script: `source <(mboard-client completions bash)`.
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Write the man pages, for packagers: to DIR (one page per command), else the main
    /// page to standard output.
    #[command(hide = true)]
    Manpage {
        /// Where to write them.
        dir: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("mboard-client").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn options_work_after_the_command_too() {
        let a = parse(&[
            "last",
            "--json",
            "--server",
            "h:1",
            "--timeout",
            "2s",
            "-n",
            "3",
        ])
        .expect("parses");
        assert!(a.json);
        assert_eq!(a.server, "h:1");
        assert_eq!(a.timeout, Duration::from_secs(2));
        assert!(matches!(a.command, Command::Last { n: 3, full: false }));
        let a = parse(&["ids", "--max-time", "1m", "--classic"]).expect("parses");
        assert_eq!(a.max_time, Some(Duration::from_secs(60)));
        assert!(a.classic);
        let a = parse(&["--json", "ids"]).expect("parses");
        assert!(a.json && a.max_time.is_none());
    }

    #[test]
    fn follow_starts_from_the_newest_or_after_an_id_and_since_takes_an_id() {
        let follow = |args: &[&str]| match parse(args).map(|a| a.command) {
            Ok(Command::Follow { n, after, full }) => Ok((n, after, full)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.kind()),
        };
        assert_eq!(follow(&["follow"]), Ok((10, None, false)));
        assert_eq!(
            follow(&["follow", "-n", "0", "--full"]),
            Ok((0, None, true))
        );
        assert_eq!(
            follow(&["follow", "--after", "41"]),
            Ok((10, Some(41), false))
        );
        assert_eq!(
            follow(&["follow", "-n", "3", "--after", "41"]),
            Err(clap::error::ErrorKind::ArgumentConflict)
        );
        let since = |args: &[&str]| match parse(args).map(|a| a.command) {
            Ok(Command::Since { id, n, .. }) => Some((id, n)),
            _ => None,
        };
        assert_eq!(since(&["since", "7"]), Some((7, None)));
        assert_eq!(
            since(&["since", "7", "-n", "100", "--json"]),
            Some((7, Some(100)))
        );
        assert_eq!(since(&["since"]), None, "an id is needed");
        assert_eq!(since(&["since", "-1"]), None);
    }

    #[test]
    fn publish_takes_words_and_dashes_after_a_double_dash() {
        let words = |a: Args| match a.command {
            Command::Publish { text, .. } => text,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            words(parse(&["publish", "hello", "world"]).expect("parses")),
            ["hello", "world"]
        );
        assert_eq!(
            words(parse(&["publish", "--", "-n", "5"]).expect("parses")),
            ["-n", "5"]
        );
        assert!(parse(&["publish", "-n", "5"]).is_err(), "an unknown option");
        assert!(parse(&["publish"]).is_err());
        assert!(parse(&["publish", "x", "--file", "y"]).is_err());
    }
}

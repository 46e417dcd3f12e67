//! `mboard-client`: publish to and read from an mboard server.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mboard_client::{Client, ClientConfig, ClientError, output};
use mboard_protocol::MessageId;

/// Publish to and read from an mboard message board over UDP.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Server address, `host:port` (default: $MBOARD_SERVER, else 127.0.0.1:7777).
    #[arg(long, env = "MBOARD_SERVER", default_value = "127.0.0.1:7777")]
    server: String,

    /// Overall deadline of the command (`5s`, `500ms`, `2m`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish TEXT (`-` reads standard input) and print the new message's id.
    Publish {
        /// The text to publish, or `-` for standard input.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        text: Option<String>,
        /// Publish the contents of this file.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// The newest N messages, oldest first, one per line.
    Last {
        /// How many (0 = all).
        #[arg(short, default_value_t = 10)]
        n: u64,
    },
    /// One message's text, exactly as stored.
    Get {
        /// The message id.
        id: u64,
    },
    /// The newest N ids, oldest first, one per line.
    Ids {
        /// How many (0 = all).
        #[arg(short, default_value_t = 10)]
        n: u64,
    },
    /// Send one raw datagram and print the reply exactly (download offers are followed).
    Raw {
        /// The PDU, e.g. `2:10`.
        pdu: String,
    },
}

/// A failure and the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::Timeout { .. } => 3,
            ClientError::Resolve(_) => 2,
            ClientError::Server { .. } | ClientError::Protocol(_) | ClientError::Io(_) => 1,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        // Writing the output failed (a closed pipe, a full disk).
        Failure {
            code: 1,
            message: format!("cannot write output: {e}"),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let _ = writeln!(std::io::stderr(), "error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn read_input(text: Option<String>, file: Option<PathBuf>) -> Result<Vec<u8>, Failure> {
    let usage = |message: String| Failure { code: 2, message };
    match (text.as_deref(), file) {
        (_, Some(path)) => {
            std::fs::read(&path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))
        }
        (Some("-"), None) => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| usage(format!("cannot read standard input: {e}")))?;
            Ok(buf)
        }
        (Some(text), None) => Ok(text.as_bytes().to_vec()),
        (None, None) => Err(usage("nothing to publish".into())),
    }
}

fn run(args: Args) -> Result<(), Failure> {
    let server = mboard_client::resolve(&args.server)?;
    let config = ClientConfig {
        timeout: args.timeout,
        ..ClientConfig::default()
    };
    let mut client = Client::new(server, config)?;
    let stderr_is_terminal = std::io::stderr().is_terminal();
    if stderr_is_terminal {
        // Redrawn only when the percentage moves: one write per block would cost a
        // system call per datagram on a multi-megabyte transfer.
        let mut shown = None;
        client.on_progress(Box::new(move |done, total| {
            let percent = done.min(total) * 100 / total.max(1);
            if shown == Some(percent) {
                return;
            }
            shown = Some(percent);
            let mut err = std::io::stderr();
            let _ = err.write_all(output::progress_bar(done, total).as_bytes());
            if done >= total {
                let _ = err.write_all(b"\n");
            }
        }));
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.command {
        Command::Publish { text, file } => {
            let text = read_input(text, file)?;
            if text.is_empty() {
                return Err(Failure {
                    code: 2,
                    message: "cannot publish an empty text".into(),
                });
            }
            let id = client.publish(&text)?;
            writeln!(out, "{id}")?;
        }
        Command::Get { id } => {
            let entry = client.get(MessageId(id))?;
            if args.json {
                writeln!(out, "{}", output::json(MessageId(id), &entry))?;
            } else {
                out.write_all(&entry.text)?;
            }
        }
        Command::Last { n } => {
            for m in client.last(n)? {
                let line = if args.json {
                    output::json(m.id, &m.entry)
                } else {
                    output::line(m.id, &m.entry)
                };
                writeln!(out, "{line}")?;
            }
        }
        Command::Ids { n } => {
            let ids = client.ids(n)?;
            if args.json {
                let list: Vec<String> = ids.iter().map(ToString::to_string).collect();
                writeln!(out, "[{}]", list.join(","))?;
            } else {
                for id in ids {
                    writeln!(out, "{id}")?;
                }
            }
        }
        Command::Raw { pdu } => {
            let reply = client.raw(pdu.as_bytes())?;
            out.write_all(&reply)?;
            // Exactly the reply when piped; a terminal gets a newline so the prompt is not glued on.
            if std::io::stdout().is_terminal() {
                writeln!(out)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

//! Running one command: its output, its errors and its exit code.

use std::cell::RefCell;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Instant;

use clap::{CommandFactory, Parser};
use mboard_protocol::MessageId;

use super::manual;
use super::progress::Bar;
use super::read;
use super::term::Term;
use super::{Args, Command};
use crate::deadline::REFUSAL_GRACE;
use crate::{Client, ClientConfig, ClientError, Servers, output};

/// Why the command stopped, and its exit code.
#[derive(Debug)]
pub(super) struct Failure {
    code: u8,
    /// `None` ends the command without a word (a closed pipe).
    message: Option<String>,
}

impl Failure {
    fn usage(message: String) -> Self {
        Failure {
            code: 2,
            message: Some(message),
        }
    }

    /// Writing the output failed. A reader that went away (`last | head -1`) is how a
    /// pipeline says it has enough: stop quietly with success, as other Unix tools do.
    fn output(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::BrokenPipe => Failure {
                code: 0,
                message: None,
            },
            _ => Failure {
                code: 1,
                message: Some(format!("cannot write output: {e}")),
            },
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::output(e)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::Timeout { .. } | ClientError::MaxTime { .. } => 3,
            // No server answered there: as good as no reply, only known sooner.
            ClientError::Refused { .. } => 3,
            ClientError::Resolve(_)
            | ClientError::DatagramTooLarge { .. }
            | ClientError::ClassicMode { .. } => 2,
            ClientError::Server { .. }
            | ClientError::TooLarge { .. }
            | ClientError::Malformed { .. }
            | ClientError::Unsupported { .. }
            | ClientError::Io(_) => 1,
            // Asked for (Ctrl+C in `follow`): a way to end, not a failure.
            ClientError::Interrupted => {
                return Failure {
                    code: 0,
                    message: None,
                };
            }
        };
        Failure {
            code,
            message: Some(e.to_string()),
        }
    }
}

/// Parses the command line, runs the command and returns its exit code.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let bar = Rc::new(RefCell::new(Bar::default()));
    match run(args, Term::detect(), &bar) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let mut err = io::stderr();
            if let Some(clear) = bar.borrow_mut().clear() {
                let _ = err.write_all(clear.as_bytes());
            }
            if let Some(message) = &f.message {
                let _ = writeln!(err, "error: {message}");
            }
            ExitCode::from(f.code)
        }
    }
}

fn run(args: Args, term: Term, bar: &Rc<RefCell<Bar>>) -> Result<(), Failure> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match args.command {
        Command::Completions { shell } => {
            manual::completions(&mut Args::command(), shell, &mut out);
        }
        Command::Manpage { dir: None } => manual::manpage(Args::command(), &mut out)?,
        Command::Manpage { dir: Some(dir) } => {
            for page in
                manual::write_manpages(Args::command(), &dir).map_err(|e| usage_io(&dir, e))?
            {
                writeln!(out, "{}", page.display())?;
            }
        }
        _ => {
            let config = ClientConfig {
                timeout: args.timeout,
                max_time: args.max_time,
                classic: args.classic,
                // A closed port is said at once, after riding out a quick restart.
                refusal_grace: Some(REFUSAL_GRACE),
                ..ClientConfig::default()
            };
            let mut client = Servers::parse(&args.server, config)?;
            let bar = term.stderr.then(|| bar.clone());
            client.on_client(Box::new(move |c| {
                if let Some(bar) = &bar {
                    show_progress(c, bar.clone());
                }
                c.on_warning(Box::new(|text| {
                    let _ = writeln!(io::stderr(), "warning: {text}");
                }));
            }));
            let how = Output {
                json: args.json,
                term,
            };
            board_command(&mut client, args.command, how, &mut out)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn usage_io(path: &Path, e: io::Error) -> Failure {
    Failure::usage(format!("cannot write to {}: {e}", path.display()))
}

/// Draws the bar on standard error as transfers report progress.
fn show_progress(client: &mut Client, bar: Rc<RefCell<Bar>>) {
    client.on_progress(Box::new(move |done, total| {
        if let Some(draw) = bar.borrow_mut().update(done, total, Instant::now()) {
            let _ = io::stderr().write_all(draw.as_bytes());
        }
    }));
}

/// How results are printed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Output {
    pub(super) json: bool,
    pub(super) term: Term,
}

fn board_command(
    client: &mut Servers,
    command: Command,
    how: Output,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    match command {
        Command::Publish { text, file } => {
            let text = read_input(text, file)?;
            if text.is_empty() {
                return Err(Failure::usage("cannot publish an empty text".into()));
            }
            let id = client.publish(&text).map_err(|e| e.for_text(text.len()))?;
            writeln!(out, "{id}")?;
        }
        Command::Get { id, force, output } => get(client, id, force, output, how, out)?,
        Command::Last { n, full } => read::last(&mut client.client()?, n, full, how, out)?,
        Command::Since { id, n, full } => {
            read::since(&mut client.client()?, id, n, full, how, out)?
        }
        Command::Follow { n, after, full } => read::follow(client, n, after, full, how, out)?,
        Command::Ids { n } => {
            let ids = client.ids(n)?;
            if how.json {
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
            if how.term.stdout {
                writeln!(out)?;
            }
        }
        // Answered before any client exists.
        Command::Completions { .. } | Command::Manpage { .. } => {}
    }
    Ok(())
}

/// The text to publish: a file, standard input (`-`), or the words given, joined by spaces.
fn read_input(words: Vec<String>, file: Option<PathBuf>) -> Result<Vec<u8>, Failure> {
    if let Some(path) = file {
        return std::fs::read(&path)
            .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())));
    }
    if words == ["-"] {
        let mut buf = Vec::new();
        io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Failure::usage(format!("cannot read standard input: {e}")))?;
        return Ok(buf);
    }
    Ok(words.join(" ").into_bytes())
}

/// Text a terminal should not get unasked: not UTF-8, or with NUL bytes in it.
fn is_binary(text: &[u8]) -> bool {
    std::str::from_utf8(text).is_err() || text.contains(&0)
}

fn get(
    client: &mut Servers,
    id: u64,
    force: bool,
    file: Option<PathBuf>,
    how: Output,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let entry = client.get(MessageId(id))?;
    let mut bytes = if how.json {
        format!("{}\n", output::json(MessageId(id), &entry)).into_bytes()
    } else {
        entry.text.to_vec()
    };
    if let Some(path) = file {
        return std::fs::write(&path, &bytes).map_err(|e| Failure {
            code: 1,
            message: Some(format!("cannot write {}: {e}", path.display())),
        });
    }
    if how.term.stdout && !how.json {
        // curl's rule: binary on a terminal is garbage at best and escape sequences at
        // worst, so it takes an explicit --force (or a file, or a pipe).
        if is_binary(&entry.text) && !force {
            return Err(Failure::usage(format!(
                "message {id} is binary (not UTF-8 text); not writing it to a terminal \
                 (use -o FILE, a pipe, or --force)"
            )));
        }
        if !bytes.ends_with(b"\n") {
            bytes.push(b'\n');
        }
    }
    out.write_all(&bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_joined_and_a_lone_dash_is_not_a_word() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let text = read_input(words(&["hello", "world"]), None).expect("words");
        assert_eq!(text, b"hello world");
        let text = read_input(words(&["-", "x"]), None).expect("words");
        assert_eq!(text, b"- x");
    }

    #[test]
    fn binary_means_not_utf8_or_nul() {
        assert!(!is_binary("plain\ntext é".as_bytes()));
        assert!(is_binary(b"\xff\xfe"));
        assert!(is_binary(b"a\0b"));
    }

    #[test]
    fn exit_codes_follow_the_kind_of_failure() {
        let code = |e: ClientError| Failure::from(e).code;
        let server = "s".to_string();
        let after = std::time::Duration::from_secs(1);
        assert_eq!(
            code(ClientError::Timeout {
                server: server.clone(),
                after
            }),
            3
        );
        assert_eq!(
            code(ClientError::MaxTime {
                server: server.clone(),
                after
            }),
            3
        );
        assert_eq!(
            code(ClientError::Refused {
                server: server.clone()
            }),
            3
        );
        assert_eq!(code(ClientError::Resolve("x".into())), 2);
        let detail = "x".to_string();
        assert_eq!(code(ClientError::Malformed { server, detail }), 1);
        let pipe = Failure::output(io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!((pipe.code, pipe.message), (0, None));
    }
}

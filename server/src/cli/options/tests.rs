use std::io::Write;

use clap::Parser;

use super::*;

/// A command shaped like the server's: values, a switch, a conflict, a default, a
/// heading, a list, and a hidden flag.
#[derive(Debug, Parser)]
struct Demo {
    #[arg(long, default_value_t = 7)]
    size: u32,
    #[arg(long, conflicts_with = "dir")]
    in_memory: bool,
    #[arg(long, default_value = "data")]
    dir: String,
    #[arg(long, default_value = "1s")]
    wait: humantime::Duration,
    #[arg(long, help_heading = "Reloaded")]
    level: Option<String>,
    #[arg(long, value_parser = ["a", "b"])]
    mode: Option<String>,
    #[arg(long)]
    tag: Vec<String>,
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, hide = true)]
    secret: bool,
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("write");
    f
}

fn parse(args: &[&str], text: &str) -> Result<(Options, Demo), FileError> {
    let f = file(text);
    let argv = std::iter::once("demo").chain(args.iter().copied());
    let first = Options::try_from_args(
        <Demo as clap::CommandFactory>::command(),
        argv.map(OsString::from).collect(),
    )
    .expect("command line");
    let options = first.with_file(Some(f.path()))?;
    let demo =
        <Demo as clap::FromArgMatches>::from_arg_matches(options.matches()).expect("matches");
    Ok((options, demo))
}

#[test]
fn the_file_fills_in_what_the_command_line_leaves_out() {
    let (options, demo) = parse(
        &["--size", "9"],
        "size = 100\ndir = \"/var/lib/x\"\nwait = \"250ms\"\nlevel = \"debug\"\ntag = [\"a\", \"b\"]\n",
    )
    .expect("parse");
    assert_eq!(demo.size, 9, "the command line wins");
    assert_eq!(demo.dir, "/var/lib/x");
    assert_eq!(*demo.wait, std::time::Duration::from_millis(250));
    assert_eq!(demo.level.as_deref(), Some("debug"));
    assert_eq!(demo.tag, ["a", "b"]);
    let line = options.describe();
    assert!(line.contains("size=9 "), "{line}");
    assert!(line.contains("dir=/var/lib/x "), "{line}");
    assert!(line.contains("from the command line: size;"), "{line}");
    assert!(line.contains(": dir,wait,level,tag)"), "{line}");
    assert!(
        !line.contains("secret"),
        "hidden flags are not options: {line}"
    );
    let level = options.values().into_iter().find(|v| v.name == "level");
    assert_eq!(level.and_then(|v| v.heading).as_deref(), Some("Reloaded"));
}

#[test]
fn defaults_stay_where_neither_says_anything() {
    let (options, demo) = parse(&[], "").expect("parse");
    assert_eq!((demo.size, demo.dir.as_str()), (7, "data"));
    assert!(options.describe().contains("from the environment: none"));
}

#[test]
fn switches_take_booleans_and_the_command_line_wins_a_conflict() {
    let (_, demo) = parse(&[], "in-memory = true").expect("parse");
    assert!(demo.in_memory);
    let (_, demo) = parse(&[], "in-memory = false").expect("parse");
    assert!(!demo.in_memory);
    // `--in-memory` on the command line drops the file's `dir` instead of conflicting.
    let (options, demo) = parse(&["--in-memory"], "dir = \"x\"").expect("parse");
    assert!(demo.in_memory);
    assert_eq!(demo.dir, "data");
    assert!(
        options
            .describe()
            .contains("from the command line: in-memory;")
    );
}

fn refused(args: &[&str], text: &str) -> String {
    let message = parse(args, text).expect_err("refused").to_string();
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(message.starts_with("config file /"), "{message}");
    message
}

#[test]
fn bad_files_are_refused_in_one_line_naming_the_key() {
    let cases = [
        ("nonsense = 1", "unknown option `nonsense`"),
        (
            "in_memory = true",
            "unknown option `in_memory` (did you mean `in-memory`?)",
        ),
        ("secret = true", "unknown option `secret`"),
        ("help = true", "unknown option `help`"),
        ("config = \"x\"", "`config` cannot be set in a config file"),
        (
            "size = \"big\"",
            "`size` has an invalid value `big`: invalid digit found in string",
        ),
        ("size = -1", "`size` has an invalid value `-1`"),
        ("wait = 5", "`wait` has an invalid value `5`"),
        (
            "mode = \"c\"",
            "`mode` has an invalid value `c`: expected one of a, b",
        ),
        (
            "in-memory = 1",
            "`in-memory` is a switch: write `true` or `false`",
        ),
        ("size = [1, 2]", "`size` takes one value, not a list"),
        ("[size]\nx = 1", "`size` is a table"),
        (
            "size = 1979-05-27",
            "`size` takes a string or a number, not a date",
        ),
        (
            "in-memory = true\ndir = \"x\"",
            "`dir` and `in-memory` cannot both be set",
        ),
        ("size = 1\nsize = 2", "line 2, column 1: duplicate key"),
        ("size = ", "line 1, column 8"),
    ];
    for (text, expected) in cases {
        let message = refused(&[], text);
        assert!(message.contains(expected), "{text:?}: {message}");
    }
}

#[test]
fn a_missing_file_says_why_once() {
    let argv = ["demo"].map(OsString::from).to_vec();
    let first = Options::try_from_args(<Demo as clap::CommandFactory>::command(), argv)
        .expect("command line");
    let message = first
        .with_file(Some(Path::new("/nonexistent/mboard.toml")))
        .expect_err("missing")
        .to_string();
    assert_eq!(
        message,
        "cannot read config file /nonexistent/mboard.toml: No such file or directory (os error 2)"
    );
}

#[test]
fn rereading_sees_the_file_as_it_is_now() {
    let f = file("size = 1");
    let argv = ["demo", "--dir", "d"].map(OsString::from).to_vec();
    let options = Options::try_from_args(<Demo as clap::CommandFactory>::command(), argv)
        .expect("command line")
        .with_file(Some(f.path()))
        .expect("file");
    std::fs::write(f.path(), "size = 2\ndir = \"e\"").expect("rewrite");
    let again = options.reread().expect("reread");
    let size = |o: &Options| o.matches().get_one::<u32>("size").copied();
    assert_eq!((size(&options), size(&again)), (Some(1), Some(2)));
    assert_eq!(
        again.matches().get_one::<String>("dir").map(String::as_str),
        Some("d"),
        "the command line still wins"
    );
    assert_eq!(again.file(), Some(f.path()));
}

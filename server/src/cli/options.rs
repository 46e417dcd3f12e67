//! Options from the command line, the environment and a TOML config file, in that order
//! of precedence, for every option of a `clap::Command` that has a long name.
//!
//! The file's values are checked by each option's own parser, then handed to clap as
//! `--name=value` arguments after the real ones, for the options that neither the command
//! line nor the environment set (and that do not conflict with one they set). So clap
//! applies its own rules to all three sources, the process environment is never written,
//! and an option added to `Args` later is read from the file with nothing more to do.

use std::error::Error as _;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// Options as parsed, and where they came from.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    cmd: Command,
    argv: Vec<OsString>,
    /// The command line and the environment alone.
    first: ArgMatches,
    /// All three sources.
    matches: ArgMatches,
    /// The config file, if one was given.
    file: Option<PathBuf>,
    /// Ids of the options whose values come from the file.
    from_file: Vec<String>,
}

/// A config file that cannot be used; always names the file, and the key if there is one.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: line {line}, column {column}: {message}", .path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config file {}: unknown option `{key}`{hint}", .path.display())]
    Unknown {
        path: PathBuf,
        key: String,
        hint: String,
    },
    #[error("config file {}: `{key}` {problem}", .path.display())]
    Value {
        path: PathBuf,
        key: String,
        problem: String,
    },
    #[error("config file {}: `{first}` and `{second}` cannot both be set", .path.display())]
    Conflict {
        path: PathBuf,
        first: String,
        second: String,
    },
    #[error("config file {}: {message}", .path.display())]
    Rejected { path: PathBuf, message: String },
}

/// One option's effective value, for the start-up line and for SIGHUP's comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Value {
    /// Its long name.
    pub(crate) name: String,
    /// Its value as given (`None`: unset), several joined by commas.
    pub(crate) value: Option<String>,
    /// Its `--help` heading, if it has one.
    pub(crate) heading: Option<String>,
}

impl Options {
    /// Parses the process's command line and environment. A bad one, `--help` and
    /// `--version` end the process as clap does.
    pub(crate) fn from_command_line(cmd: Command) -> Options {
        let argv: Vec<OsString> = std::env::args_os().collect();
        Self::try_from_args(cmd, argv).unwrap_or_else(|e| e.exit())
    }

    /// Parses `argv` (program name first) and the environment.
    pub(crate) fn try_from_args(cmd: Command, argv: Vec<OsString>) -> Result<Options, clap::Error> {
        let mut cmd = switches_from_environment(cmd);
        cmd.build();
        let first = cmd.clone().try_get_matches_from(&argv)?;
        Ok(Options {
            cmd,
            argv,
            matches: first.clone(),
            first,
            file: None,
            from_file: Vec::new(),
        })
    }

    /// All options, from every source.
    pub(crate) fn matches(&self) -> &ArgMatches {
        &self.matches
    }

    /// The config file given, if any.
    pub(crate) fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// These options with the config file at `path` (if any) under them.
    pub(crate) fn with_file(self, path: Option<&Path>) -> Result<Options, FileError> {
        match path {
            Some(path) => self.layered(path),
            None => Ok(self),
        }
    }

    /// The same command line and environment over what the config file says now.
    pub(crate) fn reread(&self) -> Result<Options, FileError> {
        match &self.file {
            Some(path) => self.layered(path),
            None => Ok(self.clone()),
        }
    }

    fn layered(&self, path: &Path) -> Result<Options, FileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let table = parse_toml(path, &text)?;
        let mut argv = self.argv.clone();
        let mut from_file: Vec<&Arg> = Vec::new();
        for (key, value) in &table {
            let arg = self.file_option(path, key)?;
            if self.overridden(arg) {
                continue;
            }
            let bad = |problem: String| FileError::Value {
                path: path.to_owned(),
                key: key.clone(),
                problem,
            };
            let words = arguments(arg, value).map_err(bad)?;
            // A switch set to `false` says nothing: it conflicts with nothing either.
            if words.is_empty() {
                continue;
            }
            for word in words {
                self.check(arg, &word).map_err(bad)?;
                argv.push(word);
            }
            from_file.push(arg);
        }
        for (i, a) in from_file.iter().enumerate() {
            if let Some(b) = from_file[i + 1..].iter().find(|b| self.conflict(a, b)) {
                return Err(FileError::Conflict {
                    path: path.to_owned(),
                    first: long(a).to_owned(),
                    second: long(b).to_owned(),
                });
            }
        }
        let matches =
            self.cmd
                .clone()
                .try_get_matches_from(&argv)
                .map_err(|e| FileError::Rejected {
                    path: path.to_owned(),
                    message: reason(&e),
                })?;
        Ok(Options {
            matches,
            file: Some(path.to_owned()),
            from_file: from_file.iter().map(|a| a.get_id().to_string()).collect(),
            ..self.clone()
        })
    }

    /// The option a file's key names, if a file may set it.
    fn file_option(&self, path: &Path, key: &str) -> Result<&Arg, FileError> {
        let settable =
            |a: &&Arg| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version");
        let named = |name: &str| {
            self.cmd
                .get_arguments()
                .filter(settable)
                .find(|a| a.get_long() == Some(name))
        };
        match named(key) {
            Some(arg) if arg.get_id() == "config" => Err(FileError::Value {
                path: path.to_owned(),
                key: key.to_owned(),
                problem: "cannot be set in a config file".to_owned(),
            }),
            Some(arg) => Ok(arg),
            None => {
                let spelled = key.replace('_', "-");
                let hint = match named(&spelled) {
                    Some(_) => format!(" (did you mean `{spelled}`?)"),
                    None => String::new(),
                };
                Err(FileError::Unknown {
                    path: path.to_owned(),
                    key: key.to_owned(),
                    hint,
                })
            }
        }
    }

    /// Whether the command line or the environment set `arg`, or one it conflicts with:
    /// then they win over the file.
    fn overridden(&self, arg: &Arg) -> bool {
        let explicit = |a: &Arg| {
            matches!(
                self.first.value_source(a.get_id().as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        explicit(arg)
            || self
                .cmd
                .get_arguments()
                .any(|other| explicit(other) && self.conflict(arg, other))
    }

    fn conflict(&self, a: &Arg, b: &Arg) -> bool {
        let lists = |x: &Arg, y: &Arg| {
            self.cmd
                .get_arg_conflicts_with(x)
                .iter()
                .any(|c| c.get_id() == y.get_id())
        };
        lists(a, b) || lists(b, a)
    }

    /// Checks one `--name=value` argument with the option's own parser, alone, so that
    /// its error is about it.
    fn check(&self, arg: &Arg, word: &OsString) -> Result<(), String> {
        if !arg.get_action().takes_values() {
            return Ok(());
        }
        let program = self.argv.first().cloned().unwrap_or_default();
        self.cmd
            .clone()
            .try_get_matches_from([program, word.clone()])
            .map(drop)
            .map_err(|e| {
                let value = word.to_string_lossy();
                let value = value.split_once('=').map_or("", |(_, v)| v);
                format!("has an invalid value `{value}`: {}", reason(&e))
            })
    }

    /// Every option a file may set, with its effective value.
    pub(crate) fn values(&self) -> Vec<Value> {
        self.settable()
            .map(|arg| {
                let value = self.matches.get_raw(arg.get_id().as_str()).map(|raw| {
                    // Secrets (`hide_env_values`: passwords, tokens) are logged by this
                    // line and by SIGHUP: never their values.
                    if arg.is_hide_env_values_set() {
                        return "(hidden)".to_owned();
                    }
                    raw.map(|v| v.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(",")
                });
                Value {
                    name: long(arg).to_owned(),
                    value,
                    heading: arg.get_help_heading().map(str::to_owned),
                }
            })
            .collect()
    }

    fn settable(&self) -> impl Iterator<Item = &Arg> {
        self.cmd.get_arguments().filter(|a| {
            a.get_long().is_some()
                && !a.is_hide_set()
                && !matches!(a.get_id().as_str(), "help" | "version")
        })
    }

    /// The effective configuration in one line: every option set, and where from.
    pub(crate) fn describe(&self) -> String {
        let mut line = String::new();
        for v in self.values() {
            if let Some(value) = v.value {
                let needs_quotes = value.is_empty() || value.contains([' ', '"', '\t']);
                if needs_quotes {
                    line.push_str(&format!("{}={value:?} ", v.name));
                } else {
                    line.push_str(&format!("{}={value} ", v.name));
                }
            }
        }
        let names = |which: &dyn Fn(&Arg) -> bool| {
            self.settable()
                .filter(|a| which(a))
                .map(long)
                .collect::<Vec<_>>()
                .join(",")
        };
        let from_file = |a: &Arg| self.from_file.iter().any(|id| id == a.get_id().as_str());
        let source = |a: &Arg| self.matches.value_source(a.get_id().as_str());
        let cli = names(&|a| source(a) == Some(ValueSource::CommandLine) && !from_file(a));
        let env = names(&|a| source(a) == Some(ValueSource::EnvVariable));
        let file = names(&from_file);
        line.push_str(&format!(
            "(from the command line: {}; from the environment: {}; from {}: {})",
            or_none(&cli),
            or_none(&env),
            self.file
                .as_deref()
                .map_or("no config file".to_owned(), |p| p.display().to_string()),
            or_none(&file),
        ));
        line
    }
}

/// Lets a switch's variable say `1`, `yes`, `on` or `true`, and `0`, `no`, `off`, `false`
/// or nothing. A switch set off by its variable is left out entirely, as if the variable
/// were unset: clap would otherwise count it as given, and refuse the options it conflicts
/// with (`MBOARD_IN_MEMORY=false` with `--data-dir`).
fn switches_from_environment(cmd: Command) -> Command {
    cmd.mut_args(|arg| {
        if !matches!(arg.get_action(), ArgAction::SetTrue) {
            return arg;
        }
        let off = arg.get_env().and_then(std::env::var_os).is_some_and(|v| {
            let v = v.to_string_lossy().trim().to_ascii_lowercase();
            matches!(v.as_str(), "" | "0" | "n" | "no" | "f" | "false" | "off")
        });
        let arg = arg.value_parser(clap::builder::BoolishValueParser::new());
        if off { arg.env(None) } else { arg }
    })
}

fn or_none(list: &str) -> &str {
    if list.is_empty() { "none" } else { list }
}

fn long(arg: &Arg) -> &str {
    arg.get_long().unwrap_or_else(|| arg.get_id().as_str())
}

/// The file's top-level keys, or its first syntax error as a line and column.
fn parse_toml(path: &Path, text: &str) -> Result<toml::Table, FileError> {
    text.parse::<toml::Table>().map_err(|e| {
        let at = e.span().map_or(0, |s| s.start).min(text.len());
        let before = &text[..at];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        FileError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })
}

/// The command-line arguments that say what `value` says for `arg`.
fn arguments(arg: &Arg, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let flag = format!("--{}", long(arg));
    let with = |v: &str| OsString::from(format!("{flag}={v}"));
    match (arg.get_action(), value) {
        (ArgAction::SetTrue, toml::Value::Boolean(on)) => {
            Ok(on.then(|| flag.into()).into_iter().collect())
        }
        (ArgAction::SetFalse, toml::Value::Boolean(on)) => {
            Ok((!on).then(|| flag.into()).into_iter().collect())
        }
        (ArgAction::SetTrue | ArgAction::SetFalse, _) => {
            Err("is a switch: write `true` or `false`".to_owned())
        }
        (ArgAction::Append, toml::Value::Array(items)) => items
            .iter()
            .map(|item| scalar(item).map(|v| with(&v)))
            .collect(),
        (ArgAction::Set | ArgAction::Append, value) => Ok(vec![with(&scalar(value)?)]),
        _ => Err("cannot be set in a config file".to_owned()),
    }
}

/// A string, number or boolean as the command line would spell it.
fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(_) => Err("takes one value, not a list".to_owned()),
        toml::Value::Table(_) => {
            Err("is a table: options are top-level keys, `name = value`".to_owned())
        }
        toml::Value::Datetime(_) => Err("takes a string or a number, not a date".to_owned()),
    }
}

/// What clap found wrong, in one line without its usage text.
fn reason(e: &clap::Error) -> String {
    if let Some(source) = e.source() {
        return source.to_string();
    }
    let rendered = e.to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned();
    match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) => format!("expected one of {}", valid.join(", ")),
        _ => first,
    }
}

#[cfg(test)]
mod tests;

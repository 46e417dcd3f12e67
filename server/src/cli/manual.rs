//! The man page and the shell completions, generated from the options themselves so that
//! they always match the binary that prints them (no build script, no copy to keep up).

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context;

use super::RELOADED;

/// Hidden flags for packagers.
#[derive(Debug, clap::Args)]
pub(crate) struct Packaging {
    /// Write the man page (`mboard-server.1`) into DIR and print its path.
    #[arg(long, hide = true, value_name = "DIR")]
    manpage: Option<PathBuf>,

    /// Print a completion script for SHELL.
    #[arg(long, hide = true, value_name = "SHELL")]
    completions: Option<clap_complete::Shell>,
}

impl Packaging {
    /// Does what was asked of `cmd`, if anything; `true` if it did (and the program ends).
    pub(crate) fn run(&self, mut cmd: clap::Command) -> anyhow::Result<bool> {
        let mut out = io::stdout().lock();
        if let Some(dir) = &self.manpage {
            let cannot = || format!("cannot write the man page into {}", dir.display());
            std::fs::create_dir_all(dir).with_context(cannot)?;
            let path = dir.join(format!("{}.1", cmd.get_name()));
            let mut page = Vec::new();
            manual(cmd, &mut page)?;
            std::fs::write(&path, page).with_context(cannot)?;
            writeln!(out, "{}", path.display())?;
            return Ok(true);
        }
        if let Some(shell) = self.completions {
            let name = cmd.get_name().to_owned();
            clap_complete::generate(shell, &mut cmd, name, &mut out);
            return Ok(true);
        }
        Ok(false)
    }
}

/// Writes the man page of `cmd`: clap's sections, then the environment variables, the
/// config file and the signals, which clap does not describe.
fn manual(cmd: clap::Command, out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = cmd;
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    out.write_all(extra_sections(&cmd).as_bytes())?;
    man.render_version_section(out)
}

/// Text for roff: its escape character and dashes escaped, no line taken for a request.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

fn extra_sections(cmd: &clap::Command) -> String {
    let options: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.get_long().is_some() && !a.is_hide_set())
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    let mut page = String::from(
        ".SH ENVIRONMENT\nEvery option can also be given by an environment variable. The command line wins over the environment, which wins over the config file, which wins over the defaults.\n",
    );
    for arg in &options {
        if let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) {
            page.push_str(&format!(
                ".TP\n\\fB{}\\fR\n\\fB\\-\\-{}\\fR\n",
                roff(&env.to_string_lossy()),
                roff(long)
            ));
        }
    }
    page.push_str(&format!(
        ".SH FILES\n.TP\n\\fB\\-\\-config\\fR \\fIFILE\\fR\nA TOML file of options, each by its long name: {}. Unknown names and values of the wrong kind are refused, naming the key.\n",
        roff("`max-sessions = 1000`, `in-memory = true`, `session-timeout = \"30s\"`")
    ));
    let reloaded: Vec<String> = options
        .iter()
        .filter(|a| a.get_help_heading() == Some(RELOADED))
        .filter_map(|a| a.get_long())
        .map(|l| format!("\\fB\\-\\-{}\\fR", roff(l)))
        .collect();
    page.push_str(&format!(
        ".SH SIGNALS\n.TP\nSIGHUP\nReads the config file again and applies {}, logging what changed; other options keep their values until a restart, and a file that cannot be used changes nothing.\n.TP\nSIGTERM, SIGINT\nStop the server cleanly.\n",
        reloaded.join(", ")
    ));
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roff_text_is_escaped() {
        assert_eq!(roff("--a\\b"), "\\-\\-a\\\\b");
        assert_eq!(roff(".TH"), "\\&.TH");
    }
}

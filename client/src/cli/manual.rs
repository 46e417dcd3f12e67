//! Shell completions and man pages, generated from a program's own `clap::Command`.
//!
//! Nothing here knows about `mboard-client`: both functions take any command, so a binary
//! gets the same by a hidden subcommand that calls them with its own `Args::command()`
//! (this is how `mboard-client manpage` and `mboard-client completions` work; a server
//! does the same with its arguments). No build script and no xtask: the pages always
//! match the binary that printed them.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Writes `shell`'s completion script for `cmd` to `out`.
pub(crate) fn completions(cmd: &mut clap::Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, cmd, name, out);
}

/// Writes the man page of `cmd` (section 1) to `out`.
pub(crate) fn manpage(cmd: clap::Command, out: &mut dyn Write) -> io::Result<()> {
    clap_mangen::Man::new(cmd).render(out)
}

/// Writes a man page for `cmd` and for each of its visible subcommands to `dir`
/// (`mboard-client.1`, `mboard-client-publish.1`, …), and returns their paths, sorted.
pub(crate) fn write_manpages(cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    // Building names the subcommands `mboard-client-publish` and gives them the global
    // options, as their pages should show.
    cmd.build();
    let mut written = Vec::new();
    write_tree(cmd, dir, &mut written)?;
    written.sort();
    Ok(written)
}

fn write_tree(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        write_tree(sub, dir, written)?;
    }
    written.push(clap_mangen::Man::new(cmd).generate_to(dir)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::cli::Args;

    #[test]
    fn completions_know_every_command() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(&mut Args::command(), shell, &mut out);
            let script = String::from_utf8(out).expect("utf8");
            for word in ["mboard-client", "publish", "last", "max-time", "classic"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
        }
    }

    #[test]
    fn man_pages_for_the_command_and_each_subcommand() {
        let mut page = Vec::new();
        manpage(Args::command(), &mut page).expect("render");
        let page = String::from_utf8(page).expect("utf8");
        assert!(page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH mboard-client 1"));
        assert!(page.contains("max\\-time"), "options are documented");
        let dir = std::env::temp_dir().join(format!("mboard-man-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pages = write_manpages(Args::command(), &dir).expect("write");
        let names: Vec<String> = pages
            .iter()
            .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .collect();
        assert!(names.contains(&"mboard-client.1".to_string()), "{names:?}");
        assert!(
            names.contains(&"mboard-client-publish.1".to_string()),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.contains("manpage")), "{names:?}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

//! What the output streams are: terminals or not, and how wide.

use std::io::IsTerminal;

/// The width assumed when a terminal does not say (or standard output is not one).
const FALLBACK_WIDTH: usize = 80;

/// The output streams as the command found them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Term {
    /// Standard output is a terminal.
    pub(crate) stdout: bool,
    /// Standard error is a terminal.
    pub(crate) stderr: bool,
    /// Columns of the terminal.
    pub(crate) width: usize,
}

impl Term {
    /// Looks at the streams: the terminal's own width, else `$COLUMNS`, else 80.
    pub(crate) fn detect() -> Self {
        let stdout = std::io::stdout();
        let width = terminal_size::terminal_size_of(&stdout)
            .map(|(w, _)| usize::from(w.0))
            .filter(|&w| w > 0)
            .or_else(|| std::env::var("COLUMNS").ok()?.parse().ok())
            .unwrap_or(FALLBACK_WIDTH);
        Term {
            stdout: stdout.is_terminal(),
            stderr: std::io::stderr().is_terminal(),
            width,
        }
    }
}

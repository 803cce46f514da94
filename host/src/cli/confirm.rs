//! Confirmation for commands that destroy data.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Result;

use super::usage;

/// Asks `question` on a terminal; without one, only `--yes` proceeds.
pub fn confirm(question: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(usage(format!("{question} needs confirmation; pass --yes")));
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    match answer.trim() {
        "y" | "Y" | "yes" => Ok(()),
        _ => Err(usage("cancelled".into())),
    }
}

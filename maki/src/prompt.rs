//! Questions to the operator on a terminal. A script (stdin not a
//! terminal) is never asked: it is refused, and told which flag says yes.

use std::io::IsTerminal;

use anyhow::bail;

/// Asks a yes/no question; `false` without a terminal or without a yes.
pub fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Confirms a change that cannot be undone: `--force` says yes; without it
/// a terminal is asked `question` and a script is refused.
pub fn confirm_permanent(force: bool, what: &str, question: &str) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{what} is permanent; pass --force to confirm in a script");
    }
    if !confirm(&format!("{question} This cannot be undone."))? {
        bail!("not confirmed; nothing was changed");
    }
    Ok(())
}

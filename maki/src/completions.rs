//! `maki completions SHELL` and `maki man`: shell completions and the
//! manual page, generated from the command line's own definition, so they
//! never fall behind it.
//!
//!     maki completions bash > /etc/bash_completion.d/maki
//!     maki completions zsh > "${fpath[1]}/_maki"
//!     maki completions fish > ~/.config/fish/completions/maki.fish
//!     maki man > /usr/local/share/man/man1/maki.1

use std::io::Write;

/// Writes `shell`'s completions of `command` to standard output.
pub fn completions(shell: clap_complete::Shell, command: &mut clap::Command) {
    clap_complete::generate(shell, command, "maki", &mut std::io::stdout());
}

/// Writes the manual page (roff) of `command` and of every subcommand,
/// one after another, to standard output.
pub fn man(command: clap::Command) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(command.clone()).render(&mut out)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page = sub.clone().display_name(format!("maki-{}", sub.get_name()));
        writeln!(out)?;
        clap_mangen::Man::new(page).render(&mut out)?;
    }
    Ok(())
}

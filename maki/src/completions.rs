//! `maki completions SHELL` and `maki man`: shell completions and the
//! manual page, generated from the command line's own definition, so they
//! never fall behind it.
//!
//!     maki completions bash > /etc/bash_completion.d/maki
//!     maki completions zsh > "${fpath[1]}/_maki"
//!     maki completions fish > ~/.config/fish/completions/maki.fish
//!     maki man > /usr/local/share/man/man1/maki.1

use std::io::Write;

/// Writes `shell`'s completions of `command` to `out`.
pub fn completions(shell: clap_complete::Shell, command: &mut clap::Command, out: &mut dyn Write) {
    clap_complete::generate(shell, command, "maki", out);
}

/// Writes the manual page (roff) of `command` and of every subcommand,
/// one after another, to `out`.
pub fn man(command: clap::Command, out: &mut dyn Write) -> anyhow::Result<()> {
    clap_mangen::Man::new(command.clone()).render(out)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page = sub.clone().display_name(format!("maki-{}", sub.get_name()));
        writeln!(out)?;
        clap_mangen::Man::new(page).render(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn completions_and_the_manual_cover_every_command() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            completions(shell, &mut crate::Cli::command(), &mut out);
            let text = String::from_utf8(out).unwrap();
            // Fish names a long option `-l watch`.
            let watch = match shell {
                clap_complete::Shell::Fish => "-l watch",
                _ => "--watch",
            };
            for word in ["machine", "health", "dashboard", "geoip", watch] {
                assert!(text.contains(word), "{shell:?} completions lack {word}");
            }
        }
        let mut out = Vec::new();
        man(crate::Cli::command(), &mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(
            page.starts_with(".ie") || page.contains(".TH maki"),
            "{}",
            &page[..200]
        );
        assert!(page.contains(".TH maki\\-health") || page.contains("maki\\-health"));
        assert!(!page.contains("__keep"), "hidden commands stay hidden");
    }
}

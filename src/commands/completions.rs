//! `completions` and `man`: shell completion scripts and the manual page, written from the
//! command line's own definition, so they name every command and option the binary takes.

use std::io::Write;

use clap_complete::Shell;

/// `completions SHELL`'s options.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Writes the completion script for `shell` to standard output.
pub fn completions(shell: Shell, mut command: clap::Command) {
    let name = command.get_name().to_owned();
    clap_complete::generate(shell, &mut command, name, &mut std::io::stdout());
}

/// Writes the manual page (roff) to standard output.
pub fn man(command: clap::Command) -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command).render(&mut page)?;
    std::io::stdout().write_all(&page)?;
    Ok(())
}

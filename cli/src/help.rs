//! The help shortener: `-h` shows each flag's first sentence, `--help` the whole text with its
//! variable and default.

use crate::cli::Cli;

/// The command line: [`Cli`] with each flag's short help (`-h`) cut to its first sentence and
/// without its variable and default, so `-h` fits a screen, while `--help` keeps the whole text
/// with both.
pub fn command() -> clap::Command {
    fn first_sentence(text: &str) -> Option<&str> {
        let end = text.find(". ").or_else(|| text.find("; "))?;
        Some(&text[..end])
    }
    fn shorten(command: clap::Command) -> clap::Command {
        command
            .mut_args(|arg| {
                if arg.get_long_help().is_some() || arg.get_help().is_none() || arg.is_hide_set() {
                    return arg;
                }
                let full = arg.get_help().map(ToString::to_string).unwrap_or_default();
                let short = first_sentence(&full).unwrap_or(&full).to_owned();
                let mut long = full.clone();
                if let Some(env) = arg.get_env() {
                    long.push_str(&format!(" [env: {}]", env.to_string_lossy()));
                }
                let defaults: Vec<String> =
                    arg.get_default_values().iter().map(|d| d.to_string_lossy().into_owned()).collect();
                if !defaults.is_empty() {
                    long.push_str(&format!(" [default: {}]", defaults.join(",")));
                }
                let takes_values = arg.get_action().takes_values();
                let arg = arg.help(short).long_help(long).hide_env(true);
                // clap shows (and allows hiding) a default only for flags that take a value.
                if takes_values { arg.hide_default_value(true) } else { arg }
            })
            .next_line_help(false)
            // No wrapping: one line per flag, so `-h` of a subcommand fits a screen.
            .term_width(0)
            .mut_subcommands(shorten)
    }
    use clap::CommandFactory as _;
    shorten(Cli::command())
}

//! The configuration reference (`docs/configuration.md`), generated from the flags and checked
//! by a test, so it cannot drift from `--help`.

use crate::cli::Cli;

/// The configuration reference (`docs/configuration.md`), generated from the flags themselves
/// so it cannot drift from `--help`: every flag of the all-in-one run under its help heading,
/// then the flags each `serve` subcommand adds to the mesh-wide ones.
fn configuration_reference() -> String {
    use std::fmt::Write as _;

    use clap::CommandFactory as _;

    fn cell(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")
    }
    fn flag(arg: &clap::Arg) -> String {
        let long = arg.get_long().unwrap_or_default();
        match arg.get_value_names() {
            Some(names) if arg.get_action().takes_values() => format!("`--{long} <{}>`", names.join(" ")),
            _ => format!("`--{long}`"),
        }
    }
    let mut cli = Cli::command();
    cli.build();
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the flags themselves (`cli/src/reference.rs`, test `configuration_reference_is_current`);\n\
         regenerate with `SHOPMESH_BLESS=1 cargo test -p shopmesh-cli configuration_reference`.\n\
         Every flag can also be set with its environment variable; a flag given on the command line wins.\n\
         `shopmesh` with no subcommand takes every flag below; `shopmesh serve <service>` and\n\
         `shopmesh migrate <service>` take the mesh-wide flags and that service's own (listed at the end).\n",
    );
    let mut headings: Vec<&str> = Vec::new();
    let args: Vec<&clap::Arg> =
        cli.get_arguments().filter(|a| a.get_long().is_some() && !a.is_hide_set()).collect();
    for arg in &args {
        let heading = arg.get_help_heading().unwrap_or("Options");
        if !headings.contains(&heading) {
            headings.push(heading);
        }
    }
    for heading in headings {
        let _ = write!(
            out,
            "\n## {heading}\n\n| Flag | Environment | Default | What it sets |\n|---|---|---|---|\n"
        );
        for arg in args.iter().filter(|a| a.get_help_heading().unwrap_or("Options") == heading) {
            let env = arg.get_env().map(|e| format!("`{}`", e.to_string_lossy())).unwrap_or_default();
            let defaults: Vec<String> =
                arg.get_default_values().iter().map(|d| d.to_string_lossy().into_owned()).collect();
            let default =
                if defaults.is_empty() { String::new() } else { format!("`{}`", defaults.join(",")) };
            let help = arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
            let _ = writeln!(out, "| {} | {env} | {default} | {} |", flag(arg), cell(&help));
        }
    }
    let _ = write!(out, "\n## Each service's own flags\n\n| Command | Its own flags |\n|---|---|\n");
    let serve = cli.find_subcommand("serve").expect("serve exists");
    let services: Vec<&clap::Command> = serve.get_subcommands().filter(|c| c.get_name() != "help").collect();
    // The mesh-wide flags are those every service takes.
    let mesh_wide: Vec<&str> = services
        .first()
        .into_iter()
        .flat_map(|c| c.get_arguments())
        .filter_map(clap::Arg::get_long)
        .filter(|long| services.iter().all(|svc| svc.get_arguments().any(|a| a.get_long() == Some(*long))))
        .collect();
    for service in services {
        let own: Vec<String> = service
            .get_arguments()
            .filter_map(clap::Arg::get_long)
            .filter(|long| !mesh_wide.contains(long) && *long != "help")
            .map(|long| format!("`--{long}`"))
            .collect();
        let _ = writeln!(out, "| `shopmesh serve {}` | {} |", service.get_name(), own.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let expected = configuration_reference();
        if std::env::var_os("SHOPMESH_BLESS").is_some() {
            std::fs::write(&path, &expected).expect("write docs/configuration.md");
        }
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            written == expected,
            "docs/configuration.md does not match the flags: run \
             `SHOPMESH_BLESS=1 cargo test -p shopmesh-cli configuration_reference` and commit it"
        );
    }
}

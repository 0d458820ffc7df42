//! The `nightshift` binary: parses the command line, sets up logging, and
//! maps errors onto exit codes.

use std::process::ExitCode;

use clap::Parser;
use nightshift::cli::{self, Cli, EXIT_FAILURE};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if cli.global.quiet {
        "error"
    } else {
        match cli.global.verbose {
            0 => "warn",
            1 => "warn,nightshift=info",
            2 => "warn,nightshift=debug",
            _ => "trace",
        }
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    match cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            let code = error
                .downcast_ref::<nightshift::Error>()
                .map(|e| e.exit_code())
                .unwrap_or(EXIT_FAILURE);
            ExitCode::from(code)
        }
    }
}

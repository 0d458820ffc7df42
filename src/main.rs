//! The `nightshift` binary: parses the command line, sets up logging, and
//! maps errors onto exit codes.

use std::process::ExitCode;

use clap::Parser;
use nightshift::cli::{self, Cli, EXIT_FAILURE};
use tracing_subscriber::EnvFilter;

#[cfg(unix)]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    restore_default_sigpipe();
    let cli = Cli::parse();
    let default_level = if cli.global.quiet {
        "error"
    } else {
        match cli.global.verbose {
            // A long-running scheduler logs its starts, ends, skips and
            // errors without -v.
            0 if matches!(cli.command, nightshift::cli::Command::Schedule(_)) => {
                "warn,nightshift=info"
            }
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

/// Lets a closed output pipe (`nightshift runs --json | head`) end the
/// process quietly, as it does for other command-line tools, instead of
/// making every print fail. Rust ignores SIGPIPE by default.
#[cfg(unix)]
fn restore_default_sigpipe() {
    // SAFETY: called first thing in main, before any thread starts, and
    // SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn restore_default_sigpipe() {}

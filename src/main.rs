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
    disable_transparent_huge_pages();
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

/// Turns transparent huge pages off for this process. mimalloc requests
/// them with madvise(MADV_HUGEPAGE), so every page fault in memory that it
/// returned to the system and reuses zeroes a whole 2 MiB page. Polars
/// frees and allocates large buffers at a high rate. With huge pages on,
/// zeroing pages took about 40% of the CPU time of the list_refresh job at
/// 10M contacts and of the clv job at 1M customers (perf on 2 cores). The
/// suppression job at 10M contacts peaked higher and spent 8.2 s of
/// system time with them, against 4.6 s without.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and no pointers. A
    // failure (kernels before 3.15) leaves the setting as it was.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() {}

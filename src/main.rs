//! The `metacompress` command line (SPEC section 6). It parses flags, calls the library and
//! formats its errors as one line: exit 0 on success, 2 on a usage error, 1 on any other.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use metacompress::{files, one_line, threads_from};

/// `println!` that ignores a closed stdout (`metacompress demo | head` must not panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod cli_args;
mod commands;
use cli_args::{Cli, Command};
use commands::{bench, compare, compress, devices, init, print_layout, run_demo};

fn main() -> ExitCode {
    // Headless Linux: Mesa's Wayland probe complains on stderr when XDG_RUNTIME_DIR is unset.
    // Compute needs no display, so point it somewhere harmless before any thread starts.
    // Set but empty is as good as unset to Mesa.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none_or(|dir| dir.is_empty()) {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    remove_temporary_files_on_signals();
    // A mapped input truncated by another program mid-run: one line and exit 1, not a silent
    // SIGBUS.
    files::exit_on_changed_mapped_file();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                let _ = error.print();
                return ExitCode::SUCCESS;
            }
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand
            ) {
                // No subcommand: the usage and the subcommands, in one line.
                let command = Cli::command();
                let names: Vec<&str> = command.get_subcommands().map(|c| c.get_name()).collect();
                eprintln!(
                    "metacompress: a subcommand is needed; usage: metacompress <COMMAND> with \
                     COMMAND one of {} (see metacompress --help)",
                    names.join(", ")
                );
                return ExitCode::from(2);
            }
            // One line: clap's message with the lines that name what it is about (the missing
            // arguments, say), without its "error: " prefix, tips and usage block.
            let text = error.to_string();
            let mut parts = Vec::new();
            for line in text.lines() {
                let line = line.trim();
                if line.starts_with("Usage:")
                    || line.starts_with("tip:")
                    || line.starts_with("For more")
                {
                    break;
                }
                if !line.is_empty() {
                    parts.push(line.trim_start_matches("error: "));
                }
            }
            let message = parts.join(" ");
            eprintln!(
                "metacompress: {} (see metacompress --help)",
                one_line(&message)
            );
            return ExitCode::from(2);
        }
    };
    let threads = match threads_from(cli.threads) {
        Ok(threads) => threads,
        Err(error) => {
            eprintln!("metacompress: {}", error.line());
            return ExitCode::from(2);
        }
    };
    if let Some(threads) = threads {
        // The CPU path's products and conversions run on rayon's global pool; nothing has
        // used it yet.
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
        {
            eprintln!("metacompress: --threads {threads}: {e}");
            return ExitCode::from(1);
        }
    }
    let result = match cli.command {
        Command::Compress(args) => compress(args),
        Command::Compare(args) => compare(args),
        Command::Init(args) => init(args),
        Command::Bench(args) => bench(args),
        Command::Devices => devices(),
        Command::Layout {
            preset,
            pinpoints,
            json,
        } => print_layout(&preset, pinpoints.as_deref(), json),
        Command::Demo { backend, save } => run_demo(backend, save.as_deref()),
    };
    pause_for_tests();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("metacompress: {}", error.line());
            ExitCode::from(if error.is_usage() { 2 } else { 1 })
        }
    }
}

/// On SIGINT or SIGTERM, removes the temporary output files being written (if any) and exits
/// with 128 + the signal's number, as the shell does for a killed program; once the command's
/// outputs are in place (each command writes one set, last), exits 0 instead: the run did
/// its work. A signal during the renames waits for them to finish.
fn remove_temporary_files_on_signals() {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGINT, SIGTERM};
        if let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
            std::thread::spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    let code = match files::interrupt() {
                        files::Interrupted::AfterCommit => 0,
                        files::Interrupted::BeforeCommit => 128 + signal,
                    };
                    std::process::exit(code);
                }
            });
        }
    }
}

/// A test hook: `METACOMPRESS_TEST_PAUSE_BEFORE_EXIT_MS=N` sleeps N ms (at most 60 000) once
/// the command is done and its outputs are in place, before the exit, so a test can send a
/// signal at that moment.
fn pause_for_tests() {
    let pause = std::env::var("METACOMPRESS_TEST_PAUSE_BEFORE_EXIT_MS")
        .ok()
        .and_then(|text| text.parse::<u64>().ok());
    if let Some(milliseconds) = pause {
        std::thread::sleep(std::time::Duration::from_millis(milliseconds.min(60_000)));
    }
}

//! `metacompress bench`: the workloads timed, as a table and JSON.

use metacompress::{bench, files, Error, Keep, Result};

use crate::cli_args::BenchArgs;

pub(crate) fn bench(args: BenchArgs) -> Result<()> {
    if let Some(path) = &args.json {
        files::check_output("--json", path, &[])?;
    }
    let workloads = bench::workloads(&args.workload)?;
    let config = bench::BenchConfig {
        keep: Keep::new(args.keep)?,
        channels: args.dc,
        precision: args.precision,
        backend: args.backend,
        adapter: args.adapter,
        runs: args.runs,
        warmup: args.warmup,
        naive: !args.skip_naive,
        shared: args.shared,
        split_k: args.split_k,
        batch: args.batch,
    };
    // Progress goes to a terminal only: piped or captured, stderr holds the one error line.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let report = bench::run(&config, &workloads, |line| {
        if terminal {
            eprintln!("bench: {line}");
        }
    })?;
    say!("{}", report.to_table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.to_json())
            .map_err(|e| Error::Format(format!("could not encode the report: {e}")))?;
        files::write_atomically(path, text.as_bytes())?;
        say!("wrote {}", path.display());
    }
    Ok(())
}

//! `cargo bench`: the `metacompress bench` harness over the named workloads, tuned against
//! naive kernels on the best GPU adapter (GPU time from timestamps where it has them), and the
//! CPU path. Environment:
//! - `METACOMPRESS_BENCH_WORKLOAD`: a workload name or `all` (default `all`; on a software
//!   adapter such as lavapipe, `llava15-7b`, since the naive kernels there take seconds a run).
//! - `METACOMPRESS_BENCH_RUNS`: timed runs per variant (default 20).
//! - `METACOMPRESS_BENCH_KEEP`: keep fraction (default 0.1).
//! - `METACOMPRESS_BENCH_JSON`: also write the GPU report as JSON there.

use metacompress::bench::{self, BenchConfig};
use metacompress::gpu::{GpuApi, GpuContext};
use metacompress::{Backend, Keep, Precision, SplitK};

fn setting(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let software = GpuContext::open(GpuApi::Any, None)
        .map(|c| c.adapter.device_type == "cpu")
        .ok();
    let workload = setting("METACOMPRESS_BENCH_WORKLOAD").unwrap_or_else(|| {
        if software == Some(true) {
            "llava15-7b".to_string()
        } else {
            "all".to_string()
        }
    });
    let workloads = bench::workloads(&workload)?;
    let runs = setting("METACOMPRESS_BENCH_RUNS").map_or(Ok(20), |v| v.parse())?;
    let keep = setting("METACOMPRESS_BENCH_KEEP").map_or(Ok(0.1), |v| v.parse())?;
    let mut config = BenchConfig {
        keep: Keep::new(keep)?,
        channels: None,
        precision: Precision::F32,
        backend: Backend::Auto,
        adapter: None,
        runs,
        warmup: 2,
        naive: true,
        shared: false,
        split_k: vec![SplitK::Auto],
        batch: 1,
    };
    let progress = |line: &str| eprintln!("bench: {line}");
    match software {
        Some(_) => {
            let report = bench::run(&config, &workloads, progress)?;
            println!("{}", report.to_table());
            if let Some(path) = setting("METACOMPRESS_BENCH_JSON") {
                std::fs::write(&path, serde_json::to_string_pretty(&report.to_json())?)?;
                println!("wrote {path}");
            }
        }
        None => println!("no GPU adapter: GPU benchmarks skipped"),
    }
    config.backend = Backend::Cpu;
    let report = bench::run(&config, &workloads, progress)?;
    println!("{}", report.to_table());
    Ok(())
}

//! The `metacompress` command line (SPEC section 6). It parses flags, calls the library and
//! formats its errors as one line: exit 0 on success, 2 on a usage error, 1 on any other.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use clap::{CommandFactory, Parser};

mod cli_args;
use cli_args::{BenchArgs, Cli, Command, CompareArgs, CompressArgs, InitArgs, LayoutArgs};

use metacompress::files::{self, TensorOut};
use metacompress::gpu::{list_adapters, GpuApi};
use metacompress::methods::{Request, Runner};
use metacompress::{bench, compare, pictures};
use metacompress::{
    demo, Backend, Compressor, Dtype, Error, HostTokens, Keep, Layout, Options, PMeta, Precision,
    Result,
};
use metacompress::{one_line, parse_grid_flags, parse_pinpoints, threads_from};

/// `println!` that ignores a closed stdout (`metacompress demo | head` must not panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

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

/// The keep fraction of `--keep` or `--reduction` (default 0.1).
fn keep_of(keep: Option<f64>, reduction: Option<f64>) -> Result<Keep> {
    match (keep, reduction) {
        (_, Some(reduction)) => {
            if !(0.0..1.0).contains(&reduction) {
                return Err(Error::InvalidArgument(format!(
                    "--reduction {reduction} is out of range; expected a fraction in [0, 1)"
                )));
            }
            Keep::new(1.0 - reduction)
        }
        (Some(keep), None) => Keep::new(keep),
        (None, None) => Ok(Keep::default()),
    }
}

/// The layout: `--grid` flags, else the file's `grids`, else one square grid.
fn layout_of(input: &files::Input, path: &Path, args: &LayoutArgs) -> Result<Layout> {
    let tokens = input.token_count();
    if let Some(preset) = &args.layout {
        let pinpoints = args.pinpoints.as_deref().map(parse_pinpoints).transpose()?;
        return Layout::preset_for(preset, pinpoints.as_deref(), tokens);
    }
    let flag_grids = parse_grid_flags(&args.grids)?;
    if !flag_grids.is_empty() {
        Layout::new(tokens, flag_grids)
    } else if let Some(grids) = input.grids.clone() {
        // The file's fault, not the caller's (exit 1, as for any malformed file).
        Layout::new(tokens, grids).map_err(|e| {
            Error::Format(format!(
                "{}: its grids metadata does not fit its features: {e}",
                path.display()
            ))
        })
    } else {
        Layout::square(tokens)
    }
}

/// The layout of a `--layout` preset, with `--pinpoints` if given.
fn preset_of(preset: &str, pinpoints: Option<&str>) -> Result<Layout> {
    let pinpoints = pinpoints.map(parse_pinpoints).transpose()?;
    Layout::preset(preset, pinpoints.as_deref())
}

/// `metacompress layout`: the grids of a preset as `--grid` flags (or JSON) and `n`.
fn print_layout(preset: &str, pinpoints: Option<&str>, json: bool) -> Result<()> {
    let layout = preset_of(preset, pinpoints)?;
    if json {
        let grids: Vec<String> = layout
            .grids()
            .iter()
            .map(|g| format!("[{}, {}, {}, {}]", g.offset, g.height, g.width, g.stride))
            .collect();
        say!(
            "{{\"n\": {}, \"grids\": [{}]}}",
            layout.tokens(),
            grids.join(", ")
        );
        return Ok(());
    }
    let flags: Vec<String> = layout
        .grids()
        .iter()
        .map(|g| format!("--grid {g}"))
        .collect();
    say!("{}", flags.join(" "));
    let grid_tokens: usize = layout.grids().iter().map(|g| g.len()).sum();
    say!(
        "n = {} tokens: {} in {} grid(s), {} loose",
        layout.tokens(),
        grid_tokens,
        layout.grids().len(),
        layout.tokens() - grid_tokens
    );
    Ok(())
}

/// The weights of `--weights`, checked against the features' width.
fn weights_for(
    weights: Option<PMeta>,
    path: Option<&Path>,
    input: &files::Input,
    input_path: &Path,
) -> Result<Option<PMeta>> {
    let (Some(weights), Some(path)) = (weights, path) else {
        return Ok(None);
    };
    let width = input.width();
    if width != weights.width() {
        return Err(Error::InvalidTensor(format!(
            "{}: features have width d = {width}; the weights in {} expect d = {}",
            input_path.display(),
            path.display(),
            weights.width()
        )));
    }
    Ok(Some(weights))
}

fn compress(args: CompressArgs) -> Result<()> {
    let keep = keep_of(args.keep, args.reduction)?;
    let (precision, scope, method) = (args.device.precision, args.scope, args.method);
    // A missing --weights is a usage error, found before any file is read.
    method.check_inputs(args.weights.is_some(), true)?;
    let mut sources = vec![("--input", args.input.as_path())];
    sources.extend(args.weights.as_deref().map(|path| ("--weights", path)));
    files::check_output("--output", &args.output, &sources)?;
    // The weights first: their file's bytes are let go before the input is mapped.
    let weights = args
        .weights
        .as_deref()
        .map(files::read_weights)
        .transpose()?;
    let input = files::read_input(&args.input)?;
    let layout = layout_of(&input, &args.input, &args.layout)?;
    let weights = weights_for(weights, args.weights.as_deref(), &input, &args.input)?;
    let request = Request {
        features: input.tokens(),
        layout: &layout,
        attention: input.attention.as_deref(),
        seed: args.seed,
    };
    // A file without the attention the method needs: the file's fault (exit 1).
    method
        .check_inputs(true, request.attention.is_some())
        .map_err(|e| Error::Format(format!("{}: {e}", args.input.display())))?;
    let device = &args.device;
    let runner = Runner::new(
        weights,
        device.backend,
        device.adapter.as_deref(),
        precision,
    )?;
    let options = Options {
        keep,
        scope,
        save_projection: args.save_projection,
        split_k: args.device.split_k,
        ..Options::default()
    };
    let started = Instant::now();
    // Deepstack sets in the file: each reduced with the features' one P.
    let extra: Vec<HostTokens> = input.extra.iter().map(|(_, set)| set.into()).collect();
    let (mut reduced, extra_reduced) = if extra.is_empty() {
        (runner.run(method, &request, &options)?, Vec::new())
    } else {
        let shared = runner.run_sharing(method, &request, &extra, &options)?;
        (shared.main, shared.extra)
    };
    let elapsed = started.elapsed();
    input.check_unchanged()?;
    if !args.save_projection {
        reduced.projection = None;
    }

    let (b, n, m, d) = (
        reduced.batch,
        reduced.input_tokens,
        reduced.queries.count,
        reduced.width,
    );
    let shape = |rows: usize, columns: usize| {
        if input.batched {
            vec![b, rows, columns]
        } else {
            vec![rows, columns]
        }
    };
    let dtype = args.output_dtype.unwrap_or(input.dtype);
    if dtype == Dtype::F16 {
        metacompress::check_fits_f16("tokens for an f16 output", &reduced.tokens)?;
    }
    let mut tensors = vec![TensorOut {
        name: "tokens",
        shape: shape(m, d),
        values: &reduced.tokens,
        dtype,
    }];
    for ((name, set), values) in input.extra.iter().zip(&extra_reduced) {
        if dtype == Dtype::F16 {
            metacompress::check_fits_f16(&format!("{name} for an f16 output"), values)?;
        }
        tensors.push(TensorOut {
            name,
            shape: shape(m, set.width()),
            values,
            dtype,
        });
    }
    if let Some(projection) = &reduced.projection {
        tensors.push(TensorOut {
            name: "projection",
            shape: shape(m, n),
            values: projection,
            dtype: Dtype::F32,
        });
    }
    let mut metadata = vec![
        ("method", method.name().to_string()),
        ("keep", keep.to_string()),
        // The scope the method ran at (its own where it has one: SPEC section 4, v4).
        ("scope", method.scope(scope).name().to_string()),
        ("n", n.to_string()),
        ("m", m.to_string()),
        ("query_grids", reduced.queries.to_json()),
    ];
    if !input.extra.is_empty() {
        let names: Vec<&str> = input.extra.iter().map(|(name, _)| name.as_str()).collect();
        metadata.push(("deepstack", serde_json::to_string(&names).expect("strings")));
    }
    files::write_tensors(&args.output, &tensors, &metadata)?;
    if let Some(choice) = runner.choice() {
        say!("{choice}");
    }
    say!(
        "compressed {b} x {n} -> {m} tokens of width {d} ({}, keep {}, scope {}) on {} in {:.1} ms; wrote {}",
        method.name(),
        keep,
        method.scope(scope).name(),
        runner.device(),
        elapsed.as_secs_f64() * 1e3,
        args.output.display()
    );
    Ok(())
}

/// The longest name `compare --png` writes (`metacompress-grid{G}-row{I}.png`).
const PICTURE_NAME_LENGTH: usize = 64;

fn compare(args: CompareArgs) -> Result<()> {
    let keep = Keep::new(args.keep)?;
    let mut sources = vec![("--input", args.input.as_path())];
    sources.extend(args.weights.as_deref().map(|path| ("--weights", path)));
    sources.extend(args.probes.as_deref().map(|path| ("--probes", path)));
    if let Some(path) = &args.json {
        files::check_output("--json", path, &sources)?;
    }
    if let Some(folder) = &args.png {
        files::check_output_folder(
            "--png",
            folder,
            PICTURE_NAME_LENGTH,
            &sources,
            pictures::is_picture_name,
        )?;
        // The report must not be the folder or one of the pictures.
        if let Some(json) = args.json.as_deref() {
            let picture = json
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(pictures::is_picture_name);
            if json == folder || (picture && json.parent() == Some(folder.as_path())) {
                return Err(Error::InvalidArgument(format!(
                    "--json {} is a path that --png {} writes; expected another path",
                    json.display(),
                    folder.display()
                )));
            }
        }
    }
    let weights = args
        .weights
        .as_deref()
        .map(files::read_weights)
        .transpose()?;
    let input = files::read_input(&args.input)?;
    let layout = layout_of(&input, &args.input, &args.layout)?;
    let weights = weights_for(weights, args.weights.as_deref(), &input, &args.input)?;
    let features = &input.features();
    let (probes, source) = match &args.probes {
        Some(path) => (
            files::read_probes(path, features.width())?,
            path.display().to_string(),
        ),
        None => (
            compare::probes_from_statistics(features, 64, args.seed),
            format!(
                "drawn from the features' per-channel mean and deviation, seed {}",
                args.seed
            ),
        ),
    };
    let runner = Runner::new(
        weights,
        args.device.backend,
        args.device.adapter.as_deref(),
        args.device.precision,
    )?;
    let request = Request {
        features: features.into(),
        layout: &layout,
        attention: input.attention.as_deref(),
        seed: args.seed,
    };
    let options = Options {
        keep,
        scope: args.scope,
        split_k: args.device.split_k,
        ..Options::default()
    };
    let (report, results) = compare::compare(&runner, &request, &options, &probes, &source)?;
    input.check_unchanged()?;
    if let Some(choice) = runner.choice() {
        say!("{choice}");
    }
    say!("{}", report.table().trim_end());
    // The report and the pictures are one set: all of them, or none.
    let mut outputs = files::Outputs::new();
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.json()).expect("JSON of plain values");
        outputs.add(path, text.as_bytes())?;
    }
    let mut count = 0;
    if let Some(folder) = &args.png {
        for (method, result) in &results {
            let (n, m) = (result.input_tokens, result.queries.count);
            let p = result.projection.as_ref().expect("methods hand back P");
            count += pictures::stage_pictures(
                &mut outputs,
                folder,
                *method,
                &p[..m * n],
                n,
                &result.queries,
                args.png_scale as usize,
            )?
            .len();
        }
    }
    outputs.commit()?;
    if let Some(path) = &args.json {
        say!("wrote {}", path.display());
    }
    if let Some(folder) = &args.png {
        say!(
            "wrote {count} pictures (first image) to {}",
            folder.display()
        );
    }
    Ok(())
}

fn init(args: InitArgs) -> Result<()> {
    files::check_output("--output", &args.output, &[])?;
    let position = match &args.pos {
        None => None,
        Some(text) => {
            let bad = || {
                Error::InvalidArgument(format!(
                    "--pos {text:?} is not a table size; expected GHxGW such as 24x24"
                ))
            };
            let (height, width) = text.split_once(['x', 'X']).ok_or_else(bad)?;
            Some((
                height.trim().parse().map_err(|_| bad())?,
                width.trim().parse().map_err(|_| bad())?,
            ))
        }
    };
    let weights = PMeta::init(args.dim, args.dc, position, args.pos_scale, args.seed)?;
    files::write_weights(&args.output, &weights)?;
    say!(
        "wrote P_meta (d {}, d_c {}, w_q = w_k orthonormal from seed {}, omega = 1{}) to {}",
        args.dim,
        args.dc,
        args.seed,
        position.map_or(String::new(), |(h, w)| format!(
            ", {h}x{w} sine-cosine position table x {}",
            args.pos_scale
        )),
        args.output.display()
    );
    Ok(())
}

fn bench(args: BenchArgs) -> Result<()> {
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

fn devices() -> Result<()> {
    let adapters = list_adapters(GpuApi::Any);
    if adapters.is_empty() {
        say!("no adapters found (on Linux, install a Vulkan driver such as mesa-vulkan-drivers); --backend cpu always works");
        return Ok(());
    }
    let yes = |flag: bool| if flag { "yes" } else { "no" };
    for adapter in adapters {
        say!(
            "{}\n  backend {}, type {}, driver {}\n  f16 {}, subgroups {}, timestamp queries {}\n  \
             largest storage binding {} MiB, binding offsets aligned to {} bytes",
            adapter.name,
            adapter.backend,
            adapter.device_type,
            adapter.driver_or_unknown(),
            yes(adapter.f16),
            yes(adapter.subgroups),
            yes(adapter.timestamps),
            adapter.binding_limit >> 20,
            adapter.offset_alignment
        );
    }
    Ok(())
}

/// The files `demo --save` writes, longest name first.
const DEMO_FILES: [&str; 3] = [
    "demo-anyres-features.safetensors",
    "demo-features.safetensors",
    "demo-weights.safetensors",
];

fn run_demo(backend: Backend, save: Option<&Path>) -> Result<()> {
    if let Some(folder) = save {
        files::check_output_folder("--save", folder, DEMO_FILES[0].len(), &[], |_| false)?;
    }
    let scene = demo::scene(2026);
    let layout = Layout::square(demo::SIDE * demo::SIDE)?;
    let weights = PMeta::init(demo::WIDTH, 128, Some((demo::SIDE, demo::SIDE)), 1.0, 0)?;
    say!(
        "demo: one LLaVA-1.5-shaped image, {side}x{side} = {n} tokens of width {d}, with {objects} objects on a smooth background",
        side = demo::SIDE,
        n = demo::SIDE * demo::SIDE,
        d = demo::WIDTH,
        objects = scene.objects.len()
    );
    say!("P_meta: the paper's initialisation (w_q = w_k orthonormal, d_c 128, omega 1, 24x24 sine-cosine positions)");
    let started = Instant::now();
    let compressor = match Compressor::new(weights.clone(), backend, None, Precision::F32) {
        Ok(compressor) => compressor,
        Err(error) if backend == Backend::Auto => {
            say!("no GPU adapter ({error}); using the cpu path");
            Compressor::new(weights, Backend::Cpu, None, Precision::F32)?
        }
        Err(error) => return Err(error),
    };
    say!(
        "device: {} (ready in {:.0} ms){}",
        compressor.device(),
        started.elapsed().as_secs_f64() * 1e3,
        compressor
            .choice()
            .map_or(String::new(), |choice| format!("; {choice}"))
    );
    let options = Options {
        save_projection: true,
        ..Options::default()
    };
    let started = Instant::now();
    let reduced = compressor.compress(&scene.features, &layout, &options)?;
    let elapsed = started.elapsed();
    let (n, m) = (reduced.input_tokens, reduced.queries.count);
    say!(
        "compressed {n} -> {m} tokens (keep {}, {:.0}% fewer) in {:.1} ms (one call, data in and out included)",
        options.keep,
        100.0 * (1.0 - m as f64 / n as f64),
        elapsed.as_secs_f64() * 1e3
    );
    say!("how each object survives among the {m} reduced tokens:");
    say!("  object  area   tokens mainly about it   best cosine to its features");
    for report in demo::object_report(&scene, &reduced) {
        say!(
            "  {:<6} {:>5.1}%   {:>22}   {:>27.2}",
            report.name,
            100.0 * report.area_share,
            report.tokens,
            report.best_cosine
        );
    }
    say!("(a cosine near 1 means some reduced token still carries that object clearly)");
    if let Some(folder) = save {
        let [anyres_path, features, weights_path] = DEMO_FILES.map(|name| folder.join(name));
        // The three files are one set: all of them, or none.
        let mut outputs = files::Outputs::new();
        outputs.folder(folder)?;
        let attention = demo::saliency(&scene.features);
        let bytes = files::encode_input(
            &scene.features,
            false,
            Dtype::F32,
            Some(&layout.to_json()),
            Some(&attention),
        )?;
        outputs.add(&features, &bytes)?;
        // The same scene on LLaVA-NeXT's anyres layout (base grid, crop grid, newlines).
        let anyres = demo::anyres_layout();
        let anyres_scene = demo::scene_on(&anyres, demo::WIDTH, 2026);
        let bytes = files::encode_input(
            &anyres_scene.features,
            false,
            Dtype::F32,
            Some(&anyres.to_json()),
            Some(&demo::saliency(&anyres_scene.features)),
        )?;
        outputs.add(&anyres_path, &bytes)?;
        outputs.add(&weights_path, &files::encode_weights(compressor.weights())?)?;
        outputs.commit()?;
        say!(
            "wrote {} (features, a stand-in attention, grids), the same scene on LLaVA-NeXT's anyres layout (demo-anyres-features.safetensors) and {}; try: metacompress compare --input {} --weights {}",
            features.display(),
            weights_path.display(),
            features.display(),
            weights_path.display()
        );
    }
    Ok(())
}

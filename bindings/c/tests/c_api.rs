//! The C API from C: `tests/c/api_test.c`, compiled by the system's C compiler against
//! `libmetacompress.so` and run on inputs written here, must give, case by case, the Rust
//! library's result bit for bit (the CPU path on 2 threads, both sides), report `m` and the
//! query grids as the library does, and pass its own checks of misuse and of 4 threads on one
//! compressor. Under valgrind (where it exists): no invalid access, no definite leak.
//! Unix only (a `cc`, an rpath); Windows builds the library but runs none of this.
#![cfg(unix)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use library::methods::{Method, Request, Runner};
use library::{files, Backend, Grid, HostTokens, HostValues, Keep, Layout, Options, PMeta};
use library::{Precision, Scope};

const BATCH: usize = 2;
const D: usize = 16;
const SEED: u64 = 7;
/// The shared library's file name on this platform.
const SHARED: &str = if cfg!(target_os = "macos") {
    "libmetacompress.dylib"
} else {
    "libmetacompress.so"
};

/// The directory of the C library, built for this test's profile: cargo builds no cdylib for
/// a package's own tests, so the test asks it to (once per process; quick when it is fresh).
fn library_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test's path");
        // target/PROFILE/deps/c_api-HASH
        let profile = exe.ancestors().nth(2).expect("a profile directory");
        let target = profile.parent().expect("a target directory");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut command = Command::new(&cargo);
        command
            .args([
                "build",
                "--quiet",
                "--lib",
                "-p",
                "metacompress-c",
                "--target-dir",
            ])
            .arg(target);
        if profile.file_name().is_some_and(|name| name == "release") {
            command.arg("--release");
        }
        let status = command.status().unwrap_or_else(|e| panic!("{cargo}: {e}"));
        assert!(status.success(), "cargo build -p metacompress-c failed");
        assert!(
            profile.join(SHARED).exists(),
            "no {SHARED} in {}",
            profile.display()
        );
        profile.to_path_buf()
    })
}

/// Compiles `api_test.c` against the shared library (with an rpath to it) into `dir`.
fn compile(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let library = library_dir();
    let program = dir.join("api_test");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let output = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-g", "-I"])
        .arg(root.join("include"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/api_test.c"))
        .arg("-o")
        .arg(&program)
        .arg("-L")
        .arg(library)
        .arg(format!("-Wl,-rpath,{}", library.display()))
        .args(["-lmetacompress", "-lpthread", "-lm"])
        .output()
        .unwrap_or_else(|e| panic!("{cc}: {e}"));
    assert!(
        output.status.success(),
        "{cc} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    program
}

/// One layout of the inputs.
struct Input {
    name: &'static str,
    layout: Layout,
    f32: Vec<f32>,
    f16: Vec<half::f16>,
    bf16: Vec<half::bf16>,
    attention: Vec<f32>,
}

impl Input {
    fn new(name: &'static str, layout: Layout, phase: f32) -> Self {
        let n = layout.tokens();
        let f32: Vec<f32> = (0..BATCH * n * D)
            .map(|i| ((i as f32) * 0.37 + phase).sin() * 2.0 + 0.1)
            .collect();
        let attention = (0..BATCH * n)
            .map(|i| ((i as f32) * 0.71 + phase).cos().abs() + 0.01)
            .collect();
        Input {
            name,
            layout,
            f16: f32.iter().map(|&v| half::f16::from_f32(v)).collect(),
            bf16: f32.iter().map(|&v| half::bf16::from_f32(v)).collect(),
            f32,
            attention,
        }
    }

    fn write(&self, dir: &Path) {
        let write = |suffix: &str, bytes: &[u8]| {
            std::fs::write(dir.join(format!("{}.{suffix}", self.name)), bytes).unwrap()
        };
        write("f32", bytemuck::cast_slice(&self.f32));
        write("f16", bytemuck::cast_slice(&self.f16));
        write("bf16", bytemuck::cast_slice(&self.bf16));
        let attention = bytemuck::cast_slice(&self.attention);
        std::fs::write(dir.join(format!("attention_{}.f32", self.name)), attention).unwrap();
    }

    /// The first `batch` images in `dtype`.
    fn values(&self, dtype: &str, batch: usize) -> HostValues<'_> {
        let count = batch * self.layout.tokens() * D;
        match dtype {
            "f32" => HostValues::F32(&self.f32[..count]),
            "f16" => HostValues::F16(&self.f16[..count]),
            "bf16" => HostValues::BF16(&self.bf16[..count]),
            other => panic!("dtype {other}"),
        }
    }
}

/// A run of the C program: its inputs, its outputs and what it printed.
struct Run {
    _dir: tempfile::TempDir,
    out: PathBuf,
    weights: PMeta,
    inputs: Vec<Input>,
    lines: Vec<String>,
}

/// Writes the inputs, compiles the C program and runs it (under `wrapper` if given; on a GPU
/// too, where one opens, if `gpu`).
fn run_c_program(wrapper: &[&str], gpu: bool) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let weights = PMeta::init(D, 8, Some((8, 8)), 1.0, 3).unwrap();
    files::write_weights(&dir.path().join("weights.safetensors"), &weights).unwrap();
    let strided = Layout::new(
        52,
        vec![Grid::strided(0, 6, 4, 8), Grid::strided(4, 6, 4, 8)],
    )
    .unwrap();
    let inputs = vec![
        Input::new("square", Layout::square(64).unwrap(), 0.0),
        Input::new("strided", strided, 1.0),
    ];
    for input in &inputs {
        input.write(dir.path());
    }
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let program = compile(dir.path());
    let mut command = match wrapper {
        [] => Command::new(&program),
        [first, rest @ ..] => {
            let mut command = Command::new(first);
            command.args(rest).arg(&program);
            command
        }
    };
    if !gpu {
        command.env("MC_TEST_NO_GPU", "1");
    }
    let output = command
        .arg(dir.path())
        // Headless Linux: Mesa's Wayland probe complains on stderr without it.
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var_os("XDG_RUNTIME_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
        )
        .output()
        .expect("run api_test");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    );
    assert!(
        output.status.success(),
        "api_test failed ({}):\n{stderr}",
        output.status
    );
    Run {
        out,
        weights,
        inputs,
        lines: stdout.lines().map(str::to_string).collect(),
        _dir: dir,
    }
}

/// `key=value` fields of a printed line.
fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split(' ')
        .filter_map(|field| field.split_once('='))
        .collect()
}

/// `HxW,HxW,...` of a layout's query grids.
fn shapes(layout: &Layout, keep: Keep) -> String {
    let queries = layout.queries(keep);
    let shapes: Vec<String> = queries
        .grids
        .iter()
        .map(|g| format!("{}x{}", g.height, g.width))
        .collect();
    shapes.join(",")
}

#[test]
fn every_method_and_dtype_matches_the_library_bit_for_bit() {
    let run = run_c_program(&[], true);
    // The GPU check (api_test.c's `gpu`): skipped loudly without an adapter, a failure on CI.
    let gpu = run
        .lines
        .iter()
        .find(|l| l.starts_with("gpu "))
        .expect("a gpu line");
    if gpu == "gpu none" {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and no GPU adapter opened for the C API's GPU check"
        );
        eprintln!("SKIPPED: the C API's GPU check (no GPU adapter)");
    } else {
        eprintln!("the C API's GPU check ran on {}", &gpu[4..]);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let runner = |precision: Precision| {
        pool.install(|| Runner::new(Some(run.weights.clone()), Backend::Cpu, None, precision))
            .unwrap()
    };
    let runners = [
        ("f32", runner(Precision::F32)),
        ("bf16", runner(Precision::Bf16)),
    ];
    let mut covered = HashSet::new();
    let cases: Vec<&String> = run
        .lines
        .iter()
        .filter(|l| l.starts_with("case "))
        .collect();
    for line in &cases {
        let name = line.split(' ').nth(1).unwrap();
        let f = fields(line);
        let input = run.inputs.iter().find(|i| i.name == f["layout"]).unwrap();
        let runner = &runners
            .iter()
            .find(|(p, _)| *p == f["precision"])
            .unwrap()
            .1;
        let batch: usize = f["batch"].parse().unwrap();
        let method = Method::ALL
            .into_iter()
            .find(|m| m.name() == f["method"])
            .unwrap();
        let scope = match f["scope"] {
            "image" => Scope::Image,
            "grid" => Scope::Grid,
            other => panic!("scope {other}"),
        };
        let keep = Keep::new(f["keep"].parse().unwrap()).unwrap();
        assert_eq!(f["seed"], SEED.to_string());
        let n = input.layout.tokens();
        let request = Request {
            features: HostTokens::new(input.values(f["dtype"], batch), batch, n, D).unwrap(),
            layout: &input.layout,
            attention: Some(&input.attention[..batch * n]),
            seed: SEED,
        };
        let options = Options {
            keep,
            scope,
            ..Options::default()
        };
        let expected = pool
            .install(|| runner.run(method, &request, &options))
            .unwrap();
        assert_eq!(f["m"], expected.queries.count.to_string(), "{name}: m");
        assert_eq!(
            f["shapes"],
            shapes(&input.layout, keep),
            "{name}: query grids"
        );
        let bytes = std::fs::read(run.out.join(format!("{name}.f32"))).unwrap();
        let written: &[f32] = bytemuck::cast_slice(&bytes);
        assert_eq!(
            written.len(),
            expected.tokens.len(),
            "{name}: batch x m x d"
        );
        let differ = written
            .iter()
            .zip(&expected.tokens)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(
            differ, None,
            "{name}: the C API's tokens differ from the library's"
        );
        covered.insert((f["layout"].to_string(), method, f["dtype"].to_string()));
        if method == Method::MetaCompress {
            covered.insert((
                format!("{}-{}", f["layout"], f["scope"]),
                method,
                String::new(),
            ));
        }
    }
    // Every method in every dtype on both layouts, metacompress in both scopes.
    for layout in ["square", "strided"] {
        for method in Method::ALL {
            for dtype in ["f32", "f16", "bf16"] {
                assert!(
                    covered.contains(&(layout.to_string(), method, dtype.to_string())),
                    "no case of {layout} {} {dtype}",
                    method.name()
                );
            }
        }
        for scope in ["image", "grid"] {
            let key = (
                format!("{layout}-{scope}"),
                Method::MetaCompress,
                String::new(),
            );
            assert!(covered.contains(&key), "no case of {layout} scope {scope}");
        }
    }
    assert!(cases.iter().any(|l| l.contains("precision=bf16")));
    assert!(cases.iter().any(|l| l.contains("batch=1")));

    // The presets' grids and counts as the library makes them.
    let presets: Vec<&String> = run
        .lines
        .iter()
        .filter(|l| l.starts_with("preset "))
        .collect();
    assert_eq!(presets.len(), 4, "{presets:?}");
    for line in presets {
        let name = line.split(' ').nth(1).unwrap();
        let f = fields(line);
        let layout = Layout::preset(name, None).unwrap();
        let grids: Vec<String> = layout
            .grids()
            .iter()
            .map(|g| format!("{}:{}:{}:{}", g.offset, g.height, g.width, g.stride))
            .collect();
        assert_eq!(f["n"], layout.tokens().to_string(), "{name}: n");
        assert_eq!(f["grids"], grids.join(","), "{name}: grids");
        assert_eq!(
            f["m"],
            layout.queries(Keep::default()).count.to_string(),
            "{name}: m"
        );
        assert_eq!(f["shapes"], shapes(&layout, Keep::default()), "{name}");
    }
}

#[test]
fn no_invalid_access_and_no_leak_under_valgrind() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("valgrind is not installed; skipped");
        return;
    }
    let run = run_c_program(
        &[
            "valgrind",
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--show-leak-kinds=definite",
        ],
        false,
    );
    assert!(run.lines.iter().any(|l| l.starts_with("case ")));
}

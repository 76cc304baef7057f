//! The crate's layers, checked: every `crate::` and `super::` path in a module's code (tests
//! aside) must name a module of a lower layer, or the module itself. Each module's place is
//! in `LAYERS`, bottom up; docs/ARCHITECTURE.md draws the same order. A module missing from
//! the table, or a path through the crate root's re-exports, fails too, so the table stays
//! complete and every import names where the item lives.

use std::path::{Path, PathBuf};

/// Every module, bottom up. A module may import only from modules listed before it. Entries
/// that share a number form one room whose files may import each other (the methods and the
/// helpers their `mod.rs` keeps).
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("products", 1),
    ("products::openblas", 1),
    ("products::onednn", 1),
    ("products::onednn::library", 1),
    ("products::onednn::primitives", 1),
    ("tensor", 2),
    ("layout", 3),
    ("presets", 4),
    ("weights", 5),
    ("files", 6),
    ("files::input", 6),
    ("files::mapped", 6),
    ("files::output", 6),
    ("profile", 7),
    ("options", 8),
    // Host math.
    ("reference", 9),
    ("host_math", 10),
    // The GPU runtime.
    ("gpu::context", 12),
    ("gpu::memory", 13),
    ("gpu::buffers", 14),
    ("gpu::resident", 15),
    ("gpu::shaders", 16),
    ("gpu::scope", 17),
    ("gpu::kernels", 18),
    ("gpu::kernels::ingest", 19),
    ("gpu::kernels::matmul", 19),
    ("gpu::kernels::pooling", 19),
    ("gpu::kernels::position", 19),
    ("gpu::kernels::softmax", 19),
    ("gpu::plan", 20),
    ("gpu::engine", 21),
    ("gpu::engine::readback", 22),
    ("gpu::engine::record", 23),
    ("gpu::engine::encode", 24),
    ("gpu::reduction", 25),
    ("gpu", 26),
    // The CPU engine.
    ("cpu::prepared", 27),
    ("cpu::stored", 27),
    ("cpu::scores", 27),
    ("cpu", 27),
    // Backend choice, then the compressor.
    ("backend", 28),
    ("compress", 29),
    ("methods", 30),
    ("methods::attention", 30),
    ("methods::divprune", 30),
    ("methods::grid", 30),
    ("methods::similarity", 30),
    ("methods::tome", 30),
    // Tools on top (the CLI, `src/main.rs`, is a crate of its own above all of them).
    ("compare", 31),
    ("pictures", 32),
    ("bench::workloads", 33),
    ("bench", 34),
    ("demo", 35),
];

/// Files that are no module of a layer: the crate root (its re-exports are the public face)
/// and this check.
const OUTSIDE: &[&str] = &["", "layering"];

/// The files of the binary (`src/main.rs`, `src/cli_args.rs` and one room per command under
/// `src/commands/`): a crate of its own, above every layer, that sees only the public API.
const BINARY: &[&str] = &[
    "main",
    "cli_args",
    "commands",
    "commands::bench",
    "commands::compare",
    "commands::compress",
    "commands::demo",
    "commands::devices",
    "commands::init",
    "commands::layout",
];

/// The module path of a source file under `src/` (`gpu/engine/mod.rs` -> `gpu::engine`).
fn module_of(relative: &Path) -> String {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

/// The layer of the longest listed module that `path` (segments) starts with.
fn layer_of(path: &[&str]) -> Option<(String, u32)> {
    (1..=path.len()).rev().find_map(|length| {
        let name = path[..length].join("::");
        LAYERS
            .iter()
            .find(|(module, _)| *module == name)
            .map(|(module, layer)| (module.to_string(), *layer))
    })
}

/// `text` without `//` comments and without its unit tests (from the first `#[cfg(test)]`).
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path that follows `crate::` or `super::` in `code`, brace groups expanded, as full
/// module paths from the crate root (`super` resolved against `module`).
fn paths_in(code: &str, module: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for (start, _) in code.match_indices("::") {
        let before = &code[..start];
        let word_start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |at| at + 1);
        let head = &before[word_start..];
        // Only the first `::` of a path: the word before it starts the path.
        let preceded_by_path = word_start >= 2 && &code[word_start - 2..word_start] == "::";
        if preceded_by_path || !(head == "crate" || head == "super") {
            continue;
        }
        let mut base: Vec<String> = if head == "crate" {
            Vec::new()
        } else {
            module.split("::").map(str::to_string).collect()
        };
        let mut rest = &code[start + 2..];
        if head == "super" {
            base.pop();
            // `super::super::...`
            while let Some(stripped) = rest.strip_prefix("super::") {
                base.pop();
                rest = stripped;
            }
        }
        expand(rest, &base.join("::"), &mut paths);
    }
    paths
}

/// The paths one use-tree (`a::b`, `a::{b, c::d}`) names, each prefixed by `prefix`.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim_start();
    let join = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else if name.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}::{name}")
        }
    };
    if let Some(group) = tree.strip_prefix('{') {
        let mut depth = 0;
        let mut item_start = 0;
        for (at, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(&group[item_start..at], prefix, out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&group[item_start..at], prefix, out);
                    item_start = at + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let name_end = tree
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(tree.len());
    let name = &tree[..name_end];
    let after = &tree[name_end..];
    if name.is_empty() {
        return;
    }
    if name == "self" {
        out.push(join(""));
        return;
    }
    match after.strip_prefix("::") {
        Some(rest) => expand(rest, &join(name), out),
        None => out.push(join(name)),
    }
}

/// What is wrong with the imports of `module` whose source is `text`: one line per path
/// that reaches upward, through the crate root, or into a module the table lacks.
fn violations(module: &str, text: &str) -> Vec<String> {
    if OUTSIDE.contains(&module) {
        return Vec::new();
    }
    let Some((_, own)) = layer_of(&module.split("::").collect::<Vec<_>>()) else {
        return vec![format!("{module}: not in LAYERS")];
    };
    let mut found = Vec::new();
    for path in paths_in(&code_of(text), module) {
        let segments: Vec<&str> = path.split("::").collect();
        match layer_of(&segments) {
            None => found.push(format!(
                "{module} uses crate::{path}: name the module it lives in (not the crate root)"
            )),
            Some((target, layer))
                if layer > own || (layer == own && !same_room(module, &target)) =>
            {
                found.push(format!(
                    "{module} (layer {own}) imports from {target} (layer {layer}): {path}"
                ))
            }
            Some(_) => {}
        }
    }
    found
}

/// Whether two modules of one layer number may import each other: the module itself, or
/// the files of one room (listed with the same number).
fn same_room(module: &str, target: &str) -> bool {
    let first = |name: &str| name.split("::").next().unwrap_or("").to_string();
    module == target || first(module) == first(target)
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_imports_only_from_below() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    let mut found = Vec::new();
    let mut checked = 0;
    for file in files {
        let relative = file.strip_prefix(&root).expect("under src");
        let module = module_of(relative);
        // The binary's files and the unit-test files of a module are not layers.
        if BINARY.contains(&module.as_str()) || relative.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read source");
        found.extend(violations(&module, &text));
        checked += 1;
    }
    assert!(
        checked > 40,
        "only {checked} files found under {}",
        root.display()
    );
    assert!(found.is_empty(), "upward imports:\n{}", found.join("\n"));
}

#[test]
fn an_upward_import_is_caught() {
    // The check above must be able to fail.
    let upward = "use crate::compress::Compressor;\nfn f() {}\n";
    assert_eq!(violations("options", upward).len(), 1);
    let grouped = "use crate::{layout::Layout, gpu::{engine::GpuEngine, context::GpuContext}};";
    let found = violations("gpu::plan", grouped);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("gpu::engine"), "{found:?}");
    let relative = "use super::engine::GpuEngine;";
    assert_eq!(violations("gpu::plan", relative).len(), 1);
    let inline = "fn f() { let x = crate::bench::workloads; }";
    assert_eq!(violations("cpu", inline).len(), 1);
    // The rooms split into files keep their place: the CPU path's files below the facade,
    // oneDNN's below the tensors.
    let facade = "use crate::compress::Compressor;";
    assert_eq!(violations("cpu::scores", facade).len(), 1);
    let tensors = "use crate::tensor::Features;";
    assert_eq!(violations("products::onednn::library", tensors).len(), 1);
    let through_root = "use crate::{Compressed, Options};";
    assert_eq!(violations("compare", through_root).len(), 2);
    // Downward, commented and test-only paths are fine.
    let fine =
        "use crate::error::Result; // crate::demo\n#[cfg(test)]\nmod tests { use crate::demo; }";
    assert!(violations("layout", fine).is_empty());
}

#[test]
fn module_paths_and_use_trees_are_read_as_written() {
    assert_eq!(module_of(Path::new("gpu/engine/mod.rs")), "gpu::engine");
    assert_eq!(
        module_of(Path::new("gpu/engine/record.rs")),
        "gpu::engine::record"
    );
    let paths = paths_in("use super::{a::{B, c::D}, E};", "gpu::kernels::matmul");
    assert_eq!(
        paths,
        [
            "gpu::kernels::a::B",
            "gpu::kernels::a::c::D",
            "gpu::kernels::E"
        ]
    );
}

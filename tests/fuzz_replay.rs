//! Replays the committed fuzz corpus (`fuzz/corpus/TARGET/*`, grown by `bash fuzz/run.sh`)
//! through the same target bodies the fuzzers run: no input may panic.

#[path = "../fuzz/targets.rs"]
mod targets;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&folder).unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
    {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panic!("{target}: {} panics", path.display());
        }
        count += 1;
    }
    count
}

#[test]
fn the_fuzz_corpus_replays_without_a_panic() {
    for (target, run) in [
        ("file_readers", targets::file_readers as fn(&[u8])),
        ("layout_parsers", targets::layout_parsers),
        ("compressor", targets::compressor),
    ] {
        let count = replay(target, run);
        assert!(count > 0, "{target}: the corpus is empty");
        eprintln!("{target}: {count} inputs replayed");
    }
}

//! `metacompress demo`: a synthetic scene compressed, with how each object survives, and
//! (`--save`) its files for the other commands.

use std::path::Path;
use std::time::Instant;

use metacompress::{
    demo, files, Backend, Compressor, Dtype, Layout, Options, PMeta, Precision, Result,
};

/// The files `demo --save` writes, longest name first.
const DEMO_FILES: [&str; 3] = [
    "demo-anyres-features.safetensors",
    "demo-features.safetensors",
    "demo-weights.safetensors",
];

pub(crate) fn run_demo(backend: Backend, save: Option<&Path>) -> Result<()> {
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

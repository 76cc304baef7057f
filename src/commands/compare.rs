//! `metacompress compare`: every method on one file, a report (table, JSON) and pictures of
//! `P`.

use metacompress::files;
use metacompress::methods::{Request, Runner};
use metacompress::{compare, pictures};
use metacompress::{Error, Keep, Options, Result};

use super::{layout_of, weights_for};
use crate::cli_args::CompareArgs;

/// The longest name `compare --png` writes (`metacompress-grid{G}-row{I}.png`).
const PICTURE_NAME_LENGTH: usize = 64;

pub(crate) fn compare(args: CompareArgs) -> Result<()> {
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
    let compared = compare::compare(&runner, &request, &options, &probes, &source);
    // An input changed during the run explains a failure of the run too.
    input.check_unchanged()?;
    let (report, results) = compared?;
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

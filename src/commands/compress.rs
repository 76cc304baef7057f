//! `metacompress compress`: a file's tokens reduced by one method, written as safetensors.

use std::time::Instant;

use metacompress::files::{self, TensorOut};
use metacompress::methods::{Request, Runner};
use metacompress::{Dtype, Error, HostTokens, Keep, Options, Result};

use super::{layout_of, weights_for};
use crate::cli_args::CompressArgs;

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

pub(crate) fn compress(args: CompressArgs) -> Result<()> {
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
    let run = if extra.is_empty() {
        runner
            .run(method, &request, &options)
            .map(|reduced| (reduced, Vec::new()))
    } else {
        runner
            .run_sharing(method, &request, &extra, &options)
            .map(|shared| (shared.main, shared.extra))
    };
    let elapsed = started.elapsed();
    // An input changed during the run explains a failure of the run too.
    input.check_unchanged()?;
    let (mut reduced, extra_reduced) = run?;
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

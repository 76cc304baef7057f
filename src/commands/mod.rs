//! One room per subcommand of the command line, and what `compress` and `compare` share:
//! the layout and the weights of their flags and files.

use std::path::Path;

use metacompress::files;
use metacompress::{parse_grid_flags, parse_pinpoints, Error, Layout, PMeta, Result};

use crate::cli_args::LayoutArgs;

mod bench;
mod compare;
mod compress;
mod demo;
mod devices;
mod init;
mod layout;

pub(crate) use bench::bench;
pub(crate) use compare::compare;
pub(crate) use compress::compress;
pub(crate) use demo::run_demo;
pub(crate) use devices::devices;
pub(crate) use init::init;
pub(crate) use layout::print_layout;

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

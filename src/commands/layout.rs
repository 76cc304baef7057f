//! `metacompress layout`: a preset's grids, as `--grid` flags or JSON.

use metacompress::{parse_pinpoints, Layout, Result};

/// The layout of a `--layout` preset, with `--pinpoints` if given.
fn preset_of(preset: &str, pinpoints: Option<&str>) -> Result<Layout> {
    let pinpoints = pinpoints.map(parse_pinpoints).transpose()?;
    Layout::preset(preset, pinpoints.as_deref())
}

/// `metacompress layout`: the grids of a preset as `--grid` flags (or JSON) and `n`.
pub(crate) fn print_layout(preset: &str, pinpoints: Option<&str>, json: bool) -> Result<()> {
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

//! The methods that read the vision tower's [CLS] attention over the tokens (`attention`,
//! one non-negative value per token):
//!
//! - `visionzip` (VisionZip, Yang et al., CVPR 2025): of a grid's `q = hq * wq` rows,
//!   `q - round(q * 10 / 64)` keep the most-attended tokens (VisionZip's 54 dominant of 64);
//!   the rest are contextual: targets picked at an even stride among the other tokens, each
//!   remaining token merged into its most similar target (cosine), a row uniform over the
//!   target and the tokens merged into it. (VisionZip adds the merged mean to the target;
//!   we average them, so that every row of `P` sums to 1.)
//! - `prumerge` (LLaVA-PruMerge, Shang et al.): keep the grid's interquartile-range outliers
//!   of attention (above `Q3 + 1.5 IQR`), the most attended first, up to `q`; when fewer than
//!   `q` stand out, fill with the `sample` cells (PruMerge+'s spatial supplement), then with
//!   the most attended rest. Every other token is merged into its most similar kept token
//!   (cosine); a row weighs its tokens by their attention.

use super::grid::sample_cell;
use super::similarity::{argmax, cosines, unit_rows};
use super::Row;
use crate::layout::QueryGrid;

/// The grid's tokens, the most attended first (ties: the lower token).
fn by_attention(query_grid: &QueryGrid, attention: &[f32]) -> Vec<usize> {
    let grid = query_grid.grid;
    let mut tokens: Vec<usize> = grid.tokens().collect();
    tokens.sort_by(|&a, &b| attention[b].total_cmp(&attention[a]).then(a.cmp(&b)));
    tokens
}

/// For each of `tokens`, the index in `targets` of its most similar target (cosine).
fn nearest(x: &[f32], width: usize, tokens: &[usize], targets: &[usize]) -> Vec<usize> {
    let similarity = cosines(
        &unit_rows(x, width, tokens.iter().copied()),
        &unit_rows(x, width, targets.iter().copied()),
        width,
    );
    similarity
        .chunks_exact(targets.len())
        .map(|row| argmax(row.iter().copied()).expect("at least one target"))
        .collect()
}

/// Groups of tokens (a target and what merged into it), each a row weighing its tokens by
/// `weight` (uniform when they sum to 0).
fn weighted_rows(groups: Vec<Vec<usize>>, weight: impl Fn(usize) -> f32) -> Vec<Row> {
    groups
        .into_iter()
        .map(|group| {
            let total: f32 = group.iter().map(|&t| weight(t)).sum();
            let uniform = 1.0 / group.len() as f32;
            group
                .iter()
                .map(|&t| {
                    (
                        t,
                        if total > 0.0 {
                            weight(t) / total
                        } else {
                            uniform
                        },
                    )
                })
                .collect()
        })
        .collect()
}

/// The rows of `P` for one grid under `visionzip`.
pub fn visionzip(x: &[f32], width: usize, attention: &[f32], query_grid: &QueryGrid) -> Vec<Row> {
    let rows = query_grid.len();
    let contextual = (rows as f64 * 10.0 / 64.0).round() as usize;
    let ranked = by_attention(query_grid, attention);
    let (dominant, rest) = ranked.split_at(rows - contextual);
    let mut dominant = dominant.to_vec();
    dominant.sort_unstable();
    let mut out: Vec<Row> = dominant.into_iter().map(|t| vec![(t, 1.0)]).collect();
    if let Some(stride) = rest.len().checked_div(contextual) {
        let mut rest = rest.to_vec();
        rest.sort_unstable();
        let stride = stride.max(1);
        let is_target = |index: usize| index.is_multiple_of(stride) && index / stride < contextual;
        let targets: Vec<usize> = (0..rest.len())
            .filter(|&i| is_target(i))
            .map(|i| rest[i])
            .collect();
        let others: Vec<usize> = (0..rest.len())
            .filter(|&i| !is_target(i))
            .map(|i| rest[i])
            .collect();
        let mut groups: Vec<Vec<usize>> = targets.iter().map(|&t| vec![t]).collect();
        if !others.is_empty() {
            for (token, target) in others.iter().zip(nearest(x, width, &others, &targets)) {
                groups[target].push(*token);
            }
        }
        out.extend(weighted_rows(groups, |_| 1.0));
    }
    out
}

/// The `p`-th quantile of `values` with linear interpolation between order statistics
/// (numpy's default).
fn quantile(values: &[f32], p: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    sorted.sort_by(f64::total_cmp);
    let position = p * (sorted.len() - 1) as f64;
    let low = position.floor() as usize;
    let high = (low + 1).min(sorted.len() - 1);
    sorted[low] + (position - low as f64) * (sorted[high] - sorted[low])
}

/// The tokens `prumerge` keeps in one grid, in token order.
fn prumerge_kept(attention: &[f32], query_grid: &QueryGrid) -> Vec<usize> {
    let grid = query_grid.grid;
    let rows = query_grid.len();
    let values: Vec<f32> = grid.tokens().map(|t| attention[t]).collect();
    let (q1, q3) = (quantile(&values, 0.25), quantile(&values, 0.75));
    let fence = q3 + 1.5 * (q3 - q1);
    let ranked = by_attention(query_grid, attention);
    let mut kept: Vec<usize> = ranked
        .iter()
        .copied()
        .filter(|&t| attention[t] as f64 > fence)
        .take(rows)
        .collect();
    let samples = (0..query_grid.height)
        .flat_map(|i| (0..query_grid.width).map(move |j| (i, j)))
        .map(|(i, j)| sample_cell(query_grid, i, j));
    for token in samples.chain(ranked.iter().copied()) {
        if kept.len() == rows {
            break;
        }
        if !kept.contains(&token) {
            kept.push(token);
        }
    }
    kept.sort_unstable();
    kept
}

/// The rows of `P` for one grid under `prumerge`.
pub fn prumerge(x: &[f32], width: usize, attention: &[f32], query_grid: &QueryGrid) -> Vec<Row> {
    let grid = query_grid.grid;
    let kept = prumerge_kept(attention, query_grid);
    let pruned: Vec<usize> = grid
        .tokens()
        .filter(|t| kept.binary_search(t).is_err())
        .collect();
    let mut groups: Vec<Vec<usize>> = kept.iter().map(|&t| vec![t]).collect();
    if !pruned.is_empty() {
        for (token, target) in pruned.iter().zip(nearest(x, width, &pruned, &kept)) {
            groups[target].push(*token);
        }
    }
    weighted_rows(groups, |t| attention[t])
}

//! The methods that read the vision tower's [CLS] attention over the tokens (`attention`,
//! one non-negative value per token), as their authors' code computes them, on one grid of
//! `q = hq * wq` rows. Where the authors compare the vision tower's keys, these compare the
//! tokens `X` themselves (cosine): an input file carries no keys, and the keys are a linear
//! map of (normalised) features of the same tokens.
//!
//! - `visionzip` (VisionZip, Yang et al., CVPR 2025; `CLIPVisionTower_VisionZip.forward` in
//!   `visionzip/clip_encoder.py`). Its "54 dominant of 64" are the [CLS] token and the 53
//!   most attended patches; `X` has no [CLS], so its row is the attention-weighted mean of the
//!   grid's tokens (the [CLS] token's own attention over them). Of the `q` rows,
//!   `c = round(10 q / 64)` are contextual, 1 stands for [CLS], and the other `q - c - 1`
//!   keep the most attended tokens. The contextual rows: the tokens neither kept nor [CLS],
//!   in token order, give targets at the places `0, s, 2s, ...` (`s = max(1, len / c)`, the
//!   first `c`), every other one of them merges into its most similar target, and a
//!   contextual token is the target plus the mean of the tokens merged into it (weights 1
//!   and `1 / count`: the row sums to 2, or 1 when nothing merged into it). Rows: [CLS],
//!   the dominant tokens in token order, the contextual tokens in target order.
//! - `prumerge` (LLaVA-PruMerge, Shang et al.; `token_prune_merge_advanced_plus`, the one
//!   the authors' `forward` calls, in `llava/model/multimodal_encoder/clip_encoder.py`).
//!   Keep the attention outliers (above `Q3 + 1.5 IQR`), the most attended first, then a
//!   spatial supplement: grid cells at a 1-D index stride (`0, s, 2s, ...` in cell order)
//!   that are not outliers, in that order. Each kept token becomes itself plus the
//!   attention-weighted sum of its 32 most similar tokens of the grid (kept or not, so a
//!   token may serve several rows; the weights are the raw attention values, not
//!   normalised, so rows do not sum to 1), and one last token is the attention-weighted sum
//!   of every token not kept. The authors' outlier count and stride (`int(int(N / o) / 3)`
//!   over `0..575`) make the count adaptive; here the `q - 1` kept tokens are the first
//!   `q - 1` outliers, then the supplement at the largest stride that fills the rest.

use super::similarity::{argmax, cosines, unit_rows};
use super::Row;
use crate::layout::QueryGrid;

/// How many neighbours each token PruMerge keeps gathers (the authors' `k = 32`).
pub const PRUMERGE_NEIGHBOURS: usize = 32;

/// The grid's tokens, the most attended first (ties: the lower token).
fn by_attention(query_grid: &QueryGrid, attention: &[f32]) -> Vec<usize> {
    let grid = query_grid.grid;
    let mut tokens: Vec<usize> = grid.tokens().collect();
    tokens.sort_by(|&a, &b| attention[b].total_cmp(&attention[a]).then(a.cmp(&b)));
    tokens
}

/// The row weighing `tokens` by their attention, normalised to sum to 1 (uniform when
/// every weight is 0).
fn attention_mean(tokens: &[usize], attention: &[f32]) -> Row {
    let total: f64 = tokens.iter().map(|&t| attention[t] as f64).sum();
    tokens
        .iter()
        .map(|&t| {
            let weight = if total > 0.0 {
                attention[t] as f64 / total
            } else {
                1.0 / tokens.len() as f64
            };
            (t, weight as f32)
        })
        .collect()
}

/// The rows of `P` for one grid under `visionzip`.
pub fn visionzip(x: &[f32], width: usize, attention: &[f32], query_grid: &QueryGrid) -> Vec<Row> {
    let grid = query_grid.grid;
    let rows = query_grid.len();
    let contextual = (rows as f64 * 10.0 / 64.0).round() as usize;
    // [CLS] is one of VisionZip's dominant tokens: `rows - contextual - 1` patches remain.
    let dominant_count = rows - contextual - 1;
    let ranked = by_attention(query_grid, attention);
    let mut dominant = ranked[..dominant_count].to_vec();
    dominant.sort_unstable();
    let mut out = vec![attention_mean(
        &grid.tokens().collect::<Vec<_>>(),
        attention,
    )];
    out.extend(dominant.iter().map(|&t| vec![(t, 1.0)]));
    if contextual == 0 {
        return out;
    }
    // The rest, in token order (at least `contextual + 1` tokens: the grid has `rows`).
    let rest: Vec<usize> = grid
        .tokens()
        .filter(|t| dominant.binary_search(t).is_err())
        .collect();
    let stride = (rest.len() / contextual).max(1);
    let is_target = |place: usize| place.is_multiple_of(stride) && place / stride < contextual;
    let targets: Vec<usize> = (0..rest.len())
        .filter(|&p| is_target(p))
        .map(|p| rest[p])
        .collect();
    let others: Vec<usize> = (0..rest.len())
        .filter(|&p| !is_target(p))
        .map(|p| rest[p])
        .collect();
    let similarity = cosines(
        &unit_rows(x, width, others.iter().copied()),
        &unit_rows(x, width, targets.iter().copied()),
        width,
    );
    let mut merged: Vec<Vec<usize>> = vec![Vec::new(); targets.len()];
    for (&token, row) in others.iter().zip(similarity.chunks_exact(targets.len())) {
        merged[argmax(row.iter().copied()).expect("a target")].push(token);
    }
    for (&target, members) in targets.iter().zip(merged) {
        // The target plus the mean of what merged into it.
        let weight = 1.0 / members.len().max(1) as f32;
        let mut row = vec![(target, 1.0)];
        row.extend(members.into_iter().map(|t| (t, weight)));
        out.push(row);
    }
    out
}

/// The `p`-th quantile of `values` with linear interpolation between order statistics
/// (numpy's default `percentile`).
fn quantile(values: &[f32], p: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    sorted.sort_by(f64::total_cmp);
    let position = p * (sorted.len() - 1) as f64;
    let low = position.floor() as usize;
    let high = (low + 1).min(sorted.len() - 1);
    sorted[low] + (position - low as f64) * (sorted[high] - sorted[low])
}

/// The `count` tokens `prumerge` keeps in one grid, in PruMerge's order: the outliers of
/// attention, the most attended first, then the spatial supplement in cell order.
fn prumerge_kept(attention: &[f32], query_grid: &QueryGrid, count: usize) -> Vec<usize> {
    let grid = query_grid.grid;
    let values: Vec<f32> = grid.tokens().map(|t| attention[t]).collect();
    let (q1, q3) = (quantile(&values, 0.25), quantile(&values, 0.75));
    let fence = q3 + 1.5 * (q3 - q1);
    let mut kept: Vec<usize> = by_attention(query_grid, attention)
        .into_iter()
        .filter(|&t| attention[t] as f64 > fence)
        .take(count)
        .collect();
    let missing = count - kept.len();
    let cells = grid.len();
    // (None when nothing is missing.)
    if let Some(widest) = cells.checked_div(missing) {
        let is_outlier = |cell: usize| kept.contains(&grid.token_of_cell(cell));
        // The largest stride whose cells, outliers left out, are enough (stride 1 always is:
        // the grid holds more than `count` tokens).
        let supplement: Vec<usize> = (1..=widest)
            .rev()
            .map(|stride| {
                (0..cells)
                    .step_by(stride)
                    .filter(|&cell| !is_outlier(cell))
                    .take(missing)
                    .collect::<Vec<usize>>()
            })
            .find(|cells| cells.len() == missing)
            .expect("stride 1 offers every cell");
        kept.extend(supplement.into_iter().map(|cell| grid.token_of_cell(cell)));
    }
    kept
}

/// The rows of `P` for one grid under `prumerge`.
pub fn prumerge(x: &[f32], width: usize, attention: &[f32], query_grid: &QueryGrid) -> Vec<Row> {
    let grid = query_grid.grid;
    // The last row is PruMerge's extra token: `q - 1` kept tokens.
    let kept = prumerge_kept(attention, query_grid, query_grid.len() - 1);
    let mut is_kept = vec![false; attention.len()];
    kept.iter().for_each(|&t| is_kept[t] = true);
    let pruned: Vec<usize> = grid.tokens().filter(|&t| !is_kept[t]).collect();
    // Each kept token's candidates: the other kept tokens (in kept order), then the pruned.
    let candidates: Vec<usize> = kept.iter().chain(&pruned).copied().collect();
    let similarity = cosines(
        &unit_rows(x, width, kept.iter().copied()),
        &unit_rows(x, width, candidates.iter().copied()),
        width,
    );
    let mut out: Vec<Row> = Vec::with_capacity(query_grid.len());
    for (index, (&token, row)) in kept
        .iter()
        .zip(similarity.chunks_exact(candidates.len()))
        .enumerate()
    {
        let mut nearest: Vec<usize> = (0..candidates.len()).filter(|&c| c != index).collect();
        nearest.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        nearest.truncate(PRUMERGE_NEIGHBOURS);
        let mut weights = vec![(token, 1.0)];
        weights.extend(nearest.into_iter().map(|c| {
            let neighbour = candidates[c];
            (neighbour, attention[neighbour])
        }));
        out.push(weights);
    }
    out.push(pruned.iter().map(|&t| (t, attention[t])).collect());
    out
}

//! Float64 references of the baseline methods, written from issue 5's definitions, the
//! authors' algorithms as docs/METHODS.md restates them (issue 22: ToMe's `merge.py`,
//! VisionZip's `clip_encoder.py`, PruMerge+'s `token_prune_merge_advanced_plus`, DivPrune's
//! `llava_arch.py`) and the project's documented choices, independently of `src/methods`
//! (plain loops, no shared code). Each returns `P` (`m x n`) for one image.

use metacompress::{Queries, QueryGrid};

/// The float64 `P` of a baseline asked for `scope`, or `None` for the two without a
/// deterministic reference. SPEC section 4, v4: DivPrune at scope image chooses among all
/// `n` tokens; every other baseline here runs per grid whatever the scope.
pub fn projection(
    method: metacompress::methods::Method,
    scope: metacompress::Scope,
    x: &[f32],
    d: usize,
    attention: &[f32],
    queries: &Queries,
    n: usize,
) -> Option<Vec<f64>> {
    use metacompress::methods::Method;
    Some(match method {
        Method::Pool => pool(queries, n),
        Method::Sample => sample(queries, n),
        Method::Tome => tome(x, d, queries, n),
        Method::DivPrune if scope == metacompress::Scope::Image => {
            divprune_image(x, d, queries.count, n)
        }
        Method::DivPrune => divprune(x, d, queries, n),
        Method::VisionZip => visionzip(x, d, attention, queries, n),
        Method::PruMerge => prumerge(x, d, attention, queries, n),
        Method::MetaCompress | Method::Random => return None,
    })
}

fn cosine(u: &[f64], v: &[f64]) -> f64 {
    let dot: f64 = u.iter().zip(v).map(|(a, b)| a * b).sum();
    let nu = u.iter().map(|a| a * a).sum::<f64>().sqrt();
    let nv = v.iter().map(|a| a * a).sum::<f64>().sqrt();
    if nu == 0.0 || nv == 0.0 {
        0.0
    } else {
        dot / (nu * nv)
    }
}

fn token(x: &[f32], d: usize, t: usize) -> Vec<f64> {
    x[t * d..(t + 1) * d].iter().map(|&v| v as f64).collect()
}

/// The index of the first largest value.
fn first_max(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// Builds `P` from per-grid rows (each a list of `(token, weight)`).
fn assemble(
    queries: &Queries,
    n: usize,
    mut rows_of: impl FnMut(&QueryGrid) -> Vec<Vec<(usize, f64)>>,
) -> Vec<f64> {
    let mut p = vec![0.0; queries.count * n];
    for q in &queries.grids {
        let rows = rows_of(q);
        assert_eq!(rows.len(), q.len(), "rows of a grid");
        for (i, row) in rows.iter().enumerate() {
            for &(t, w) in row {
                p[(q.query_offset + i) * n + t] += w;
            }
        }
    }
    p
}

pub fn pool(queries: &Queries, n: usize) -> Vec<f64> {
    assemble(queries, n, |q| {
        let g = q.grid;
        let mut rows = Vec::new();
        for i in 0..q.height {
            let r0 = (i as f64 * g.height as f64 / q.height as f64).floor() as usize;
            let r1 = ((i + 1) as f64 * g.height as f64 / q.height as f64).ceil() as usize;
            for j in 0..q.width {
                let c0 = (j as f64 * g.width as f64 / q.width as f64).floor() as usize;
                let c1 = ((j + 1) as f64 * g.width as f64 / q.width as f64).ceil() as usize;
                let w = 1.0 / ((r1 - r0) * (c1 - c0)) as f64;
                let mut row = Vec::new();
                for r in r0..r1 {
                    for c in c0..c1 {
                        row.push((at(&g, r, c), w));
                    }
                }
                rows.push(row);
            }
        }
        rows
    })
}

/// The cell `sample` keeps for query `(i, j)` of `q`, from the formula in f64.
pub fn sample_cell(q: &QueryGrid, i: usize, j: usize) -> usize {
    let g = q.grid;
    let r = ((i as f64 + 0.5) * g.height as f64 / q.height as f64).floor() as usize;
    let c = ((j as f64 + 0.5) * g.width as f64 / q.width as f64).floor() as usize;
    at(&g, r, c)
}

pub fn sample(queries: &Queries, n: usize) -> Vec<f64> {
    assemble(queries, n, |q| {
        let mut rows = Vec::new();
        for i in 0..q.height {
            for j in 0..q.width {
                rows.push(vec![(sample_cell(q, i, j), 1.0)]);
            }
        }
        rows
    })
}

/// ToMe as `bipartite_soft_matching` + `merge_wavg` state it: each token is a size-weighted
/// mean with a size; a round removes `r = min(t - q, t / 2)` tokens and outputs the unmerged
/// even-place tokens in order of their best score, then the odd-place tokens.
pub fn tome(x: &[f32], d: usize, queries: &Queries, n: usize) -> Vec<f64> {
    struct Token {
        members: Vec<usize>,
        mean: Vec<f64>,
    }
    assemble(queries, n, |q| {
        let mut tokens: Vec<Token> = cells(&q.grid)
            .into_iter()
            .map(|t| Token {
                members: vec![t],
                mean: token(x, d, t),
            })
            .collect();
        while tokens.len() > q.len() {
            let t = tokens.len();
            let r = std::cmp::min(t - q.len(), t / 2);
            let a: Vec<usize> = (0..t).step_by(2).collect();
            let b: Vec<usize> = (1..t).step_by(2).collect();
            // node_max, node_idx
            let mut best: Vec<(f64, usize)> = Vec::new();
            for &ai in &a {
                let scores: Vec<f64> = b
                    .iter()
                    .map(|&bi| cosine(&tokens[ai].mean, &tokens[bi].mean))
                    .collect();
                let k = first_max(&scores);
                best.push((scores[k], k));
            }
            // edge_idx: the even-place tokens by score, highest first (a stable sort).
            let mut edges: Vec<usize> = (0..a.len()).collect();
            for i in 1..edges.len() {
                let mut j = i;
                while j > 0 && best[edges[j - 1]].0 < best[edges[j]].0 {
                    edges.swap(j - 1, j);
                    j -= 1;
                }
            }
            // merge_wavg: sum of size * mean over the destination and its sources, / size.
            let mut merged_into: Vec<Vec<usize>> = vec![Vec::new(); b.len()];
            for &e in &edges[..r] {
                merged_into[best[e].1].push(a[e]);
            }
            let mut next: Vec<Token> = Vec::new();
            for &e in &edges[r..] {
                let u = &tokens[a[e]];
                next.push(Token {
                    members: u.members.clone(),
                    mean: u.mean.clone(),
                });
            }
            for (k, &bi) in b.iter().enumerate() {
                let mut members = tokens[bi].members.clone();
                let mut weighted: Vec<f64> = tokens[bi]
                    .mean
                    .iter()
                    .map(|v| v * tokens[bi].members.len() as f64)
                    .collect();
                for &src in &merged_into[k] {
                    let size = tokens[src].members.len() as f64;
                    for (w, v) in weighted.iter_mut().zip(&tokens[src].mean) {
                        *w += v * size;
                    }
                    members.extend(tokens[src].members.iter().copied());
                }
                let size = members.len() as f64;
                next.push(Token {
                    members,
                    mean: weighted.into_iter().map(|w| w / size).collect(),
                });
            }
            tokens = next;
        }
        tokens
            .into_iter()
            .map(|t| {
                let w = 1.0 / t.members.len() as f64;
                t.members.into_iter().map(|m| (m, w)).collect()
            })
            .collect()
    })
}

pub fn divprune(x: &[f32], d: usize, queries: &Queries, n: usize) -> Vec<f64> {
    assemble(queries, n, |q| {
        divprune_kept(x, d, &cells(&q.grid), q.len())
            .into_iter()
            .map(|t| vec![(t, 1.0)])
            .collect()
    })
}

/// DivPrune at scope image: `m` rows, one-hot on `m` of all `n` tokens (loose ones
/// included), in token order.
pub fn divprune_image(x: &[f32], d: usize, m: usize, n: usize) -> Vec<f64> {
    let mut p = vec![0.0; m * n];
    let all: Vec<usize> = (0..n).collect();
    for (row, t) in divprune_kept(x, d, &all, m).into_iter().enumerate() {
        p[row * n + t] = 1.0;
    }
    p
}

/// The `count` tokens of `tokens` greedy max-min diversity keeps (a kept token never a
/// candidate again), in token order.
fn divprune_kept(x: &[f32], d: usize, tokens: &[usize], count: usize) -> Vec<usize> {
    let total = tokens.len();
    let vectors: Vec<Vec<f64>> = tokens.iter().map(|&t| token(x, d, t)).collect();
    let dist = |i: usize, j: usize| 1.0 - cosine(&vectors[i], &vectors[j]);
    let first = if total == 1 {
        0
    } else {
        let nearest: Vec<f64> = (0..total)
            .map(|i| {
                (0..total)
                    .filter(|&j| j != i)
                    .map(|j| dist(i, j))
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        first_max(&nearest)
    };
    let mut kept = vec![first];
    while kept.len() < count {
        let scores: Vec<f64> = (0..total)
            .map(|i| {
                if kept.contains(&i) {
                    f64::NEG_INFINITY
                } else {
                    kept.iter()
                        .map(|&k| dist(i, k))
                        .fold(f64::INFINITY, f64::min)
                }
            })
            .collect();
        kept.push(first_max(&scores));
    }
    let mut kept: Vec<usize> = kept.into_iter().map(|i| tokens[i]).collect();
    kept.sort();
    kept
}

/// The authors' DivPrune loop as written (`DivPrune` in their `llava_arch.py`), on the tokens
/// `tokens` of `x`: the first pick maximises each column's second-smallest distance (its
/// nearest other token, the smallest being its distance to itself), every next pick the
/// smallest distance to the picks so far, over every token, picks included. Returns the picks
/// in pick order (a token may appear twice).
pub fn divprune_as_written(x: &[f32], d: usize, tokens: &[usize], count: usize) -> Vec<usize> {
    let vectors: Vec<Vec<f64>> = tokens.iter().map(|&t| token(x, d, t)).collect();
    let distance = |i: usize, j: usize| 1.0 - cosine(&vectors[i], &vectors[j]);
    let mut picks: Vec<usize> = Vec::new();
    for _ in 0..count {
        let scores: Vec<f64> = (0..tokens.len())
            .map(|j| {
                if picks.is_empty() {
                    let mut column: Vec<f64> = (0..tokens.len()).map(|i| distance(i, j)).collect();
                    column.sort_by(|a, b| a.partial_cmp(b).unwrap());
                    column[1]
                } else {
                    picks
                        .iter()
                        .map(|&i| distance(i, j))
                        .fold(f64::INFINITY, f64::min)
                }
            })
            .collect();
        picks.push(first_max(&scores));
    }
    picks.into_iter().map(|i| tokens[i]).collect()
}

/// The grid's tokens, most attended first (ties: lower token).
fn ranked(q: &QueryGrid, attention: &[f32]) -> Vec<usize> {
    let g = q.grid;
    let mut tokens: Vec<usize> = cells(&g).into_iter().collect();
    tokens.sort_by(|&a, &b| {
        (attention[b] as f64)
            .partial_cmp(&(attention[a] as f64))
            .unwrap()
            .then(a.cmp(&b))
    });
    tokens
}

/// VisionZip: [CLS] (here the attention-weighted mean of the grid), the `q - c - 1` most
/// attended tokens, and `c = round(10 q / 64)` contextual tokens, each a target plus the mean
/// of the tokens merged into it.
pub fn visionzip(x: &[f32], d: usize, attention: &[f32], queries: &Queries, n: usize) -> Vec<f64> {
    assemble(queries, n, |q| {
        let all = cells(&q.grid);
        let c = (q.len() as f64 * 10.0 / 64.0).round() as usize;
        let dominant_count = q.len() - c - 1;
        let total: f64 = all.iter().map(|&t| attention[t] as f64).sum();
        let cls: Vec<(usize, f64)> = all
            .iter()
            .map(|&t| {
                let w = if total > 0.0 {
                    attention[t] as f64 / total
                } else {
                    1.0 / all.len() as f64
                };
                (t, w)
            })
            .collect();
        let order = ranked(q, attention);
        let mut dominant: Vec<usize> = order[..dominant_count].to_vec();
        dominant.sort();
        let mut out = vec![cls];
        for &t in &dominant {
            out.push(vec![(t, 1.0)]);
        }
        let filtered: Vec<usize> = all.into_iter().filter(|t| !dominant.contains(t)).collect();
        if let Some(per_target) = filtered.len().checked_div(c) {
            let step = std::cmp::max(1, per_target);
            let places: Vec<usize> = (0..filtered.len()).step_by(step).take(c).collect();
            let targets: Vec<usize> = places.iter().map(|&p| filtered[p]).collect();
            let mut assigned: Vec<Vec<usize>> = vec![Vec::new(); targets.len()];
            for (p, &t) in filtered.iter().enumerate() {
                if places.contains(&p) {
                    continue;
                }
                let v = token(x, d, t);
                let scores: Vec<f64> = targets
                    .iter()
                    .map(|&k| cosine(&v, &token(x, d, k)))
                    .collect();
                assigned[first_max(&scores)].push(t);
            }
            for (k, &target) in targets.iter().enumerate() {
                let count = std::cmp::max(1, assigned[k].len()) as f64;
                let mut row = vec![(target, 1.0)];
                row.extend(assigned[k].iter().map(|&t| (t, 1.0 / count)));
                out.push(row);
            }
        }
        out
    })
}

/// numpy's default (linear) percentile.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let position = p * (v.len() - 1) as f64;
    let (lo, hi) = (position.floor() as usize, position.ceil() as usize);
    v[lo] + (position - lo as f64) * (v[hi] - v[lo])
}

/// The tokens PruMerge+ keeps on grid `q` (`q - 1` of them, in its order): the attention
/// outliers, most attended first, then the cells at the largest 1-D stride that, outliers
/// left out, still offers the rest.
pub fn prumerge_kept(q: &QueryGrid, attention: &[f32]) -> Vec<usize> {
    let all = cells(&q.grid);
    let values: Vec<f64> = all.iter().map(|&t| attention[t] as f64).collect();
    let (q1, q3) = (percentile(&values, 0.25), percentile(&values, 0.75));
    let fence = q3 + 1.5 * (q3 - q1);
    let budget = q.len() - 1;
    let mut kept: Vec<usize> = ranked(q, attention)
        .into_iter()
        .filter(|&t| attention[t] as f64 > fence)
        .take(budget)
        .collect();
    let need = budget - kept.len();
    if let Some(mut stride) = all.len().checked_div(need) {
        loop {
            let offered: Vec<usize> = (0..all.len())
                .filter(|cell| cell % stride == 0)
                .map(|cell| all[cell])
                .filter(|t| !kept.contains(t))
                .collect();
            if offered.len() >= need {
                kept.extend(&offered[..need]);
                break;
            }
            stride -= 1;
        }
    }
    kept
}

/// PruMerge+: each kept token plus the attention-weighted sum of its 32 most similar other
/// tokens of the grid, then one token, the attention-weighted sum of the tokens not kept.
pub fn prumerge(x: &[f32], d: usize, attention: &[f32], queries: &Queries, n: usize) -> Vec<f64> {
    assemble(queries, n, |q| {
        let kept = prumerge_kept(q, attention);
        let pruned: Vec<usize> = cells(&q.grid)
            .into_iter()
            .filter(|t| !kept.contains(t))
            .collect();
        let mut out = Vec::new();
        for (i, &center) in kept.iter().enumerate() {
            let rest: Vec<usize> = kept[..i]
                .iter()
                .chain(&kept[i + 1..])
                .chain(&pruned)
                .copied()
                .collect();
            let v = token(x, d, center);
            let mut scores: Vec<f64> = rest.iter().map(|&t| cosine(&v, &token(x, d, t))).collect();
            let mut row = vec![(center, 1.0)];
            // Repeatedly the best remaining (ties: the earlier in `rest`), at most 32 times.
            for _ in 0..std::cmp::min(32, rest.len()) {
                let k = first_max(&scores);
                row.push((rest[k], attention[rest[k]] as f64));
                scores[k] = f64::NEG_INFINITY;
            }
            out.push(row);
        }
        out.push(pruned.iter().map(|&t| (t, attention[t] as f64)).collect());
        out
    })
}

/// Token `(r, c)` of a grid whose rows are `stride` tokens apart (SPEC section 3), written here
/// from the spec rather than taken from the library.
fn at(g: &metacompress::Grid, r: usize, c: usize) -> usize {
    g.offset + r * g.stride + c
}

/// The tokens of a grid, row by row.
fn cells(g: &metacompress::Grid) -> Vec<usize> {
    (0..g.height)
        .flat_map(|r| (0..g.width).map(move |c| at(g, r, c)))
        .collect()
}

/// A method's `P` and tokens against their float64 references: every backend builds the same
/// `P` (1e-6) and reduces within SPEC section 7 (1e-4).
pub fn assert_matches(
    projection: &[f32],
    tokens: &[f32],
    expected_p: &[f64],
    expected_tokens: &[f64],
    what: &str,
) {
    let p_error = super::relative_error(projection, expected_p);
    assert!(p_error <= 1e-6, "{what}: P error {p_error}");
    let error = super::relative_error(tokens, expected_tokens);
    assert!(error <= 1e-4, "{what}: tokens error {error}");
}

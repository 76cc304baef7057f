//! Float64 references of the baseline methods, written from issue 5's definitions and the
//! project's documented choices, independently of `src/methods` (plain loops, no shared code).
//! Each returns `P` (`m x n`) for one image.

use metacompress::{Queries, QueryGrid};

/// The float64 `P` of a baseline, or `None` for the two without a deterministic reference.
pub fn projection(
    method: metacompress::methods::Method,
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

pub fn tome(x: &[f32], d: usize, queries: &Queries, n: usize) -> Vec<f64> {
    assemble(queries, n, |q| {
        let g = q.grid;
        // (members, sum of features)
        let mut tokens: Vec<(Vec<usize>, Vec<f64>)> = cells(&g)
            .into_iter()
            .map(|t| (vec![t], token(x, d, t)))
            .collect();
        while tokens.len() > q.len() {
            let remove = tokens.len() - q.len();
            let a: Vec<usize> = (0..tokens.len()).filter(|i| i % 2 == 0).collect();
            let b: Vec<usize> = (0..tokens.len()).filter(|i| i % 2 == 1).collect();
            let mut best = Vec::new();
            for &ai in &a {
                let scores: Vec<f64> = b
                    .iter()
                    .map(|&bi| cosine(&tokens[ai].1, &tokens[bi].1))
                    .collect();
                let k = first_max(&scores);
                best.push((k, scores[k]));
            }
            let mut order: Vec<usize> = (0..a.len()).collect();
            // by score, largest first; equal scores keep the earlier source first
            order.sort_by(|&p, &r| best[r].1.partial_cmp(&best[p].1).unwrap().then(p.cmp(&r)));
            let merged: Vec<usize> = order[..remove.min(a.len())].to_vec();
            let mut next_b: Vec<(Vec<usize>, Vec<f64>)> =
                b.iter().map(|&bi| tokens[bi].clone()).collect();
            for &s in &merged {
                let (members, sum) = tokens[a[s]].clone();
                let target = &mut next_b[best[s].0];
                target.0.extend(members);
                for (t, v) in target.1.iter_mut().zip(&sum) {
                    *t += v;
                }
            }
            let mut next: Vec<(Vec<usize>, Vec<f64>)> = (0..a.len())
                .filter(|s| !merged.contains(s))
                .map(|s| tokens[a[s]].clone())
                .collect();
            next.extend(next_b);
            for t in &mut next {
                t.0.sort();
            }
            next.sort_by_key(|t| t.0[0]);
            tokens = next;
        }
        tokens
            .into_iter()
            .map(|(members, _)| {
                let w = 1.0 / members.len() as f64;
                members.into_iter().map(|m| (m, w)).collect()
            })
            .collect()
    })
}

pub fn divprune(x: &[f32], d: usize, queries: &Queries, n: usize) -> Vec<f64> {
    assemble(queries, n, |q| {
        let g = q.grid;
        let count = g.len();
        let tokens = cells(&g);
        let vectors: Vec<Vec<f64>> = (0..count).map(|i| token(x, d, tokens[i])).collect();
        let dist = |i: usize, j: usize| 1.0 - cosine(&vectors[i], &vectors[j]);
        let first = if count == 1 {
            0
        } else {
            let nearest: Vec<f64> = (0..count)
                .map(|i| {
                    (0..count)
                        .filter(|&j| j != i)
                        .map(|j| dist(i, j))
                        .fold(f64::INFINITY, f64::min)
                })
                .collect();
            first_max(&nearest)
        };
        let mut kept = vec![first];
        while kept.len() < q.len() {
            let scores: Vec<f64> = (0..count)
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
        kept.sort();
        kept.into_iter()
            .map(|i| vec![(cells(&g)[i], 1.0)])
            .collect()
    })
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

fn nearest_target(x: &[f32], d: usize, t: usize, targets: &[usize]) -> usize {
    let v = token(x, d, t);
    let scores: Vec<f64> = targets
        .iter()
        .map(|&k| cosine(&v, &token(x, d, k)))
        .collect();
    first_max(&scores)
}

pub fn visionzip(x: &[f32], d: usize, attention: &[f32], queries: &Queries, n: usize) -> Vec<f64> {
    assemble(queries, n, |q| {
        let rows = q.len();
        let contextual = (rows as f64 * 10.0 / 64.0).round() as usize;
        let order = ranked(q, attention);
        let mut dominant: Vec<usize> = order[..rows - contextual].to_vec();
        dominant.sort();
        let mut out: Vec<Vec<(usize, f64)>> = dominant.iter().map(|&t| vec![(t, 1.0)]).collect();
        if contextual > 0 {
            let mut rest: Vec<usize> = order[rows - contextual..].to_vec();
            rest.sort();
            let stride = std::cmp::max(1, rest.len() / contextual);
            let targets: Vec<usize> = (0..contextual).map(|k| rest[k * stride]).collect();
            let mut groups: Vec<Vec<usize>> = targets.iter().map(|&t| vec![t]).collect();
            for &t in rest.iter().filter(|t| !targets.contains(t)) {
                groups[nearest_target(x, d, t, &targets)].push(t);
            }
            for group in groups {
                let w = 1.0 / group.len() as f64;
                out.push(group.into_iter().map(|t| (t, w)).collect());
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

pub fn prumerge(x: &[f32], d: usize, attention: &[f32], queries: &Queries, n: usize) -> Vec<f64> {
    assemble(queries, n, |q| {
        let g = q.grid;
        let values: Vec<f64> = cells(&g).into_iter().map(|t| attention[t] as f64).collect();
        let (q1, q3) = (percentile(&values, 0.25), percentile(&values, 0.75));
        let fence = q3 + 1.5 * (q3 - q1);
        let order = ranked(q, attention);
        let mut kept: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&t| attention[t] as f64 > fence)
            .take(q.len())
            .collect();
        let mut candidates = Vec::new();
        for i in 0..q.height {
            for j in 0..q.width {
                candidates.push(sample_cell(q, i, j));
            }
        }
        candidates.extend(order.iter().copied());
        for t in candidates {
            if kept.len() < q.len() && !kept.contains(&t) {
                kept.push(t);
            }
        }
        kept.sort();
        let mut groups: Vec<Vec<usize>> = kept.iter().map(|&t| vec![t]).collect();
        for t in cells(&g).into_iter().filter(|t| !kept.contains(t)) {
            groups[nearest_target(x, d, t, &kept)].push(t);
        }
        groups
            .into_iter()
            .map(|group| {
                let total: f64 = group.iter().map(|&t| attention[t] as f64).sum();
                group
                    .iter()
                    .map(|&t| {
                        let w = if total > 0.0 {
                            attention[t] as f64 / total
                        } else {
                            1.0 / group.len() as f64
                        };
                        (t, w)
                    })
                    .collect()
            })
            .collect()
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

//! Built-in data for `metacompress demo`: LLaVA-1.5-shaped features with real spatial
//! structure (objects on a smooth background), and a figure that says whether the reduced
//! tokens still represent each object.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::compress::Compressed;
use crate::layout::{Grid, Layout};
use crate::tensor::Features;

/// Grid side of the demo image (LLaVA-1.5: 24x24 tokens).
pub const SIDE: usize = 24;
/// Token width of the demo (a small stand-in for 4096).
pub const WIDTH: usize = 1024;

/// One object of the scene: an axis-aligned rectangle of cells with its own feature direction.
#[derive(Clone, Debug)]
pub struct Object {
    /// A name to print.
    pub name: &'static str,
    /// Rows `top..bottom` and columns `left..right` of the grid it covers.
    pub rows: std::ops::Range<usize>,
    /// See `rows`.
    pub columns: std::ops::Range<usize>,
    /// Its unit-length feature direction.
    pub direction: Vec<f32>,
}

impl Object {
    /// Whether grid cell `(row, column)` is part of the object.
    pub fn covers(&self, row: usize, column: usize) -> bool {
        self.rows.contains(&row) && self.columns.contains(&column)
    }

    /// Number of cells it covers.
    pub fn area(&self) -> usize {
        self.rows.len() * self.columns.len()
    }
}

/// A scene: the tokens of one image and the objects in it.
pub struct Scene {
    /// One image.
    pub features: Features,
    /// The objects placed in it.
    pub objects: Vec<Object>,
}

fn unit(rng: &mut ChaCha8Rng, width: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..width).map(|_| rng.sample(StandardNormal)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

/// The demo scene on one `SIDE x SIDE` grid of `WIDTH`-wide tokens (LLaVA-1.5's shape).
pub fn scene(seed: u64) -> Scene {
    let layout = Layout::square(SIDE * SIDE).expect("a square grid");
    scene_on(&layout, WIDTH, seed)
}

/// The demo scene seen through every grid of `layout`: a smooth background (a few slow 2-D
/// waves, each along its own feature direction), four objects of different sizes with strong
/// directions of their own, and a little noise. Each grid shows the whole scene at its own
/// resolution (as LLaVA-NeXT's base image and its high-resolution crops do); loose tokens
/// share one "newline" direction. Objects are placed in `SIDE x SIDE` cells, mapped onto
/// each grid. Deterministic for a seed.
pub fn scene_on(layout: &Layout, width: usize, seed: u64) -> Scene {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let scale = (width as f32).sqrt();
    let waves: Vec<(Vec<f32>, f32, f32, f32)> = (0..3)
        .map(|_| {
            let direction = unit(&mut rng, width);
            (
                direction,
                rng.random_range(0.1..0.35),
                rng.random_range(0.1..0.35),
                rng.random_range(0.0..std::f32::consts::TAU),
            )
        })
        .collect();
    let objects = vec![
        ("cat", 3..9, 4..11),
        ("ball", 15..18, 17..20),
        ("lamp", 2..12, 19..22),
        ("book", 17..22, 3..9),
    ]
    .into_iter()
    .map(|(name, rows, columns)| Object {
        name,
        rows,
        columns,
        direction: unit(&mut rng, width),
    })
    .collect::<Vec<_>>();
    let newline = unit(&mut rng, width);
    let mut values = Vec::with_capacity(layout.tokens() * width);
    for token in 0..layout.tokens() {
        let mut value = vec![0.0f32; width];
        match layout.grid_of(token) {
            Some(grid) => {
                let (row, column) = grid.cell_of(token).expect("the grid holds the token");
                // The cell's centre in SIDE x SIDE scene coordinates.
                let row = (row as f32 + 0.5) * SIDE as f32 / grid.height as f32;
                let column = (column as f32 + 0.5) * SIDE as f32 / grid.width as f32;
                for (direction, fy, fx, phase) in &waves {
                    let amplitude =
                        ((row - 0.5) * fy + (column - 0.5) * fx + phase).sin() * 0.6 * scale;
                    value
                        .iter_mut()
                        .zip(direction)
                        .for_each(|(t, d)| *t += amplitude * d);
                }
                let (r, c) = (row as usize, column as usize);
                for object in objects.iter().filter(|o| o.covers(r, c)) {
                    value
                        .iter_mut()
                        .zip(&object.direction)
                        .for_each(|(t, d)| *t += 1.5 * scale * d);
                }
            }
            None => value
                .iter_mut()
                .zip(&newline)
                .for_each(|(t, d)| *t += scale * d),
        }
        value
            .iter_mut()
            .for_each(|t| *t += 0.3 * rng.sample::<f32, _>(StandardNormal));
        values.extend(value);
    }
    Scene {
        features: Features::new(1, layout.tokens(), width, values).expect("demo shapes agree"),
        objects,
    }
}

/// LLaVA-NeXT's anyres layout of a square image, in the model's own order: a 24x24 base grid,
/// then a 48x48 grid of the four crops with a loose newline token after each row (n = 2928).
pub fn anyres_layout() -> Layout {
    let base = Grid::new(0, SIDE, SIDE);
    let crops = Grid::strided(SIDE * SIDE, 2 * SIDE, 2 * SIDE, 2 * SIDE + 1);
    Layout::new(crops.end() + 1, vec![base, crops]).expect("a valid layout")
}

/// A stand-in for the vision tower's [CLS] attention over the scene's tokens (for `visionzip`
/// and `prumerge`): a softmax of each token's distance from the mean token, so that tokens
/// that stand out from the background draw more attention. Built from the features alone.
pub fn saliency(features: &Features) -> Vec<f32> {
    let (n, d) = (features.tokens(), features.width());
    let x = features.image(0);
    let mut mean = vec![0.0f64; d];
    for token in x.chunks_exact(d) {
        mean.iter_mut()
            .zip(token)
            .for_each(|(m, &v)| *m += v as f64 / n as f64);
    }
    let logits: Vec<f64> = x
        .chunks_exact(d)
        .map(|token| {
            let distance: f64 = token
                .iter()
                .zip(&mean)
                .map(|(&v, m)| (v as f64 - m).powi(2))
                .sum();
            4.0 * (distance / d as f64).sqrt()
        })
        .collect();
    let largest = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logits.iter().map(|l| (l - largest).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.iter().map(|e| (e / total) as f32).collect()
}

/// How well one object survives the reduction.
#[derive(Clone, Debug)]
pub struct ObjectReport {
    /// The object's name.
    pub name: &'static str,
    /// Its share of the image's tokens.
    pub area_share: f64,
    /// Reduced tokens whose strongest component (largest cosine among objects) is this object.
    pub tokens: usize,
    /// Best cosine similarity between the object's direction and any reduced token.
    pub best_cosine: f64,
}

/// For each object: how many reduced tokens are mainly about it, and how close the closest
/// reduced token comes to its feature direction.
pub fn object_report(scene: &Scene, reduced: &Compressed) -> Vec<ObjectReport> {
    let d = reduced.width;
    let tokens: Vec<&[f32]> = reduced.tokens.chunks_exact(d).collect();
    let cosine = |token: &[f32], direction: &[f32]| {
        let dot: f64 = token
            .iter()
            .zip(direction)
            .map(|(a, b)| (*a * *b) as f64)
            .sum();
        let norm: f64 = token.iter().map(|a| (*a * *a) as f64).sum::<f64>().sqrt();
        dot / norm.max(1e-30)
    };
    let strongest: Vec<usize> = tokens
        .iter()
        .map(|token| {
            (0..scene.objects.len())
                .max_by(|&a, &b| {
                    cosine(token, &scene.objects[a].direction)
                        .total_cmp(&cosine(token, &scene.objects[b].direction))
                })
                .unwrap_or(0)
        })
        .collect();
    scene
        .objects
        .iter()
        .enumerate()
        .map(|(index, object)| {
            let best = tokens
                .iter()
                .map(|t| cosine(t, &object.direction))
                .fold(f64::NEG_INFINITY, f64::max);
            let mine = tokens
                .iter()
                .zip(&strongest)
                .filter(|(t, s)| **s == index && cosine(t, &object.direction) > 0.3)
                .count();
            ObjectReport {
                name: object.name,
                area_share: object.area() as f64 / (SIDE * SIDE) as f64,
                tokens: mine,
                best_cosine: best,
            }
        })
        .collect()
}

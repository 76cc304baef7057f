//! The learned module `P_meta`: its tensors (SPEC section 2) and the paper's initialisation.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};
use crate::products::{multiply, product, Update, View, ViewMut};
use crate::tensor::check_finite;

/// A learned absolute 2-D position table `pos_embed`, `height x width x d`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct PositionTable {
    /// Rows `gh` of the table.
    pub height: usize,
    /// Columns `gw` of the table.
    pub width: usize,
    /// `gh * gw * d` values.
    pub values: Vec<f32>,
}

/// The weights of `P_meta`: `w_q` and `w_k` (`d x d_c`, row-major), `omega` (`d_c`) and an
/// optional position table.
#[derive(Clone, Debug, PartialEq)]
pub struct PMeta {
    width: usize,
    channels: usize,
    w_q: Vec<f32>,
    w_k: Vec<f32>,
    omega: Vec<f32>,
    position: Option<PositionTable>,
}

impl PMeta {
    /// Checked weights for tokens of width `width` (`d`) and projection width `channels` (`d_c`).
    pub fn new(
        width: usize,
        channels: usize,
        w_q: Vec<f32>,
        w_k: Vec<f32>,
        omega: Vec<f32>,
        position: Option<PositionTable>,
    ) -> Result<Self> {
        if width == 0 || channels == 0 {
            return Err(Error::InvalidTensor(format!(
                "w_q has shape [{width}, {channels}]; expected both sizes at least 1"
            )));
        }
        let matrix = width.checked_mul(channels);
        for (name, values) in [("w_q", &w_q), ("w_k", &w_k)] {
            if matrix != Some(values.len()) {
                return Err(Error::InvalidTensor(format!(
                    "{name} holds {} values; expected {width} x {channels}",
                    values.len()
                )));
            }
            check_finite(name, &[width, channels], values)?;
        }
        if omega.len() != channels {
            return Err(Error::InvalidTensor(format!(
                "omega holds {} values; expected d_c = {channels}",
                omega.len()
            )));
        }
        check_finite("omega", &[channels], &omega)?;
        if let Some(table) = &position {
            let expected = table
                .height
                .checked_mul(table.width)
                .and_then(|v| v.checked_mul(width));
            if table.height == 0 || table.width == 0 || expected != Some(table.values.len()) {
                return Err(Error::InvalidTensor(format!(
                    "pos_embed holds {} values for a {}x{} table; expected {} x {} x d = {width}",
                    table.values.len(),
                    table.height,
                    table.width,
                    table.height,
                    table.width
                )));
            }
            check_finite(
                "pos_embed",
                &[table.height, table.width, width],
                &table.values,
            )?;
        }
        Ok(PMeta {
            width,
            channels,
            w_q,
            w_k,
            omega,
            position,
        })
    }

    /// The paper's initialisation: `w_q = w_k`, a random `d x d_c` matrix with orthonormal
    /// columns drawn from `seed`; `omega = 1`; with `position = Some((gh, gw))`, a 2-D
    /// sine-cosine table scaled by `position_scale`.
    pub fn init(
        width: usize,
        channels: usize,
        position: Option<(usize, usize)>,
        position_scale: f32,
        seed: u64,
    ) -> Result<Self> {
        if channels == 0 || width == 0 || channels > width {
            return Err(Error::InvalidArgument(format!(
                "--dc {channels} with --dim {width} cannot have orthonormal columns; \
                 expected 1 <= d_c <= d"
            )));
        }
        // The Gram-Schmidt basis (f64) and the two f32 copies, and the table, before any is
        // allocated.
        crate::tensor::host_bytes("init's orthonormal matrix", &[width, channels], 16)?;
        if let Some((height, table_width)) = position {
            crate::tensor::host_bytes("init's position table", &[height, table_width, width], 4)?;
        }
        if !position_scale.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "--pos-scale {position_scale} is not finite; expected a finite number"
            )));
        }
        let projection = orthonormal_columns(width, channels, seed);
        let position = match position {
            Some((height, table_width)) if height == 0 || table_width == 0 => {
                return Err(Error::InvalidArgument(format!(
                    "--pos {height}x{table_width} is empty; expected both sizes at least 1"
                )));
            }
            Some((height, table_width)) => Some(PositionTable {
                height,
                width: table_width,
                values: sine_cosine_table(height, table_width, width, position_scale),
            }),
            None => None,
        };
        PMeta::new(
            width,
            channels,
            projection.clone(),
            projection,
            vec![1.0; channels],
            position,
        )
    }

    /// Width of a token `d`.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Width of the projections `d_c`.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Query projection `w_q`, `d x d_c` row-major.
    pub fn w_q(&self) -> &[f32] {
        &self.w_q
    }

    /// Key projection `w_k`, `d x d_c` row-major.
    pub fn w_k(&self) -> &[f32] {
        &self.w_k
    }

    /// Per-channel weight `omega`, `d_c`.
    pub fn omega(&self) -> &[f32] {
        &self.omega
    }

    /// The position table, if any.
    pub fn position(&self) -> Option<&PositionTable> {
        self.position.as_ref()
    }

    /// A copy with `omega` scaled by `factor` (used to sharpen `P` towards pruning).
    pub fn with_omega_scaled(&self, factor: f32) -> Result<Self> {
        let omega = self.omega.iter().map(|w| w * factor).collect();
        PMeta::new(
            self.width,
            self.channels,
            self.w_q.clone(),
            self.w_k.clone(),
            omega,
            self.position.clone(),
        )
    }
}

/// A `rows x columns` matrix with orthonormal columns: Gaussian entries from a ChaCha8 stream
/// (stable across versions, so a seed names one matrix), then modified Gram-Schmidt in f64.
fn orthonormal_columns(rows: usize, columns: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Column-major while orthonormalising: column c is basis[c * rows ..].
    let mut basis: Vec<f64> = (0..rows * columns)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    // Block Gram-Schmidt, twice ("twice is enough", Kahan): each block of columns loses its
    // components along every earlier column through two matrix products (threaded),
    // then its own columns are orthonormalised one by one. The same basis as column-by-column
    // Gram-Schmidt up to rounding, far faster for d_c in the thousands.
    const BLOCK: usize = 64;
    let mut coefficients = Vec::new();
    for start in (0..columns).step_by(BLOCK) {
        let width = BLOCK.min(columns - start);
        let (done, rest) = basis.split_at_mut(start * rows);
        let block = &mut rest[..width * rows];
        for _ in 0..2 {
            if start > 0 {
                // C = Q^T B (start x width), then B -= Q C.
                coefficients.resize(start * width, 0.0);
                // Q is `rows x start` column-major in `done`, B `rows x width` column-major
                // in `block`, C `start x width` row-major in `coefficients`.
                let q = View::strided(&*done, rows, start, 1, rows);
                product(
                    q.transposed(),
                    View::strided(block, rows, width, 1, rows),
                    &mut coefficients,
                );
                multiply(
                    q,
                    View::row_major(&coefficients, start, width),
                    ViewMut::strided(block, rows, width, 1, rows),
                    Update::Add(-1.0),
                );
            }
            for c in 0..width {
                let (previous, current) = block.split_at_mut(c * rows);
                let column = &mut current[..rows];
                for earlier in previous.chunks_exact(rows) {
                    let dot: f64 = earlier.iter().zip(column.iter()).map(|(a, b)| a * b).sum();
                    column
                        .iter_mut()
                        .zip(earlier)
                        .for_each(|(v, p)| *v -= dot * p);
                }
                let norm = column.iter().map(|v| v * v).sum::<f64>().sqrt();
                column.iter_mut().for_each(|v| *v /= norm);
            }
        }
    }
    let mut matrix = vec![0.0f32; rows * columns];
    for c in 0..columns {
        for r in 0..rows {
            matrix[r * columns + c] = basis[c * rows + r] as f32;
        }
    }
    matrix
}

/// The 2-D sine-cosine position table (as in MAE): the first half of the channels encodes the
/// row, the second half the column; each half is sines then cosines of geometric frequencies.
/// Channels left over when `d` is not a multiple of 4 are zero.
fn sine_cosine_table(height: usize, width: usize, channels: usize, scale: f32) -> Vec<f32> {
    let quarter = channels / 4;
    let mut table = vec![0.0f32; height * width * channels];
    for row in 0..height {
        for column in 0..width {
            let cell = &mut table[(row * width + column) * channels..][..channels];
            for (half, position) in [(0, row), (1, column)] {
                for i in 0..quarter {
                    let frequency = 1.0 / 10000f64.powf(i as f64 / quarter as f64);
                    let angle = position as f64 * frequency;
                    cell[half * 2 * quarter + i] = (angle.sin() * scale as f64) as f32;
                    cell[half * 2 * quarter + quarter + i] = (angle.cos() * scale as f64) as f32;
                }
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_columns_are_orthonormal_and_seeded() {
        let weights = PMeta::init(37, 11, Some((3, 5)), 0.5, 7).unwrap();
        let w = weights.w_q();
        for a in 0..11 {
            for b in 0..11 {
                let dot: f64 = (0..37)
                    .map(|r| w[r * 11 + a] as f64 * w[r * 11 + b] as f64)
                    .sum();
                let expected = if a == b { 1.0 } else { 0.0 };
                assert!(
                    (dot - expected).abs() < 1e-5,
                    "column {a} . column {b} = {dot}"
                );
            }
        }
        assert_eq!(weights.w_q(), weights.w_k());
        assert_eq!(weights.omega(), &[1.0; 11]);
        assert_eq!(weights.position().unwrap().values.len(), 3 * 5 * 37);
        assert_eq!(PMeta::init(37, 11, None, 1.0, 7).unwrap().w_q(), w);
        assert_ne!(PMeta::init(37, 11, None, 1.0, 8).unwrap().w_q(), w);
        assert!(PMeta::init(4, 5, None, 1.0, 0).is_err());
        // Several blocks of columns (the block Gram-Schmidt's products).
        let (rows, columns) = (211, 150);
        let wide = orthonormal_columns(rows, columns, 3);
        for a in 0..columns {
            for b in 0..columns {
                let dot: f64 = (0..rows)
                    .map(|r| wide[r * columns + a] as f64 * wide[r * columns + b] as f64)
                    .sum();
                let expected = if a == b { 1.0 } else { 0.0 };
                assert!(
                    (dot - expected).abs() < 1e-5,
                    "column {a} . column {b} = {dot}"
                );
            }
        }
    }
}

//! Host-side tensors: image features and element types.

use crate::error::{Error, Result};

/// Element type of a tensor in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    #[value(name = "bf16")]
    BF16,
}

impl Dtype {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::BF16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }
}

/// Little-endian bytes of `values` stored as `dtype`.
pub fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

/// Values stored as `dtype` in little-endian `bytes`, widened to f32 (a trailing partial
/// element is ignored).
pub fn decode(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    match dtype {
        // On a little-endian machine the bytes are the values: one copy.
        Dtype::F32 if cfg!(target_endian = "little") => {
            bytemuck::pod_collect_to_vec(&bytes[..bytes.len() / 4 * 4])
        }
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
}

/// Image tokens `X` for a batch of images sharing one layout: `batch x tokens x width`,
/// row-major, held as f32 (f16 and bf16 widen to f32 exactly).
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    batch: usize,
    tokens: usize,
    width: usize,
    values: Vec<f32>,
}

impl Features {
    /// Checked features: `values.len() == batch * tokens * width`, all finite, no zero size.
    pub fn new(batch: usize, tokens: usize, width: usize, values: Vec<f32>) -> Result<Self> {
        Self::named("features", batch, tokens, width, values)
    }

    /// `new` for a set its messages call `name` (`deepstack.2`) rather than `features`.
    pub fn named(
        name: &str,
        batch: usize,
        tokens: usize,
        width: usize,
        values: Vec<f32>,
    ) -> Result<Self> {
        check_shape(name, batch, tokens, width, values.len())?;
        check_finite(name, &[batch, tokens, width], &values)?;
        Ok(Features {
            batch,
            tokens,
            width,
            values,
        })
    }

    /// Number of images `b`.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens per image `n`.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Width of a token `d`.
    pub fn width(&self) -> usize {
        self.width
    }

    /// All values, image by image, row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The `n x d` values of image `image`.
    pub fn image(&self, image: usize) -> &[f32] {
        let size = self.tokens * self.width;
        &self.values[image * size..(image + 1) * size]
    }
}

/// The values of host tokens in one of the three element types vision towers produce.
#[derive(Clone, Copy, Debug)]
pub enum HostValues<'a> {
    /// 32-bit floats.
    F32(&'a [f32]),
    /// IEEE half floats.
    F16(&'a [half::f16]),
    /// bfloat16.
    BF16(&'a [half::bf16]),
}

impl<'a> HostValues<'a> {
    fn len(&self) -> usize {
        match self {
            HostValues::F32(values) => values.len(),
            HostValues::F16(values) => values.len(),
            HostValues::BF16(values) => values.len(),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        match self {
            HostValues::F32(_) => Dtype::F32,
            HostValues::F16(_) => Dtype::F16,
            HostValues::BF16(_) => Dtype::BF16,
        }
    }

    /// Refuses values past f16's largest finite value (an f16 input always fits), without
    /// widening a copy of them.
    pub fn check_fits_f16(&self, name: &str) -> Result<()> {
        match self {
            HostValues::F32(values) => fits_f16(name, values.iter().copied()),
            HostValues::F16(_) => Ok(()),
            HostValues::BF16(values) => fits_f16(name, values.iter().map(|v| v.to_f32())),
        }
    }

    /// Values `range` (same type, no copy).
    pub fn slice(&self, range: std::ops::Range<usize>) -> HostValues<'a> {
        match self {
            HostValues::F32(values) => HostValues::F32(&values[range]),
            HostValues::F16(values) => HostValues::F16(&values[range]),
            HostValues::BF16(values) => HostValues::BF16(&values[range]),
        }
    }

    /// Values `first..first + out.len()` widened to f32 into `out` (exact for all three types).
    pub fn widen_into(&self, first: usize, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        let range = first..first + out.len();
        match self {
            HostValues::F32(values) => out.copy_from_slice(&values[range]),
            HostValues::F16(values) => values[range].convert_to_f32_slice(out),
            // bf16 is the top half of an f32: a shift, which the compiler vectorises.
            HostValues::BF16(values) => out
                .iter_mut()
                .zip(&values[range])
                .for_each(|(o, v)| *o = f32::from_bits(u32::from(v.to_bits()) << 16)),
        }
    }

    /// Values `range`, widened to f32 (exact for all three types).
    pub fn widened(&self, range: std::ops::Range<usize>) -> Vec<f32> {
        let mut out = vec![0.0; range.len()];
        self.widen_into(range.start, &mut out);
        out
    }

    /// Little-endian bytes of values `range` stored as `dtype` (no conversion when the types
    /// match).
    pub fn encoded(&self, range: std::ops::Range<usize>, dtype: Dtype) -> Vec<u8> {
        match (self, dtype) {
            (HostValues::F32(values), Dtype::F32) => bytemuck::cast_slice(&values[range]).to_vec(),
            (HostValues::F16(values), Dtype::F16) => bytemuck::cast_slice(&values[range]).to_vec(),
            (HostValues::BF16(values), Dtype::BF16) => {
                bytemuck::cast_slice(&values[range]).to_vec()
            }
            _ => encode(&self.widened(range), dtype),
        }
    }
}

impl<'a> From<&'a [f32]> for HostValues<'a> {
    fn from(values: &'a [f32]) -> Self {
        HostValues::F32(values)
    }
}

impl<'a> From<&'a [half::f16]> for HostValues<'a> {
    fn from(values: &'a [half::f16]) -> Self {
        HostValues::F16(values)
    }
}

impl<'a> From<&'a [half::bf16]> for HostValues<'a> {
    fn from(values: &'a [half::bf16]) -> Self {
        HostValues::BF16(values)
    }
}

/// Image tokens `X` in host memory, borrowed: `batch x tokens x width`, row-major, f32, f16
/// or bf16. Checked once when made (sizes, finite values); nothing is copied.
#[derive(Clone, Copy, Debug)]
pub struct HostTokens<'a> {
    values: HostValues<'a>,
    batch: usize,
    tokens: usize,
    width: usize,
}

impl<'a> HostTokens<'a> {
    /// `values` as `batch` images of `tokens x width`.
    pub fn new(
        values: impl Into<HostValues<'a>>,
        batch: usize,
        tokens: usize,
        width: usize,
    ) -> Result<Self> {
        Self::named("features", values, batch, tokens, width)
    }

    /// `new` for a set its messages call `name` (`extra[1]`, `deepstack.2`) rather than
    /// `features`.
    pub fn named(
        name: &str,
        values: impl Into<HostValues<'a>>,
        batch: usize,
        tokens: usize,
        width: usize,
    ) -> Result<Self> {
        let values = values.into();
        check_shape(name, batch, tokens, width, values.len())?;
        if let HostValues::F32(values) = values {
            check_finite(name, &[batch, tokens, width], values)?;
        } else {
            // f16 and bf16 widen exactly; a chunk at a time keeps the copy small.
            const CHUNK: usize = 1 << 14;
            let mut widened = vec![0.0f32; CHUNK.min(values.len())];
            for first in (0..values.len()).step_by(CHUNK) {
                let chunk = &mut widened[..CHUNK.min(values.len() - first)];
                values.widen_into(first, chunk);
                if let Some(offset) = chunk.iter().position(|v| !v.is_finite()) {
                    let index = first + offset;
                    let (image, token) = (index / (tokens * width), index % (tokens * width));
                    return Err(Error::InvalidTensor(format!(
                        "{name}[{image}, {}, {}] is {}; expected finite values",
                        token / width,
                        token % width,
                        chunk[offset]
                    )));
                }
            }
        }
        Ok(HostTokens {
            values,
            batch,
            tokens,
            width,
        })
    }

    /// Tokens that `new` already accepted with these sizes (no second pass over them).
    pub(crate) fn checked_already(
        values: HostValues<'a>,
        batch: usize,
        tokens: usize,
        width: usize,
    ) -> Self {
        debug_assert_eq!(values.len(), batch * tokens * width);
        HostTokens {
            values,
            batch,
            tokens,
            width,
        }
    }

    /// The values.
    pub fn values(&self) -> HostValues<'a> {
        self.values
    }

    /// Number of images `b`.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens per image `n`.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Token width `d`.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The tokens widened to owned f32 features (what the CPU backends compute on).
    pub fn to_features(&self) -> Features {
        Features {
            batch: self.batch,
            tokens: self.tokens,
            width: self.width,
            values: self.values.widened(0..self.values.len()),
        }
    }
}

impl<'a> From<&'a Features> for HostTokens<'a> {
    fn from(features: &'a Features) -> Self {
        HostTokens {
            values: HostValues::F32(&features.values),
            batch: features.batch,
            tokens: features.tokens,
            width: features.width,
        }
    }
}

/// Refuses an empty shape, or a value count that is not `batch x tokens x width`.
fn check_shape(name: &str, batch: usize, tokens: usize, width: usize, count: usize) -> Result<()> {
    if batch == 0 || tokens == 0 || width == 0 {
        return Err(Error::InvalidTensor(format!(
            "{name} of shape [{batch}, {tokens}, {width}] are empty; expected every size at least 1"
        )));
    }
    let expected = batch.checked_mul(tokens).and_then(|v| v.checked_mul(width));
    if expected != Some(count) {
        return Err(Error::InvalidTensor(format!(
            "{name} hold {count} values; expected {batch} x {tokens} x {width}"
        )));
    }
    Ok(())
}

/// Most bytes of host memory one buffer the library allocates may take (4 GiB): a number on
/// the command line or in a file header past it is refused before anything is allocated.
pub const HOST_BUDGET: u64 = 4 << 30;

/// Bytes of `count` elements of `size` bytes each (`count` a product of `dims`), checked for
/// overflow and against `HOST_BUDGET`; `what` names the buffer in the error.
pub fn host_bytes(what: &str, dims: &[usize], size: usize) -> Result<usize> {
    let bytes = dims
        .iter()
        .try_fold(size as u64, |bytes, &dim| bytes.checked_mul(dim as u64));
    match bytes {
        Some(bytes) if bytes <= HOST_BUDGET => Ok(bytes as usize),
        _ => {
            let shape: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            Err(Error::TooLarge(format!(
                "{what} of {} elements would take {}; the limit is {} GiB",
                shape.join(" x "),
                match bytes {
                    Some(bytes) => format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64),
                    None => "more bytes than a 64-bit count holds".to_string(),
                },
                HOST_BUDGET >> 30
            )))
        }
    }
}

/// Refuses computed values (`what`, from finite inputs) with a NaN or infinity among them:
/// the arithmetic overflowed its type somewhere on the way.
pub fn check_computed(what: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::Overflow(format!(
            "{what} overflowed: element {index} is {} although every input is finite; the \
             features or weights are too large for f32 arithmetic (largest about 3.4e38, and \
             the scores grow with the square of the features); scale them down",
            values[index]
        ))),
    }
}

/// Refuses values past f16's largest finite value (65504), naming the tensor and the index.
pub fn check_fits_f16(name: &str, values: &[f32]) -> Result<()> {
    fits_f16(name, values.iter().copied())
}

/// `check_fits_f16` over values as they are widened, one at a time.
fn fits_f16(name: &str, values: impl Iterator<Item = f32>) -> Result<()> {
    match values.enumerate().find(|(_, v)| v.abs() > 65504.0) {
        None => Ok(()),
        Some((index, value)) => Err(Error::Overflow(format!(
            "{name} element {index} is {value}, past f16's largest finite value 65504; use f32"
        ))),
    }
}

/// Refuses a NaN or infinity, naming the tensor and the index of the first one.
pub fn check_finite(name: &str, shape: &[usize], values: &[f32]) -> Result<()> {
    check_each(name, shape, values, |v| v.is_finite(), "finite values")
}

/// Refuses the first value that fails `valid`, naming the tensor, its index in `shape` and
/// what was `expected`.
pub fn check_each(
    name: &str,
    shape: &[usize],
    values: &[f32],
    valid: impl Fn(f32) -> bool + Sync,
    expected: &str,
) -> Result<()> {
    use rayon::prelude::*;
    // Chunks in parallel, each tested without an early exit (so the test vectorises); a bad
    // chunk is then read once more, each value once, for the first bad value and its index.
    // Another thread or process may change the values meanwhile (they are the caller's
    // memory, or a mapped file): a bad value that is good again on the second reading is
    // refused as a change, never assumed to be there.
    const CHUNK: usize = 1 << 15;
    let Some(chunk) = values
        .par_chunks(CHUNK)
        .position_first(|chunk| !chunk.iter().fold(true, |ok, v| ok & valid(*v)))
    else {
        return Ok(());
    };
    let first = chunk * CHUNK;
    let end = values.len().min(first + CHUNK);
    let Some((offset, value)) = values[first..end]
        .iter()
        .copied()
        .enumerate()
        .find(|(_, v)| !valid(*v))
    else {
        return Err(Error::InvalidTensor(format!(
            "{name} changed while it was being checked for {expected} (a bad value was good \
             when read again); expected values that stay unchanged during the call"
        )));
    };
    let position = first + offset;
    let mut index = vec![0; shape.len()];
    let mut rest = position;
    for (slot, size) in index.iter_mut().zip(shape).rev() {
        *slot = rest % size.max(&1);
        rest /= size.max(&1);
    }
    let index: Vec<String> = index.iter().map(|i| i.to_string()).collect();
    Err(Error::InvalidTensor(format!(
        "{name}[{}] is {value}; expected {expected}",
        index.join(", "),
    )))
}

/// Refuses an attention tensor of another size than `shape` (`[n]` or `[b, n]`) or with a
/// value that is not finite and non-negative, naming its index.
pub fn check_attention(values: &[f32], shape: &[usize]) -> Result<()> {
    let expected: usize = shape.iter().product();
    if values.len() != expected {
        return Err(Error::InvalidTensor(format!(
            "attention holds {} values; expected one per token, {shape:?} = {expected}",
            values.len(),
        )));
    }
    check_finite("attention", shape, values)?;
    check_each(
        "attention",
        shape,
        values,
        |v| v >= 0.0,
        "non-negative values",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_are_named_by_index() {
        let mut values = vec![0.5; 2 * 3 * 4];
        values[4 * 3 + 2 * 4 + 1] = f32::NAN;
        let error = Features::new(2, 3, 4, values).unwrap_err().to_string();
        assert_eq!(error, "features[1, 2, 1] is NaN; expected finite values");
        let error = check_finite("w_q", &[2, 2], &[1.0, 2.0, f32::INFINITY, 0.0]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "w_q[1, 0] is inf; expected finite values"
        );
    }

    #[test]
    fn every_dtype_round_trips_through_bytes() {
        let values = [1.0f32, -2.5, 0.1, 65504.0];
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            let bytes = encode(&values, dtype);
            assert_eq!(bytes.len(), values.len() * dtype.size());
            let back = decode(&bytes, dtype);
            for (a, b) in back.iter().zip(&values) {
                assert!((a - b).abs() <= 4e-3 * b.abs(), "{dtype:?}: {a} vs {b}");
            }
        }
        assert_eq!(decode(&encode(&values, Dtype::F32), Dtype::F32), values);
    }

    #[test]
    fn wrong_sizes_are_refused() {
        assert!(Features::new(1, 2, 3, vec![0.0; 5]).is_err());
        assert!(Features::new(0, 2, 3, vec![]).is_err());
    }
}

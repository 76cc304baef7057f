//! Input files: the features of a safetensors file, handed out where they lie in the mapped
//! file (f32, f16 or bf16, aligned, little-endian) or from a widened copy, with the file's
//! `grids` and `attention`.

use std::path::Path;

use super::{
    dtype_of, file_metadata, missing, parse, read_file, tensor_values, FileBytes, FileTensor,
};
use crate::error::{Error, Result};
use crate::layout::{parse_grids_json, Grid};
use crate::tensor::{check_attention, decode, Dtype, Features, HostTokens, HostValues};

/// An input file: the features (read where they lie in the file when they can be), their
/// dtype, and the layout from its `grids` metadata.
pub struct Input {
    bytes: FileBytes,
    /// Where the features are.
    values: InputValues,
    batch: usize,
    tokens: usize,
    width: usize,
    /// The dtype they were stored in (the output's default dtype).
    pub dtype: Dtype,
    /// Whether the tensor was `b x n x d` (else `n x d`); the output keeps the same rank.
    pub batched: bool,
    /// The `grids` metadata, if present.
    pub grids: Option<Vec<Grid>>,
    /// The optional tensor `attention` (`n`, or `b x n`): the vision tower's [CLS] attention
    /// over the tokens, finite and non-negative, as `b x n` values.
    pub attention: Option<Vec<f32>>,
    /// The token sets the `deepstack` metadata names (a JSON list of tensor names, as
    /// `export_features` writes for Qwen3-VL): each `n x d_k` (or `b x n x d_k`) like the
    /// features, widened to f32, in the listed order; a reduction applies the features' `P`
    /// to each.
    pub extra: Vec<(String, Features)>,
}

/// Where an input's features are.
enum InputValues {
    /// In the file's bytes (this byte range), in the file's dtype: aligned, little-endian.
    InPlace(std::ops::Range<usize>),
    /// Widened to f32 (the file's bytes are not aligned for the dtype, or the machine is not
    /// little-endian).
    Widened(Vec<f32>),
}

impl InputValues {
    /// The values, in `bytes` (the file's) or the widened copy.
    fn values<'a>(&'a self, bytes: &'a [u8], dtype: Dtype) -> HostValues<'a> {
        match self {
            InputValues::Widened(values) => HostValues::F32(values),
            InputValues::InPlace(range) => {
                typed_values(&bytes[range.clone()], dtype).expect("typed when read")
            }
        }
    }
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("shape", &[self.batch, self.tokens, self.width])
            .field("dtype", &self.dtype)
            .field("batched", &self.batched)
            .field("grids", &self.grids)
            .finish_non_exhaustive()
    }
}

impl Input {
    /// The features, borrowed (from the mapped file where they lie in it).
    pub fn tokens(&self) -> HostTokens<'_> {
        let values = self.values.values(&self.bytes, self.dtype);
        HostTokens::checked_already(values, self.batch, self.tokens, self.width)
    }

    /// Refuses an input file whose size or modification time changed since it was mapped (a
    /// rewrite by another program while it was read: the values read may mix old and new);
    /// `Ok` for a file read into memory. Call it after the computation, before writing, and
    /// before reporting the computation's own failure (a change explains it).
    pub fn check_unchanged(&self) -> Result<()> {
        match &self.bytes {
            FileBytes::Mapped(map) => map.check_unchanged(),
            FileBytes::Read(_) => Ok(()),
        }
    }

    /// The features widened to owned f32 values (a copy).
    pub fn features(&self) -> Features {
        self.tokens().to_features()
    }

    /// Number of images `b`.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens per image `n`.
    pub fn token_count(&self) -> usize {
        self.tokens
    }

    /// Token width `d`.
    pub fn width(&self) -> usize {
        self.width
    }
}

/// `bytes` as values of `dtype`, without a copy: `None` when they are not aligned for it or
/// the machine is not little-endian (the file's order).
fn typed_values(bytes: &[u8], dtype: Dtype) -> Option<HostValues<'_>> {
    if cfg!(target_endian = "big") {
        return None;
    }
    match dtype {
        Dtype::F32 => bytemuck::try_cast_slice(bytes).ok().map(HostValues::F32),
        Dtype::F16 => bytemuck::try_cast_slice(bytes).ok().map(HostValues::F16),
        Dtype::BF16 => bytemuck::try_cast_slice(bytes).ok().map(HostValues::BF16),
    }
}

/// Reads an input file (tensor `features`, `n x d` or `b x n x d`), memory-mapped.
pub fn read_input(path: &Path) -> Result<Input> {
    input_of(path, read_file(path)?)
}

/// An input file already in memory (`path` names it in errors).
pub fn input_from_bytes(path: &Path, bytes: &[u8]) -> Result<Input> {
    input_of(path, FileBytes::Read(bytes.to_vec()))
}

fn input_of(path: &Path, bytes: FileBytes) -> Result<Input> {
    let file = parse(path, &bytes)?;
    let view = match file.tensor("features") {
        Ok(view) => view,
        Err(safetensors::SafeTensorError::TensorNotFound(_)) => {
            return Err(missing(path, &file, "features"))
        }
        Err(e) => return Err(Error::Format(format!("{}: {e}", path.display()))),
    };
    let dtype = dtype_of(path, "features", view.dtype())?;
    let shape = view.shape().to_vec();
    let (batch, tokens, width, batched) = match shape[..] {
        [tokens, width] => (1, tokens, width, false),
        [batch, tokens, width] => (batch, tokens, width, true),
        _ => {
            return Err(Error::InvalidTensor(format!(
                "{}: tensor features has shape {shape:?}; expected [n, d] or [b, n, d]",
                path.display()
            )))
        }
    };
    if shape.contains(&0) {
        return Err(Error::InvalidTensor(format!(
            "{}: tensor features has shape {shape:?}, which is empty; expected every size at \
             least 1",
            path.display()
        )));
    }
    let data = view.data();
    let start = data.as_ptr() as usize - bytes.as_ptr() as usize;
    let range = start..start + data.len();
    let values = match typed_values(data, dtype) {
        Some(_) => InputValues::InPlace(range),
        None => InputValues::Widened(decode(data, dtype)),
    };
    // Shape and finite values, checked once here. A mapped file rewritten in place meanwhile
    // may show a bad value that is gone again: its change is the cause to report.
    HostTokens::new(values.values(&bytes, dtype), batch, tokens, width).map_err(|e| {
        match &bytes {
            FileBytes::Mapped(map) => map.check_unchanged().err(),
            FileBytes::Read(_) => None,
        }
        .unwrap_or_else(|| Error::InvalidTensor(format!("{}: {e}", path.display())))
    })?;
    let metadata = file_metadata(path, &bytes)?;
    let grids = match metadata.get("grids") {
        Some(text) => Some(parse_grids_json(text)?),
        None => None,
    };
    let attention = match tensor_values(path, &file, "attention")? {
        None => None,
        Some(FileTensor { shape, values, .. }) => {
            let expected: &[usize] = if batched { &[batch, tokens] } else { &[tokens] };
            if shape != expected {
                return Err(Error::InvalidTensor(format!(
                    "{}: tensor attention has shape {shape:?}; expected {expected:?} (one value \
                     per token of the features)",
                    path.display()
                )));
            }
            check_attention(&values, expected)
                .map_err(|e| Error::InvalidTensor(format!("{}: {e}", path.display())))?;
            Some(values)
        }
    };
    let extra = match metadata.get("deepstack") {
        None => Vec::new(),
        Some(text) => extra_sets(path, &file, text, (batch, tokens, batched))?,
    };
    drop(file);
    Ok(Input {
        bytes,
        values,
        batch,
        tokens,
        width,
        dtype,
        batched,
        grids,
        attention,
        extra,
    })
}

/// The tensors `compress` writes besides the reduced extra sets: no extra set may take their
/// names.
const OUTPUT_NAMES: [&str; 2] = ["tokens", "projection"];

/// The token sets a `deepstack` metadata entry names (`["deepstack.0", ...]`), each checked to
/// hold one row per token of the features (`b x n x d_k`, or `n x d_k` beside `n x d`).
fn extra_sets(
    path: &Path,
    file: &safetensors::SafeTensors,
    text: &str,
    (batch, tokens, batched): (usize, usize, bool),
) -> Result<Vec<(String, Features)>> {
    let names: Vec<String> = serde_json::from_str(text).map_err(|e| {
        Error::Format(format!(
            "{}: metadata deepstack is not a JSON list of tensor names ({e}); expected e.g. \
             [\"deepstack.0\", \"deepstack.1\"]",
            path.display()
        ))
    })?;
    let mut sets = Vec::with_capacity(names.len());
    for name in names {
        if ["features", "attention"].contains(&name.as_str())
            || sets.iter().any(|(n, _)| *n == name)
        {
            return Err(Error::Format(format!(
                "{}: metadata deepstack names tensor {name} twice or names the features or \
                 attention; expected each extra set once",
                path.display()
            )));
        }
        // The output holds each set under its own name beside these.
        if OUTPUT_NAMES.contains(&name.as_str()) {
            return Err(Error::Format(format!(
                "{}: metadata deepstack names tensor {name}, a name compress gives its own \
                 output ({}); expected other names for the extra sets, e.g. deepstack.0",
                path.display(),
                OUTPUT_NAMES.join(", ")
            )));
        }
        let Some(FileTensor { shape, values, .. }) = tensor_values(path, file, &name)? else {
            return Err(missing(path, file, &name));
        };
        let width = match (batched, &shape[..]) {
            (false, [rows, width]) if *rows == tokens => *width,
            (true, [images, rows, width]) if (*images, *rows) == (batch, tokens) => *width,
            _ => {
                let expected = if batched {
                    format!("[{batch}, {tokens}, d_k]")
                } else {
                    format!("[{tokens}, d_k]")
                };
                return Err(Error::InvalidTensor(format!(
                    "{}: tensor {name} has shape {shape:?}; expected {expected} (one row per \
                     token of the features, as metadata deepstack says)",
                    path.display()
                )));
            }
        };
        let set = Features::named(&name, batch, tokens, width, values)
            .map_err(|e| Error::InvalidTensor(format!("{}: {e}", path.display())))?;
        sets.push((name, set));
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file's features are read where they lie when aligned for their dtype, and from a
    /// widened copy when not (a header whose length puts the data off alignment); the values
    /// are the same either way, and both ways happen across the four paddings.
    #[test]
    fn features_are_read_in_place_when_aligned_and_from_a_copy_otherwise() {
        let (n, d) = (6, 5);
        let values: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (mut in_place, mut copied) = (0, 0);
        for padding in 0..4 {
            let mut header = format!(
                r#"{{"features":{{"dtype":"F32","shape":[{n},{d}],"data_offsets":[0,{}]}}}}"#,
                data.len()
            )
            .into_bytes();
            header.resize(header.len().next_multiple_of(8) + padding, b' ');
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend(&header);
            bytes.extend(&data);
            let input = input_from_bytes(Path::new("padded.safetensors"), &bytes).unwrap();
            let aligned = (input.bytes.as_ptr() as usize + 8 + header.len()).is_multiple_of(4);
            match (&input.values, aligned) {
                (InputValues::InPlace(_), true) => in_place += 1,
                (InputValues::Widened(_), false) => copied += 1,
                _ => panic!("padding {padding}: aligned {aligned}, read the other way"),
            }
            assert_eq!(input.features().values(), &values[..], "padding {padding}");
            assert_eq!(
                (input.batch(), input.token_count(), input.width()),
                (1, n, d)
            );
        }
        assert!(
            in_place > 0 && copied > 0,
            "{in_place} in place, {copied} copied"
        );
    }
}

//! Files (SPEC section 5): weights, input features and output tokens as safetensors, with F32,
//! F16 and BF16 read and written through `half`. Outputs are checked before any work and
//! written as sets through temporary files renamed into place (`output`), so a failed run
//! never changes an existing file; the same tensors and metadata always give the same bytes.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype as FileDtype, SafeTensors, TensorView};

use crate::error::{Error, Result};

use crate::tensor::{decode, encode, Dtype, Features};
use crate::weights::{PMeta, PositionTable};

mod input;
mod mapped;
mod output;

pub use input::{input_from_bytes, read_input, Input};
pub use mapped::exit_on_changed_mapped_file;
use mapped::Mapped;
pub use output::{
    check_output, check_output_folder, interrupt, write_atomically, Interrupted, Outputs,
};

/// The `format` metadata of a weights file.
pub const WEIGHTS_FORMAT: &str = "metacompress.pmeta";

/// A file's bytes: memory-mapped (read-only) where the system allows, else read into memory.
pub(crate) enum FileBytes {
    /// Mapped: pages come from the page cache as they are touched, and are never copied.
    Mapped(Mapped),
    /// Read (a system or file that cannot be mapped, an empty file, bytes from a caller).
    Read(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(map) => map,
            FileBytes::Read(bytes) => bytes,
        }
    }
}

/// Opens a whole safetensors file. The size comes from the file system, never from the
/// header, and the safetensors parser checks every tensor's extent against it before anything
/// else is allocated. A regular file is memory-mapped (see `mapped` for a file another program
/// changes meanwhile); `METACOMPRESS_NO_MMAP=1` reads it into memory instead.
fn read_file(path: &Path) -> Result<FileBytes> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::Format(format!(
            "{} is not a regular file; expected a .safetensors file",
            path.display()
        )));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > 0 && std::env::var_os("METACOMPRESS_NO_MMAP").is_none() {
        let reader = file.try_clone().map_err(|e| Error::io(path, e))?;
        if let Some(map) = Mapped::new(reader, path) {
            return Ok(FileBytes::Mapped(map));
        }
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(|e| Error::io(path, e))?;
    Ok(FileBytes::Read(bytes))
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| {
        Error::Format(format!(
            "{} is not a valid safetensors file ({e}); expected a safetensors file whose header \
             matches its size",
            path.display()
        ))
    })?;
    // The parser keeps the last of two entries of one name; a file that names a tensor
    // twice is ambiguous, so it is refused. The header parsed above fits the file.
    let length = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    if let Some(name) = duplicate_key(&bytes[8..8 + length]) {
        return Err(Error::Format(format!(
            "{}: the header names tensor {} twice; expected each name once",
            path.display(),
            crate::error::quoted(&name)
        )));
    }
    Ok(file)
}

/// The first key that a JSON object's top level holds twice, if any.
fn duplicate_key(header: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if !seen.insert(key.clone()) {
                    return Ok(Some(key));
                }
            }
            Ok(None)
        }
    }
    serde_json::Deserializer::from_slice(header)
        .deserialize_map(Keys)
        .ok()
        .flatten()
}

/// A tensor read from a file, widened to f32.
struct FileTensor {
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// A tensor's values widened to f32, with its shape; F32, F16 and BF16 only.
fn tensor_values(path: &Path, file: &SafeTensors, name: &str) -> Result<Option<FileTensor>> {
    let view = match file.tensor(name) {
        Ok(view) => view,
        Err(safetensors::SafeTensorError::TensorNotFound(_)) => return Ok(None),
        Err(e) => return Err(Error::Format(format!("{}: {e}", path.display()))),
    };
    let dtype = dtype_of(path, name, view.dtype())?;
    let values = decode(view.data(), dtype);
    Ok(Some(FileTensor {
        shape: view.shape().to_vec(),
        values,
    }))
}

/// The dtype of tensor `name`: F32, F16 or BF16.
fn dtype_of(path: &Path, name: &str, dtype: FileDtype) -> Result<Dtype> {
    match dtype {
        FileDtype::F32 => Ok(Dtype::F32),
        FileDtype::F16 => Ok(Dtype::F16),
        FileDtype::BF16 => Ok(Dtype::BF16),
        other => Err(Error::InvalidTensor(format!(
            "{}: tensor {name} has dtype {other:?}; expected F32, F16 or BF16",
            path.display()
        ))),
    }
}

fn required(path: &Path, file: &SafeTensors, name: &str) -> Result<FileTensor> {
    tensor_values(path, file, name)?.ok_or_else(|| missing(path, file, name))
}

/// The error for a missing tensor `name`.
fn missing(path: &Path, file: &SafeTensors, name: &str) -> Error {
    let names = file.names().join(", ");
    Error::InvalidTensor(format!(
        "{}: tensor {name} is missing; the file holds [{names}]",
        path.display()
    ))
}

fn file_metadata(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::Format(format!("{}: {e}", path.display())))?;
    Ok(metadata.metadata().clone().unwrap_or_default())
}

/// Reads a probes file for `compare`: tensor `probes` (`q x d`), query vectors to attend
/// over the tokens with.
pub fn read_probes(path: &Path, width: usize) -> Result<Vec<f32>> {
    let bytes = read_file(path)?;
    let file = parse(path, &bytes)?;
    let FileTensor { shape, values, .. } = required(path, &file, "probes")?;
    if shape.len() != 2 || shape[0] == 0 || shape[1] != width {
        return Err(Error::InvalidTensor(format!(
            "{}: tensor probes has shape {shape:?}; expected [q, {width}] with q >= 1 (the \
             features' width)",
            path.display()
        )));
    }
    crate::tensor::check_finite("probes", &shape, &values)
        .map_err(|e| Error::InvalidTensor(format!("{}: {e}", path.display())))?;
    Ok(values)
}

/// Reads a weights file (`w_q`, `w_k`, `omega`, optional `pos_embed`).
pub fn read_weights(path: &Path) -> Result<PMeta> {
    weights_from_bytes(path, &read_file(path)?)
}

/// A weights file already in memory (`path` names it in errors).
pub fn weights_from_bytes(path: &Path, bytes: &[u8]) -> Result<PMeta> {
    let file = parse(path, bytes)?;
    let bad = |message: String| Error::InvalidTensor(format!("{}: {message}", path.display()));
    let w_q = required(path, &file, "w_q")?;
    let w_k = required(path, &file, "w_k")?;
    let omega = required(path, &file, "omega")?;
    let (q_shape, k_shape, o_shape) = (&w_q.shape, &w_k.shape, &omega.shape);
    let [width, channels] = q_shape[..] else {
        return Err(bad(format!(
            "tensor w_q has shape {q_shape:?}; expected [d, d_c]"
        )));
    };
    if k_shape != q_shape {
        return Err(bad(format!(
            "tensor w_k has shape {k_shape:?}; expected [{width}, {channels}] like w_q"
        )));
    }
    if o_shape[..] != [channels] {
        return Err(bad(format!(
            "tensor omega has shape {o_shape:?}; expected [{channels}]"
        )));
    }
    let position = match tensor_values(path, &file, "pos_embed")? {
        None => None,
        Some(FileTensor { shape, values, .. }) => match shape[..] {
            [height, table_width, d] if d == width && height > 0 && table_width > 0 => {
                Some(PositionTable {
                    height,
                    width: table_width,
                    values,
                })
            }
            _ => {
                return Err(bad(format!(
                "tensor pos_embed has shape {shape:?}; expected [gh, gw, {width}] with gh and gw \
                     at least 1"
            )))
            }
        },
    };
    PMeta::new(
        width,
        channels,
        w_q.values,
        w_k.values,
        omega.values,
        position,
    )
    .map_err(|e| bad(e.to_string()))
}

fn file_dtype(dtype: Dtype) -> FileDtype {
    match dtype {
        Dtype::F32 => FileDtype::F32,
        Dtype::F16 => FileDtype::F16,
        Dtype::BF16 => FileDtype::BF16,
    }
}

/// One tensor to write: name, shape, values and the dtype to store them in.
pub struct TensorOut<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values (converted to `dtype` on write).
    pub values: &'a [f32],
    /// Stored dtype.
    pub dtype: Dtype,
}

/// Writes tensors and metadata to `path` through a temporary file and a rename.
pub fn write_tensors(
    path: &Path,
    tensors: &[TensorOut],
    metadata: &[(&str, String)],
) -> Result<()> {
    write_atomically(path, &encode_tensors(tensors, metadata)?)
}

/// The largest header safetensors reads back.
const MAX_HEADER: usize = 100_000_000;

/// The safetensors bytes of `tensors` and `metadata`. The same tensors and metadata always
/// give the same bytes: the header holds `__metadata__` first, its keys sorted, then the
/// tensors in the order of their data (`safetensors::serialize` takes the metadata as a
/// `HashMap`, whose order changes from run to run, so it is given none and the metadata is
/// put in here).
pub fn encode_tensors(tensors: &[TensorOut], metadata: &[(&str, String)]) -> Result<Vec<u8>> {
    // A file holds each name once (safetensors' own writer assumes so).
    for (index, tensor) in tensors.iter().enumerate() {
        if tensors[..index].iter().any(|t| t.name == tensor.name) {
            return Err(Error::Format(format!(
                "cannot store tensor {} twice; expected each output tensor under its own name",
                tensor.name
            )));
        }
    }
    let encoded: Vec<Vec<u8>> = tensors.iter().map(|t| encode(t.values, t.dtype)).collect();
    let views = tensors
        .iter()
        .zip(&encoded)
        .map(|(t, bytes)| {
            TensorView::new(file_dtype(t.dtype), t.shape.clone(), bytes)
                .map(|view| (t.name, view))
                .map_err(|e| Error::Format(format!("cannot store tensor {}: {e}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    let failed = |e: &dyn std::fmt::Display| Error::Format(format!("cannot encode tensors: {e}"));
    let bytes = safetensors::serialize(views, None).map_err(|e| failed(&e))?;
    if metadata.is_empty() {
        return Ok(bytes);
    }
    let length = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let (header, data) = bytes[8..].split_at(length);
    let tensors_entries = std::str::from_utf8(header)
        .ok()
        .and_then(|h| h.trim_end().strip_prefix('{'))
        .and_then(|h| h.strip_suffix('}'))
        .ok_or_else(|| failed(&"the header is not a JSON object"))?;
    // A later value of a key wins, as it would in the map.
    let sorted: std::collections::BTreeMap<&str, &str> =
        metadata.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sorted = serde_json::to_string(&sorted).map_err(|e| failed(&e))?;
    let separator = if tensors_entries.is_empty() { "" } else { "," };
    let mut header = format!("{{\"__metadata__\":{sorted}{separator}{tensors_entries}}}");
    if header.len() > MAX_HEADER {
        return Err(failed(&format!(
            "a {}-byte header; expected at most {MAX_HEADER}",
            header.len()
        )));
    }
    // The data stays aligned to 8 bytes, as safetensors pads it.
    header.extend(std::iter::repeat_n(
        ' ',
        header.len().next_multiple_of(8) - header.len(),
    ));
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    Ok(out)
}

/// Writes `weights` in f32 with the format metadata.
pub fn write_weights(path: &Path, weights: &PMeta) -> Result<()> {
    write_atomically(path, &encode_weights(weights)?)
}

/// The bytes of a weights file (see `write_weights`).
pub fn encode_weights(weights: &PMeta) -> Result<Vec<u8>> {
    let (d, c) = (weights.width(), weights.channels());
    let mut tensors = vec![
        TensorOut {
            name: "w_q",
            shape: vec![d, c],
            values: weights.w_q(),
            dtype: Dtype::F32,
        },
        TensorOut {
            name: "w_k",
            shape: vec![d, c],
            values: weights.w_k(),
            dtype: Dtype::F32,
        },
        TensorOut {
            name: "omega",
            shape: vec![c],
            values: weights.omega(),
            dtype: Dtype::F32,
        },
    ];
    if let Some(table) = weights.position() {
        tensors.push(TensorOut {
            name: "pos_embed",
            shape: vec![table.height, table.width, d],
            values: &table.values,
            dtype: Dtype::F32,
        });
    }
    encode_tensors(
        &tensors,
        &[
            ("format", WEIGHTS_FORMAT.to_string()),
            ("version", "1".to_string()),
        ],
    )
}

/// Writes an input file: `features` (`n x d`, or `b x n x d` when `batched`) in `dtype`, with
/// the layout's `grids` metadata and the `attention` tensor (`b x n` values) when given.
pub fn write_input(
    path: &Path,
    features: &Features,
    batched: bool,
    dtype: Dtype,
    grids: Option<&str>,
    attention: Option<&[f32]>,
) -> Result<()> {
    let bytes = encode_input(features, batched, dtype, grids, attention)?;
    write_atomically(path, &bytes)
}

/// The bytes of an input file (see `write_input`).
pub fn encode_input(
    features: &Features,
    batched: bool,
    dtype: Dtype,
    grids: Option<&str>,
    attention: Option<&[f32]>,
) -> Result<Vec<u8>> {
    let (b, n, d) = (features.batch(), features.tokens(), features.width());
    let (shape, attention_shape) = if batched {
        (vec![b, n, d], vec![b, n])
    } else {
        (vec![n, d], vec![n])
    };
    let metadata: Vec<(&str, String)> = grids
        .map(|g| ("grids", g.to_string()))
        .into_iter()
        .collect();
    let mut tensors = vec![TensorOut {
        name: "features",
        shape,
        values: features.values(),
        dtype,
    }];
    if let Some(attention) = attention {
        tensors.push(TensorOut {
            name: "attention",
            shape: attention_shape,
            values: attention,
            dtype: Dtype::F32,
        });
    }
    encode_tensors(&tensors, &metadata)
}

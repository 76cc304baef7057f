//! WGSL sources of the kernels, with the element-type prelude the host prepends.
//! Every variant the host can build is listed here, so tests validate exactly those.

use crate::options::{Elem, Precision};

/// One buildable shader: a label naming the kernel and its variant, and the full WGSL.
#[derive(Clone, Debug)]
pub struct ShaderSource {
    /// For example `matmul<f32,f16,f16>`.
    pub label: String,
    /// Prelude and kernel body.
    pub code: String,
}

const INGEST: &str = include_str!("../../../shaders/ingest.wgsl");
const POSITION: &str = include_str!("../../../shaders/position.wgsl");
const POOLING: &str = include_str!("../../../shaders/pooling.wgsl");
const MATMUL: &str = include_str!("../../../shaders/matmul.wgsl");
const SOFTMAX: &str = include_str!("../../../shaders/softmax.wgsl");
const SPLIT_SUM: &str = include_str!("../../../shaders/split_sum.wgsl");

/// `alias NAME = TYPE;` for each pair, after `enable f16;` when any type is f16.
fn with_prelude(kernel: &str, body: &str, aliases: &[(&str, Elem)]) -> ShaderSource {
    let mut code = String::new();
    if aliases.iter().any(|(_, elem)| *elem == Elem::F16) {
        code.push_str("enable f16;\n");
    }
    for (name, elem) in aliases {
        code.push_str(&format!("alias {name} = {};\n", elem.wgsl()));
    }
    code.push_str(body);
    let types: Vec<&str> = aliases.iter().map(|(_, elem)| elem.wgsl()).collect();
    let label = if types.is_empty() {
        kernel.to_string()
    } else {
        format!("{kernel}<{}>", types.join(","))
    };
    ShaderSource { label, code }
}

/// The shaders of one forward pass at one precision.
#[derive(Clone, Debug)]
pub struct KernelSources {
    /// Tokens on the GPU (f32, f16 or bf16) into the stored element type.
    pub ingest: ShaderSource,
    /// `Xp = X + E`.
    pub position: ShaderSource,
    /// `Q_in = pool(Xp)`.
    pub pooling: ShaderSource,
    /// `Q' = Q_in w_q'` (`w_q' = w_q diag(omega) / sqrt(d_c)`, kept in f32; `Q'` f32).
    pub queries: ShaderSource,
    /// `K = Xp w_k`.
    pub keys: ShaderSource,
    /// f32 times a stored matrix (transposed) into f32: `S = Q' K^T`, or `Q'' = Q' w_k^T`
    /// and `S = Q'' Xp^T`.
    pub scores: ShaderSource,
    /// `P = softmax(S)`.
    pub softmax: ShaderSource,
    /// `Y = P X` (P is f32).
    pub reduction: ShaderSource,
    /// The sum of a split-K product's partial products (f32, for the products that write
    /// f32).
    pub split_sum: ShaderSource,
}

/// The matrix product with element types `lhs`, `rhs` and `out`, summing in `acc`.
fn matmul(lhs: Elem, rhs: Elem, out: Elem, acc: Elem) -> ShaderSource {
    with_prelude(
        "matmul",
        MATMUL,
        &[
            ("lhs_elem", lhs),
            ("rhs_elem", rhs),
            ("out_elem", out),
            ("acc", acc),
        ],
    )
}

impl KernelSources {
    /// The variants a forward pass at `precision` builds: tokens, weights and intermediates
    /// stored as the precision's element type; the scaled query weights, the queries, the
    /// scores and `P` as f32. Sums are f32, except in the reduction at `f16-acc`.
    pub fn for_precision(precision: Precision) -> Self {
        let elem = precision.elem();
        let acc = precision.accumulate();
        KernelSources {
            ingest: with_prelude("ingest", INGEST, &[("elem", elem)]),
            position: with_prelude("position", POSITION, &[("elem", elem)]),
            pooling: with_prelude("pooling", POOLING, &[("elem", elem)]),
            queries: matmul(elem, Elem::F32, Elem::F32, Elem::F32),
            keys: matmul(elem, elem, elem, Elem::F32),
            scores: matmul(Elem::F32, elem, Elem::F32, Elem::F32),
            softmax: with_prelude("softmax", SOFTMAX, &[]),
            reduction: matmul(Elem::F32, elem, elem, acc),
            split_sum: with_prelude("split_sum", SPLIT_SUM, &[]),
        }
    }

    #[cfg(test)]
    /// All nine: the ingest copy, the forward pass in spec order, then the split-K sum.
    pub fn all(&self) -> [&ShaderSource; 9] {
        [
            &self.ingest,
            &self.position,
            &self.pooling,
            &self.queries,
            &self.keys,
            &self.scores,
            &self.softmax,
            &self.reduction,
            &self.split_sum,
        ]
    }
}

#[cfg(test)]
mod tests;

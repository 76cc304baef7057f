//! `C = A B` per image (SPEC 4, steps 4, 5 and 7): `shaders/matmul.wgsl`.

use super::{
    dispatch, linear_groups, pipeline, pipeline_at, Passes, Slice, LINEAR_WORKGROUP,
    MAX_GROUPS_PER_DIMENSION,
};
use crate::gpu::shaders::ShaderSource;
use crate::options::{KernelVariant, SplitK, MAX_PIECES, MIN_AUTO_PIECE, SPLIT_TARGET_INVOCATIONS};
use crate::profile::Step;

/// Pieces are a multiple of this many inner elements (the shared-memory kernel's step, and a
/// multiple of 4 for the vec4 kernels).
const PIECE_ALIGN: u32 = 16;

/// Which matrix product kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MatmulVariant {
    /// One output per invocation (`main`), 32 x 8 outputs per workgroup: the yardstick.
    Naive,
    /// A 4 x 4 register block per invocation, 32 x 32 outputs per workgroup: with vec4
    /// loads (`main_vec4`, `main_vec4_transposed`) where the shape allows, scalar loads
    /// (`main_tiled`) otherwise.
    #[default]
    Tiled,
    /// 64 x 64 outputs per workgroup of 16 x 16 invocations, 4 x 4 each, with blocks of `A`
    /// and `B` staged in workgroup memory (`main_shared`): the recipe of the best public WGSL
    /// GEMMs, for hardware GPUs.
    Shared,
}

/// The entry points of `shaders/matmul.wgsl` (declared in `Kernel::ALL` order, so that a
/// kernel's discriminant indexes its pipeline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// One output per invocation.
    Naive,
    /// 4 x 4 block, scalar loads, any shape.
    Tiled,
    /// 4 x 4 block, vec4 loads, `B` row-major.
    Vec4,
    /// 4 x 4 block, vec4 loads, `B` given transposed.
    Vec4Transposed,
    /// 64 x 64 tile staged in workgroup memory.
    Shared,
}

impl Kernel {
    /// Every entry point.
    pub const ALL: [Kernel; 5] = [
        Kernel::Naive,
        Kernel::Tiled,
        Kernel::Vec4,
        Kernel::Vec4Transposed,
        Kernel::Shared,
    ];

    /// The shader entry point.
    pub fn entry_point(self) -> &'static str {
        match self {
            Kernel::Naive => "main",
            Kernel::Tiled => "main_tiled",
            Kernel::Vec4 => "main_vec4",
            Kernel::Vec4Transposed => "main_vec4_transposed",
            Kernel::Shared => "main_shared",
        }
    }
}

impl From<KernelVariant> for MatmulVariant {
    fn from(kernels: KernelVariant) -> Self {
        match kernels {
            KernelVariant::Naive => MatmulVariant::Naive,
            KernelVariant::Tuned => MatmulVariant::Tiled,
            KernelVariant::Shared => MatmulVariant::Shared,
        }
    }
}

impl MatmulVariant {
    /// Invocations per workgroup.
    fn invocations(self) -> u64 {
        match self {
            MatmulVariant::Naive => 32 * 8,
            MatmulVariant::Tiled => 8 * 8,
            MatmulVariant::Shared => 16 * 16,
        }
    }

    /// Output columns and rows one workgroup covers.
    fn tile(self) -> (u32, u32) {
        match self {
            // The shader's `tile_columns` and `tile_rows` overrides' defaults.
            MatmulVariant::Naive => (32, 8),
            // 8 x 8 invocations of 4 x 4 outputs.
            MatmulVariant::Tiled => (32, 32),
            // 16 x 16 invocations of 4 x 4 outputs.
            MatmulVariant::Shared => (64, 64),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    columns: u32,
    inner: u32,
    lhs_batch_stride: u32,
    rhs_batch_stride: u32,
    out_batch_stride: u32,
    rhs_inner_stride: u32,
    rhs_column_stride: u32,
    lhs_row_stride: u32,
    accumulate: u32,
    splits: u32,
    split_length: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SumParams {
    size: u32,
    images: u32,
    splits: u32,
    accumulate: u32,
}

/// The sizes of one batched product `C (rows x columns) = A (rows x inner) B (inner x columns)`.
#[derive(Clone, Copy, Debug)]
pub struct Product {
    /// Images; each has its own `C`.
    pub batch: u32,
    /// Rows of `A` and `C`.
    pub rows: u32,
    /// Columns of `B` and `C`.
    pub columns: u32,
    /// Columns of `A`, rows of `B`.
    pub inner: u32,
    /// Whether `A` differs per image (else one `A` serves all).
    pub lhs_per_image: bool,
    /// Whether `B` differs per image (else one `B`, such as a weight, serves all).
    pub rhs_per_image: bool,
    /// Whether the buffer holds `B^T` row-major (`columns x inner`) rather than `B`.
    pub rhs_transposed: bool,
    /// Elements between rows of `A` when they are not `inner` apart (a block of columns of
    /// a wider matrix).
    pub lhs_row_stride: Option<u32>,
    /// Whether to add `A B` to what `C` holds rather than overwrite it.
    pub accumulate: bool,
    /// Pieces the inner dimension is cut into (split-K; 1: none). Set by `split`.
    pub splits: u32,
}

impl Product {
    /// `C = A B` for `batch` images with their own `A` and `B` (`B` row-major), overwriting
    /// `C`, whole (no split-K): the other fields are set where a product differs.
    pub fn new(batch: u32, rows: u32, columns: u32, inner: u32) -> Self {
        Product {
            batch,
            rows,
            columns,
            inner,
            lhs_per_image: true,
            rhs_per_image: true,
            rhs_transposed: false,
            lhs_row_stride: None,
            accumulate: false,
            splits: 1,
        }
    }

    /// Workgroups along x, y and z for this product with `variant` (z: images times pieces).
    pub fn groups(&self, variant: MatmulVariant) -> [u32; 3] {
        let (columns, rows) = variant.tile();
        [
            self.columns.div_ceil(columns),
            self.rows.div_ceil(rows),
            self.batch * self.splits,
        ]
    }

    /// This product with its inner dimension cut as `policy` says (`SplitK::Auto` already
    /// resolved for the adapter) for `variant`'s tiles, with partial products of at most
    /// `scratch_limit` bytes. The pieces are multiples of 16 elements, so a short inner
    /// dimension gets fewer pieces than asked, or none.
    pub fn split(self, policy: SplitK, variant: MatmulVariant, scratch_limit: u64) -> Product {
        let wanted = match policy {
            // The naive kernels never split: they stay the yardstick.
            _ if variant == MatmulVariant::Naive => 1,
            SplitK::Off => 1,
            SplitK::Pieces(pieces) => pieces,
            SplitK::Auto => {
                let [x, y, z] = Product { splits: 1, ..self }.groups(variant);
                let invocations = x as u64 * y as u64 * z as u64 * variant.invocations();
                let wanted = SPLIT_TARGET_INVOCATIONS.div_ceil(invocations.max(1));
                wanted.min((self.inner / MIN_AUTO_PIECE) as u64) as u32
            }
        };
        let outputs = self.batch as u64 * self.rows as u64 * self.columns as u64;
        let most = (MAX_PIECES as u64)
            .min((MAX_GROUPS_PER_DIMENSION / self.batch.max(1)) as u64)
            .min(scratch_limit / (4 * outputs).max(1)) as u32;
        let wanted = wanted.clamp(1, most.max(1));
        let length = piece_length(self.inner, wanted);
        Product {
            splits: self.inner.div_ceil(length).max(1),
            ..self
        }
    }

    /// Inner elements per piece (the last piece may hold fewer).
    pub fn piece_length(&self) -> u32 {
        piece_length(self.inner, self.splits)
    }

    /// Elements of the f32 scratch the partial products need (0 without split-K).
    pub fn scratch_elements(&self) -> u64 {
        match self.splits {
            0 | 1 => 0,
            splits => self.batch as u64 * splits as u64 * self.rows as u64 * self.columns as u64,
        }
    }

    /// The kernel `variant` runs for this shape: vec4 loads need the inner size, `A`'s row
    /// stride, and the column count when `B` is row-major, to be multiples of 4.
    pub fn kernel(&self, variant: MatmulVariant) -> Kernel {
        match variant {
            MatmulVariant::Naive => Kernel::Naive,
            MatmulVariant::Shared => Kernel::Shared,
            MatmulVariant::Tiled
                if !self.inner.is_multiple_of(4) || !self.lhs_stride().is_multiple_of(4) =>
            {
                Kernel::Tiled
            }
            MatmulVariant::Tiled if self.rhs_transposed => Kernel::Vec4Transposed,
            MatmulVariant::Tiled if self.columns.is_multiple_of(4) => Kernel::Vec4,
            MatmulVariant::Tiled => Kernel::Tiled,
        }
    }

    /// Elements between rows of `A`.
    pub fn lhs_stride(&self) -> u32 {
        self.lhs_row_stride.unwrap_or(self.inner)
    }

    /// Floating-point operations (a multiply and an add per inner step; split-K's sum aside).
    pub fn flops(&self) -> f64 {
        2.0 * self.batch as f64 * self.rows as f64 * self.columns as f64 * self.inner as f64
    }

    /// The fewest bytes the product must move: `A`, `B` and `C` once each, at the element
    /// sizes of `lhs`, `rhs` and `out`.
    pub fn bytes(&self, lhs: usize, rhs: usize, out: usize) -> f64 {
        let images = |per_image: bool| if per_image { self.batch as f64 } else { 1.0 };
        let (rows, columns, inner) = (self.rows as f64, self.columns as f64, self.inner as f64);
        images(self.lhs_per_image) * rows * inner * lhs as f64
            + images(self.rhs_per_image) * inner * columns * rhs as f64
            + self.batch as f64 * rows * columns * out as f64
    }
}

/// `ceil(inner / pieces)` rounded up to a multiple of `PIECE_ALIGN`.
fn piece_length(inner: u32, pieces: u32) -> u32 {
    inner
        .div_ceil(pieces.max(1))
        .next_multiple_of(PIECE_ALIGN)
        .max(PIECE_ALIGN)
}

/// The matrix product kernels (every entry point) for one choice of element types; cloning
/// shares the pipelines.
#[derive(Clone)]
pub struct Matmul {
    /// One pipeline per `Kernel`, in `Kernel::ALL` order.
    pipelines: Vec<wgpu::ComputePipeline>,
    /// `shaders/split_sum.wgsl`, for the products that write f32 (the others never split).
    split_sum: Option<wgpu::ComputePipeline>,
}

impl Matmul {
    /// Builds the pipelines; with `split_sum` (only where `source` writes f32), products
    /// may be split (`Product::split`).
    pub fn new(
        device: &wgpu::Device,
        source: &ShaderSource,
        split_sum: Option<&ShaderSource>,
    ) -> Self {
        Matmul {
            pipelines: Kernel::ALL
                .iter()
                .map(|kernel| pipeline_at(device, source, kernel.entry_point()))
                .collect(),
            split_sum: split_sum.map(|source| pipeline(device, source)),
        }
    }

    /// Whether products of these element types may split (their output is f32).
    pub fn can_split(&self) -> bool {
        self.split_sum.is_some()
    }

    /// Records `out = lhs rhs` (or `out += lhs rhs`) for every image of `product` as the
    /// step `step`. A split product (`splits > 1`) writes its partial products into the
    /// passes' split scratch, then adds them into `out` in a pass named `split_sum`.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &self,
        passes: &mut Passes,
        step: Step,
        variant: MatmulVariant,
        product: &Product,
        lhs: Slice,
        rhs: Slice,
        out: Slice,
    ) {
        let stride = |per_image: bool, size: u32| if per_image { size } else { 0 };
        let (rhs_inner_stride, rhs_column_stride) = if product.rhs_transposed {
            (1, product.inner)
        } else {
            (product.columns, 1)
        };
        let params = Params {
            rows: product.rows,
            columns: product.columns,
            inner: product.inner,
            lhs_batch_stride: stride(product.lhs_per_image, product.rows * product.inner),
            rhs_batch_stride: stride(product.rhs_per_image, product.inner * product.columns),
            out_batch_stride: product.rows * product.columns,
            rhs_inner_stride,
            rhs_column_stride,
            lhs_row_stride: product.lhs_stride(),
            accumulate: product.accumulate as u32,
            splits: 1,
            split_length: product.inner,
        };
        let pipeline = &self.pipelines[product.kernel(variant) as usize];
        if product.splits <= 1 {
            dispatch(
                passes,
                step,
                pipeline,
                &params,
                &[lhs, rhs, out],
                product.groups(variant),
            );
            return;
        }
        // Split-K: pieces into the scratch (slot = image * splits + piece), then their sum.
        let sum = self
            .split_sum
            .as_ref()
            .expect("split-K is planned only for products that write f32");
        let scratch = passes
            .split_scratch(product.scratch_elements() * 4)
            .expect("the plan sized the split-K scratch");
        let partial = Params {
            accumulate: 0,
            splits: product.splits,
            split_length: product.piece_length(),
            ..params
        };
        dispatch(
            passes,
            step,
            pipeline,
            &partial,
            &[lhs, rhs, Slice::whole(&scratch)],
            product.groups(variant),
        );
        let size = product.rows * product.columns;
        let images = product.batch;
        let splits = product.splits as f64;
        let elements = images as f64 * size as f64;
        let sum_step = Step {
            name: "split_sum",
            flops: elements * splits,
            bytes: elements * (splits + 1.0 + product.accumulate as u32 as f64) * 4.0,
        };
        let sum_params = SumParams {
            size,
            images,
            splits: product.splits,
            accumulate: product.accumulate as u32,
        };
        dispatch(
            passes,
            sum_step,
            sum,
            &sum_params,
            &[Slice::whole(&scratch), out],
            linear_groups(images * size, LINEAR_WORKGROUP),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec4_loads_only_where_the_shape_allows() {
        let product = |inner, columns, rhs_transposed| Product {
            rhs_transposed,
            ..Product::new(1, 7, columns, inner)
        };
        let tiled = MatmulVariant::Tiled;
        assert_eq!(product(12, 20, false).kernel(tiled), Kernel::Vec4);
        assert_eq!(product(12, 21, true).kernel(tiled), Kernel::Vec4Transposed);
        assert_eq!(product(12, 21, false).kernel(tiled), Kernel::Tiled);
        assert_eq!(product(13, 20, false).kernel(tiled), Kernel::Tiled);
        assert_eq!(product(13, 20, true).kernel(tiled), Kernel::Tiled);
        assert_eq!(
            product(12, 20, false).kernel(MatmulVariant::Naive),
            Kernel::Naive
        );
    }

    fn skinny(rows: u32, columns: u32, inner: u32) -> Product {
        Product {
            rhs_transposed: true,
            ..Product::new(1, rows, columns, inner)
        }
    }

    #[test]
    fn pieces_cover_the_inner_dimension_in_multiples_of_16() {
        let tiled = MatmulVariant::Tiled;
        for inner in [1, 15, 16, 17, 31, 33, 37, 100, 576, 4095, 4096] {
            for asked in 1..=9 {
                let product = skinny(7, 9, inner).split(SplitK::Pieces(asked), tiled, u64::MAX);
                let (pieces, length) = (product.splits, product.piece_length());
                assert!(pieces >= 1 && pieces <= asked, "{inner} {asked}: {pieces}");
                assert_eq!(length % 16, 0);
                assert!(pieces * length >= inner, "{inner} {asked}: short");
                assert!(
                    (pieces - 1) * length < inner,
                    "{inner} {asked}: an empty piece"
                );
                let expected = if pieces > 1 { 9 * 7 * pieces as u64 } else { 0 };
                assert_eq!(product.scratch_elements(), expected);
            }
        }
        // Off, the naive kernels, and a scratch limit too small for two pieces: no split.
        let product = skinny(64, 576, 4096);
        assert_eq!(product.split(SplitK::Off, tiled, u64::MAX).splits, 1);
        let naive = MatmulVariant::Naive;
        assert_eq!(product.split(SplitK::Pieces(8), naive, u64::MAX).splits, 1);
        let one_piece = 64 * 576 * 4;
        assert_eq!(product.split(SplitK::Pieces(8), tiled, one_piece).splits, 1);
        assert_eq!(
            product
                .split(SplitK::Pieces(8), tiled, 3 * one_piece)
                .splits,
            3
        );
    }

    #[test]
    fn auto_splits_skinny_products_and_leaves_wide_ones() {
        let tiled = MatmulVariant::Tiled;
        // llava15-7b's scores S = Q'' X^T: 64 x 576 over 4096, 36 workgroups whole.
        let scores = skinny(64, 576, 4096).split(SplitK::Auto, tiled, u64::MAX);
        assert_eq!(scores.splits, 16, "4096 / 256");
        // Its queries Q' = Q_in w_q': 64 x 256 over 4096, 16 workgroups.
        let queries = skinny(64, 256, 4096).split(SplitK::Auto, tiled, u64::MAX);
        assert_eq!(queries.splits, 16);
        // llava-next-7b's reduction: 289 x 4096 over 2928 already runs 1280 workgroups.
        let reduction = skinny(289, 4096, 2928).split(SplitK::Auto, tiled, u64::MAX);
        assert_eq!(reduction.splits, 1);
        // A short inner dimension is not cut below 256 a piece.
        let short = skinny(8, 8, 300).split(SplitK::Auto, tiled, u64::MAX);
        assert_eq!(short.splits, 1);
        let [x, y, z] = scores.groups(tiled);
        assert!(x as u64 * y as u64 * z as u64 * 64 >= 36 * 64 * 16);
    }

    #[test]
    fn each_kernel_indexes_its_own_pipeline() {
        for (index, kernel) in Kernel::ALL.iter().enumerate() {
            assert_eq!(*kernel as usize, index);
        }
    }
}

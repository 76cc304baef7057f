//! `C = A B` per image (SPEC 4, steps 4, 5 and 7): `shaders/matmul.wgsl`.

use super::{dispatch, pipeline_at, Passes, Slice, Step};
use crate::shaders::ShaderSource;

/// Which matrix product kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MatmulVariant {
    /// One output per invocation (`main`), 32 x 8 outputs per workgroup: the v1 kernel.
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

impl MatmulVariant {
    /// Every variant, for tests and benchmarks.
    pub const ALL: [MatmulVariant; 3] = [
        MatmulVariant::Naive,
        MatmulVariant::Tiled,
        MatmulVariant::Shared,
    ];

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
    padding: [u32; 2],
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
}

impl Product {
    /// Workgroups along x, y and z for this product with `variant`.
    pub fn groups(&self, variant: MatmulVariant) -> [u32; 3] {
        let (columns, rows) = variant.tile();
        [
            self.columns.div_ceil(columns),
            self.rows.div_ceil(rows),
            self.batch,
        ]
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

    /// Floating-point operations (a multiply and an add per inner step).
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

/// The matrix product kernels (every entry point) for one choice of element types; cloning
/// shares the pipelines.
#[derive(Clone)]
pub struct Matmul {
    /// One pipeline per `Kernel`, in `Kernel::ALL` order.
    pipelines: Vec<wgpu::ComputePipeline>,
}

impl Matmul {
    /// Builds the pipelines.
    pub fn new(device: &wgpu::Device, source: &ShaderSource) -> Self {
        Matmul {
            pipelines: Kernel::ALL
                .iter()
                .map(|kernel| pipeline_at(device, source, kernel.entry_point()))
                .collect(),
        }
    }

    /// Records `out = lhs rhs` for every image of `product` as the step `step`.
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
            padding: [0; 2],
        };
        let pipeline = &self.pipelines[product.kernel(variant) as usize];
        dispatch(
            passes,
            step,
            pipeline,
            &params,
            &[lhs, rhs, out],
            product.groups(variant),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec4_loads_only_where_the_shape_allows() {
        let product = |inner, columns, rhs_transposed| Product {
            batch: 1,
            rows: 7,
            columns,
            inner,
            lhs_per_image: true,
            rhs_per_image: true,
            rhs_transposed,
            lhs_row_stride: None,
            accumulate: false,
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

    #[test]
    fn each_kernel_indexes_its_own_pipeline() {
        for (index, kernel) in Kernel::ALL.iter().enumerate() {
            assert_eq!(*kernel as usize, index);
        }
    }
}

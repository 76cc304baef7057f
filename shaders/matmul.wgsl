// C = A B for each image of a batch, A rows x inner (row-major) and B inner x columns with
// strides given by the host, so that B may be a row-major matrix or the transpose of one:
// the projections Q' = Q_in w_q' and K = Xp w_k (SPEC 4, step 4), the scores S = Q' K^T or
// S = (Q' w_k^T) Xp^T (step 5) and the reduction Y = P X (step 7). f32 accumulation.
// The host prepends `alias lhs_elem = ...; alias rhs_elem = ...; alias out_elem = ...;`.

struct Params {
    rows: u32,
    columns: u32,
    inner: u32,
    lhs_batch_stride: u32,  // elements between images of A (0 when shared)
    rhs_batch_stride: u32,  // elements between images of B (0 when shared)
    out_batch_stride: u32,
    rhs_inner_stride: u32,  // elements between B[k, j] and B[k + 1, j]
    rhs_column_stride: u32, // elements between B[k, j] and B[k, j + 1]
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> lhs: array<lhs_elem>;
@group(0) @binding(2) var<storage, read> rhs: array<rhs_elem>;
@group(0) @binding(3) var<storage, read_write> out: array<out_elem>;

override tile_columns: u32 = 32u;
override tile_rows: u32 = 8u;

// The v1 kernel: one output per invocation.
@compute @workgroup_size(tile_columns, tile_rows)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let column = id.x;
    let row = id.y;
    let image = id.z;
    if row >= params.rows || column >= params.columns {
        return;
    }
    let lhs_row = image * params.lhs_batch_stride + row * params.inner;
    let rhs_base = image * params.rhs_batch_stride + column * params.rhs_column_stride;
    var sum = 0.0;
    for (var k = 0u; k < params.inner; k++) {
        sum += f32(lhs[lhs_row + k]) * f32(rhs[rhs_base + k * params.rhs_inner_stride]);
    }
    out[image * params.out_batch_stride + row * params.columns + column] = out_elem(sum);
}

// The register-tiled kernel: a workgroup of 8 x 8 invocations computes a 32 x 32 tile of C,
// each invocation a 4 x 4 block of it held in registers, so each A value it loads serves 4
// outputs and each B value 4 more. An invocation's 4 rows are adjacent (neighbours along x
// share them, so A loads are broadcasts) and its 4 columns are 8 apart (neighbours along x
// read adjacent B elements when B is row-major). Edge blocks clamp their reads inside the
// matrices and skip the writes outside, so the inner loop has no branches.
const block = 4u;
const lanes = 8u;

@compute @workgroup_size(8, 8)
fn main_tiled(
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(workgroup_id) group: vec3<u32>,
) {
    let first_row = (group.y * lanes + local.y) * block;
    let first_column = group.x * lanes * block + local.x;
    let image = group.z;
    if first_row >= params.rows || first_column >= params.columns {
        return;
    }
    let last_row = params.rows - 1u;
    let last_column = params.columns - 1u;
    let lhs_base = image * params.lhs_batch_stride;
    let lhs_rows = vec4<u32>(
        lhs_base + min(first_row, last_row) * params.inner,
        lhs_base + min(first_row + 1u, last_row) * params.inner,
        lhs_base + min(first_row + 2u, last_row) * params.inner,
        lhs_base + min(first_row + 3u, last_row) * params.inner,
    );
    let rhs_base = image * params.rhs_batch_stride;
    let rhs_columns = vec4<u32>(
        rhs_base + min(first_column, last_column) * params.rhs_column_stride,
        rhs_base + min(first_column + lanes, last_column) * params.rhs_column_stride,
        rhs_base + min(first_column + 2u * lanes, last_column) * params.rhs_column_stride,
        rhs_base + min(first_column + 3u * lanes, last_column) * params.rhs_column_stride,
    );
    var sums: array<vec4<f32>, 4>;
    var rhs_offset = 0u;
    for (var k = 0u; k < params.inner; k++) {
        let b = vec4<f32>(
            f32(rhs[rhs_columns.x + rhs_offset]),
            f32(rhs[rhs_columns.y + rhs_offset]),
            f32(rhs[rhs_columns.z + rhs_offset]),
            f32(rhs[rhs_columns.w + rhs_offset]),
        );
        sums[0] += f32(lhs[lhs_rows.x + k]) * b;
        sums[1] += f32(lhs[lhs_rows.y + k]) * b;
        sums[2] += f32(lhs[lhs_rows.z + k]) * b;
        sums[3] += f32(lhs[lhs_rows.w + k]) * b;
        rhs_offset += params.rhs_inner_stride;
    }
    for (var r = 0u; r < block; r++) {
        let row = first_row + r;
        if row >= params.rows {
            break;
        }
        let out_row = image * params.out_batch_stride + row * params.columns;
        for (var c = 0u; c < block; c++) {
            let column = first_column + c * lanes;
            if column < params.columns {
                out[out_row + column] = out_elem(sums[r][c]);
            }
        }
    }
}

// C = A B for each image of a batch, A rows x inner and B inner x columns, row-major: the
// projections Q = Q_in w_q and K = Xp w_k (SPEC 4, step 4) and the reduction Y = P X (step 7).
// One invocation per output element, f32 accumulation.
// The host prepends `alias lhs_elem = ...; alias rhs_elem = ...; alias out_elem = ...;`.

struct Params {
    rows: u32,
    columns: u32,
    inner: u32,
    lhs_batch_stride: u32, // elements between images of A (0 when shared)
    rhs_batch_stride: u32, // elements between images of B (0 when shared)
    out_batch_stride: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> lhs: array<lhs_elem>;
@group(0) @binding(2) var<storage, read> rhs: array<rhs_elem>;
@group(0) @binding(3) var<storage, read_write> out: array<out_elem>;

override tile_columns: u32 = 32u;
override tile_rows: u32 = 8u;

@compute @workgroup_size(tile_columns, tile_rows)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let column = id.x;
    let row = id.y;
    let image = id.z;
    if row >= params.rows || column >= params.columns {
        return;
    }
    let lhs_row = image * params.lhs_batch_stride + row * params.inner;
    let rhs_base = image * params.rhs_batch_stride + column;
    var sum = 0.0;
    for (var k = 0u; k < params.inner; k++) {
        sum += f32(lhs[lhs_row + k]) * f32(rhs[rhs_base + k * params.columns]);
    }
    out[image * params.out_batch_stride + row * params.columns + column] = out_elem(sum);
}

// The register-tiled variant: each invocation computes a 4 x 4 block of C (a workgroup, a
// 32 x 32 tile), reusing each loaded A value 4 times and each B vector 4 times. Edge blocks
// clamp their reads inside the matrices and skip the writes outside, so the inner loop has no
// branches.
const block = 4u;

@compute @workgroup_size(8, 8)
fn main_tiled(@builtin(global_invocation_id) id: vec3<u32>) {
    let first_row = id.y * block;
    let first_column = id.x * block;
    let image = id.z;
    if first_row >= params.rows || first_column >= params.columns {
        return;
    }
    let last_row = params.rows - 1u;
    let last_column = params.columns - 1u;
    var lhs_rows: array<u32, 4>;
    for (var r = 0u; r < block; r++) {
        lhs_rows[r] = image * params.lhs_batch_stride + min(first_row + r, last_row) * params.inner;
    }
    let rhs_base = image * params.rhs_batch_stride;
    let columns = vec4<u32>(
        min(first_column, last_column),
        min(first_column + 1u, last_column),
        min(first_column + 2u, last_column),
        min(first_column + 3u, last_column),
    );
    var sums: array<vec4<f32>, 4>;
    for (var k = 0u; k < params.inner; k++) {
        let rhs_row = rhs_base + k * params.columns;
        let b = vec4<f32>(
            f32(rhs[rhs_row + columns.x]),
            f32(rhs[rhs_row + columns.y]),
            f32(rhs[rhs_row + columns.z]),
            f32(rhs[rhs_row + columns.w]),
        );
        sums[0] += f32(lhs[lhs_rows[0] + k]) * b;
        sums[1] += f32(lhs[lhs_rows[1] + k]) * b;
        sums[2] += f32(lhs[lhs_rows[2] + k]) * b;
        sums[3] += f32(lhs[lhs_rows[3] + k]) * b;
    }
    for (var r = 0u; r < block; r++) {
        let row = first_row + r;
        if row >= params.rows {
            break;
        }
        let out_row = image * params.out_batch_stride + row * params.columns;
        for (var c = 0u; c < block; c++) {
            if first_column + c < params.columns {
                out[out_row + first_column + c] = out_elem(sums[r][c]);
            }
        }
    }
}

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

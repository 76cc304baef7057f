// C = A B for each image of a batch, A rows x inner (row-major) and B inner x columns with
// strides given by the host, so that B may be a row-major matrix or the transpose of one:
// the projections Q' = Q_in w_q' and K = Xp w_k (SPEC 4, step 4), the scores S = Q' K^T or
// S = (Q' w_k^T) Xp^T (step 5) and the reduction Y = P X (step 7). Sums in `acc`: f32, or
// f16 in the f16-accumulate variant (precision f16-acc, for the reduction), where each run of
// `acc_block` inner steps is summed in f16 and the runs' sums in f32, so that the rounding
// error does not grow with the inner dimension (P X over thousands of tokens).
// Rows of A are `lhs_row_stride` apart (A may be a block of columns of a wider matrix), and
// with `accumulate` C += A B: an image too large for one binding is reduced token range by
// token range, Y += P[:, range] X[range].
// Split-K: with `splits` > 1 the inner dimension is cut into pieces of `split_length`, and
// workgroup z = image * splits + piece computes piece's partial product into slot z of an f32
// scratch buffer bound as C (`out_batch_stride` apart); `split_sum.wgsl` adds the slots up.
// This gives a skinny product (few output tiles, a long inner dimension) enough workgroups.
// The host prepends `alias lhs_elem = ...; alias rhs_elem = ...; alias out_elem = ...;
// alias acc = ...;`.

struct Params {
    rows: u32,
    columns: u32,
    inner: u32,
    lhs_batch_stride: u32,  // elements between images of A (0 when shared)
    rhs_batch_stride: u32,  // elements between images of B (0 when shared)
    out_batch_stride: u32,
    rhs_inner_stride: u32,  // elements between B[k, j] and B[k + 1, j]
    rhs_column_stride: u32, // elements between B[k, j] and B[k, j + 1]
    lhs_row_stride: u32,    // elements between A[i, k] and A[i + 1, k]
    accumulate: u32,        // 1: C += A B, 0: C = A B
    splits: u32,            // pieces of the inner dimension (1: no split-K)
    split_length: u32,      // inner elements per piece (a multiple of 16)
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> lhs: array<lhs_elem>;
@group(0) @binding(2) var<storage, read> rhs: array<rhs_elem>;
@group(0) @binding(3) var<storage, read_write> out: array<out_elem>;

// Inner steps summed in `acc` before joining the f32 total.
const acc_block = 64u;

override tile_columns: u32 = 32u;
override tile_rows: u32 = 8u;

// The v1 kernel: one output per invocation.
@compute @workgroup_size(tile_columns, tile_rows)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let column = id.x;
    let row = id.y;
    let part = piece(id.z);
    let image = part.x;
    if row >= params.rows || column >= params.columns {
        return;
    }
    let lhs_row = image * params.lhs_batch_stride + row * params.lhs_row_stride;
    let rhs_base = image * params.rhs_batch_stride + column * params.rhs_column_stride;
    var total = 0.0;
    var k = part.y;
    while k < part.z {
        let end = min(k + acc_block, part.z);
        var sum = acc(0.0);
        for (; k < end; k++) {
            sum += acc(lhs[lhs_row + k]) * acc(rhs[rhs_base + k * params.rhs_inner_stride]);
        }
        total += f32(sum);
    }
    let at = id.z * params.out_batch_stride + row * params.columns + column;
    out[at] = with_previous(at, total);
}

// `value`, plus what C holds at `at` when accumulating.
fn with_previous(at: u32, value: f32) -> out_elem {
    if params.accumulate != 0u {
        return out_elem(value + f32(out[at]));
    }
    return out_elem(value);
}

// Adds a run's sums (the rows of a block) to the f32 totals.
fn add_run(totals: ptr<function, array<vec4<f32>, 4>>, sums: array<vec4<acc>, 4>) {
    for (var i = 0u; i < 4u; i++) {
        (*totals)[i] += vec4<f32>(sums[i]);
    }
}

// The image and the inner range [x, y) of workgroup z's piece.
fn piece(z: u32) -> vec3<u32> {
    let first = (z % params.splits) * params.split_length;
    return vec3<u32>(z / params.splits, first, min(params.inner, first + params.split_length));
}

// The register-tiled kernel: a workgroup of 8 x 8 invocations computes a 32 x 32 tile of C,
// each invocation a 4 x 4 block of it held in registers, so each A value it loads serves 4
// outputs and each B value 4 more. An invocation's 4 rows are adjacent (neighbours along x
// share them, so A loads are broadcasts) and its 4 columns are 8 apart (neighbours along x
// read adjacent B elements when B is row-major). Edge blocks clamp their reads inside the
// matrices and skip the writes outside, so the inner loop has no branches.
const block = 4u;
const lanes = 8u;

// The offsets of the first element of rows first_row .. first_row + 3 of an image's A, with
// rows `row_length` apart and images `batch_stride` apart; rows past the end repeat the
// last one (their results are not written).
fn block_rows(image: u32, batch_stride: u32, first_row: u32, row_length: u32) -> vec4<u32> {
    let base = image * batch_stride;
    let last = params.rows - 1u;
    return vec4<u32>(
        base + min(first_row, last) * row_length,
        base + min(first_row + 1u, last) * row_length,
        base + min(first_row + 2u, last) * row_length,
        base + min(first_row + 3u, last) * row_length,
    );
}

@compute @workgroup_size(8, 8)
fn main_tiled(
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(workgroup_id) group: vec3<u32>,
) {
    let first_row = (group.y * lanes + local.y) * block;
    let first_column = group.x * lanes * block + local.x;
    let part = piece(group.z);
    let image = part.x;
    if first_row >= params.rows || first_column >= params.columns {
        return;
    }
    let last_column = params.columns - 1u;
    let lhs_rows = block_rows(image, params.lhs_batch_stride, first_row, params.lhs_row_stride);
    let rhs_base = image * params.rhs_batch_stride;
    let rhs_columns = vec4<u32>(
        rhs_base + min(first_column, last_column) * params.rhs_column_stride,
        rhs_base + min(first_column + lanes, last_column) * params.rhs_column_stride,
        rhs_base + min(first_column + 2u * lanes, last_column) * params.rhs_column_stride,
        rhs_base + min(first_column + 3u * lanes, last_column) * params.rhs_column_stride,
    );
    var totals: array<vec4<f32>, 4>;
    var rhs_offset = part.y * params.rhs_inner_stride;
    var k = part.y;
    while k < part.z {
        let end = min(k + acc_block, part.z);
        var sums: array<vec4<acc>, 4>;
        for (; k < end; k++) {
            let b = vec4<acc>(
                acc(rhs[rhs_columns.x + rhs_offset]),
                acc(rhs[rhs_columns.y + rhs_offset]),
                acc(rhs[rhs_columns.z + rhs_offset]),
                acc(rhs[rhs_columns.w + rhs_offset]),
            );
            sums[0] += acc(lhs[lhs_rows.x + k]) * b;
            sums[1] += acc(lhs[lhs_rows.y + k]) * b;
            sums[2] += acc(lhs[lhs_rows.z + k]) * b;
            sums[3] += acc(lhs[lhs_rows.w + k]) * b;
            rhs_offset += params.rhs_inner_stride;
        }
        add_run(&totals, sums);
    }
    for (var r = 0u; r < block; r++) {
        store_row(group.z, first_row + r, first_column, totals[r]);
    }
}

// Writes the four columns (8 apart) of one row of a block, those that lie inside C, into
// output slot `slot` (the image, or with split-K the image's piece).
fn store_row(slot: u32, row: u32, first_column: u32, values: vec4<f32>) {
    if row >= params.rows {
        return;
    }
    let base = slot * params.out_batch_stride + row * params.columns + first_column;
    let room = params.columns - first_column; // > 0: the caller checked first_column
    out[base] = with_previous(base, values.x);
    if lanes < room {
        out[base + lanes] = with_previous(base + lanes, values.y);
    }
    if 2u * lanes < room {
        out[base + 2u * lanes] = with_previous(base + 2u * lanes, values.z);
    }
    if 3u * lanes < room {
        out[base + 3u * lanes] = with_previous(base + 3u * lanes, values.w);
    }
}

// The vec4 kernels: the same 32 x 32 tile and 4 x 4 block per invocation, but every load
// fetches four neighbouring elements, so a step of four along the inner dimension takes 8
// loads for 64 multiply-adds (the scalar kernel takes 32). For shapes whose inner size (and,
// when B is row-major, column count, and A's row stride) is a multiple of 4; the host checks. An invocation's 4
// columns are adjacent here.
@group(0) @binding(1) var<storage, read> lhs4: array<vec4<lhs_elem>>;
@group(0) @binding(2) var<storage, read> rhs4: array<vec4<rhs_elem>>;

// Four k (vec4 element k) of each of the block's four rows of A, starting at `rows`.
fn lhs_block(rows: vec4<u32>, k: u32) -> array<vec4<acc>, 4> {
    return array<vec4<acc>, 4>(
        vec4<acc>(lhs4[rows.x + k]),
        vec4<acc>(lhs4[rows.y + k]),
        vec4<acc>(lhs4[rows.z + k]),
        vec4<acc>(lhs4[rows.w + k]),
    );
}

// B row-major: rows k of B are read four columns at a time.
@compute @workgroup_size(8, 8)
fn main_vec4(
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(workgroup_id) group: vec3<u32>,
) {
    let first_row = (group.y * lanes + local.y) * block;
    let first_column = (group.x * lanes + local.x) * block;
    let part = piece(group.z);
    let image = part.x;
    if first_row >= params.rows || first_column >= params.columns {
        return;
    }
    let columns4 = params.columns / 4u;
    let lhs_rows = block_rows(image, params.lhs_batch_stride / 4u, first_row, params.lhs_row_stride / 4u);
    var rhs_index = image * params.rhs_batch_stride / 4u + first_column / 4u
        + part.y * columns4;
    var totals: array<vec4<f32>, 4>;
    var k = part.y / 4u;
    while k < part.z / 4u {
        let end = min(k + acc_block / 4u, part.z / 4u);
        var sums: array<vec4<acc>, 4>;
        for (; k < end; k++) {
            let a = lhs_block(lhs_rows, k);
            let b0 = vec4<acc>(rhs4[rhs_index]);
            let b1 = vec4<acc>(rhs4[rhs_index + columns4]);
            let b2 = vec4<acc>(rhs4[rhs_index + 2u * columns4]);
            let b3 = vec4<acc>(rhs4[rhs_index + 3u * columns4]);
            sums[0] += a[0].x * b0 + a[0].y * b1 + a[0].z * b2 + a[0].w * b3;
            sums[1] += a[1].x * b0 + a[1].y * b1 + a[1].z * b2 + a[1].w * b3;
            sums[2] += a[2].x * b0 + a[2].y * b1 + a[2].z * b2 + a[2].w * b3;
            sums[3] += a[3].x * b0 + a[3].y * b1 + a[3].z * b2 + a[3].w * b3;
            rhs_index += 4u * columns4;
        }
        add_run(&totals, sums);
    }
    store_block(group.z, first_row, first_column, totals);
}

// B given as B^T row-major (columns x inner): columns of B are read four k at a time.
@compute @workgroup_size(8, 8)
fn main_vec4_transposed(
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(workgroup_id) group: vec3<u32>,
) {
    let first_row = (group.y * lanes + local.y) * block;
    let first_column = (group.x * lanes + local.x) * block;
    let part = piece(group.z);
    let image = part.x;
    if first_row >= params.rows || first_column >= params.columns {
        return;
    }
    let inner4 = params.inner / 4u;
    let last_column = params.columns - 1u;
    let lhs_rows = block_rows(image, params.lhs_batch_stride / 4u, first_row, params.lhs_row_stride / 4u);
    let rhs_base = image * params.rhs_batch_stride / 4u;
    let rhs_columns = vec4<u32>(
        rhs_base + min(first_column, last_column) * inner4,
        rhs_base + min(first_column + 1u, last_column) * inner4,
        rhs_base + min(first_column + 2u, last_column) * inner4,
        rhs_base + min(first_column + 3u, last_column) * inner4,
    );
    var totals: array<vec4<f32>, 4>;
    var k = part.y / 4u;
    while k < part.z / 4u {
        let end = min(k + acc_block / 4u, part.z / 4u);
        var sums: array<vec4<acc>, 4>;
        for (; k < end; k++) {
            let a = lhs_block(lhs_rows, k);
            let b0 = vec4<acc>(rhs4[rhs_columns.x + k]);
            let b1 = vec4<acc>(rhs4[rhs_columns.y + k]);
            let b2 = vec4<acc>(rhs4[rhs_columns.z + k]);
            let b3 = vec4<acc>(rhs4[rhs_columns.w + k]);
            sums[0] += vec4<acc>(dot(a[0], b0), dot(a[0], b1), dot(a[0], b2), dot(a[0], b3));
            sums[1] += vec4<acc>(dot(a[1], b0), dot(a[1], b1), dot(a[1], b2), dot(a[1], b3));
            sums[2] += vec4<acc>(dot(a[2], b0), dot(a[2], b1), dot(a[2], b2), dot(a[2], b3));
            sums[3] += vec4<acc>(dot(a[3], b0), dot(a[3], b1), dot(a[3], b2), dot(a[3], b3));
        }
        add_run(&totals, sums);
    }
    store_block(group.z, first_row, first_column, totals);
}

// Writes a 4 x 4 block of adjacent rows and columns, the part that lies inside C, into
// output slot `slot`.
fn store_block(slot: u32, first_row: u32, first_column: u32, sums: array<vec4<f32>, 4>) {
    let rows = min(block, params.rows - first_row);
    let columns = min(block, params.columns - first_column);
    for (var r = 0u; r < rows; r++) {
        let base = slot * params.out_batch_stride + (first_row + r) * params.columns + first_column;
        for (var c = 0u; c < columns; c++) {
            out[base + c] = with_previous(base + c, sums[r][c]);
        }
    }
}

// The shared-memory kernel (the tiling of the best public WGSL GEMMs, for GPUs with fast
// workgroup memory): a workgroup of 16 x 16 invocations computes a 64 x 64 tile of C, each
// invocation 4 rows x 4 columns (columns 16 apart, so neighbours store neighbours). Each step
// of 16 along the inner dimension, the workgroup stages a 64 x 16 block of A and a 16 x 64
// block of B in workgroup memory (zeros past the edges), reading along whichever dimension
// is contiguous in memory; then every invocation does 64 multiply-adds from it. Any stride
// and shape; no invocation returns early, so the barriers stay in uniform control flow.
const shared_tile = 64u;
const shared_step = 16u;
var<workgroup> shared_a: array<acc, 1024>; // [row * 16 + k]
var<workgroup> shared_b: array<acc, 1024>; // [k * 64 + column]

@compute @workgroup_size(16, 16)
fn main_shared(
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(workgroup_id) group: vec3<u32>,
) {
    let part = piece(group.z);
    let image = part.x;
    let first_row = group.y * shared_tile;
    let first_column = group.x * shared_tile;
    let lane = local.y * 16u + local.x;
    let lhs_base = image * params.lhs_batch_stride;
    let rhs_base = image * params.rhs_batch_stride;
    // B^T row-major: neighbouring lanes read neighbouring k; B row-major: neighbouring columns.
    let rhs_along_k = params.rhs_inner_stride == 1u;
    var sums: array<vec4<acc>, 4>;
    var totals: array<vec4<f32>, 4>;
    for (var step = part.y; step < part.z; step += shared_step) {
        for (var t = 0u; t < 4u; t++) {
            let slot = lane + t * 256u;
            let row = first_row + slot / shared_step;
            let k = step + slot % shared_step;
            var a = acc(0.0);
            if row < params.rows && k < part.z {
                a = acc(lhs[lhs_base + row * params.lhs_row_stride + k]);
            }
            shared_a[slot] = a;
            var k_b = step + slot / shared_tile;
            var column = first_column + slot % shared_tile;
            if rhs_along_k {
                k_b = step + slot % shared_step;
                column = first_column + slot / shared_step;
            }
            var b = acc(0.0);
            if column < params.columns && k_b < part.z {
                b = acc(rhs[rhs_base + k_b * params.rhs_inner_stride
                    + column * params.rhs_column_stride]);
            }
            shared_b[(k_b - step) * shared_tile + (column - first_column)] = b;
        }
        workgroupBarrier();
        for (var k = 0u; k < shared_step; k++) {
            let b = vec4<acc>(
                shared_b[k * shared_tile + local.x],
                shared_b[k * shared_tile + local.x + 16u],
                shared_b[k * shared_tile + local.x + 32u],
                shared_b[k * shared_tile + local.x + 48u],
            );
            for (var i = 0u; i < 4u; i++) {
                sums[i] += shared_a[(local.y * 4u + i) * shared_step + k] * b;
            }
        }
        // Every `acc_block` inner steps (and at the end), the sums join the f32 totals.
        let last = step + shared_step >= part.z;
        if last || (step - part.y) % acc_block == acc_block - shared_step {
            add_run(&totals, sums);
            sums = array<vec4<acc>, 4>();
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = first_row + local.y * 4u + i;
        if row >= params.rows {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let column = first_column + local.x + 16u * j;
            if column < params.columns {
                let at = group.z * params.out_batch_stride + row * params.columns + column;
                out[at] = with_previous(at, totals[i][j]);
            }
        }
    }
}

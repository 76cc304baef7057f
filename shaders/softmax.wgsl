// P[i, :] = softmax(S[i, :]) over query i's keys, computed stably (subtract the row
// maximum), exactly 0 elsewhere (SPEC 4, step 6). The keys of a query are the tokens j of
// start..end with (j - start) % stride < width: a whole image, or one grid whose rows may be
// `stride` tokens apart. In place, one workgroup per row:
// one read of the row for the largest score and the sum (an online softmax), one to write P.

struct Params {
    rows: u32,    // batch * queries
    tokens: u32,  // n
    queries: u32, // m
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> key_ranges: array<vec4<u32>>; // start, end, stride, width
@group(0) @binding(2) var<storage, read_write> scores: array<f32>;

const workgroup_size = 256u;
var<workgroup> partial_largest: array<f32, workgroup_size>;
var<workgroup> partial_sum: array<f32, workgroup_size>;

// The running (largest, sum of exp(s - largest)) of one set of scores joined with another's
// (online softmax): the sum with the smaller largest is rescaled to the larger one.
fn join(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let largest = max(a.x, b.x);
    return vec2<f32>(largest, a.y * exp(a.x - largest) + b.y * exp(b.x - largest));
}

@compute @workgroup_size(workgroup_size)
fn main(@builtin(local_invocation_index) lane: u32,
        @builtin(workgroup_id) group: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let row = group.x + group.y * groups.x;
    if row >= params.rows {
        return;
    }
    let keys = key_ranges[row % params.queries];
    let base = row * params.tokens;

    // One read of the row: each lane's largest score and sum of exponentials, rescaled
    // whenever a larger score turns up. A lane with no scores holds (-3e38, 0).
    var own = vec2<f32>(-3.0e38, 0.0);
    for (var j = keys.x + lane; j < keys.y; j += workgroup_size) {
        if (j - keys.x) % keys.z < keys.w {
            own = join(own, vec2<f32>(scores[base + j], 1.0));
        }
    }
    partial_largest[lane] = own.x;
    partial_sum[lane] = own.y;
    for (var stride = workgroup_size / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if lane < stride {
            let joined = join(
                vec2<f32>(partial_largest[lane], partial_sum[lane]),
                vec2<f32>(partial_largest[lane + stride], partial_sum[lane + stride]),
            );
            partial_largest[lane] = joined.x;
            partial_sum[lane] = joined.y;
        }
    }
    workgroupBarrier();
    let largest = partial_largest[0];
    let sum = partial_sum[0];

    for (var j = lane; j < params.tokens; j += workgroup_size) {
        var weight = 0.0;
        if j >= keys.x && j < keys.y && (j - keys.x) % keys.z < keys.w {
            weight = exp(scores[base + j] - largest) / sum;
        }
        scores[base + j] = weight;
    }
}

// P[i, :] = softmax(S[i, :]) over query i's key range, computed stably (subtract the row
// maximum), exactly 0 outside the range (SPEC 4, step 6). In place, one workgroup per row.

struct Params {
    rows: u32,    // batch * queries
    tokens: u32,  // n
    queries: u32, // m
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> key_ranges: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> scores: array<f32>;

const workgroup_size = 256u;
var<workgroup> partial: array<f32, workgroup_size>;

// Combines `partial` across the workgroup with `max` (largest) or `+` (not largest).
fn reduce(lane: u32, largest: bool) -> f32 {
    for (var stride = workgroup_size / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if lane < stride {
            let other = partial[lane + stride];
            partial[lane] = select(partial[lane] + other, max(partial[lane], other), largest);
        }
    }
    workgroupBarrier();
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(workgroup_size)
fn main(@builtin(local_invocation_index) lane: u32,
        @builtin(workgroup_id) group: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let row = group.x + group.y * groups.x;
    if row >= params.rows {
        return;
    }
    let range = key_ranges[row % params.queries];
    let base = row * params.tokens;

    var largest = -3.0e38;
    for (var j = range.x + lane; j < range.y; j += workgroup_size) {
        largest = max(largest, scores[base + j]);
    }
    partial[lane] = largest;
    largest = reduce(lane, true);

    var sum = 0.0;
    for (var j = range.x + lane; j < range.y; j += workgroup_size) {
        sum += exp(scores[base + j] - largest);
    }
    partial[lane] = sum;
    sum = reduce(lane, false);

    for (var j = lane; j < params.tokens; j += workgroup_size) {
        var weight = 0.0;
        if j >= range.x && j < range.y {
            weight = exp(scores[base + j] - largest) / sum;
        }
        scores[base + j] = weight;
    }
}

// S[i, j] = sum_c Q[i, c] omega[c] K[j, c] / sqrt(d_c) for the keys j in query i's scope
// (SPEC 4, step 5); entries outside the scope are left for the softmax to zero.
// The host prepends `alias elem = ...;`.

struct Params {
    elements: u32, // batch * queries * tokens
    tokens: u32,   // n
    queries: u32,  // m
    channels: u32, // d_c
    scale: f32,    // 1 / sqrt(d_c)
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> query: array<elem>;
@group(0) @binding(2) var<storage, read> key: array<elem>;
@group(0) @binding(3) var<storage, read> omega: array<f32>;
// One [first, end) key range per query.
@group(0) @binding(4) var<storage, read> key_ranges: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;

override workgroup_size: u32 = 256u;

@compute @workgroup_size(workgroup_size)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = id.x + id.y * groups.x * workgroup_size;
    if index >= params.elements {
        return;
    }
    let token = index % params.tokens;
    let row = index / params.tokens; // image * queries + query
    let range = key_ranges[row % params.queries];
    if token < range.x || token >= range.y {
        return;
    }
    let image = row / params.queries;
    let query_base = row * params.channels;
    let key_base = (image * params.tokens + token) * params.channels;
    var sum = 0.0;
    for (var c = 0u; c < params.channels; c++) {
        sum += f32(query[query_base + c]) * omega[c] * f32(key[key_base + c]);
    }
    scores[index] = sum * params.scale;
}

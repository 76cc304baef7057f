// features + E, or E alone, with E = the position table resized onto each token (SPEC 4,
// step 1). The forward pass runs it on the table projected by w_k (d_c channels), so E here
// is resize(T w_k) = E w_k. The host lists, per token, the four cells of the table that the
// bilinear resize onto the token's grid blends and their weights (all zero for loose
// tokens); each invocation blends one channel of those cells (and adds it to the token).
// Neighbouring invocations touch neighbouring channels.
// The host prepends `alias elem = ...;`.

struct Params {
    rows: u32,         // batch * tokens
    tokens: u32,       // n
    width: u32,        // d (or d_c for a table already projected)
    add_features: u32, // 1: features + E, 0: E alone (`features` is not read)
}

struct Sample {
    cells: vec4<u32>,   // row * gw + column of each corner
    weights: vec4<f32>, // bilinear weight of each corner
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> features: array<elem>;
@group(0) @binding(2) var<storage, read> table: array<elem>;
@group(0) @binding(3) var<storage, read> samples: array<Sample>;
@group(0) @binding(4) var<storage, read_write> positioned: array<elem>;

override workgroup_size: u32 = 256u;

@compute @workgroup_size(workgroup_size)
fn main(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let channel = id.x;
    let row = group.y + group.z * groups.y; // image * tokens + token
    if channel >= params.width || row >= params.rows {
        return;
    }
    let sample = samples[row % params.tokens];
    let cells = sample.cells * params.width + vec4<u32>(channel);
    let embedding = dot(sample.weights, vec4<f32>(
        f32(table[cells.x]),
        f32(table[cells.y]),
        f32(table[cells.z]),
        f32(table[cells.w]),
    ));
    let index = row * params.width + channel;
    var value = embedding;
    if params.add_features != 0u {
        value += f32(features[index]);
    }
    positioned[index] = elem(value);
}

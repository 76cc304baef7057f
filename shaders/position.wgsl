// Xp = X + E: the position table resized to each grid (bilinear, half-pixel centres) and
// added to its tokens; loose tokens are copied unchanged (SPEC 4, step 1).
// The host prepends `alias elem = ...;`.

struct Params {
    elements: u32,     // batch * tokens * width
    tokens: u32,       // n
    width: u32,        // d
    grid_count: u32,
    table_height: u32, // gh
    table_width: u32,  // gw
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> features: array<elem>;
@group(0) @binding(2) var<storage, read> table: array<elem>;
// One (offset, height, width, unused) per grid.
@group(0) @binding(3) var<storage, read> grids: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> positioned: array<elem>;

override workgroup_size: u32 = 256u;

struct AxisSample {
    lower: u32,
    upper: u32,
    weight: f32, // on `upper`
}

fn sample_axis(index: u32, input: u32, output: u32) -> AxisSample {
    let source = max(0.0, (f32(index) + 0.5) * f32(input) / f32(output) - 0.5);
    let lower = min(u32(floor(source)), input - 1u);
    return AxisSample(lower, min(lower + 1u, input - 1u), source - f32(lower));
}

fn table_value(row: u32, column: u32, channel: u32) -> f32 {
    return f32(table[(row * params.table_width + column) * params.width + channel]);
}

@compute @workgroup_size(workgroup_size)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = id.x + id.y * groups.x * workgroup_size;
    if index >= params.elements {
        return;
    }
    let channel = index % params.width;
    let token = (index / params.width) % params.tokens;
    var embedding = 0.0;
    for (var g = 0u; g < params.grid_count; g++) {
        let grid = grids[g];
        if token < grid.x || token >= grid.x + grid.y * grid.z {
            continue;
        }
        let local = token - grid.x;
        let rows = sample_axis(local / grid.z, params.table_height, grid.y);
        let columns = sample_axis(local % grid.z, params.table_width, grid.z);
        let top = mix(table_value(rows.lower, columns.lower, channel),
                      table_value(rows.lower, columns.upper, channel), columns.weight);
        let bottom = mix(table_value(rows.upper, columns.lower, channel),
                         table_value(rows.upper, columns.upper, channel), columns.weight);
        embedding = mix(top, bottom, rows.weight);
    }
    positioned[index] = elem(f32(features[index]) + embedding);
}

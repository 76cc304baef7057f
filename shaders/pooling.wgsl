// Q_in = adaptive average pooling of the tokens over each grid to its hq x wq query grid
// (SPEC 4, step 3, on X: the position table's part is added to the queries elsewhere):
// query row i averages rows floor(i*h/hq) .. ceil((i+1)*h/hq) - 1.
// `tokens` holds tokens token_start .. token_end of each image; a window's tokens outside
// them are left out of the sum (not of the count), and with `accumulate` the result is added
// to what `pooled` holds: an image too large for one binding is pooled range by range.
// The host prepends `alias elem = ...;`.

struct Params {
    elements: u32, // batch * queries * width
    tokens: u32,   // n
    queries: u32,  // m
    width: u32,    // d
    grid_count: u32,
    token_start: u32, // first token of each image that `tokens` holds
    token_end: u32,   // one past the last
    accumulate: u32,  // 1: add to `pooled`, 0: overwrite it
}

struct QueryGrid {
    offset: u32,       // first token of the grid
    height: u32,       // h
    width: u32,        // w
    query_offset: u32, // first query of the grid
    query_height: u32, // hq
    query_width: u32,  // wq
    stride: u32,       // tokens from one row of the grid to the next
    unused: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> tokens: array<elem>;
@group(0) @binding(2) var<storage, read> query_grids: array<QueryGrid>;
@group(0) @binding(3) var<storage, read_write> pooled: array<elem>;

override workgroup_size: u32 = 256u;

@compute @workgroup_size(workgroup_size)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = id.x + id.y * groups.x * workgroup_size;
    if index >= params.elements {
        return;
    }
    let channel = index % params.width;
    let query = (index / params.width) % params.queries;
    let image = index / (params.width * params.queries);
    var sum = 0.0;
    var count = 0u;
    for (var g = 0u; g < params.grid_count; g++) {
        let grid = query_grids[g];
        if query < grid.query_offset || query >= grid.query_offset + grid.query_height * grid.query_width {
            continue;
        }
        let local = query - grid.query_offset;
        let i = local / grid.query_width;
        let j = local % grid.query_width;
        let row_end = ((i + 1u) * grid.height + grid.query_height - 1u) / grid.query_height;
        let column_end = ((j + 1u) * grid.width + grid.query_width - 1u) / grid.query_width;
        let held = params.token_end - params.token_start;
        let image_base = image * held;
        for (var row = i * grid.height / grid.query_height; row < row_end; row++) {
            for (var column = j * grid.width / grid.query_width; column < column_end; column++) {
                let token = grid.offset + row * grid.stride + column;
                count++;
                if token >= params.token_start && token < params.token_end {
                    let at = image_base + token - params.token_start;
                    sum += f32(tokens[at * params.width + channel]);
                }
            }
        }
    }
    var mean = sum / f32(max(count, 1u));
    if params.accumulate != 0u {
        mean += f32(pooled[index]);
    }
    pooled[index] = elem(mean);
}

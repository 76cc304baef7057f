// The second half of a split-K matrix product (see matmul.wgsl): C = sum over the pieces of
// the partial products, or C += that sum when the product accumulates. The partials are f32,
// `splits` slots of `size` elements per image, the slots of one image adjacent; C is f32.

struct Params {
    size: u32,       // elements of C per image (rows * columns)
    images: u32,
    splits: u32,
    accumulate: u32, // 1: C += sum, 0: C = sum
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

override workgroup_size: u32 = 256u;

@compute @workgroup_size(workgroup_size)
fn main(@builtin(global_invocation_id) id: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let index = id.x + id.y * groups.x * workgroup_size;
    if index >= params.size * params.images {
        return;
    }
    let image = index / params.size;
    let element = index % params.size;
    var at = image * params.splits * params.size + element;
    var sum = 0.0;
    for (var piece = 0u; piece < params.splits; piece++) {
        sum += partials[at];
        at += params.size;
    }
    if params.accumulate != 0u {
        sum += out[index];
    }
    out[index] = sum;
}

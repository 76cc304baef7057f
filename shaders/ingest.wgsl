// Copies tokens the application holds on the GPU into the compressor's own buffer, at the
// compressor's element type: from f32, f16 or bf16, starting at any element of the source.
// The source is read as 32-bit words, so any binding of it is valid whatever its dtype.
// The host prepends `alias elem = ...;`.

struct Params {
    count: u32, // elements to copy
    first: u32, // the first element, counted from the start of the source binding
    dtype: u32, // 0: f32, 1: f16, 2: bf16
    padding: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> source: array<u32>;
@group(0) @binding(2) var<storage, read_write> destination: array<elem>;

override workgroup_size: u32 = 256u;

// Element `index` of the source, widened to f32.
fn source_value(index: u32) -> f32 {
    if params.dtype == 0u {
        return bitcast<f32>(source[index]);
    }
    // Two 16-bit elements per word, the lower-addressed one in the low half.
    let high = (index & 1u) == 1u;
    let word = source[index / 2u];
    if params.dtype == 1u {
        let pair = unpack2x16float(word);
        return select(pair.x, pair.y, high);
    }
    let bits = select(word & 0xFFFFu, word >> 16u, high);
    return bitcast<f32>(bits << 16u);
}

@compute @workgroup_size(workgroup_size)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = id.x + id.y * groups.x * workgroup_size;
    if index >= params.count {
        return;
    }
    destination[index] = elem(source_value(params.first + index));
}

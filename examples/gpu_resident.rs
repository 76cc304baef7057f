//! An application that owns its wgpu device, produces image features on the GPU (a stand-in
//! compute pass for the vision tower) and compresses them without the features leaving the
//! GPU; a second pass of its own (a stand-in for the language model's first layer) reads the
//! reduced tokens, and only its small result comes back to the host.
//!
//! `cargo run --release --example gpu_resident`

use metacompress::{Compressor, Dtype, GpuContext, GpuTokens, Layout, Options, PMeta, Precision};

/// The stand-in vision tower: token t, channel c of image b gets a smooth pattern.
const VISION_TOWER: &str = r#"
@group(0) @binding(0) var<storage, read_write> features: array<f32>;
const TOKENS: u32 = 576u;
const WIDTH: u32 = 1024u;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let index = id.x + id.y * 65535u * 256u;
    if index >= arrayLength(&features) { return; }
    let channel = index % WIDTH;
    let token = (index / WIDTH) % TOKENS;
    let row = f32(token / 24u);
    let column = f32(token % 24u);
    features[index] = sin(0.3 * row + 0.01 * f32(channel)) * cos(0.2 * column - 0.02 * f32(channel));
}
"#;

/// The stand-in consumer: the mean of each reduced token, as a language model's first layer
/// would read them.
const CONSUMER: &str = r#"
@group(0) @binding(0) var<storage, read> tokens: array<f32>;
@group(0) @binding(1) var<storage, read_write> means: array<f32>;
const WIDTH: u32 = 1024u;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if id.x >= arrayLength(&means) { return; }
    var sum = 0.0;
    for (var c = 0u; c < WIDTH; c++) { sum += tokens[id.x * WIDTH + c]; }
    means[id.x] = sum / f32(WIDTH);
}
"#;

fn run_pass(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    code: &str,
    buffers: &[&wgpu::Buffer],
    groups: u32,
) {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(code.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .enumerate()
        .map(|(i, buffer)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: buffer.as_entire_binding(),
        })
        .collect();
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups, 1, 1);
    }
    queue.submit([encoder.finish()]);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The application's own device, opened the usual wgpu way.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    println!("device: {}", adapter.get_info().name);

    // Two LLaVA-1.5-shaped images (24 x 24 tokens, CLIP ViT-L width 1024), made on the GPU.
    let (batch, tokens, width) = (2, 576, 1024);
    let features = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("vision tower output"),
        size: (batch * tokens * width * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let elements = (batch * tokens * width) as u32;
    run_pass(
        &device,
        &queue,
        VISION_TOWER,
        &[&features],
        elements.div_ceil(256),
    );

    // The compressor on the application's device: weights uploaded once, pipelines built once.
    let weights = PMeta::init(width, 64, Some((24, 24)), 1.0, 7)?;
    let context = GpuContext::from_device(&adapter, device.clone(), queue.clone());
    let compressor = Compressor::on_context(weights, context, Precision::F32)?;
    println!(
        "compressor holds {} bytes of weights on the device (plus, later, the buffers it pools)",
        compressor.held_bytes()
    );
    let layout = Layout::square(tokens)?;
    let options = Options::default(); // keep 0.1: 576 -> 64 tokens per image
    let input = GpuTokens::new(&features, Dtype::F32, batch, tokens, width);
    let groups = [(input.into(), &layout)];
    println!(
        "a call needs {} bytes",
        compressor.call_bytes(&groups, &options)?
    );
    let reduced = compressor.compress_on_gpu(input, &layout, &options)?;
    let m = reduced.queries.count;
    println!("{batch} x {tokens} tokens -> {batch} x {m}, still on the GPU");

    // The application's next pass reads the reduced tokens in place (same queue: in order).
    let rows = batch * m;
    let means = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("means"),
        size: (rows * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    run_pass(
        &device,
        &queue,
        CONSUMER,
        &[&reduced.tokens, &means],
        (rows as u32).div_ceil(64),
    );

    // Only the small result comes back.
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("read-back"),
        size: (rows * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(&means, 0, &staging, 0, None);
    queue.submit([encoder.finish()]);
    staging.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    device.poll(wgpu::PollType::wait_indefinitely())?;
    let values: Vec<f32> = bytemuck::cast_slice(&staging.slice(..).get_mapped_range()?).to_vec();
    let finite = values.iter().all(|v| v.is_finite());
    println!(
        "mean of each reduced token, image 0: {:.4} {:.4} {:.4} ... (all finite: {finite})",
        values[0], values[1], values[2]
    );
    if !finite {
        return Err("the reduced tokens hold non-finite values".into());
    }
    Ok(())
}

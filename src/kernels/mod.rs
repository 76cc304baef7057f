//! One module per kernel family; each owns its pipeline and its dispatch arithmetic.
//! The helpers here are the plumbing they share.

pub mod matmul;
pub mod pooling;
pub mod position;
pub mod scores;
pub mod softmax;

use wgpu::util::DeviceExt;

use crate::shaders::ShaderSource;

/// The sizes of one forward pass, as the kernels see them (all fit in `u32`: the caller checks).
#[derive(Clone, Copy, Debug)]
pub struct ForwardShape {
    /// Images in the batch `b`.
    pub batch: u32,
    /// Tokens per image `n`.
    pub tokens: u32,
    /// Queries per image `m`.
    pub queries: u32,
    /// Token width `d`.
    pub width: u32,
    /// Projection width `d_c`.
    pub channels: u32,
    /// Grids in the layout.
    pub grid_count: u32,
    /// Rows `gh` of the position table (1 without one).
    pub table_height: u32,
    /// Columns `gw` of the position table (1 without one).
    pub table_width: u32,
}

/// Most workgroups one dispatch dimension may hold (WebGPU's default limit).
pub const MAX_GROUPS_PER_DIMENSION: u32 = 65_535;

/// Workgroup size of the element-wise kernels (their `workgroup_size` override's default).
pub const LINEAR_WORKGROUP: u32 = 256;

/// A compute pipeline for `source`'s `main`, with its bind group layout derived from the shader.
pub(crate) fn pipeline(device: &wgpu::Device, source: &ShaderSource) -> wgpu::ComputePipeline {
    pipeline_at(device, source, "main")
}

/// A compute pipeline for the entry point `entry` of `source`.
pub(crate) fn pipeline_at(
    device: &wgpu::Device,
    source: &ShaderSource,
    entry: &str,
) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(&source.label),
        source: wgpu::ShaderSource::Wgsl(source.code.as_str().into()),
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&source.label),
        layout: None,
        module: &module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions::default(),
        cache: None,
    })
}

/// A uniform buffer holding `params`.
pub(crate) fn uniform<T: bytemuck::Pod>(device: &wgpu::Device, params: &T) -> wgpu::Buffer {
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("params"),
        contents: bytemuck::bytes_of(params),
        usage: wgpu::BufferUsages::UNIFORM,
    })
}

/// Records one compute pass running `pipeline` with `buffers` bound at 0, 1, 2, ... of group 0.
pub(crate) fn dispatch(
    device: &wgpu::Device,
    encoder: &mut wgpu::CommandEncoder,
    pipeline: &wgpu::ComputePipeline,
    buffers: &[&wgpu::Buffer],
    groups: [u32; 3],
) {
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .enumerate()
        .map(|(binding, buffer)| wgpu::BindGroupEntry {
            binding: binding as u32,
            resource: buffer.as_entire_binding(),
        })
        .collect();
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: None,
        timestamp_writes: None,
    });
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, &bind_group, &[]);
    pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
}

/// Workgroups covering `count` items of `per_group` each, folded into x and y so that neither
/// passes the per-dimension limit (the kernels rebuild the linear index from both).
pub(crate) fn linear_groups(count: u32, per_group: u32) -> [u32; 3] {
    let total = count.div_ceil(per_group).max(1);
    let x = total.min(MAX_GROUPS_PER_DIMENSION);
    [x, total.div_ceil(x), 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_groups_cover_every_item() {
        for count in [1u32, 255, 256, 257, 70_000 * 256 + 3] {
            let [x, y, z] = linear_groups(count, 256);
            assert!(x <= MAX_GROUPS_PER_DIMENSION && y <= MAX_GROUPS_PER_DIMENSION && z == 1);
            assert!(x as u64 * y as u64 * 256 >= count as u64);
        }
    }
}

//! `metacompress devices`: the GPU adapters found and what each offers.

use metacompress::gpu::{list_adapters, GpuApi};
use metacompress::Result;

pub(crate) fn devices() -> Result<()> {
    let adapters = list_adapters(GpuApi::Any);
    if adapters.is_empty() {
        say!("no adapters found (on Linux, install a Vulkan driver such as mesa-vulkan-drivers); --backend cpu always works");
        return Ok(());
    }
    let yes = |flag: bool| if flag { "yes" } else { "no" };
    for adapter in adapters {
        say!(
            "{}\n  backend {}, type {}, driver {}\n  f16 {}, subgroups {}, timestamp queries {}\n  \
             largest storage binding {} MiB, binding offsets aligned to {} bytes",
            adapter.name,
            adapter.backend,
            adapter.device_type,
            adapter.driver_or_unknown(),
            yes(adapter.f16),
            yes(adapter.subgroups),
            yes(adapter.timestamps),
            adapter.binding_limit >> 20,
            adapter.offset_alignment
        );
    }
    Ok(())
}

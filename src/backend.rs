//! The backend choice: which engine a `Backend` opens (the float64 reference, the CPU path or a
//! GPU device), and why `Backend::Auto` chose what it chose. The compressor and the methods'
//! runner both open their engine here.

use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::options::{Backend, Precision};
use crate::products::Kernels;

/// What runs the pass on `--backend reference`, for people.
pub(crate) const REFERENCE_DEVICE: &str = "cpu (float64 reference)";

/// Where a backend choice lands: one of the CPU engines, or a device.
pub(crate) enum Opened {
    /// The float64 reference.
    Reference,
    /// The fast CPU path.
    Cpu,
    /// A GPU adapter's device.
    Gpu(Box<GpuContext>),
}

/// Opens `backend` (an adapter whose name contains `adapter`, if given) for `precision`;
/// with `Backend::Auto`, also why it chose what it chose. The CPU path takes f32 and bf16,
/// the reference f32. Whenever the CPU path is opened, its kernel level
/// (`METACOMPRESS_CPU_KERNELS`) is checked too.
pub(crate) fn open_backend(
    backend: Backend,
    adapter: Option<&str>,
    precision: Precision,
) -> Result<(Opened, Option<String>)> {
    let opened = choose_backend(backend, adapter, precision)?;
    if let (Opened::Cpu, _) = opened {
        Kernels::chosen()?;
    }
    Ok(opened)
}

fn choose_backend(
    backend: Backend,
    adapter: Option<&str>,
    precision: Precision,
) -> Result<(Opened, Option<String>)> {
    // The host engines: name, the precisions they take, whether `precision` is one.
    let host_engine = match backend {
        Backend::Cpu => Some((
            Opened::Cpu,
            "cpu",
            "f32 or bf16",
            matches!(precision, Precision::F32 | Precision::Bf16),
        )),
        Backend::Reference => Some((
            Opened::Reference,
            "reference",
            "f32 (it computes in float64)",
            precision == Precision::F32,
        )),
        _ => None,
    };
    if let Some((opened, name, takes, taken)) = host_engine {
        if !taken {
            return Err(Error::InvalidArgument(format!(
                "--precision {} is not for the {name} backend; expected {takes}",
                precision.name(),
            )));
        }
        return Ok((opened, None));
    }
    if backend == Backend::Auto && precision == Precision::Bf16 {
        let choice = "auto chose the cpu path: --precision bf16 runs on the CPU only".to_string();
        return Ok((Opened::Cpu, Some(choice)));
    }
    let api = backend.api().expect("GPU backends have an API");
    let context = GpuContext::open(api, adapter)?;
    if backend != Backend::Auto {
        return Ok((Opened::Gpu(Box::new(context)), None));
    }
    if adapter.is_none() && precision == Precision::F32 && context.is_software() {
        let choice = format!(
            "auto chose the cpu path: the only GPU adapter is software ({})",
            context.adapter.name
        );
        return Ok((Opened::Cpu, Some(choice)));
    }
    Ok((
        Opened::Gpu(Box::new(context)),
        Some("auto chose the best GPU adapter".to_string()),
    ))
}

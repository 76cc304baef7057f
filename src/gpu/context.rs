//! The GPU context: which adapter, which device, what it offers.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::options::GpuApi;

/// What an adapter is and offers, as `metacompress devices` prints it.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    /// The adapter's name.
    pub name: String,
    /// The vendor, by PCI id where it is a known one, e.g. `NVIDIA (0x10de)`.
    pub vendor: String,
    /// The API it is reached through.
    pub backend: String,
    /// Discrete, integrated, virtual, CPU or other.
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
    /// Whether it offers `SHADER_F16`.
    pub f16: bool,
    /// Whether it offers subgroup operations.
    pub subgroups: bool,
    /// Whether it offers timestamp queries.
    pub timestamps: bool,
    /// Most bytes one storage binding may span (larger inputs are cut to fit it).
    pub binding_limit: u64,
    /// Alignment of a storage binding's offset, in bytes.
    pub offset_alignment: u32,
}

impl AdapterReport {
    /// The driver, or `unknown` when the adapter does not say.
    pub fn driver_or_unknown(&self) -> &str {
        if self.driver.is_empty() {
            "unknown"
        } else {
            &self.driver
        }
    }

    fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let features = adapter.features();
        let limits = adapter.limits();
        let driver = format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string();
        AdapterReport {
            name: info.name,
            vendor: vendor_name(info.vendor),
            backend: format!("{:?}", info.backend).to_lowercase(),
            device_type: device_type_name(info.device_type).to_string(),
            driver,
            f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            binding_limit: limits
                .max_storage_buffer_binding_size
                .min(limits.max_buffer_size),
            offset_alignment: limits.min_storage_buffer_offset_alignment,
        }
    }
}

/// The vendor behind a PCI (or Khronos) vendor id.
fn vendor_name(id: u32) -> String {
    let name = match id {
        0x10de => "NVIDIA",
        0x1002 => "AMD",
        0x8086 => "Intel",
        0x106b => "Apple",
        0x5143 => "Qualcomm",
        0x13b5 => "Arm",
        0x1010 => "Imagination",
        0x10005 => "Mesa",
        0x1414 => "Microsoft",
        _ => "unknown",
    };
    format!("{name} (0x{id:x})")
}

fn device_type_name(device_type: wgpu::DeviceType) -> &'static str {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => "discrete",
        wgpu::DeviceType::IntegratedGpu => "integrated",
        wgpu::DeviceType::VirtualGpu => "virtual",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    }
}

/// Preference among device types when no adapter is named: real GPUs first.
fn device_type_rank(device_type: wgpu::DeviceType) -> u8 {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn instance(api: GpuApi) -> wgpu::Instance {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = api.backends();
    wgpu::Instance::new(descriptor)
}

/// Every adapter wgpu sees through `api`.
pub fn list_adapters(api: GpuApi) -> Vec<AdapterReport> {
    let adapters = pollster::block_on(instance(api).enumerate_adapters(api.backends()));
    adapters.iter().map(AdapterReport::of).collect()
}

/// An open device on one adapter, with what it offers. Cloning shares the device.
#[derive(Clone)]
pub struct GpuContext {
    /// The device the kernels run on.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// What the adapter is.
    pub adapter: AdapterReport,
    /// The limits granted to the device.
    pub limits: wgpu::Limits,
    /// Why the device was lost, once it is.
    lost: Arc<Mutex<Option<String>>>,
}

impl GpuContext {
    /// Opens the best adapter reachable through `api` whose name contains `name` (any case),
    /// asking for the adapter's own limits, and for `SHADER_F16` and `TIMESTAMP_QUERY` where
    /// they are offered.
    /// `GpuApi::Any` looks at GL only when Vulkan, Metal and DX12 offer no match.
    pub fn open(api: GpuApi, name: Option<&str>) -> Result<Self> {
        let searches: &[GpuApi] = match api {
            GpuApi::Any => &[GpuApi::Native, GpuApi::Gl],
            _ => std::slice::from_ref(&api),
        };
        let mut seen = Vec::new();
        let mut found = None;
        for search in searches {
            let instance = instance(*search);
            let adapters = pollster::block_on(instance.enumerate_adapters(search.backends()));
            seen.extend(adapters.iter().map(|a| {
                let info = a.get_info();
                format!("{} ({:?})", info.name, info.backend)
            }));
            let wanted = name.map(str::to_lowercase);
            found = adapters
                .into_iter()
                .filter(|a| {
                    wanted
                        .as_deref()
                        .is_none_or(|w| a.get_info().name.to_lowercase().contains(w))
                })
                .min_by_key(|a| device_type_rank(a.get_info().device_type));
            if found.is_some() {
                break;
            }
        }
        let adapter = found.ok_or_else(|| {
            let what = match name {
                Some(name) => format!("no adapter named like {name:?}"),
                None => "no GPU adapter".to_string(),
            };
            let seen = if seen.is_empty() {
                "none; on Linux install a Vulkan driver (e.g. mesa-vulkan-drivers) or use --backend cpu".to_string()
            } else {
                seen.join(", ")
            };
            Error::NoAdapter(format!(
                "{what} for backend {}; adapters seen: {seen}",
                api.name()
            ))
        })?;
        let report = AdapterReport::of(&adapter);
        let limits = adapter.limits();
        let required_features =
            adapter.features() & (wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("metacompress"),
            required_features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Gpu(format!("could not open a device on {}: {e}", report.name)))?;
        let context = GpuContext {
            device,
            queue,
            adapter: report,
            limits,
            lost: Arc::default(),
        };
        // The device is ours: its losses are recorded, and errors outside the error scopes
        // every call runs in are printed rather than left to wgpu's default (a panic).
        let lost = Arc::clone(&context.lost);
        context
            .device
            .set_device_lost_callback(move |reason, message| {
                *lost.lock().expect("lost") = Some(format!("{reason:?}: {message}"));
            });
        context
            .device
            .on_uncaptured_error(Arc::new(|error: wgpu::Error| {
                eprintln!("metacompress: uncaptured GPU error: {error}");
            }));
        Ok(context)
    }

    /// Wraps a device the application already owns, opened on `adapter`. Its callbacks are
    /// left alone: the compressor learns of a loss through the errors its calls get; an
    /// application that sees the loss in its own callback can tell the context with
    /// `mark_lost`. Requests `SHADER_F16` from nothing: f16 precision needs a device opened
    /// with it.
    pub fn from_device(adapter: &wgpu::Adapter, device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let mut report = AdapterReport::of(adapter);
        let features = device.features();
        report.f16 = features.contains(wgpu::Features::SHADER_F16);
        report.timestamps = features.contains(wgpu::Features::TIMESTAMP_QUERY);
        GpuContext {
            limits: device.limits(),
            device,
            queue,
            adapter: report,
            lost: Arc::default(),
        }
    }

    /// Records that the device is lost: every later call on it fails with `Error::DeviceLost`.
    pub fn mark_lost(&self, reason: &str) {
        *self.lost.lock().expect("lost") = Some(reason.to_string());
    }

    /// Why the device was lost, if it was.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().expect("lost").clone()
    }

    /// Fails with `Error::DeviceLost` once the device is lost.
    pub fn check_alive(&self) -> Result<()> {
        match self.lost() {
            Some(reason) => Err(Error::DeviceLost(format!(
                "the GPU device on {} was lost ({reason}); build a new compressor",
                self.adapter.name
            ))),
            None => Ok(()),
        }
    }

    /// Whether the adapter is a software one (device type CPU, such as lavapipe).
    pub fn is_software(&self) -> bool {
        self.adapter.device_type == device_type_name(wgpu::DeviceType::Cpu)
    }

    /// Most bytes one storage binding may span on this device.
    pub fn binding_limit(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// The adapter with its API and type, and `precision`, for people.
    pub fn describe(&self, precision: crate::options::Precision) -> String {
        let adapter = &self.adapter;
        format!(
            "{} ({}, {}, {})",
            adapter.name,
            adapter.backend,
            adapter.device_type,
            precision.name()
        )
    }

    /// Refuses bf16 (WGSL has no bf16 type), and f16 storage on a device without
    /// `SHADER_F16`.
    pub fn check_precision(&self, precision: crate::options::Precision) -> Result<()> {
        if precision == crate::options::Precision::Bf16 {
            return Err(Error::InvalidArgument(format!(
                "--precision bf16 is for the cpu backend (WGSL has no bf16 type); on adapter {} \
                 use --precision f32 or f16",
                self.adapter.name
            )));
        }
        if precision.elem() == crate::options::Elem::F16 && !self.has_f16() {
            return Err(Error::Unsupported(format!(
                "--precision f16 needs SHADER_F16, which adapter {} does not offer; \
                 use --precision f32",
                self.adapter.name
            )));
        }
        Ok(())
    }

    /// Whether the device was opened with `SHADER_F16`.
    pub fn has_f16(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F16)
    }
}

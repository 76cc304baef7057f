//! oneDNN's C API as this module calls it, and the opening of the library: the constants,
//! the structs passed by value (the descriptors as opaque room), the table of functions
//! looked up by name, and `open`, which checks the version and makes the CPU engine.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::Mutex;

use super::{OneDnn, LIBRARY_VARIABLE};

/// The library opened when `LIBRARY_VARIABLE` is unset.
const DEFAULT_LIBRARY: &str = "libdnnl.so.2";

pub(super) type Status = c_int;
pub(super) type Handle = *mut c_void;

pub(super) const SUCCESS: Status = 0;
const ENGINE_CPU: c_int = 1;
pub(super) const STREAM_DEFAULT_FLAGS: c_uint = 1;
pub(super) const ARG_SRC: c_int = 1;
pub(super) const ARG_DST: c_int = 17;
pub(super) const ARG_WEIGHTS: c_int = 33;
const RUNTIME_SEQ: c_uint = 1;
const RUNTIME_OMP: c_uint = 2;
const RUNTIME_TBB: c_uint = 4;

/// `dnnl_version_t`.
#[repr(C)]
struct Version {
    major: c_int,
    minor: c_int,
    patch: c_int,
    hash: *const c_char,
    cpu_runtime: c_uint,
    gpu_runtime: c_uint,
}

/// `dnnl_exec_arg_t`.
#[repr(C)]
pub(super) struct ExecArg {
    pub(super) arg: c_int,
    pub(super) memory: Handle,
}

/// Room for a `dnnl_memory_desc_t` (696 bytes in 2.6).
#[repr(C, align(64))]
pub(super) struct MemoryDesc(pub(super) [u8; 4096]);

/// Room for a `dnnl_matmul_desc_t` (2800 bytes in 2.6).
#[repr(C, align(64))]
pub(super) struct MatmulDesc(pub(super) [u8; 16384]);

/// The C API's functions this module calls.
pub(super) struct Api {
    pub(super) memory_desc_init_by_strides:
        unsafe extern "C" fn(*mut MemoryDesc, c_int, *const i64, c_int, *const i64) -> Status,
    pub(super) matmul_desc_init: unsafe extern "C" fn(
        *mut MatmulDesc,
        *const MemoryDesc,
        *const MemoryDesc,
        *const MemoryDesc,
        *const MemoryDesc,
    ) -> Status,
    pub(super) primitive_attr_create: unsafe extern "C" fn(*mut Handle) -> Status,
    pub(super) primitive_attr_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub(super) primitive_attr_set_output_scales:
        unsafe extern "C" fn(Handle, i64, c_int, *const f32) -> Status,
    pub(super) primitive_attr_set_post_ops: unsafe extern "C" fn(Handle, Handle) -> Status,
    pub(super) post_ops_create: unsafe extern "C" fn(*mut Handle) -> Status,
    pub(super) post_ops_append_sum: unsafe extern "C" fn(Handle, f32) -> Status,
    pub(super) post_ops_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub(super) primitive_desc_create:
        unsafe extern "C" fn(*mut Handle, *const c_void, Handle, Handle, Handle) -> Status,
    pub(super) primitive_desc_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub(super) primitive_create: unsafe extern "C" fn(*mut Handle, Handle) -> Status,
    pub(super) primitive_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub(super) primitive_execute:
        unsafe extern "C" fn(Handle, Handle, c_int, *const ExecArg) -> Status,
    pub(super) memory_create:
        unsafe extern "C" fn(*mut Handle, *const MemoryDesc, Handle, Handle) -> Status,
    pub(super) memory_set_data_handle: unsafe extern "C" fn(Handle, Handle) -> Status,
    pub(super) memory_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub(super) stream_create: unsafe extern "C" fn(*mut Handle, Handle, c_uint) -> Status,
    pub(super) stream_wait: unsafe extern "C" fn(Handle) -> Status,
    pub(super) stream_destroy: unsafe extern "C" fn(Handle) -> Status,
    /// OpenMP's thread count for the calling thread (the Debian build threads with OpenMP).
    pub(super) omp_set_num_threads: Option<unsafe extern "C" fn(c_int)>,
}

/// The name of an instruction set `dnnl_get_effective_cpu_isa` returns, and whether it has
/// bf16 arithmetic.
fn isa_name(isa: c_int) -> (&'static str, bool) {
    match isa {
        0x1 => ("sse41", false),
        0x3 => ("avx", false),
        0x7 => ("avx2", false),
        0x407 => ("avx2_vnni", false),
        0xf => ("avx512_mic", false),
        0x1f => ("avx512_mic_4ops", false),
        0x27 => ("avx512_core", false),
        0x67 => ("avx512_core_vnni", false),
        0xe7 => ("avx512_core_bf16", true),
        0x3e7 => ("avx512_core_amx", true),
        _ => ("an unknown instruction set", false),
    }
}

pub(super) fn open() -> Result<OneDnn, String> {
    let path = std::env::var_os(LIBRARY_VARIABLE)
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| DEFAULT_LIBRARY.into());
    let shown = path.to_string_lossy().into_owned();
    // SAFETY: opening a shared library runs its initialisers; oneDNN's set up its own state.
    let library = unsafe { libloading::Library::new(&path) }
        .map_err(|error| format!("oneDNN ({shown}) could not be loaded: {error}"))?;
    // SAFETY: each symbol is looked up with the prototype oneDNN 2.x's dnnl.h gives it; the
    // version is checked before any other is called.
    unsafe {
        macro_rules! function {
            ($name:literal) => {
                *library
                    .get(concat!($name, "\0").as_bytes())
                    .map_err(|error| format!("oneDNN ({shown}) lacks {}: {error}", $name))?
            };
        }
        let version: unsafe extern "C" fn() -> *const Version = function!("dnnl_version");
        let version = &*version();
        if version.major != 2 {
            return Err(format!(
                "oneDNN ({shown}) is version {}.{}.{}; this build speaks the C API of 2.x",
                version.major, version.minor, version.patch
            ));
        }
        let effective_isa: unsafe extern "C" fn() -> c_int =
            function!("dnnl_get_effective_cpu_isa");
        let engine_create: unsafe extern "C" fn(*mut Handle, c_int, usize) -> Status =
            function!("dnnl_engine_create");
        let api = Api {
            memory_desc_init_by_strides: function!("dnnl_memory_desc_init_by_strides"),
            matmul_desc_init: function!("dnnl_matmul_desc_init"),
            primitive_attr_create: function!("dnnl_primitive_attr_create"),
            primitive_attr_destroy: function!("dnnl_primitive_attr_destroy"),
            primitive_attr_set_output_scales: function!("dnnl_primitive_attr_set_output_scales"),
            primitive_attr_set_post_ops: function!("dnnl_primitive_attr_set_post_ops"),
            post_ops_create: function!("dnnl_post_ops_create"),
            post_ops_append_sum: function!("dnnl_post_ops_append_sum"),
            post_ops_destroy: function!("dnnl_post_ops_destroy"),
            primitive_desc_create: function!("dnnl_primitive_desc_create"),
            primitive_desc_destroy: function!("dnnl_primitive_desc_destroy"),
            primitive_create: function!("dnnl_primitive_create"),
            primitive_destroy: function!("dnnl_primitive_destroy"),
            primitive_execute: function!("dnnl_primitive_execute"),
            memory_create: function!("dnnl_memory_create"),
            memory_set_data_handle: function!("dnnl_memory_set_data_handle"),
            memory_destroy: function!("dnnl_memory_destroy"),
            stream_create: function!("dnnl_stream_create"),
            stream_wait: function!("dnnl_stream_wait"),
            stream_destroy: function!("dnnl_stream_destroy"),
            omp_set_num_threads: library
                .get::<unsafe extern "C" fn(c_int)>(b"omp_set_num_threads\0")
                .ok()
                .map(|function| *function),
        };
        let mut engine = std::ptr::null_mut();
        if engine_create(&mut engine, ENGINE_CPU, 0) != SUCCESS {
            return Err(format!("oneDNN ({shown}) could not create a CPU engine"));
        }
        let (isa, bf16_units) = isa_name(effective_isa());
        let runtime = match version.cpu_runtime {
            RUNTIME_SEQ => "sequential",
            RUNTIME_OMP => "OpenMP",
            RUNTIME_TBB => "TBB",
            _ => "its own threads",
        };
        Ok(OneDnn {
            api,
            engine,
            version: format!("{}.{}.{}", version.major, version.minor, version.patch),
            isa,
            bf16_units,
            runtime,
            primitives: Mutex::new(HashMap::new()),
            _library: library,
        })
    }
}

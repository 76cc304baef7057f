//! `metacompress._native`: the runtime as a Python extension (SPEC section 8). A door, not a
//! room of its own: it turns Python's values (numpy arrays, strings, tuples) into the
//! library's, calls `Runner` with the GIL released, and turns `Error` into `UsageError`
//! (where the command line exits 2) or `Error` (where it exits 1) carrying the command line's
//! one line. The pure-Python wrapper (`metacompress/runtime.py`) hands torch tensors over as
//! numpy views of their memory and wraps the outputs back.

use std::path::PathBuf;

use numpy::{
    IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict};

use metacompress::gpu::{list_adapters, GpuApi};
use metacompress::methods::{Method, Request, Runner};
use metacompress::{
    check_fits_f16, check_threads, echoed, files, one_line, parse_pinpoints, threads_from, Backend,
    Grid, HostTokens, HostValues, Keep, Layout, Options, Precision, ProcessPool, Scope,
    MAX_THREADS,
};

pyo3::create_exception!(
    metacompress,
    UsageError,
    PyValueError,
    "A bad argument: what the command line refuses with exit status 2. The message is its line."
);
pyo3::create_exception!(
    metacompress,
    Error,
    PyRuntimeError,
    "Any other failure (a file, a device, an overflow): what the command line reports with exit \
     status 1. The message is its line."
);

/// The library's error as the exception of its class.
fn raised(error: metacompress::Error) -> PyErr {
    if error.is_usage() {
        UsageError::new_err(error.line())
    } else {
        Error::new_err(error.line())
    }
}

/// A usage error of the binding itself (a Python value of the wrong kind), on one line.
fn usage(message: String) -> PyErr {
    UsageError::new_err(one_line(&message))
}

/// A Python value as a message shows it: its `repr`, cut after 80 characters (a value may be
/// a 12 MB list), control characters escaped.
fn shown(value: &Bound<'_, PyAny>) -> String {
    value
        .repr()
        .map_or_else(|_| "?".to_string(), |text| echoed(&text.to_string()))
}

/// A named choice (`method`, `scope`, `backend`, `precision`) as the command line parses it,
/// refused in the words of its parser.
fn choice<T: clap::ValueEnum>(flag: &str, value: &Bound<'_, PyAny>) -> PyResult<T> {
    let value = text(value, flag)?;
    T::from_str(&value, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_string())
            .collect();
        usage(format!(
            "invalid value '{}' for '--{flag} <{}>' [possible values: {}]",
            echoed(&value),
            flag.to_uppercase(),
            names.join(", ")
        ))
    })
}

/// A text argument, or a usage error naming it when the value is no string.
fn text(value: &Bound<'_, PyAny>, name: &str) -> PyResult<String> {
    value.extract().map_err(|_| {
        usage(format!(
            "{name} is a {}; expected a string",
            type_name(value)
        ))
    })
}

/// A number argument, or a usage error naming it when the value is no such number (a bool
/// is no number here, though Python counts `True` as 1).
fn number<'py, T: for<'a> FromPyObject<'a, 'py>>(
    value: &Bound<'py, PyAny>,
    name: &str,
    expected: &str,
) -> PyResult<T> {
    let refused = || {
        usage(format!(
            "{name} {} is out of range; expected {expected}",
            shown(value)
        ))
    };
    if value.is_instance_of::<PyBool>() {
        return Err(refused());
    }
    value.extract().map_err(|_| refused())
}

/// The images `x` as the library reads them: borrowed where they lie.
enum Borrowed<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F16(PyReadonlyArrayDyn<'py, half::f16>),
    /// bf16 bits, handed over by the wrapper as a uint16 view of a torch tensor.
    Bf16(PyReadonlyArrayDyn<'py, u16>),
}

impl<'py> Borrowed<'py> {
    /// `x` (called `name` in messages: `x`, `extra[1]`) where it lies, or a usage error.
    fn of(x: &Bound<'py, PyAny>, bf16: bool, name: &str) -> PyResult<Self> {
        let array = x.cast::<PyUntypedArray>().map_err(|_| {
            usage(format!(
                "{name} is a {}; expected a numpy array or a torch tensor",
                type_name(x)
            ))
        })?;
        if !(2..=3).contains(&array.ndim()) {
            return Err(usage(format!(
                "{name} has shape {:?}; expected (n, d) or (b, n, d)",
                array.shape()
            )));
        }
        if !array.is_c_contiguous() {
            return Err(usage(format!(
                "{name} of shape {:?} is not C-contiguous; expected a row-major array (numpy: \
                 np.ascontiguousarray(x); torch: x.contiguous())",
                array.shape()
            )));
        }
        if !array.is_aligned() {
            return Err(usage(format!(
                "{name} of shape {:?} is not aligned to its element size (a view at an odd byte \
                 offset); expected an aligned array (numpy: np.require(x, requirements=\"CA\"))",
                array.shape()
            )));
        }
        let readonly = |error: numpy::BorrowError| usage(format!("{name} cannot be read: {error}"));
        if bf16 {
            let array = x.cast::<PyArrayDyn<u16>>().map_err(|_| {
                usage(format!(
                    "bf16 {name} has dtype {}; expected uint16 bits",
                    array.dtype()
                ))
            })?;
            return Ok(Borrowed::Bf16(array.try_readonly().map_err(readonly)?));
        }
        if let Ok(array) = x.cast::<PyArrayDyn<f32>>() {
            return Ok(Borrowed::F32(array.try_readonly().map_err(readonly)?));
        }
        if let Ok(array) = x.cast::<PyArrayDyn<half::f16>>() {
            return Ok(Borrowed::F16(array.try_readonly().map_err(readonly)?));
        }
        Err(usage(format!(
            "{name} has dtype {}; expected float32 or float16 (numpy), or float32, float16 or \
             bfloat16 (torch)",
            array.dtype()
        )))
    }

    /// `(b, n, d)` and whether `x` was one image `(n, d)`.
    fn shape(&self) -> ((usize, usize, usize), bool) {
        let shape = match self {
            Borrowed::F32(a) => a.shape().to_vec(),
            Borrowed::F16(a) => a.shape().to_vec(),
            Borrowed::Bf16(a) => a.shape().to_vec(),
        };
        match shape[..] {
            [n, d] => ((1, n, d), true),
            [b, n, d] => ((b, n, d), false),
            _ => unreachable!("rank checked in Borrowed::of"),
        }
    }

    /// The values where they lie (no copy); `HostTokens::new` checks them, without the GIL.
    fn values(&self) -> HostValues<'_> {
        let aligned = "checked C-contiguous and aligned";
        match self {
            Borrowed::F32(a) => HostValues::F32(a.as_slice().expect(aligned)),
            Borrowed::F16(a) => HostValues::F16(a.as_slice().expect(aligned)),
            Borrowed::Bf16(a) => HostValues::BF16(bytemuck::cast_slice::<u16, half::bf16>(
                a.as_slice().expect(aligned),
            )),
        }
    }
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map_or_else(|_| "value".to_string(), |name| name.to_string())
}

/// The reduced tokens in the input's element type, as the runtime filled them.
enum Output {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    Bf16(Vec<u16>),
}

impl Output {
    /// `tokens` (f32, from the runtime) in the element type of `dtype`; `name` says whose
    /// (`tokens`, `extra[1]`) where they do not fit f16.
    fn of(
        tokens: Vec<f32>,
        dtype: metacompress::Dtype,
        name: &str,
    ) -> metacompress::Result<Output> {
        Ok(match dtype {
            metacompress::Dtype::F32 => Output::F32(tokens),
            metacompress::Dtype::F16 => {
                check_fits_f16(&format!("{name} for an f16 output"), &tokens)?;
                Output::F16(tokens.iter().map(|&v| half::f16::from_f32(v)).collect())
            }
            metacompress::Dtype::BF16 => Output::Bf16(
                tokens
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_bits())
                    .collect(),
            ),
        })
    }

    fn into_array<'py>(self, py: Python<'py>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self {
            Output::F32(values) => values.into_pyarray(py).reshape(shape)?.into_any(),
            Output::F16(values) => values.into_pyarray(py).reshape(shape)?.into_any(),
            Output::Bf16(values) => values.into_pyarray(py).reshape(shape)?.into_any(),
        })
    }
}

/// The attention of `b` images of `n` tokens, as the library reads it: `(n,)` or `(b, n)`,
/// row-major; a wrong size is a usage error here (a file's attention is the file's fault).
fn attention_of<'a>(
    values: &'a PyReadonlyArrayDyn<'_, f32>,
    b: usize,
    n: usize,
) -> PyResult<&'a [f32]> {
    let shape = values.shape();
    if !(shape == [b, n] || (b == 1 && shape == [n])) {
        let expected = if b == 1 {
            format!("({n},) or (1, {n})")
        } else {
            format!("({b}, {n})")
        };
        return Err(usage(format!(
            "attention has shape {shape:?}; expected one value per token, {expected}"
        )));
    }
    values.as_slice().map_err(|_| {
        usage(
            "attention is not C-contiguous and aligned; expected a row-major float32 array"
                .to_string(),
        )
    })
}

/// The layout of a call: `grids`, a preset, or one square grid.
fn layout_of(
    grids: Option<&Bound<'_, PyAny>>,
    preset: Option<&str>,
    tokens: usize,
) -> PyResult<Layout> {
    match (grids, preset) {
        (Some(_), Some(_)) => Err(usage(
            "both grids and layout were given; expected one of them (or neither: one square \
             grid)"
                .to_string(),
        )),
        (Some(grids), None) => {
            let bad = || {
                usage(format!(
                    "grids {} are not grids; expected a list of (offset, h, w) or (offset, h, \
                     w, stride) tuples of non-negative integers",
                    shown(grids)
                ))
            };
            let entries: Vec<Vec<usize>> = grids.extract().map_err(|_| bad())?;
            if entries.is_empty() {
                return Err(usage(
                    "grids is an empty list; expected at least one (offset, h, w) grid".into(),
                ));
            }
            let grids = entries
                .into_iter()
                .map(|entry| match entry[..] {
                    [offset, height, width] => Ok(Grid::new(offset, height, width)),
                    [offset, height, width, stride] => {
                        Ok(Grid::strided(offset, height, width, stride))
                    }
                    _ => Err(bad()),
                })
                .collect::<PyResult<Vec<Grid>>>()?;
            Layout::new(tokens, grids).map_err(raised)
        }
        (None, Some(preset)) => Layout::preset_for(preset, None, tokens).map_err(raised),
        (None, None) => Layout::square(tokens).map_err(|_| {
            usage(format!(
                "{tokens} tokens is not a perfect square and no layout was given; expected \
                 grids=[(offset, h, w), ...] or layout=PRESET (such as \"llava-next:1000x667\")"
            ))
        }),
    }
}

/// A call's outputs: the tokens, `P` when asked for, each grid's `(hq, wq)`, and the seconds
/// the runtime's own call took (what `metacompress bench` times; for measuring the binding).
type Reduced<'py> = (
    Bound<'py, PyAny>,
    Option<Bound<'py, PyAny>>,
    Vec<(usize, usize)>,
    f64,
    Vec<Bound<'py, PyAny>>,
);

/// A grid as Python sees it: `(offset, h, w, stride)`.
type GridTuple = (usize, usize, usize, usize);

/// The methods' runtime: weights (optional) bound to a backend; see `metacompress.Compressor`.
#[pyclass(frozen, module = "metacompress._native")]
struct Compressor {
    runner: Runner,
    /// The CPU path's threads when `threads` (or `RAYON_NUM_THREADS`) gave a count; else
    /// `ALL_CORES`, shared by every such compressor.
    pool: Option<ProcessPool>,
}

/// One thread per logical CPU, for every compressor without a count of its own. Not rayon's
/// global pool: a process forked after a call (multiprocessing, DataLoader workers) has none
/// of that pool's threads, and its calls would wait for ever; a `ProcessPool` is rebuilt in
/// the child.
static ALL_CORES: ProcessPool = ProcessPool::new(None);

impl Compressor {
    fn on_pool<T: Send>(
        &self,
        work: impl FnOnce() -> metacompress::Result<T> + Send,
    ) -> metacompress::Result<T> {
        self.pool.as_ref().unwrap_or(&ALL_CORES).install(work)?
    }
}

#[pymethods]
impl Compressor {
    #[new]
    #[pyo3(signature = (weights, backend, precision, threads = None))]
    fn new(
        py: Python<'_>,
        weights: Option<PathBuf>,
        backend: &Bound<'_, PyAny>,
        precision: &Bound<'_, PyAny>,
        threads: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let backend: Backend = choice("backend", backend)?;
        let precision: Precision = choice("precision", precision)?;
        // `threads`, else RAYON_NUM_THREADS, bounded alike (rayon would take the variable
        // unchecked); neither: rayon's global pool on every core.
        let requested = match threads {
            None => None,
            Some(threads) => {
                let threads: i128 = number(
                    threads,
                    "threads",
                    &format!("an integer from 1 to {MAX_THREADS}"),
                )?;
                Some(check_threads(threads).map_err(raised)?)
            }
        };
        let pool = threads_from(requested)
            .map_err(raised)?
            .map(|threads| ProcessPool::new(Some(threads)));
        let runner = py
            .detach(|| {
                let weights = weights.as_deref().map(files::read_weights).transpose()?;
                Runner::new(weights, backend, None, precision)
            })
            .map_err(raised)?;
        Ok(Compressor { runner, pool })
    }

    /// What runs the pass: the line the command line prints after "on".
    #[getter]
    fn device(&self) -> PyResult<String> {
        // Inside the pool: the CPU path names the threads it runs on.
        self.on_pool(|| Ok(self.runner.device())).map_err(raised)
    }

    /// Why backend "auto" chose what it chose (None when it was not asked to choose).
    #[getter]
    fn choice(&self) -> Option<String> {
        self.runner.choice().map(str::to_string)
    }

    /// `(tokens, projection or None, queries, seconds of the runtime's call, [P X_k for each
    /// extra set])`; `bf16` says that `x` holds bfloat16 bits; `extra`: `(array, bf16)` pairs
    /// of more token sets of the same images, each reduced with the same `P`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (x, bf16, grids, layout, keep, scope, method, seed, attention, projection, extra = Vec::new()))]
    fn compress<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        bf16: bool,
        grids: Option<&Bound<'py, PyAny>>,
        layout: Option<&Bound<'py, PyAny>>,
        keep: &Bound<'py, PyAny>,
        scope: &Bound<'py, PyAny>,
        method: &Bound<'py, PyAny>,
        seed: &Bound<'py, PyAny>,
        attention: Option<PyReadonlyArrayDyn<'py, f32>>,
        projection: bool,
        extra: Vec<(Bound<'py, PyAny>, bool)>,
    ) -> PyResult<Reduced<'py>> {
        // In the command line's order: the knobs, then what the method needs, then the data.
        let keep = Keep::new(number(keep, "keep", "a fraction in (0, 1]")?).map_err(raised)?;
        let seed: u64 = number(seed, "seed", "an integer from 0 to 2^64 - 1")?;
        let scope: Scope = choice("scope", scope)?;
        let method: Method = choice("method", method)?;
        let source = Borrowed::of(x, bf16, "x")?;
        let ((b, n, d), single) = source.shape();
        let layout = layout.map(|preset| text(preset, "layout")).transpose()?;
        let layout = layout_of(grids, layout.as_deref(), n)?;
        // What the method needs, in this API's words (the library's name the CLI's flags).
        if method.needs_weights() && !self.runner.has_weights() {
            return Err(usage(format!(
                "method {} needs P_meta weights; expected a Compressor made with weights (a \
                 P_meta .safetensors file)",
                method.name()
            )));
        }
        let attention = match &attention {
            None if method.needs_attention() => {
                return Err(usage(format!(
                    "method {} needs the vision tower's [CLS] attention over the tokens; \
                     expected attention= of shape (n,) or (b, n), non-negative",
                    method.name()
                )))
            }
            None => None,
            Some(values) => Some(attention_of(values, b, n)?),
        };
        let values = source.values();
        let sets = extra
            .iter()
            .enumerate()
            .map(|(index, (set, bf16))| Borrowed::of(set, *bf16, &format!("extra[{index}]")))
            .collect::<PyResult<Vec<_>>>()?;
        let mut set_widths = Vec::with_capacity(sets.len());
        for (index, set) in sets.iter().enumerate() {
            let ((set_b, set_n, set_d), _) = set.shape();
            if (set_b, set_n) != (b, n) {
                return Err(usage(format!(
                    "extra[{index}] holds {set_b} x {set_n} tokens; expected x's {b} x {n} (one \
                     P is applied to every set)"
                )));
            }
            set_widths.push(set_d);
        }
        let set_values: Vec<HostValues> = sets.iter().map(Borrowed::values).collect();
        let options = Options {
            keep,
            scope,
            save_projection: projection,
            ..Options::default()
        };
        let (output, projected, queries, seconds, extra_outputs) = py
            .detach(|| {
                self.on_pool(|| {
                    // The finite-value check reads all of x: without the GIL too.
                    let request = Request {
                        features: HostTokens::new(values, b, n, d)?,
                        layout: &layout,
                        attention,
                        seed,
                    };
                    let extra_tokens = set_values
                        .iter()
                        .zip(&set_widths)
                        .enumerate()
                        .map(|(index, (&set, &width))| {
                            HostTokens::named(&format!("extra[{index}]"), set, b, n, width)
                        })
                        .collect::<metacompress::Result<Vec<_>>>()?;
                    let started = std::time::Instant::now();
                    let (reduced, reduced_extra) = if extra_tokens.is_empty() {
                        (self.runner.run(method, &request, &options)?, Vec::new())
                    } else {
                        let shared =
                            self.runner
                                .run_sharing(method, &request, &extra_tokens, &options)?;
                        (shared.main, shared.extra)
                    };
                    let seconds = started.elapsed().as_secs_f64();
                    let output = Output::of(reduced.tokens, values.dtype(), "tokens")?;
                    let extra_outputs = reduced_extra
                        .into_iter()
                        .zip(&set_values)
                        .enumerate()
                        .map(|(index, (tokens, set))| {
                            Output::of(tokens, set.dtype(), &format!("extra[{index}]"))
                        })
                        .collect::<metacompress::Result<Vec<_>>>()?;
                    let projected = if projection { reduced.projection } else { None };
                    Ok((output, projected, reduced.queries, seconds, extra_outputs))
                })
            })
            .map_err(raised)?;
        let m = queries.count;
        let shape = |columns: usize| {
            if single {
                vec![m, columns]
            } else {
                vec![b, m, columns]
            }
        };
        let tokens = output.into_array(py, &shape(d))?;
        let projected = projected
            .map(|values| Output::F32(values).into_array(py, &shape(n)))
            .transpose()?;
        let queries = queries.grids.iter().map(|g| (g.height, g.width)).collect();
        let extra = extra_outputs
            .into_iter()
            .zip(&set_widths)
            .map(|(output, &width)| output.into_array(py, &shape(width)))
            .collect::<PyResult<Vec<_>>>()?;
        Ok((tokens, projected, queries, seconds, extra))
    }
}

/// `(n, [(offset, h, w, stride), ...])` of a layout preset; `pinpoints` is LLaVA-NeXT's
/// `image_grid_pinpoints` as JSON (the wrapper turns a list into it).
#[pyfunction]
#[pyo3(signature = (preset, pinpoints = None))]
fn layout(preset: &str, pinpoints: Option<&str>) -> PyResult<(usize, Vec<GridTuple>)> {
    let pinpoints = pinpoints.map(parse_pinpoints).transpose().map_err(raised)?;
    let layout = Layout::preset(preset, pinpoints.as_deref()).map_err(raised)?;
    let grids = layout
        .grids()
        .iter()
        .map(|g| (g.offset, g.height, g.width, g.stride))
        .collect();
    Ok((layout.tokens(), grids))
}

/// Every adapter wgpu sees, as `metacompress devices` lists them.
#[pyfunction]
fn devices(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let adapters = py.detach(|| list_adapters(GpuApi::Any));
    adapters
        .into_iter()
        .map(|adapter| {
            let entry = PyDict::new(py);
            entry.set_item("name", &adapter.name)?;
            entry.set_item("vendor", &adapter.vendor)?;
            entry.set_item("backend", &adapter.backend)?;
            entry.set_item("type", &adapter.device_type)?;
            entry.set_item("driver", adapter.driver_or_unknown())?;
            entry.set_item("f16", adapter.f16)?;
            entry.set_item("subgroups", adapter.subgroups)?;
            entry.set_item("timestamps", adapter.timestamps)?;
            entry.set_item("binding_limit", adapter.binding_limit)?;
            entry.set_item("offset_alignment", adapter.offset_alignment)?;
            Ok(entry)
        })
        .collect()
}

/// The scope `method` runs at when `scope` is asked for (SPEC section 4, v4): its own for the
/// methods defined or run per grid whatever the scope.
#[pyfunction]
fn method_scope(method: &Bound<'_, PyAny>, scope: &Bound<'_, PyAny>) -> PyResult<&'static str> {
    let method: Method = choice("method", method)?;
    let scope: Scope = choice("scope", scope)?;
    Ok(method.scope(scope).name())
}

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add("UsageError", py.get_type::<UsageError>())?;
    module.add("Error", py.get_type::<Error>())?;
    module.add("__version__", metacompress::VERSION)?;
    module.add_class::<Compressor>()?;
    module.add_function(wrap_pyfunction!(layout, module)?)?;
    module.add_function(wrap_pyfunction!(devices, module)?)?;
    module.add_function(wrap_pyfunction!(method_scope, module)?)?;
    Ok(())
}

//! The matmul primitives: one per product shape (sizes, strides, element type, update and
//! band), created on first use and kept, with the memory objects and stream it runs on.

use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex};

use super::library::{Handle, MatmulDesc, MemoryDesc, STREAM_DEFAULT_FLAGS, SUCCESS};
use super::{DataType, OneDnn, LIBRARY};

/// Most primitives kept; past it the cache starts over (a run has a few dozen shapes).
const MOST_PRIMITIVES: usize = 512;

/// What a primitive is made for: the sizes, the strides of each operand, the element type of
/// the inputs, and what it does to its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub(super) rows: usize,
    pub(super) inner: usize,
    pub(super) columns: usize,
    pub(super) strides: [usize; 6],
    pub(super) input: DataType,
    pub(super) read_out: bool,
    pub(super) scale: u32,
    /// Which band of a product cut into bands (0: uncut), so that bands running at once
    /// never share a primitive's memory objects.
    pub(super) band: usize,
}

/// One matmul primitive with its memory objects and stream (one product runs on it at a time).
pub(super) struct Primitive {
    pub(super) primitive: Handle,
    pub(super) memories: [Handle; 3],
    pub(super) stream: Handle,
}

// SAFETY: the handles are used only under the entry's mutex, one thread at a time.
unsafe impl Send for Primitive {}

impl Drop for Primitive {
    fn drop(&mut self) {
        let Some(Ok(library)) = LIBRARY.get() else {
            return;
        };
        let api = &library.api;
        // SAFETY: each handle was created by the library and is destroyed once, here.
        unsafe {
            (api.primitive_destroy)(self.primitive);
            for memory in self.memories {
                (api.memory_destroy)(memory);
            }
            (api.stream_destroy)(self.stream);
        }
    }
}

impl OneDnn {
    /// The primitive for `key`, made on first use; `None` when oneDNN has no implementation
    /// for it.
    pub(super) fn primitive(&self, key: Key) -> Option<Arc<Mutex<Primitive>>> {
        let mut cache = self.primitives.lock().ok()?;
        if let Some(primitive) = cache.get(&key) {
            return Some(primitive.clone());
        }
        let primitive = Arc::new(Mutex::new(self.create(&key)?));
        #[cfg(test)]
        super::tests::CREATED.with(|created| created.set(created.get() + 1));
        if cache.len() >= MOST_PRIMITIVES {
            cache.clear();
        }
        cache.insert(key, primitive.clone());
        Some(primitive)
    }

    fn create(&self, key: &Key) -> Option<Primitive> {
        let api = &self.api;
        let [a_rows, a_columns, b_rows, b_columns, out_rows, out_columns] =
            key.strides.map(|s| s as i64);
        let describe = |rows: usize, columns: usize, strides: [i64; 2], data: DataType| {
            let mut desc = Box::new(MemoryDesc([0; 4096]));
            let dims = [rows as i64, columns as i64];
            // SAFETY: `desc` has room for the struct; dims and strides hold two values each.
            let status = unsafe {
                (api.memory_desc_init_by_strides)(
                    &mut *desc,
                    2,
                    dims.as_ptr(),
                    data as c_int,
                    strides.as_ptr(),
                )
            };
            (status == SUCCESS).then_some(desc)
        };
        let a = describe(key.rows, key.inner, [a_rows, a_columns], key.input)?;
        let b = describe(key.inner, key.columns, [b_rows, b_columns], key.input)?;
        let out = describe(
            key.rows,
            key.columns,
            [out_rows, out_columns],
            DataType::F32,
        )?;
        // SAFETY: every handle made here is destroyed here or handed to the `Primitive`, which
        // destroys it; the descriptors outlive the calls that read them.
        unsafe {
            let mut matmul = Box::new(MatmulDesc([0; 16384]));
            if (api.matmul_desc_init)(&mut *matmul, &*a, &*b, std::ptr::null(), &*out) != SUCCESS {
                return None;
            }
            let mut attr = std::ptr::null_mut();
            if (api.primitive_attr_create)(&mut attr) != SUCCESS {
                return None;
            }
            let scale = f32::from_bits(key.scale);
            let mut ok = scale == 1.0
                || (api.primitive_attr_set_output_scales)(attr, 1, 0, &scale) == SUCCESS;
            if key.read_out {
                let mut post_ops = std::ptr::null_mut();
                ok = ok && (api.post_ops_create)(&mut post_ops) == SUCCESS;
                ok = ok && (api.post_ops_append_sum)(post_ops, 1.0) == SUCCESS;
                ok = ok && (api.primitive_attr_set_post_ops)(attr, post_ops) == SUCCESS;
                if !post_ops.is_null() {
                    (api.post_ops_destroy)(post_ops);
                }
            }
            let mut descriptor = std::ptr::null_mut();
            ok = ok
                && (api.primitive_desc_create)(
                    &mut descriptor,
                    &*matmul as *const MatmulDesc as *const c_void,
                    attr,
                    self.engine,
                    std::ptr::null_mut(),
                ) == SUCCESS;
            (api.primitive_attr_destroy)(attr);
            if !ok {
                return None;
            }
            let mut primitive = std::ptr::null_mut();
            let created = (api.primitive_create)(&mut primitive, descriptor) == SUCCESS;
            (api.primitive_desc_destroy)(descriptor);
            if !created {
                return None;
            }
            let mut made = Primitive {
                primitive,
                memories: [std::ptr::null_mut(); 3],
                stream: std::ptr::null_mut(),
            };
            for (slot, desc) in made.memories.iter_mut().zip([&a, &b, &out]) {
                // A null handle: no buffer is allocated; each run sets its own.
                if (api.memory_create)(slot, &**desc, self.engine, std::ptr::null_mut()) != SUCCESS
                {
                    return None;
                }
            }
            if (api.stream_create)(&mut made.stream, self.engine, STREAM_DEFAULT_FLAGS) != SUCCESS {
                return None;
            }
            Some(made)
        }
    }
}

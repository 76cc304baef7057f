//! Memory-mapped files, and what happens when another program changes one while it is read.
//!
//! Mapping is faster than reading, but a mapped file that is truncated (or rewritten by
//! `cp`, which truncates first) under a running program makes its next read of a vanished page
//! raise SIGBUS, which ends the process with no word. So every live map is listed here (its
//! address range and a message naming its file, in atomics a signal handler may read), and
//! `exit_on_changed_mapped_file` installs a SIGBUS handler that, for a fault inside one of
//! them, writes one line naming the file and exits with status 1 (nothing written: outputs are
//! renamed into place only at the very end). A file rewritten in place at the same size raises
//! no signal; `Mapped::check_unchanged` compares its size and modification time with those
//! seen when it was mapped, so the caller can refuse results read from a changing file.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// Maps live at once that a fault can be traced to (a run maps two or three files).
const SLOTS: usize = 32;

/// One live map: its address range and the line to write if a read inside it faults.
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    message: AtomicPtr<u8>,
    length: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    message: AtomicPtr::new(std::ptr::null_mut()),
    length: AtomicUsize::new(0),
};

static LIVE: [Slot; SLOTS] = [EMPTY; SLOTS];

/// A read-only map of a whole file, listed for the SIGBUS handler while it lives.
pub(crate) struct Mapped {
    map: memmap2::Mmap,
    /// The mapped file itself (not its path: a file replaced by a rename leaves this map's
    /// pages intact, and is no change to what is read).
    file: File,
    /// The file's name, for messages.
    path: String,
    /// Size and modification time when mapped.
    seen: (u64, Option<SystemTime>),
    slot: Option<usize>,
}

impl Mapped {
    /// Maps `file` (named `path`), or `None` where the system cannot.
    pub(crate) fn new(file: File, path: &Path) -> Option<Mapped> {
        let meta = file.metadata().ok()?;
        // SAFETY: the map is read-only; the program never writes through it, and it lives as
        // long as this `Mapped`. A change by another program is caught by the SIGBUS handler
        // (truncation) or `check_unchanged` (a rewrite).
        let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        let path = path.display().to_string();
        let slot = register(&map, &path);
        Some(Mapped {
            map,
            file,
            path,
            seen: (meta.len(), meta.modified().ok()),
            slot,
        })
    }

    /// Refuses a file whose size or modification time changed since it was mapped: what was
    /// read from it may mix its old and new contents.
    pub(crate) fn check_unchanged(&self) -> Result<()> {
        let now = self
            .file
            .metadata()
            .map(|meta| (meta.len(), meta.modified().ok()));
        if now.is_ok_and(|now| now == self.seen) {
            return Ok(());
        }
        Err(Error::Format(changed_message(&self.path)))
    }
}

impl std::ops::Deref for Mapped {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            release(slot);
        }
    }
}

/// The line for a file that changed while it was read.
fn changed_message(path: &str) -> String {
    format!(
        "{path} changed while it was being read (truncated or rewritten by another program); \
         nothing was written: run again once it is complete"
    )
}

/// Lists `map` in a free slot with its message; `None` when every slot is taken (a fault in
/// it then ends the process as it would without the handler).
fn register(map: &memmap2::Mmap, path: &str) -> Option<usize> {
    let line: String = changed_message(path)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let message = format!("metacompress: {line}\n")
        .into_bytes()
        .into_boxed_slice();
    let start = map.as_ptr() as usize;
    for (index, slot) in LIVE.iter().enumerate() {
        if slot
            .start
            .compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let length = message.len();
            slot.length.store(length, Ordering::Release);
            slot.message
                .store(Box::into_raw(message).cast::<u8>(), Ordering::Release);
            slot.end.store(start + map.len(), Ordering::Release);
            return Some(index);
        }
    }
    None
}

/// Frees a slot (its range first, so the handler never reads a freed message).
fn release(index: usize) {
    let slot = &LIVE[index];
    slot.end.store(0, Ordering::Release);
    let message = slot.message.swap(std::ptr::null_mut(), Ordering::AcqRel);
    let length = slot.length.swap(0, Ordering::AcqRel);
    if !message.is_null() {
        // SAFETY: `register` made this pointer from a boxed slice of `length` bytes.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(message, length)) });
    }
    slot.start.store(0, Ordering::Release);
}

/// The message of the live map holding `address`, read with atomics only (async-signal-safe).
fn message_at(address: usize) -> Option<(*const u8, usize)> {
    LIVE.iter().find_map(|slot| {
        let (start, end) = (
            slot.start.load(Ordering::Acquire),
            slot.end.load(Ordering::Acquire),
        );
        let message = slot.message.load(Ordering::Acquire);
        (start != 0 && (start..end).contains(&address) && !message.is_null())
            .then(|| (message as *const u8, slot.length.load(Ordering::Acquire)))
    })
}

/// Installs a SIGBUS handler for the whole process (a program's choice, so the library never
/// does it by itself): a fault inside a live map writes one line naming the file that changed
/// and exits with status 1; any other SIGBUS ends the process as before.
pub fn exit_on_changed_mapped_file() {
    #[cfg(unix)]
    // SAFETY: the handler only reads atomics, calls write(2), _exit(2) and signal(2), all
    // async-signal-safe; the sigaction struct is fully initialised.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_bus_error as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}

#[cfg(unix)]
extern "C" fn on_bus_error(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo for an SA_SIGINFO handler.
    let address = unsafe { (*info).si_addr() } as usize;
    match message_at(address) {
        Some((message, length)) => unsafe {
            libc::write(2, message.cast(), length);
            libc::_exit(1);
        },
        // Not ours: the default action, when the faulting read runs again.
        None => unsafe {
            libc::signal(signal, libc::SIG_DFL);
        },
    }
}

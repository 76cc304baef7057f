//! Writing outputs (SPEC section 6). Every writer checks its outputs before any work
//! (`check_output`, `check_output_folder`): not an input, not something other than a regular
//! file (or a folder), in a folder that takes a file of that name. Then its files are staged
//! as one set (`Outputs`): each in a temporary file created exclusively beside its target,
//! synced, and renamed into place only when the whole set is written, so a failed or
//! interrupted run changes no existing file and leaves none of the set.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::{Error, Result};

/// Temporary names are short and fixed in length, not derived from the output's name (which
/// may take all of a file system's 255 bytes): `.metacompress-XXXXXX.partial`.
const PREFIX: &str = ".metacompress-";
const SUFFIX: &str = ".partial";
const RANDOM_CHARACTERS: usize = 6;

/// The process's outputs being written: their temporary files, and whether a set has been
/// renamed into place. A commit holds the lock across its renames, and `interrupt` takes it,
/// so a signal handler sees either no rename or all of them.
struct Writing {
    temporary: Vec<PathBuf>,
    /// Folders made for sets not yet committed, outermost first.
    folders: Vec<PathBuf>,
    committed: bool,
}

static WRITING: Mutex<Writing> = Mutex::new(Writing {
    temporary: Vec::new(),
    folders: Vec::new(),
    committed: false,
});

fn writing() -> MutexGuard<'static, Writing> {
    WRITING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What `interrupt` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupted {
    /// No set of outputs was in place yet: the temporary files being written are removed.
    BeforeCommit,
    /// A set of outputs was already renamed into place: the run's work is done.
    AfterCommit,
}

/// For a signal handler that ends the process next: waits for a commit in progress to finish,
/// removes every temporary output file, stops any later commit from starting (it waits until
/// the process ends), and says whether a set of outputs was already in place.
pub fn interrupt() -> Interrupted {
    let mut state = writing();
    let found = state.stop();
    // The lock stays held until the process ends: no rename starts after the removal.
    std::mem::forget(state);
    found
}

impl Writing {
    /// Removes the temporary files and the folders made for them (if empty); whether a set
    /// was in place.
    fn stop(&mut self) -> Interrupted {
        for path in self.temporary.drain(..) {
            let _ = std::fs::remove_file(path);
        }
        for folder in self.folders.drain(..).rev() {
            let _ = std::fs::remove_dir(folder);
        }
        if self.committed {
            Interrupted::AfterCommit
        } else {
            Interrupted::BeforeCommit
        }
    }
}

/// Whether `a` and `b` name the same file: the same device and inode (through symbolic
/// links, and for hard links), or elsewhere the same canonical path.
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The folder a file path is in (`.` for a bare name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Checks that `folder` takes a new file whose name is `name_length` bytes long (and the
/// shorter temporary names): creates one exclusively there and removes it at once.
fn probe(flag: &str, path: &Path, folder: &Path, name_length: usize) -> Result<()> {
    let length = name_length.max(PREFIX.len() + RANDOM_CHARACTERS + SUFFIX.len());
    let created = tempfile::Builder::new()
        .prefix(PREFIX)
        .rand_bytes(length - PREFIX.len() - SUFFIX.len())
        .suffix(SUFFIX)
        .tempfile_in(folder);
    created.map(drop).map_err(|e| {
        let reason = match std::fs::metadata(folder) {
            Err(_) => "it does not exist".to_string(),
            Ok(existing) if !existing.is_dir() => "it is not a folder".to_string(),
            // The system's words alone: `tempfile` appends the (long) probe's path.
            Ok(_) => match e.to_string().split_once(" at path ") {
                Some((words, _)) => words.to_string(),
                None => e.to_string(),
            },
        };
        Error::InvalidArgument(format!(
            "{flag} {}: cannot create a file in folder {} ({reason}); expected a writable \
             folder and a name it takes",
            path.display(),
            folder.display()
        ))
    })
}

/// Refuses an output that is one of `inputs` (each with its flag, such as `--weights`).
fn check_not_input(flag: &str, path: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    for (input_flag, input) in inputs {
        if same_file(path, input) {
            return Err(Error::InvalidArgument(format!(
                "{flag} {} is the same file as the {} ({input_flag} {}); expected an output \
                 path that is none of the inputs",
                path.display(),
                input_flag.trim_start_matches('-'),
                input.display()
            )));
        }
    }
    Ok(())
}

/// Checks, before any work, the output file `path` given by `flag` (`--output`, `--json`):
/// refused (exit 2) when it is one of `inputs` (each with its flag: the same path, a hard or
/// symbolic link), when it exists and is not a regular file (a device, a FIFO, a folder), or
/// when its folder cannot take a new file of its name (missing, not writable, the name too
/// long for the file system).
pub fn check_output(flag: &str, path: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    let name = path.file_name().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{flag} {} names no file; expected a file path",
            path.display()
        ))
    })?;
    check_not_input(flag, path, inputs)?;
    check_replaceable(flag, path)?;
    probe(flag, path, folder_of(path), name.len())
}

/// Refuses an output path that exists and is not a regular file.
fn check_replaceable(flag: &str, path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(existing) if !existing.is_file() => Err(Error::InvalidArgument(format!(
            "{flag} {} exists and is not a regular file; expected a new file or a regular file \
             to replace",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Checks, before any work, the folder `folder` given by `flag` (`--png`, `--save`) that will
/// take outputs whose names `is_output_name` recognises: it is a folder, or can be made as
/// one inside an existing writable folder (not a file, not a link to nothing), and none of
/// `inputs` is in it under an output's name. Names up to `name_length` bytes are written.
pub fn check_output_folder(
    flag: &str,
    folder: &Path,
    name_length: usize,
    inputs: &[(&str, &Path)],
    is_output_name: fn(&str) -> bool,
) -> Result<()> {
    let bad = |what: &str| {
        Error::InvalidArgument(format!(
            "{flag} {} {what}; expected a folder, or a new one inside an existing folder",
            folder.display()
        ))
    };
    if folder.as_os_str().is_empty() {
        return Err(bad("names no folder"));
    }
    match (std::fs::symlink_metadata(folder), std::fs::metadata(folder)) {
        (Ok(_), Ok(existing)) if existing.is_dir() => {
            for (input_flag, input) in inputs {
                let named_like_an_output = input
                    .file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(is_output_name);
                if named_like_an_output && same_file(folder_of(input), folder) {
                    return Err(Error::InvalidArgument(format!(
                        "{flag} {}: the {} ({input_flag} {}) is in it under a name the \
                         command writes; expected a folder that holds none of the inputs",
                        folder.display(),
                        input_flag.trim_start_matches('-'),
                        input.display()
                    )));
                }
            }
            probe(flag, folder, folder, name_length)
        }
        (Ok(_), Ok(_)) => Err(bad("exists and is not a folder")),
        (Ok(_), Err(_)) => Err(bad("is a link to nothing")),
        (Err(_), _) => {
            // A new folder, made with any missing parent: the nearest existing ancestor must
            // be a folder that takes the first of them.
            let mut first = folder;
            let mut parent = folder_of(folder);
            while std::fs::symlink_metadata(parent).is_err() && parent != Path::new(".") {
                first = parent;
                parent = folder_of(parent);
            }
            let name = first.file_name().ok_or_else(|| bad("names no folder"))?;
            match std::fs::metadata(parent) {
                Ok(existing) if existing.is_dir() => probe(flag, folder, parent, name.len()),
                _ => Err(bad(&format!(
                    "cannot be made: {} is not a folder",
                    parent.display()
                ))),
            }
        }
    }
}

/// The mode a replacement keeps: the replaced file's, less set-user-ID and set-group-ID (the
/// new file is this user's).
fn kept_mode(permissions: std::fs::Permissions) -> std::fs::Permissions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::Permissions::from_mode(permissions.mode() & 0o1777)
    }
    #[cfg(not(unix))]
    permissions
}

/// A file staged for a set: its temporary file and its target.
struct Staged {
    temporary: tempfile::TempPath,
    target: PathBuf,
}

/// Outputs written as one set: `add` stages each in a temporary file beside its target, and
/// `commit` renames them all into place. A set dropped before `commit` (a failure on the way)
/// removes its temporary files and the folders it made, so a failed run leaves none of it.
///
/// A new file gets the mode `0666 & !umask` (as `touch` and `cp` give it); a replaced file
/// keeps its mode (as `cp` and editors do).
#[derive(Default)]
pub struct Outputs {
    staged: Vec<Staged>,
    made_folders: Vec<PathBuf>,
}

impl Outputs {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `folder` (and any missing parent) for outputs of this set, if it is not there.
    pub fn folder(&mut self, folder: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut next = Some(folder);
        while let Some(path) = next.filter(|p| !p.as_os_str().is_empty()) {
            if std::fs::symlink_metadata(path).is_ok() {
                break;
            }
            missing.push(path.to_path_buf());
            next = path.parent();
        }
        for path in missing.into_iter().rev() {
            std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?;
            writing().folders.push(path.clone());
            self.made_folders.push(path);
        }
        Ok(())
    }

    /// Stages `bytes` for `path`: written to a temporary file created exclusively, with an
    /// unpredictable name, in `path`'s folder (never through a link or a file someone
    /// planted), given its mode and synced.
    pub fn add(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        check_replaceable("output", path)?;
        path.file_name().ok_or_else(|| {
            Error::InvalidArgument(format!("output path {} names no file", path.display()))
        })?;
        let replaced = std::fs::metadata(path)
            .ok()
            .map(|m| kept_mode(m.permissions()));
        let mut builder = tempfile::Builder::new();
        builder
            .prefix(PREFIX)
            .rand_bytes(RANDOM_CHARACTERS)
            .suffix(SUFFIX);
        #[cfg(unix)]
        if replaced.is_none() {
            // The system applies the umask (or the folder's default ACL) to this mode.
            use std::os::unix::fs::PermissionsExt as _;
            builder.permissions(std::fs::Permissions::from_mode(0o666));
        }
        let mut temporary = builder
            .tempfile_in(folder_of(path))
            .map_err(|e| Error::io(path, e))?;
        writing().temporary.push(temporary.path().to_path_buf());
        let written = temporary
            .write_all(bytes)
            .and_then(|()| match replaced {
                // Made private (0600), it takes the replaced file's mode once written.
                Some(mode) => temporary.as_file().set_permissions(mode),
                None => Ok(()),
            })
            .and_then(|()| temporary.as_file().sync_all());
        let temporary = temporary.into_temp_path();
        let staged = Staged {
            temporary,
            target: path.to_path_buf(),
        };
        // Staged first, so a failure below is cleaned up with the rest of the set.
        self.staged.push(staged);
        written.map_err(|e| Error::io(path, e))
    }

    /// Renames every staged file into place, in the order added; the paths written. Should a
    /// rename fail, the files not yet renamed are removed and the error names the outputs
    /// already in place.
    pub fn commit(mut self) -> Result<Vec<PathBuf>> {
        let staged = std::mem::take(&mut self.staged);
        let mut written: Vec<PathBuf> = Vec::with_capacity(staged.len());
        // Held across the renames: a signal handler sees none of them or all.
        let mut state = writing();
        state
            .temporary
            .retain(|p| !staged.iter().any(|s| *s.temporary == **p));
        for Staged { temporary, target } in staged {
            if let Err(e) = temporary.persist(&target) {
                let path = if written.is_empty() {
                    target.display().to_string()
                } else {
                    // The folders hold outputs now: they stay.
                    let made = std::mem::take(&mut self.made_folders);
                    state.folders.retain(|f| !made.contains(f));
                    let names: Vec<String> =
                        written.iter().map(|p| p.display().to_string()).collect();
                    format!("{} (after writing {})", target.display(), names.join(", "))
                };
                return Err(Error::Io {
                    path,
                    source: e.error,
                });
            }
            written.push(target);
        }
        state.committed = true;
        let made = std::mem::take(&mut self.made_folders);
        state.folders.retain(|f| !made.contains(f));
        Ok(written)
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        if !self.staged.is_empty() || !self.made_folders.is_empty() {
            let (staged, made) = (&self.staged, &self.made_folders);
            let mut state = writing();
            state
                .temporary
                .retain(|p| !staged.iter().any(|s| *s.temporary == **p));
            state.folders.retain(|f| !made.contains(f));
        }
        // The temporary files go with `staged`; then the folders made for them, if empty.
        self.staged.clear();
        for folder in self.made_folders.iter().rev() {
            let _ = std::fs::remove_dir(folder);
        }
    }
}

/// Writes `bytes` to `path` atomically, as a set of one (see `Outputs`): on failure `path`
/// is untouched and no temporary file is left.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut outputs = Outputs::new();
    outputs.add(path, bytes)?;
    outputs.commit().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_set_leaves_nothing_and_a_committed_one_everything() {
        let folder =
            std::env::temp_dir().join(format!("metacompress-outputs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&folder);
        let made = folder.join("made").join("deeper");
        let mut outputs = Outputs::new();
        outputs.folder(&made).unwrap();
        outputs.add(&made.join("a.bin"), b"a").unwrap();
        outputs.add(&made.join("b.bin"), b"b").unwrap();
        drop(outputs);
        assert!(
            !folder.exists(),
            "the folders made for a failed set are gone"
        );
        let mut outputs = Outputs::new();
        outputs.folder(&made).unwrap();
        outputs.add(&made.join("a.bin"), b"a").unwrap();
        outputs.add(&made.join("b.bin"), b"b").unwrap();
        let written = outputs.commit().unwrap();
        assert_eq!(written, [made.join("a.bin"), made.join("b.bin")]);
        assert_eq!(std::fs::read(made.join("b.bin")).unwrap(), b"b");
        assert_eq!(std::fs::read_dir(&made).unwrap().count(), 2);
        std::fs::remove_dir_all(&folder).unwrap();
    }

    #[test]
    fn stopping_removes_the_temporary_files_and_says_whether_a_set_was_in_place() {
        let file = tempfile::Builder::new().suffix(SUFFIX).tempfile().unwrap();
        let path = file.path().to_path_buf();
        let folder = tempfile::tempdir().unwrap();
        let made = folder.path().join("made");
        std::fs::create_dir(&made).unwrap();
        let mut state = Writing {
            temporary: vec![path.clone()],
            folders: vec![made.clone()],
            committed: false,
        };
        assert_eq!(state.stop(), Interrupted::BeforeCommit);
        assert!(!path.exists(), "what a signal handler removes is gone");
        assert!(!made.exists(), "and the folder made for it");
        state.committed = true;
        assert_eq!(state.stop(), Interrupted::AfterCommit);
    }
}

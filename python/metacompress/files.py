"""Writing outputs as the runtime does (SPEC section 6, docs/FORMATS.md "Writing outputs"), one
implementation for every Python command (train, evaluate, export_features) and `PMeta.save`.

- Checked before any work (`check_output`, `check_distinct`): an output that is one of the
  command's inputs (the same path, a hard or symbolic link to it), that exists and is not a
  regular file (a folder, a device), that names a folder (`out/`), whose extension the
  writer cannot write, or that is two of the command's outputs at once, is refused
  (`OutputError`, status 2); a folder that is missing, not a folder or not writable too
  (status 1: the environment, not the arguments).
- Written atomically: each file through a temporary file created exclusively in the output's
  folder (`.NAME.XXXXXXXX.partial`), synced, then renamed over the output, so that a failed or
  interrupted run never leaves a half-written file and an existing output is changed only by a
  run that succeeds. A command's outputs are one set (`Outputs`): every file is staged first,
  and the renames happen only when all are written, so a failure leaves none of the set.
- A new file gets mode `0666 & ~umask`, as any program's `open` would give it; a replaced file
  keeps its mode."""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence, Tuple

Source = Tuple[str, "os.PathLike | str"]
"""An input as outputs are checked against it: `(its flag or name, its path)`."""


class OutputError(ValueError):
    """An output refused before any work; `status` is the command's exit status: 2 for the
    arguments' fault, 1 for the environment's (a missing or read-only folder)."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


def umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def same_file(a, b) -> bool:
    """Whether the paths `a` and `b` name one file: the same path, a hard link or a symbolic
    link to it (same device and inode); paths that do not exist yet, by their real paths."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(flag: str, path, inputs: Iterable[Source] = (),
                 suffixes: Sequence[str] | None = None) -> Path:
    """`path` checked as the output `flag` names (see the module's text): not one of `inputs`,
    a new file or a regular file to replace, in a writable folder, its extension one of
    `suffixes` (lower case, with the dot) where given. Returns it as a `Path`."""
    text = os.fspath(path)
    path = Path(text)
    if not path.name or text.endswith(os.sep) or text.endswith("/"):
        raise OutputError(f"{flag} {text} names a folder; expected a file name")
    for name, source in inputs:
        if same_file(path, source):
            raise OutputError(f"{flag} {path} is the same file as the input {name} {source}; "
                              "expected another path")
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputError(f"{flag} {path}: expected a name ending in {' or '.join(suffixes)}")
    try:
        existing = path.stat()
    except FileNotFoundError:
        existing = None
    except OSError as error:
        raise OutputError(f"{flag} {path}: {error.strerror}", 1) from None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        raise OutputError(f"{flag} {path} exists and is not a regular file; expected a new file "
                          "or a regular file to replace")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{flag} {path}: the folder {folder} does not exist", 1)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: the folder {folder} is not writable", 1)
    return path


def check_distinct(outputs: Sequence[Source]) -> None:
    """Refuses two of a command's outputs that are one file."""
    for index, (flag, path) in enumerate(outputs):
        for other_flag, other in outputs[index + 1:]:
            if same_file(path, other):
                raise OutputError(f"{flag} {path} and {other_flag} {other} are the same file; "
                                  "expected different paths")


class Outputs:
    """A command's outputs written as one set: `add` stages each file in a temporary file
    beside it, `commit` renames them all over their outputs once every one is written. Used as
    a context manager, a set left without `commit` (an error on the way) is removed: none of
    its outputs changes."""

    def __init__(self):
        self._staged: list[tuple[str, Path]] = []

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        self.discard()
        return False

    def add(self, path, write: Callable[[BinaryIO], object]) -> None:
        """Calls `write(stream)` on a new temporary file beside `path`, synced and given the
        output's mode; renamed over `path` by `commit`."""
        path = Path(path)
        if not path.name:
            raise OutputError(f"output {path} names no file")
        try:
            existing = path.stat()
        except FileNotFoundError:
            existing = None
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            raise OutputError(f"output {path} exists and is not a regular file; expected a new "
                              "file or a regular file to replace")
        mode = stat.S_IMODE(existing.st_mode) if existing is not None else 0o666 & ~umask()
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".partial",
                                                 dir=path.parent if str(path.parent) else ".")
        self._staged.append((temporary, path))
        with os.fdopen(descriptor, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
            os.fchmod(stream.fileno(), mode)

    def add_bytes(self, path, data: bytes) -> None:
        """`add` of `data`."""
        self.add(path, lambda stream: stream.write(data))

    def commit(self) -> None:
        """Renames every staged file over its output, in the order added."""
        while self._staged:
            temporary, path = self._staged[0]
            os.replace(temporary, path)
            self._staged.pop(0)

    def discard(self) -> None:
        """Removes the staged files not yet renamed."""
        for temporary, _ in self._staged:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
        self._staged.clear()


def write_atomically(path, write: Callable[[BinaryIO], object]) -> None:
    """Calls `write(stream)` on a temporary file beside `path`, then renames it over `path`.
    On any failure (or an interrupt) the temporary file is removed and `path` is untouched."""
    with Outputs() as outputs:
        outputs.add(path, write)
        outputs.commit()


def write_bytes(path, data: bytes) -> None:
    """`data` written to `path` atomically (see `write_atomically`)."""
    write_atomically(path, lambda stream: stream.write(data))

"""Writing outputs as the runtime does (SPEC section 6): atomically, through a temporary file
created exclusively in the output's folder (`.NAME.XXXXXXXX.partial`), synced, then renamed
over the output, so that a failed or interrupted run never leaves a half-written file and an
existing output is changed only by a run that succeeds. A new file gets mode
`0666 & ~umask`, as any program's `open` would give it; a replaced file keeps its mode."""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, BinaryIO


def umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(path, write: Callable[[BinaryIO], object]) -> None:
    """Calls `write(stream)` on a temporary file beside `path`, then renames it over `path`.
    On any failure (or an interrupt) the temporary file is removed and `path` is untouched."""
    path = Path(path)
    if not path.name:
        raise ValueError(f"output {path} names no file")
    try:
        existing = path.stat()
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        raise ValueError(f"output {path} exists and is not a regular file; expected a new file "
                         "or a regular file to replace")
    mode = stat.S_IMODE(existing.st_mode) if existing is not None else 0o666 & ~umask()
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial",
                                             dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
            os.fchmod(stream.fileno(), mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def write_bytes(path, data: bytes) -> None:
    """`data` written to `path` atomically (see `write_atomically`)."""
    write_atomically(path, lambda stream: stream.write(data))

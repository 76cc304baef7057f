"""Type stubs of the Rust extension (python/src/lib.rs). Call it through `metacompress`
(runtime.py), which hands torch tensors over as numpy views and wraps the outputs."""
from typing import Optional, Sequence

import numpy as np
import numpy.typing as npt

__version__: str
"""The native library's version (the crate's)."""

class UsageError(ValueError):
    """A bad argument: where the command line exits with status 2; its message is that line."""

class Error(RuntimeError):
    """Any other failure: where the command line exits with status 1; its message is that line."""

class Compressor:
    def __init__(
        self,
        weights: Optional[str],
        backend: str,
        precision: str,
        threads: Optional[int] = None,
    ) -> None: ...
    @property
    def device(self) -> str: ...
    @property
    def choice(self) -> Optional[str]: ...
    def compress(
        self,
        x: npt.NDArray[np.float32] | npt.NDArray[np.float16] | npt.NDArray[np.uint16],
        bf16: bool,
        grids: Optional[Sequence[Sequence[int]]],
        layout: Optional[str],
        keep: float,
        scope: str,
        method: str,
        seed: int,
        attention: Optional[npt.NDArray[np.float32]],
        projection: bool,
        extra: list[tuple[np.ndarray, bool]] = ...,
    ) -> tuple[np.ndarray, Optional[npt.NDArray[np.float32]], list[tuple[int, int]], float,
               list[np.ndarray]]: ...

def layout(preset: str, pinpoints: Optional[str] = None) -> tuple[int, list[tuple[int, int, int, int]]]: ...
def devices() -> list[dict[str, object]]: ...
def method_scope(method: str, scope: str) -> str: ...

"""The processes of one run under `accelerate launch` or `torchrun` (SPEC sections 10, 12):
which one this is, and the few collective steps training and evaluation share. Without a
launcher there is one process and nothing here touches torch.distributed.

A failure in one process must stop all of them with one message and no hang: every process
passes its outcome (an exception or None) to `agree` at the same points; when any failed, each
raises the first failure (in process order), and only the main process prints it.
"""
from __future__ import annotations

import atexit
import os
import pickle


def count() -> int:
    """How many processes run (`WORLD_SIZE`, set by the launchers; 1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's index, 0 to `count() - 1` (`RANK`)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's index on its machine (`LOCAL_RANK`): the accelerator it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Whether this process writes the outputs and prints."""
    return rank() == 0


def start() -> None:
    """Joins the processes' group when there are several, with the backend accelerate picks
    (gloo on CPU, nccl on CUDA): through accelerate's `PartialState` when it is installed (on a
    machine without an accelerator, or with `ACCELERATE_USE_CPU=1`, as multi-CPU), so that an
    `Accelerator` made later adopts the same group."""
    if count() == 1:
        return
    import torch
    import torch.distributed as distributed
    if distributed.is_initialized():
        return
    accelerated = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    cpu = not accelerated or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    try:
        from accelerate import PartialState
    except ImportError:   # evaluation without the train extra
        if not cpu and torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        distributed.init_process_group("gloo" if cpu else "nccl")
    else:
        PartialState(cpu=cpu)
    # Leave the group before the interpreter tears down: a process that exits with it alive
    # can abort in the backend's threads ("terminate called without an active exception").
    atexit.register(finish)


def finish() -> None:
    """Leaves the processes' group, if this process joined one."""
    import torch.distributed as distributed
    if distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def gather(value) -> list:
    """Every process's `value` (picklable), in process order, on every process."""
    if count() == 1:
        return [value]
    import torch.distributed as distributed
    start()
    values = [None] * distributed.get_world_size()
    distributed.all_gather_object(values, value)
    return values


def portable(error: BaseException) -> BaseException:
    """`error`, or a RuntimeError with its message where it cannot be pickled."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(str(error))


def agree(error: BaseException | None, values=None) -> list:
    """Every process's `values` when none failed; otherwise raises, in each process, the first
    failure (this process's own, where it is that one). Every process must call it at the same
    point."""
    outcomes = gather((None if error is None else portable(error), values))
    failures = [(index, failed) for index, (failed, _) in enumerate(outcomes) if failed is not None]
    if failures:
        index, first = failures[0]
        raise error if index == rank() else first
    return [values for _, values in outcomes]

"""What every Python command (`python -m metacompress.evaluate`, `export_features`, `toy`,
`train`) shares at its top: arguments refused in one line rather than argparse's usage text,
and one handler that turns any failure into one `error: ...` line on stderr and an exit
status, as the command line does (docs/FORMATS.md, "Exit status"): 2 for the arguments' fault,
1 for anything else (a file, a model, the memory, a bug), 130 for an interrupt. No traceback
reaches the user."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


class CommandUsage(Exception):
    """A bad argument found by a command itself: `error: ...`, exit 2."""


class CommandFailure(Exception):
    """Anything else that stops a command, said in its words: `error: ...`, exit 1."""


class Parser(argparse.ArgumentParser):
    """argparse, its refusals raised as `CommandUsage` (one line, see --help) rather than
    printed with the usage text."""

    def error(self, message):
        raise CommandUsage(f"{message} (see --help)")


def one_line(error: BaseException) -> str:
    """The error's message on one line (its type where it has none), cut after 500
    characters: a message may echo a huge value."""
    text = " ".join(str(error).split())
    if isinstance(error, RecursionError):
        text = f"nested too deeply to read ({text})"
    elif isinstance(error, MemoryError):
        text = f"out of memory{': ' + text if text else ''}"
    elif not text or isinstance(error, (KeyError, AttributeError, TypeError)):
        text = f"{type(error).__name__}{': ' + text if text else ''}"
    return text if len(text) <= 500 else f"{text[:500]}... ({len(text)} characters)"


def status_of(error: BaseException, usage: Sequence[type]) -> int:
    """The exit status of `error`: 2 for `CommandUsage`, the `usage` classes and an output
    refused as the arguments' fault; 1 for anything else."""
    status = getattr(error, "status", None)
    if isinstance(status, int) and isinstance(error, ValueError):   # files.OutputError
        return status
    return 2 if isinstance(error, (CommandUsage, *usage)) else 1


def run(work: Callable[[], object], usage: Sequence[type] = (), speak: bool = True) -> int:
    """Runs a command's `work` and returns its exit status: 0, or the status of what stopped
    it after its one `error:` line (`usage`: more exception classes that are the arguments'
    fault; `speak` False: no line, as in every process of several but the first). `SystemExit` (`--help`) and `AssertionError` (a bug of the program, which the
    tests also raise to stop a run at a given point) pass through."""
    try:
        work()
    except (SystemExit, AssertionError):
        raise   # --help; a failed assertion is the program's bug, kept with its traceback
    except KeyboardInterrupt:
        if speak:
            print("error: interrupted", file=sys.stderr)
        return 130
    except BaseException as error:   # noqa: BLE001 (a panic of the runtime is a BaseException)
        if speak:
            print(f"error: {one_line(error)}", file=sys.stderr)
        return status_of(error, usage)
    return 0

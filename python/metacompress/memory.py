"""Peak memory of this process, for the runtime's read-in-place checks and measurements
(Linux: the resident-set high-water mark, which /proc/self/clear_refs can reset)."""
import resource


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def peak_reset() -> int:
    """Resets the peak to the present resident size (where the kernel allows it) and returns
    the resident size in bytes: what `peak_since_reset` is measured from."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return _status("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_since_reset() -> int:
    """The peak resident size in bytes since `peak_reset` (since the start without it)."""
    try:
        return _status("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

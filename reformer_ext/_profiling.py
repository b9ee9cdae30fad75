"""Peak-memory and timing helpers shared by the demo (``python -m reformer_ext``) and the
scripts in ``benchmarks/`` (through ``benchmarks/_harness.py``).

Peak memory of one step
    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
    allocated before the step.

    CPU: PyTorch has no peak counter for CPU memory, so we use the process' resident-set
    high-water mark (Linux): write "5" to ``/proc/self/clear_refs`` (resets ``VmHWM`` to the
    current RSS), read ``VmRSS`` as the baseline, run the step, read ``VmHWM``. The difference
    is the most memory the step had live at once on top of what existed before it, at page
    granularity, counting every allocation (tensors and anything else).

    That is only honest if freed memory leaves the RSS. glibc's malloc keeps freed blocks of
    its heap for reuse (then a step that reuses them looks free) and, by default, raises its
    mmap threshold up to 32 MiB as the program runs. So during the measured step we make every
    allocation of 64 KiB or more its own mmap, returned to the kernel on free
    (``mallopt(M_MMAP_THRESHOLD, 64 KiB)``, the same as starting the process with
    ``MALLOC_MMAP_THRESHOLD_=65536``), and release the heap's free memory first
    (``malloc_trim(0)``). Afterwards the thresholds are set to glibc's dynamic maxima, so that
    timed code does not pay a page fault per first touch of every large buffer. Where this is
    not possible (no glibc, no /proc) the functions say so instead of returning a number.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import statistics
import time
from typing import Callable, Optional

__all__ = ["measure_peak_cpu", "measure_peak_cuda", "measure_peak", "median_time",
           "reset_rss_peak", "status_kib", "unmapped_large_allocations"]

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MEASURE_MMAP_THRESHOLD = 64 * 1024  # = MALLOC_MMAP_THRESHOLD_=65536 of benchmarks/_harness.py
_SPEED_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
_SPEED_TRIM_THRESHOLD = 2 * _SPEED_MMAP_THRESHOLD  # what glibc's dynamic rule would pick

_libc = None


def _glibc():
    """The C library if it has mallopt and malloc_trim (glibc), else None."""
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(None)
            lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


@contextlib.contextmanager
def unmapped_large_allocations():
    """Inside: allocations >= 64 KiB are fresh mmaps, freed memory goes back to the kernel.

    Yields True when the allocator could be set (glibc), False otherwise.
    """
    libc = _glibc()
    if libc is None:
        yield False
        return
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MEASURE_MMAP_THRESHOLD))
    ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 * MEASURE_MMAP_THRESHOLD)) and ok
    libc.malloc_trim(0)
    try:
        yield ok
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _SPEED_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _SPEED_TRIM_THRESHOLD)


def status_kib(field: str, path: str = "/proc/self/status") -> int:
    """A ``<field>: <n> kB`` line of a /proc file, in KiB."""
    with open(path) as f:
        text = f.read()
    m = re.search(rf"^{field}:\s+(\d+)\s*kB", text, re.M)
    if m is None:
        raise ValueError(f"{field} not in {path}")
    return int(m.group(1))


def reset_rss_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak_cpu(step: Callable[[], None]) -> tuple[Optional[float], str]:
    """Run ``step`` once; return (peak extra MiB or None, note). See the module docstring."""
    gc.collect()
    with unmapped_large_allocations() as allocator_set:
        if not reset_rss_peak():
            step()
            return None, "could not reset VmHWM (/proc/self/clear_refs not writable)"
        base = status_kib("VmRSS")
        step()
        hwm = status_kib("VmHWM")
    note = "" if allocator_set else "malloc not adjustable (not glibc): freed memory may be reused unseen"
    return max(hwm - base, 0) / 1024.0, note


def measure_peak_cuda(step: Callable[[], None], device) -> tuple[Optional[float], str]:
    """Run ``step`` once; return (peak extra MiB, "") from the CUDA caching allocator."""
    import torch

    gc.collect()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20, ""


def measure_peak(step: Callable[[], None], device) -> tuple[Optional[float], str]:
    """measure_peak_cuda on a CUDA device, measure_peak_cpu otherwise."""
    import torch

    if torch.device(device).type == "cuda":
        return measure_peak_cuda(step, device)
    return measure_peak_cpu(step)


def median_time(step: Callable[[], None], device, *, repeats: int = 3,
                max_seconds: float = float("inf"),
                prepare: Optional[Callable[[], None]] = None) -> float:
    """Median wall time in seconds of ``repeats`` calls of ``step`` (fewer when they exceed
    ``max_seconds`` in total; at least one). ``prepare`` runs before each call, off the clock.
    The caller warms up first."""
    import torch

    cuda = torch.device(device).type == "cuda"
    times = []
    start = time.perf_counter()
    for _ in range(max(1, repeats)):
        if prepare is not None:
            prepare()
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds:
            break
    return statistics.median(times)

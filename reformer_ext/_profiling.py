"""Peak-memory and timing helpers shared by the demo (``python -m reformer_ext``) and the
scripts in ``benchmarks/`` (through ``benchmarks/_harness.py``).

Two measures of one step's peak memory, both "beyond what was live before the step":

Tensor bytes (the demo: ``measure_step_memory``, ``measure_peak``)
    What PyTorch's allocators hand out for tensors, counted the way PyTorch counts them.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
    allocated before the step.

    CPU: PyTorch keeps no peak counter for its CPU allocator, but the profiler's memory
    accounting sees every allocation and free it makes (the same hook that fills the
    profiler's "[memory]" events): we run the step under ``torch.autograd.profiler.profile(
    profile_memory=True)`` and replay its allocation events (pointer, signed size, time) in time
    order. The running sum of the bytes allocated during the step and not yet freed is what the
    step has live on top of what existed before it; "peak" is its maximum. That covers
    allocations made inside reformer_ext's C++ operators (they allocate through ATen) and those
    of autograd's backward (on the CPU it runs on the thread that calls ``backward()``; the
    engine carries the profiler's thread-local state to its device threads). It does not cover
    memory outside the CPU allocator (the C++ kernels' per-thread scratch vectors, reused from
    call to call, MKL/oneDNN workspaces, Python objects), nor allocations on threads the step
    starts itself or on the worker threads of an intra-op parallel region (OpenMP does not carry
    the profiler's thread-local state; reformer_ext's kernels allocate no tensors there). A
    tensor that existed before the step and is freed during it is not seen (the profiler does
    not know its size), so such frees are not subtracted: free what the step would replace
    before measuring (the demo sets the previous step's gradients to None first).

    Both count tensor storage bytes as requested (CUDA's caching allocator rounds each block up
    to 512 bytes), not the pages the process holds.

    Gradients: ``measure_step_memory(..., params)`` also splits the peak. The allocations whose
    storage is a parameter's ``.grad`` after the step are the parameter gradients (they grow with
    the number of parameters for every kind of model and outlive the step); "activations" is the
    most bytes live at once that are not those gradients: saved activations, recomputed inputs,
    gradients of activations, temporaries and the output. On CUDA the split also comes from the
    profiler's events (of the CUDA caching allocator); the total stays max_memory_allocated.

Resident set (``benchmarks/``: ``measure_peak_cpu``)
    The process' resident-set high-water mark (Linux), which counts every allocation (tensors
    and anything else) at page granularity: write "5" to ``/proc/self/clear_refs`` (resets
    ``VmHWM`` to the current RSS), read ``VmRSS`` as the baseline, run the step, read ``VmHWM``.

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
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

__all__ = ["StepMemory", "measure_step_memory", "measure_peak", "measure_peak_cpu",
           "measure_peak_cuda", "median_time", "reset_rss_peak", "status_kib",
           "unmapped_large_allocations"]

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
    """Run ``step`` once; return (peak extra resident-set MiB or None, note): the RSS measure
    of the module docstring (every allocation, page-granular), used by ``benchmarks/``."""
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


# --------------------------------------------------------------------------------------------
# tensor bytes


@dataclass
class StepMemory:
    """Tensor bytes of one step beyond what was live before it (see the module docstring).

    ``peak``: the most bytes live at once. ``activations``: the same, not counting the storages
    that are parameter gradients after the step. ``grads``: the bytes of those gradients that the
    step allocated. None where not measured; ``note`` says why, or what to keep in mind.
    """
    peak: Optional[int] = None
    activations: Optional[int] = None
    grads: Optional[int] = None
    note: str = ""

    @property
    def peak_mib(self) -> Optional[float]:
        return None if self.peak is None else self.peak / 2**20

    @property
    def activations_mib(self) -> Optional[float]:
        return None if self.activations is None else self.activations / 2**20

    @property
    def grads_mib(self) -> Optional[float]:
        return None if self.grads is None else self.grads / 2**20


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null inside: Kineto prints a line on every profiler start and
    stop (and a failed GPU probe on machines without one), which would bury the demo's output.
    Used only around starting and stopping the profiler, never around the measured step."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _allocation_events(results, device_type: str) -> list[tuple[int, int, int]]:
    """(time ns, pointer, signed bytes) of the profiler's allocation events on ``device_type``,
    in time order (the event tree nests them under the operators that made them)."""
    from torch._C._profiler import _EventType

    found = []
    pending = list(reversed(results.experimental_event_tree()))
    while pending:  # depth first, each parent before its children, siblings in time order
        event = pending.pop()
        pending.extend(reversed(event.children))
        if event.tag == _EventType.Allocation:
            fields = event.extra_fields
            if fields.device.type == device_type:
                found.append((event.start_time_ns, fields.ptr, fields.alloc_size))
    # stable, so events with equal times keep the tree's order
    found.sort(key=lambda e: e[0])
    return found


def _replay(events: list[tuple[int, int, int]], grad_ptrs: set[int]) -> tuple[int, int, int]:
    """(peak, peak without gradients, gradient bytes) of the allocation events.

    Only frees of blocks allocated within the events count: the profiler may report the free of
    an older block at a reused address with a size it remembers from an earlier session."""
    live: dict[int, tuple[int, int]] = {}  # pointer -> (event index, bytes)
    for i, (_, ptr, size) in enumerate(events):
        if size > 0:
            live[ptr] = (i, size)
        elif size < 0:
            live.pop(ptr, None)
    # the gradients: the blocks still live at the end whose address a .grad storage has
    grad_events = {live[p][0] for p in grad_ptrs if p in live}
    grads = sum(live[p][1] for p in grad_ptrs if p in live)

    sizes: dict[int, tuple[int, bool]] = {}  # pointer -> (bytes, is a gradient)
    total = other = peak = peak_other = 0
    for i, (_, ptr, size) in enumerate(events):
        if size > 0:
            if ptr in sizes:  # its free was not seen: drop the old block
                old, was_grad = sizes.pop(ptr)
                total -= old
                other -= 0 if was_grad else old
            is_grad = i in grad_events
            sizes[ptr] = (size, is_grad)
            total += size
            other += 0 if is_grad else size
            peak = max(peak, total)
            peak_other = max(peak_other, other)
        elif size < 0 and ptr in sizes:
            old, was_grad = sizes.pop(ptr)
            total -= old
            other -= 0 if was_grad else old
    return peak, peak_other, grads


def _grad_storage_ptrs(params: Iterable, device_type: str) -> set[int]:
    ptrs = set()
    for p in params:
        g = getattr(p, "grad", None)
        if g is not None and g.device.type == device_type and g.layout == p.layout:
            ptrs.add(g.untyped_storage().data_ptr())
    return ptrs


def measure_step_memory(step: Callable[[], None], device, params: Iterable = ()) -> StepMemory:
    """Run ``step`` once; return its tensor-byte peak (see the module docstring), split into
    activations and the gradients of ``params`` (parameters whose ``.grad`` the step sets;
    set them to None before, or they are neither freed nor allocated by the step)."""
    import torch

    device = torch.device(device)
    params = list(params)
    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    profiler = None
    if not cuda or params:  # on CUDA only the split needs the events
        profiler = torch.autograd.profiler.profile(profile_memory=True, use_cpu=True)
        try:
            with _quiet_stderr():
                profiler.__enter__()
        except RuntimeError as e:  # e.g. another profiler is running on this thread
            if not cuda:
                step()
                return StepMemory(note=f"CPU allocator not observable: {str(e).splitlines()[0]}")
            profiler = None
    try:
        step()
        if cuda:
            torch.cuda.synchronize(device)
    finally:
        if profiler is not None:
            with _quiet_stderr():
                profiler.__exit__(None, None, None)
    m = StepMemory()
    if cuda:
        m.peak = torch.cuda.max_memory_allocated(device) - base
    if profiler is not None:
        events = _allocation_events(profiler.kineto_results, device.type)
        peak, m.activations, m.grads = _replay(events, _grad_storage_ptrs(params, device.type))
        if not cuda:
            m.peak = peak
    elif params:
        m.note = "activations not split from gradients (profiler busy)"
    else:  # nothing to split off
        m.activations, m.grads = m.peak, 0
    return m


def measure_peak(step: Callable[[], None], device) -> tuple[Optional[float], str]:
    """(peak extra MiB of tensors or None, note) of one run of ``step``: measure_step_memory's
    peak, on the CPU from the profiler's allocation events, on CUDA from the caching allocator."""
    m = measure_step_memory(step, device)
    return m.peak_mib, m.note


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

"""Shared measurement code for the scripts in ``benchmarks/``.

Every benchmark configuration runs in its own fresh Python process (the parent re-runs the
benchmark script with ``--child <json>``), so that one configuration's allocator state, thread
pools, caches or leaks never leak into another's numbers.

Timing
    One or more warm-up steps, then the median wall-clock time (``time.perf_counter``) of N timed
    steps.  N is adaptive: at least ``min_repeats``, more for fast steps, so that the timed part of
    one configuration stays within ``budget_s`` seconds (the minimum wins for slow steps).
    On CUDA the device is synchronised before reading the clock.

Processes
    By default a benchmark measures each configuration in two fresh processes: the timing one is
    started with the default allocator settings, the peak-memory one with the environment below.
    (``MALLOC_MMAP_THRESHOLD_`` makes every large buffer a fresh mmap, page-faulted on first
    touch, which slows allocation-heavy code down; the timing process should not pay that.)
    ``what="both"`` measures both in one process (smoke runs).

Peak memory
    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory
    allocated before the step.
    CPU: PyTorch has no peak counter for CPU memory, so we use the process' resident-set
    high-water mark.  The child is started with ``MALLOC_MMAP_THRESHOLD_=65536`` so that every
    glibc allocation of 64 KiB or more is its own mmap and is returned to the kernel on free (the
    RSS then follows live memory instead of staying at the heap's high point).  After the inputs
    are created and the warm-up is done, we write "5" to ``/proc/self/clear_refs`` (resets
    ``VmHWM`` to the current RSS), read ``VmRSS`` as the baseline, run ONE step and read ``VmHWM``
    (``reformer_ext._profiling.measure_peak_cpu``, which also sets the same threshold with
    ``mallopt`` around the step and releases the heap's free memory before it).
    Reported "peak extra" = VmHWM - baseline, in MiB: the most memory the step had live at once on
    top of what existed before it (inputs, parameters, the loaded libraries).  It counts every
    allocation made by the step, tensors and anything else, at page granularity.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence

try:
    from reformer_ext._profiling import (measure_peak_cpu, measure_peak_cuda, reset_rss_peak,
                                         status_kib)
except ImportError:  # run from a checkout without installing reformer_ext
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from reformer_ext._profiling import (measure_peak_cpu, measure_peak_cuda, reset_rss_peak,
                                         status_kib)

RESULT_TAG = "BENCH_RESULT_JSON:"

#: Environment given to every child process (see the module docstring).
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}

MEMORY_DEFINITION_CPU = (
    "peak extra MiB = VmHWM - VmRSS around ONE step (after warm-up; high-water mark reset by "
    "writing 5 to /proc/self/clear_refs; child run with MALLOC_MMAP_THRESHOLD_=65536 so large "
    "buffers are mmap'ed and RSS follows live memory)"
)
MEMORY_DEFINITION_CUDA = (
    "peak extra MiB = torch.cuda.max_memory_allocated during ONE step (after warm-up) minus "
    "memory allocated before it"
)


# --------------------------------------------------------------------------------------------
# machine description


def num_cores() -> int:
    """CPUs this process may run on (what torch.set_num_threads is given in every child)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_total_gib() -> float | None:
    try:
        return _status_kib("MemTotal", "/proc/meminfo") / 2**20
    except (OSError, ValueError):
        return None


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict:
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": num_cores(),
        "logical_cpus": os.cpu_count(),
        "mem_gib": mem_total_gib(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def machine_lines(info: dict, extra: dict | None = None) -> list[str]:
    mem = f", {info['mem_gib']:.0f} GiB RAM" if info.get("mem_gib") else ""
    lines = [
        f"- CPU: {info['cpu']}, {info['cores']} cores usable "
        f"({info['logical_cpus']} logical CPUs){mem}; torch.set_num_threads({info['cores']})",
        f"- torch {info['torch']}, Python {info['python']}, {info['platform']}",
    ]
    if info.get("gpu"):
        lines.append(f"- GPU: {info['gpu']} (CUDA {info['cuda']})")
    for k, v in (extra or {}).items():
        lines.append(f"- {k}: {v}")
    return lines


# --------------------------------------------------------------------------------------------
# memory


# The measuring itself lives in the package, shared with the demo (python -m reformer_ext).
_status_kib = status_kib


# --------------------------------------------------------------------------------------------
# timing


class StepTimeout(Exception):
    pass


def _alarm_handler(signum, frame):  # pragma: no cover - exercised by slow configs only
    raise StepTimeout()


def measure(
    step: Callable[[], None],
    *,
    what: str = "both",
    budget_s: float = 20.0,
    min_repeats: int = 3,
    max_repeats: int = 200,
    warmup_s: float = 1.0,
    step_limit_s: float | None = 60.0,
    device=None,
    prepare: Callable[[], None] | None = None,
) -> dict:
    """Warm up, then measure the peak memory of one step and/or time N steps.

    ``what``: "time", "memory" or "both" (memory step first, then the timed steps).
    Returns a dict with ``status`` ("ok" or "timeout"), ``median_ms``, ``min_ms``, ``times_ms``,
    ``repeats``, ``peak_mib`` and ``note`` (the keys that apply).  The first warm-up step is
    guarded by ``step_limit_s``: past it, SIGALRM interrupts the step (delivered when the current
    operator returns) and the configuration is reported as a timeout instead of being measured.
    ``prepare`` (e.g. clearing ``.grad``) runs before every step, outside the clock and before the
    memory baseline.
    """
    import torch

    if what not in ("time", "memory", "both"):
        raise ValueError(what)
    cuda = device is not None and torch.device(device).type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    prep = prepare or (lambda: None)

    def timed_step() -> float:
        prep()
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        return time.perf_counter() - t0

    # warm-up: at least one step (two when only memory is measured); the first is time-limited
    use_alarm = step_limit_s is not None and step_limit_s > 0 and hasattr(signal, "setitimer")
    if use_alarm:
        old = signal.signal(signal.SIGALRM, _alarm_handler)
        signal.setitimer(signal.ITIMER_REAL, step_limit_s)
    t_first = None
    try:
        t_first = timed_step()
    except StepTimeout:
        pass
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    if t_first is None or (step_limit_s and t_first > step_limit_s):
        took = f"{t_first:.1f} s" if t_first is not None else f"> {step_limit_s:g} s"
        return {
            "status": "timeout",
            "note": f"one step took {took} (limit {step_limit_s:g} s): not measured",
        }
    warm_t = [t_first]
    if what == "memory":
        if t_first < 5.0:
            warm_t.append(timed_step())
    else:
        while sum(warm_t) < warmup_s and len(warm_t) < 50:
            warm_t.append(timed_step())
    res = {"status": "ok", "warmup": len(warm_t), "note": ""}

    if what in ("memory", "both"):
        prep()
        if cuda:
            res["peak_mib"], res["note"] = measure_peak_cuda(step, device)
        else:
            res["peak_mib"], res["note"] = measure_peak_cpu(step)

    if what in ("time", "both"):
        est = min(warm_t[-3:]) if len(warm_t) > 1 else warm_t[0]
        n = int(budget_s / max(est, 1e-6))
        n = max(min_repeats, min(max_repeats, n))
        times = []
        t_start = time.perf_counter()
        for i in range(n):
            times.append(timed_step())
            if i + 1 >= min_repeats and time.perf_counter() - t_start > budget_s:
                break
        res.update(
            median_ms=statistics.median(times) * 1e3,
            min_ms=min(times) * 1e3,
            times_ms=[t * 1e3 for t in times],
            repeats=len(times),
        )
    return res


def calibrate(seconds: float = 1.0, n: int = 1024) -> float:
    """GFLOP/s of an n x n fp32 matmul on the CPU (median over about ``seconds``).

    Printed before and after a run: on a shared or throttled machine the two differ, and every
    time in the table is suspect by about as much.
    """
    import torch

    a = torch.randn(n, n)
    b = torch.randn(n, n)
    a @ b
    rates = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(rates) < 5:
        t0 = time.perf_counter()
        a @ b
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


# --------------------------------------------------------------------------------------------
# child / parent plumbing


def child_setup(threads: int | None = None) -> int:
    """Call first thing in a child: fixes the thread count. Returns it."""
    import torch

    n = threads or num_cores()
    torch.set_num_threads(n)
    return n


def error_summary(e: BaseException) -> str:
    """One line for a result row: the exception's type and the first line of its message."""
    return (f"{type(e).__name__}: {e}".splitlines() or [""])[0][:300]


def emit_calibration(spec: dict, threads: int) -> bool:
    """In a child started for the machine check (``spec["calibrate"]``): emit the matmul
    GFLOP/s and return True (the child is done); otherwise return False."""
    if not spec.get("calibrate"):
        return False
    emit_result({"status": "ok", "gflops": calibrate(), "threads": threads})
    return True


def machine_check(script: str, threads: int | None) -> tuple:
    """(matmul GFLOP/s measured in a fresh child of ``script``, 1-minute load average): taken
    before and after a run, it shows how busy the machine was (see emit_calibration)."""
    spec = dict(calibrate=True, threads=threads)
    gflops = run_child(script, spec, timeout_s=120, malloc_env=False).get("gflops")
    return gflops, load_average()


def emit_result(result: dict) -> None:
    """Print the child's result on one tagged line (the parent parses the last such line)."""
    sys.stdout.write(RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_child(
    script: str,
    spec: dict,
    *,
    timeout_s: float,
    malloc_env: bool = True,
    extra_env: dict | None = None,
) -> dict:
    """Run ``python script --child <spec json>`` in a fresh process; return its result dict.

    ``malloc_env``: start it with CHILD_ENV (needed for the CPU peak-memory measurement; it makes
    every large allocation a fresh mmap, i.e. page faults on first touch, so timing children are
    started without it).  Never raises for a failing child: returns
    ``{"status": "error: ..."}`` or ``{"status": "timeout", ...}`` instead.
    """
    env = dict(os.environ)
    for k in CHILD_ENV:
        env.pop(k, None)
    if malloc_env:
        env.update(CHILD_ENV)
    env.update(extra_env or {})
    cmd = [sys.executable, script, "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {
            "status": "timeout",
            "note": f"child killed after {timeout_s:.0f} s",
            "wall_s": time.perf_counter() - t0,
        }
    wall = time.perf_counter() - t0
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
    if result is None:
        tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or [""])[-1]
        if proc.returncode < 0:
            try:
                tail = f"killed by {signal.Signals(-proc.returncode).name} {tail}"
            except ValueError:
                pass
        result = {"status": f"error: exit {proc.returncode}: {tail[:300]}"}
    result["wall_s"] = wall
    return result


# --------------------------------------------------------------------------------------------
# reporting


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_mib(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}x" if x < 100 else f"{x:.0f}x"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    align = align or "l" * len(header)
    sep = ["---:" if a == "r" else ":---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(out)


def command_line(argv: Sequence[str] | None = None) -> str:
    argv = list(sys.argv if argv is None else argv)
    script = argv[0]
    try:
        script = os.path.relpath(script)
    except ValueError:
        pass
    return "python " + " ".join(shlex.quote(a) for a in [script] + argv[1:])


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def append_section(path: str, text: str) -> None:
    """Append ``text`` to ``path`` (created if missing), separated by a blank line."""
    exists = os.path.exists(path) and os.path.getsize(path) > 0
    with open(path, "a") as f:
        if exists:
            f.write("\n")
        f.write(text.rstrip("\n") + "\n")

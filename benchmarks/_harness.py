"""Shared code of the scripts in ``benchmarks/``: the common command-line arguments
(``add_common_args``: --device, --quick, --output, --threads, --seed and the timing arguments),
the report header (``report_header``: the command, the machine, torch and the build), and the
measurement, mostly in child processes (below).

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

CUDA events (``measure_cuda_events``, ``bench_attention.py --device cuda``)
    All configurations in one process: one warm-up step (more while the warm-up has taken less
    than ``warmup_s``; a first step slower than ``step_limit_s`` is reported as the only sample),
    then CUDA events around each step, the median of up to ``repeats`` steps within ``budget_s``
    seconds; peak memory of one more step afterwards (below).

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

import argparse
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
    try:
        import reformer_ext

        info["build"] = ("reformer_ext with CUDA kernels" if reformer_ext.has_cuda_kernels()
                         else "reformer_ext CPU-only build")
    except Exception as e:  # noqa: BLE001 - the header still describes the machine
        info["build"] = f"reformer_ext not importable ({error_summary(e)})"
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
    if info.get("build"):
        lines.append(f"- {info['build']}")
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


def report_header(title: str, info: dict, extra: dict | None = None) -> list[str]:
    """The lines every report starts with: its heading, the command that made it, the machine,
    torch and the build (``machine_info``), then ``extra`` as "- key: value" lines."""
    return [title, "", f"Command: `{command_line()}`", "", *machine_lines(info, extra)]


def machine_check_text(checks: tuple) -> str:
    """The "machine check" line of a report from (before, after) ``machine_check`` results."""
    if not checks or None in checks:
        return "not run (--quick)"
    (g0, l0), (g1, l1) = checks

    def f(x, spec):
        return "?" if x is None else format(x, spec)

    return (f"1024x1024 fp32 matmul {f(g0, '.0f')} / {f(g1, '.0f')} GFLOP/s, 1-minute load "
            f"average {f(l0, '.1f')} / {f(l1, '.1f')}, before / after the run (if they differ, or "
            "the load exceeds the core count, the machine was shared or throttled and the times "
            "are noisy: compare min with median)")


def peer_versions(names: Sequence[str] = ("reformer-pytorch", "transformers")) -> str:
    """"name version, ..." of the peer packages (see requirements.txt), for a report line."""
    from importlib import metadata

    out = []
    for name in names:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name} not installed")
    return ", ".join(out)


def memory_definition(device: str) -> str:
    return MEMORY_DEFINITION_CUDA if device == "cuda" else MEMORY_DEFINITION_CPU


def publish(text: str, output: str | None) -> None:
    """Print the report; with ``--output``, also append it to that file."""
    print(text)
    if output:
        append_section(output, text)
        print(f"appended to {output}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# command line


DEVICES = ("cpu", "cuda")


def parse_length(text: str) -> int:
    """A sequence length: "4096", "16K" (K = 1024) or "1M" (M = 1024 * 1024)."""
    t = text.strip().upper()
    if t.endswith("M"):
        return int(float(t[:-1]) * 2**20)
    if t.endswith("K"):
        return int(float(t[:-1]) * 2**10)
    return int(t)


def parse_lengths(text: str) -> list[int]:
    return [parse_length(s) for s in text.split(",") if s.strip()]


def parse_ids(p, text: str, known: Sequence[str], what: str = "impl") -> list[str]:
    """Comma separated ids, each one of ``known`` (else a usage error)."""
    ids = [s.strip() for s in text.split(",") if s.strip()]
    for i in ids:
        if i not in known:
            p.error(f"unknown {what} {i!r}; choose from {list(known)}")
    return ids


def add_common_args(p, *, quick: str, threads: bool = True, seed: bool = True,
                    child: bool = True, timing: dict | None = None) -> None:
    """The arguments the scripts share (see the module docstring); complete the parsed
    namespace with ``finish_common_args``.

    ``timing``: adds --budget, --min-repeats, --repeats, --warmup, --step-limit, --timeout and
    --one-process; a dict of this script's defaults: ``budget`` and ``warmup`` as (quick, full)
    seconds, ``step_limit`` seconds, ``timeout_factor`` (--timeout defaults to
    timeout_factor * step-limit + 120 s).
    """
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where to run (default cpu; cuda needs a GPU and a reformer_ext built "
                        "with its CUDA kernels)")
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--output", default=None, help="append the Markdown section to this file")
    if threads:
        p.add_argument("--threads", type=int, default=None,
                       help="torch.set_num_threads in each child (default: usable cores)")
    if seed:
        p.add_argument("--seed", type=int, default=0)
    if timing is not None:
        bq, bf = timing["budget"]
        wq, wf = timing.get("warmup", (0.1, 1.0))
        p.set_defaults(_timing=timing)
        p.add_argument("--budget", type=float, default=None,
                       help=f"seconds of timed steps per configuration (default {bf:g}, "
                            f"quick {bq:g})")
        p.add_argument("--min-repeats", type=int, default=3,
                       help="timed steps per configuration (per timing process), at least")
        p.add_argument("--repeats", type=int, default=None,
                       help="timed steps per configuration, at most (default 200)")
        p.add_argument("--warmup", type=float, default=None,
                       help=f"seconds of untimed warm-up steps, at least one step (default "
                            f"{wf:g}, quick {wq:g})")
        p.add_argument("--step-limit", type=float, default=None,
                       help="a configuration whose first step runs longer is reported as "
                            f"timeout (default {timing['step_limit']:g} s)")
        p.add_argument("--timeout", type=float, default=None,
                       help="hard limit for one child process, seconds (default "
                            f"{timing['timeout_factor']:g} * step-limit + 120)")
        p.add_argument("--one-process", action="store_true",
                       help="measure time and memory in the same child (default with --quick); "
                            "otherwise timing runs in a child with the default allocator and "
                            "the peak memory in a second child started with "
                            "MALLOC_MMAP_THRESHOLD_")
    if child:
        p.add_argument("--child", default=None, help=argparse.SUPPRESS)


def finish_common_args(p, args, *, cpu_only: str | None = None, **timing_overrides):
    """Fill the defaults that depend on --quick (and ``timing_overrides``, e.g. per device);
    in the parent, check that --device can run here (a usage error saying why not).
    ``cpu_only``: why this script has no CUDA version (--device cuda is then refused)."""
    timing = dict(getattr(args, "_timing", None) or {}, **timing_overrides)
    if timing:
        q = 0 if args.quick else 1
        if args.budget is None:
            args.budget = timing["budget"][q]
        if args.warmup is None:
            args.warmup = timing.get("warmup", (0.1, 1.0))[q]
        if args.repeats is None:
            args.repeats = timing.get("repeats", 200)
        if args.step_limit is None:
            args.step_limit = timing["step_limit"]
        if args.timeout is None:
            args.timeout = timing["timeout_factor"] * args.step_limit + 120
        if args.quick:
            args.one_process = True
    if getattr(args, "child", None) is None:
        problem = device_problem(args.device, cpu_only)
        if problem:
            p.error(f"--device {args.device}: {problem}")
    return args


def device_problem(device: str, cpu_only: str | None = None) -> str | None:
    """None when the benchmark can run on ``device`` here, else one line saying why not."""
    if device != "cuda":
        return None
    if cpu_only:
        return cpu_only
    import torch

    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is "
                "False); run it on a GPU machine or use --device cpu")
    try:
        import reformer_ext

        reformer_ext.require_device(torch.device("cuda"))
    except Exception as e:  # noqa: BLE001 - a CPU-only build, or no reformer_ext at all
        return error_summary(e)
    return None


def import_rx(*required: str):
    """reformer_ext (from the source tree when it is not installed), checked to have the dotted
    attributes ``required`` (an ImportError naming the first one missing)."""
    try:
        import reformer_ext as rx
    except Exception:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if repo in sys.path:
            raise
        sys.path.append(repo)  # not installed: the in-place build of the source tree
        import reformer_ext as rx
    for name in required:
        obj = rx
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if obj is None:
            where = getattr(rx, "__file__", None) or "namespace package"
            raise ImportError(f"reformer_ext ({where}) has no {name} (rebuild the package)")
    return rx


# --------------------------------------------------------------------------------------------
# the child and parent sides of one configuration


def child_entry(args, child_main: Callable[[dict], None]) -> bool:
    """In a child (``--child <json>``): run ``child_main(spec)`` and return True."""
    if getattr(args, "child", None) is None:
        return False
    child_main(json.loads(args.child))
    return True


def child_begin(spec: dict) -> int | None:
    """First thing in a child: fixes the thread count and answers a machine-check request.
    Returns the thread count, or None when the child is done (it was the machine check)."""
    threads = child_setup(spec.get("threads"))
    if emit_calibration(spec, threads):
        return None
    return threads


def child_build(build: Callable[[dict], tuple], spec: dict, threads: int) -> tuple | None:
    """``build(spec)``; on failure emit the row's status (``unavailable: ...`` for an
    ImportError, e.g. a peer that is not installed, else ``error: ...``) and return None."""
    try:
        return build(spec)
    except ImportError as e:
        emit_result({"status": f"unavailable: {error_summary(e)}", "threads": threads})
    except Exception as e:  # noqa: BLE001 - the row says what went wrong
        emit_result({"status": f"error: {error_summary(e)}", "threads": threads})
    return None


def measure_spec(step: Callable[[], None], spec: dict, *,
                 prepare: Callable[[], None] | None = None) -> dict:
    """``measure`` with the settings of a child's spec (what, budget_s, min_repeats, repeats,
    warmup_s, step_limit_s, device); an exception becomes an ``error: ...`` status."""
    device = spec.get("device", "cpu")
    try:
        return measure(step, what=spec["what"], budget_s=spec["budget_s"],
                       min_repeats=spec["min_repeats"], max_repeats=spec.get("repeats", 200),
                       warmup_s=spec["warmup_s"], step_limit_s=spec["step_limit_s"],
                       device=None if device == "cpu" else device, prepare=prepare)
    except Exception as e:  # noqa: BLE001 - the row says what went wrong
        return {"status": f"error: {error_summary(e)}"}


def measure_child(spec: dict, build: Callable[[dict], tuple], make_step: Callable) -> None:
    """The usual child: ``child_begin``, ``child_build``, then ``make_step(spec, *built)`` ->
    (prepare or None, step, finish or None), ``measure_spec`` and emit the result (``finish(res)``
    may amend it first, e.g. add notes)."""
    threads = child_begin(spec)
    if threads is None:
        return
    built = child_build(build, spec, threads)
    if built is None:
        return
    prepare, step, finish = make_step(spec, *built)
    res = measure_spec(step, spec, prepare=prepare)
    if finish is not None:
        finish(res)
    res["threads"] = threads
    emit_result(res)


def timing_spec(args) -> dict:
    """The spec entries ``measure_spec`` reads, from the common timing arguments."""
    return dict(device=args.device, budget_s=args.budget, min_repeats=args.min_repeats,
                repeats=args.repeats, warmup_s=args.warmup, step_limit_s=args.step_limit,
                seed=args.seed, threads=args.threads)


def join_notes(*notes: str | None) -> str:
    """The non-empty notes, each "; "-separated part once."""
    parts = [p for n in notes if n for p in n.split("; ") if p]
    return "; ".join(dict.fromkeys(parts))


def add_memory(r: dict, m: dict) -> dict:
    """Put the peak memory of a memory child's result ``m`` into the timing result ``r``."""
    r["wall_s"] = r.get("wall_s", 0.0) + m.get("wall_s", 0.0)
    if m["status"] == "ok":
        r["peak_mib"] = m.get("peak_mib")
        r["note"] = join_notes(r.get("note"), m.get("note"))
    else:
        r["note"] = join_notes(r.get("note"), f"memory run: {m['status']}")
    return r


def measure_in_children(script: str, spec: dict, args) -> dict:
    """One configuration in fresh processes: time and memory in one child (``--one-process``),
    or timing in a child with the default allocator, then memory in a second child started
    with CHILD_ENV (see the module docstring)."""
    if args.one_process:
        return run_child(script, dict(spec, what="both"), timeout_s=args.timeout)
    r = run_child(script, dict(spec, what="time"), timeout_s=args.timeout, malloc_env=False)
    if r["status"] != "ok":
        return r
    return add_memory(r, run_child(script, dict(spec, what="memory"), timeout_s=args.timeout))


def machine_checks(script: str, args, before: tuple | None = None) -> tuple:
    """Call before a run (returns ``(check,)``) and after it (pass that as ``before``; returns
    the (before, after) pair for ``machine_check_text``). Skipped with --quick."""
    check = None if args.quick else machine_check(script, args.threads)
    return (check,) if before is None else (before[0], check)


def measure_cuda_events(
    step: Callable[[], None],
    *,
    repeats: int,
    budget_s: float,
    step_limit_s: float,
    warmup_s: float = 0.0,
) -> dict:
    """Time ``step`` with CUDA events in this process, then measure its peak CUDA memory.

    Warm-up: one step (more while the warm-up steps took less than ``warmup_s`` in all); if the
    first takes longer than ``step_limit_s``, its time is the only sample and the note says so.
    Then up to ``repeats`` steps, stopping after 2 once ``budget_s`` seconds have passed since
    the first step began; the median (and min) of their event times. Memory: one more step,
    ``torch.cuda.max_memory_allocated`` during it minus what was allocated before it.
    """
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed() -> float:
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    res = {"status": "ok", "note": ""}
    wall0 = time.perf_counter()
    first = timed()
    warm = [first]
    if first / 1e3 > step_limit_s:
        res["note"] = f"one step took {first / 1e3:.1f} s"
        times = [first]
    else:
        while sum(warm) / 1e3 < warmup_s and len(warm) < 50:
            warm.append(timed())
        times = []
        for i in range(repeats):
            times.append(timed())
            if i + 1 >= 2 and time.perf_counter() - wall0 > budget_s:
                break
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    res.update(median_ms=statistics.median(times), min_ms=min(times), times_ms=times,
               repeats=len(times), warmup=len(warm),
               peak_mib=(torch.cuda.max_memory_allocated() - base) / 2**20)
    return res

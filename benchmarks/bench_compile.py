#!/usr/bin/env python
"""torch.compile on a small ReformerLM training step (CPU): compile time, and eager against
compiled (inductor) step time.

One step = forward of a (batch, length) token batch in training mode (fresh LSH rotations),
cross-entropy against random targets, backward, AdamW step. Only the model is compiled
(``torch.compile(model, fullgraph=True)``); the loss and the optimizer run eagerly in both rows.
reversible=False (the reversible stack does not compile into one graph yet).

Compile time = time of the first compiled step minus the median compiled step (what the first
call spends beyond a normal step: Dynamo, AOTAutograd and inductor's code generation for forward
and backward). Inductor's on-disk cache is disabled, so every run measures a cold compile, and
its worker pool is off (compile_threads=1): the CPU time (os.times: this process and the C++
compiler processes it waits for) then counts all of the compile. Eager and compiled steps are
timed in interleaved rounds (eager round, compiled round, ...) so that load changes on a shared
machine hit both alike; the median per step over all rounds is reported, as wall time and as
CPU time. With one thread, CPU time is close to what the wall time would be on an idle machine;
on a loaded one the wall time also counts the time spent waiting for a core.

The measurement runs in one fresh child process (_harness.run_child), so that nothing compiled
or cached by an earlier run in the same process is reused. CPU only (it measures inductor's C++
code generation and CPU seconds): --device cuda is refused.

    python benchmarks/bench_compile.py                 # defaults below, ~2-4 minutes on 1 core
    python benchmarks/bench_compile.py --quick         # smoke run: length 128, batch 1, 2 rounds
    python benchmarks/bench_compile.py --threads 2 --length 1024
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # cold compiles, every run

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

CPU_ONLY = ("bench_compile.py measures inductor's CPU code generation (C++ compiler time, CPU "
            "seconds); there is no CUDA version")


def cpu_seconds() -> float:
    """CPU time of this process (fine-grained clock) and of its finished children (inductor
    runs the C++ compiler as a child process; os.times counts in 10 ms ticks)."""
    children = os.times()
    return time.process_time() + children.children_user + children.children_system


def make_model(spec: dict):
    import torch

    rx = H.import_rx("nn.ReformerLM")
    torch.manual_seed(0)
    return rx.nn.ReformerLM(spec["vocab"], spec["d_model"], spec["depth"], spec["heads"],
                            spec["length"], bucket_size=spec["bucket_size"],
                            n_hashes=spec["n_hashes"], ff_chunk_size=spec["ff_chunk_size"],
                            reversible=False).train()


def make_step(model, forward, spec: dict):
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    shape = (spec["batch"], spec["length"])
    tokens = torch.randint(0, spec["vocab"], shape, generator=g)
    targets = torch.randint(0, spec["vocab"], shape, generator=g)

    def step() -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) of one step."""
        wall, cpu = time.perf_counter(), cpu_seconds()
        logits = forward(tokens)
        loss = F.cross_entropy(logits.reshape(-1, spec["vocab"]), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - wall, cpu_seconds() - cpu

    return step


def child_main(spec: dict) -> None:
    """The whole measurement, in a fresh process; emits the raw step times."""
    import torch
    import torch._inductor.config

    H.child_setup(spec["threads"])
    torch._inductor.config.compile_threads = 1  # no worker processes: CPU time counts it all

    eager_model = make_model(spec)
    compiled_model = make_model(spec)  # same initial weights, its own optimizer state
    compiled = torch.compile(compiled_model, fullgraph=True)  # inductor
    eager_step = make_step(eager_model, eager_model, spec)
    compiled_step = make_step(compiled_model, compiled, spec)

    eager_step()  # warm-up (allocator, thread pools)
    first_wall, first_cpu = compiled_step()
    compiled_step()  # a second call can still finish lazy initialisation
    eager, compiled_ = [], []
    for _ in range(spec["rounds"]):
        eager += [eager_step() for _ in range(spec["steps_per_round"])]
        compiled_ += [compiled_step() for _ in range(spec["steps_per_round"])]
    H.emit_result({"status": "ok", "first": [first_wall, first_cpu], "eager": eager,
                   "compiled": compiled_, "load_end": H.load_average(),
                   "n_params": sum(p.numel() for p in eager_model.parameters())})


def report(args, r: dict, info: dict) -> str:
    def median_ms(times, which):
        return 1e3 * statistics.median(t[which] for t in times)

    eager, compiled_ = r["eager"], r["compiled"]
    first_wall, first_cpu = r["first"]
    load = r.get("load_end")
    extra = {"threads": f"torch.set_num_threads({args.threads}) in the measuring process; "
                        f"load average {'?' if load is None else format(load, '.2f')} at the "
                        "end"}
    lines = H.report_header(f"## torch.compile: compile time and eager vs compiled step "
                            f"(cpu, {H.now_utc()}{', quick' if args.quick else ''})", info, extra)
    lines += [
        "",
        f"ReformerLM d_model={args.d_model} depth={args.depth} heads={args.heads} "
        f"vocab={args.vocab} ({r['n_params'] / 1e6:.2f} M parameters), batch={args.batch} "
        f"length={args.length}, bucket_size={args.bucket_size} n_hashes={args.n_hashes}, "
        "training step = forward + cross-entropy + backward + AdamW",
        "",
        "```",
        f"compile time (first compiled step - median step): "
        f"{first_wall - median_ms(compiled_, 0) / 1e3:.1f} s wall, "
        f"{first_cpu - median_ms(compiled_, 1) / 1e3:.1f} s CPU",
        f"{'':15}{'wall ms':>10}{'CPU ms':>10}   (medians of {len(eager)} steps)",
    ]
    for name, times in (("eager", eager), ("compiled", compiled_)):
        lines.append(f"{name:15}{median_ms(times, 0):10.1f}{median_ms(times, 1):10.1f}")
    lines += [f"speed-up (eager / compiled): "
              f"{median_ms(eager, 0) / median_ms(compiled_, 0):.2f}x wall, "
              f"{median_ms(eager, 1) / median_ms(compiled_, 1):.2f}x CPU", "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    H.add_common_args(parser, quick="smoke run: length 128, batch 1, 2 rounds of 1 step",
                      seed=False)
    parser.set_defaults(threads=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--bucket-size", type=int, default=64)
    parser.add_argument("--n-hashes", type=int, default=2)
    parser.add_argument("--ff-chunk-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="hard limit for the measuring child process, seconds")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in (("length", 128), ("batch", 1), ("rounds", 2), ("steps_per_round", 1)):
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    H.finish_common_args(parser, args, cpu_only=CPU_ONLY)
    if H.child_entry(args, child_main):
        return
    spec = {k: getattr(args, k) for k in ("batch", "length", "d_model", "depth", "heads", "vocab",
                                          "bucket_size", "n_hashes", "ff_chunk_size", "threads",
                                          "rounds", "steps_per_round")}
    info = H.machine_info()
    r = H.run_child(__file__, spec, timeout_s=args.timeout, malloc_env=False)
    if r["status"] != "ok":
        sys.exit(f"bench_compile.py: the measuring process failed: {r['status']} "
                 f"{r.get('note', '')}".strip())
    H.publish(report(args, r, info), args.output)


if __name__ == "__main__":
    main()

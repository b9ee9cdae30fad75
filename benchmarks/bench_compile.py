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

    python benchmarks/bench_compile.py                 # defaults below, ~2-4 minutes on 1 core
    python benchmarks/bench_compile.py --threads 2 --length 1024
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # cold compiles, every run

import torch  # noqa: E402
import torch._inductor.config  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import reformer_ext as rx  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process (fine-grained clock) and of its finished children (inductor
    runs the C++ compiler as a child process; os.times counts in 10 ms ticks)."""
    children = os.times()
    return time.process_time() + children.children_user + children.children_system


def make_model(args) -> torch.nn.Module:
    torch.manual_seed(0)
    return rx.nn.ReformerLM(args.vocab, args.d_model, args.depth, args.heads, args.length,
                            bucket_size=args.bucket_size, n_hashes=args.n_hashes,
                            ff_chunk_size=args.ff_chunk_size, reversible=False).train()


def make_step(model, forward, args):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, args.vocab, (args.batch, args.length), generator=g)
    targets = torch.randint(0, args.vocab, (args.batch, args.length), generator=g)

    def step() -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) of one step."""
        wall, cpu = time.perf_counter(), cpu_seconds()
        logits = forward(tokens)
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - wall, cpu_seconds() - cpu

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--bucket-size", type=int, default=64)
    parser.add_argument("--n-hashes", type=int, default=2)
    parser.add_argument("--ff-chunk-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch._inductor.config.compile_threads = 1  # no worker processes: CPU time counts it all

    eager_model = make_model(args)
    compiled_model = make_model(args)  # same initial weights, its own optimizer state
    compiled = torch.compile(compiled_model, fullgraph=True)  # inductor
    eager_step = make_step(eager_model, eager_model, args)
    compiled_step = make_step(compiled_model, compiled, args)

    eager_step()  # warm-up (allocator, thread pools)
    first_wall, first_cpu = compiled_step()
    compiled_step()  # a second call can still finish lazy initialisation
    eager, compiled_ = [], []
    for _ in range(args.rounds):
        eager += [eager_step() for _ in range(args.steps_per_round)]
        compiled_ += [compiled_step() for _ in range(args.steps_per_round)]

    def median_ms(times, which):
        return 1e3 * statistics.median(t[which] for t in times)

    n_params = sum(p.numel() for p in eager_model.parameters())
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {args.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.2f} at the end")
    print(f"ReformerLM d_model={args.d_model} depth={args.depth} heads={args.heads} "
          f"vocab={args.vocab} ({n_params / 1e6:.2f} M parameters), batch={args.batch} "
          f"length={args.length}, bucket_size={args.bucket_size} n_hashes={args.n_hashes}, "
          "training step = forward + cross-entropy + backward + AdamW")
    print(f"compile time (first compiled step - median step): "
          f"{first_wall - median_ms(compiled_, 0) / 1e3:.1f} s wall, "
          f"{first_cpu - median_ms(compiled_, 1) / 1e3:.1f} s CPU")
    print(f"{'':15}{'wall ms':>10}{'CPU ms':>10}   (medians of {len(eager)} steps)")
    for name, times in (("eager", eager), ("compiled", compiled_)):
        print(f"{name:15}{median_ms(times, 0):10.1f}{median_ms(times, 1):10.1f}")
    print(f"speed-up (eager / compiled): {median_ms(eager, 0) / median_ms(compiled_, 0):.2f}x "
          f"wall, {median_ms(eager, 1) / median_ms(compiled_, 1):.2f}x CPU")


if __name__ == "__main__":
    main()

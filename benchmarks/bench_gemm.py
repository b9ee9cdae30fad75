#!/usr/bin/env python
"""The CPU GEMM of the operators (torch.ops.reformer._gemm: fixed summation order, results
independent of the thread count) against torch.mm / torch.addmm (MKL or oneDNN) at the chunked
feed-forward's shapes, forward and backward, for chunk rows N, d_model D and d_ff F:

    fwd1   x_c · W1ᵀ      (N, D) x (D, F)      fwd2   h · W2ᵀ        (N, F) x (F, D)
    bwd_a  g_c · W2       (N, D) x (D, F)      bwd_gw2  g_cᵀ · a     (D, N) x (N, F), accumulated
    bwd_gw1  aᵀ · x_c     (F, N) x (N, D), accumulated               bwd_gx  a · W1  (N, F) x (F, D)

Each shape and thread count is timed back to back for both implementations in one process
(interleaved repetitions, so load from other processes on a shared machine hits both alike);
medians are reported.

CPU only (the fixed-order GEMM is the CPU operators' own; on CUDA they use cuBLAS):
--device cuda is refused.

    python benchmarks/bench_gemm.py                       # N=1024, D=512, F=2048, threads 1,2
    python benchmarks/bench_gemm.py --quick               # smoke run: N=256, 1 thread, 3 calls
    python benchmarks/bench_gemm.py --rows 256 --threads 1,2,4 --dtype float64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

CPU_ONLY = ("the fixed-order GEMM (torch.ops.reformer._gemm) is a CPU operator; there is no "
            "CUDA version to measure")


def _shapes(n, d, f, dtype):
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=dtype)

    w1, w2 = r(f, d), r(d, f)
    x, h, gc = r(n, d), r(n, f), r(n, d)
    # name, a, b, accumulator (None: plain product)
    return [
        ("fwd1 x·W1ᵀ", x, w1.t(), None),
        ("fwd2 h·W2ᵀ", h, w2.t(), None),
        ("bwd_a g·W2", gc, w2, None),
        ("bwd_gw2 gᵀ·a +=", gc.t(), h, torch.zeros(d, f, dtype=dtype)),
        ("bwd_gw1 aᵀ·x +=", h.t(), x, torch.zeros(f, d, dtype=dtype)),
        ("bwd_gx a·W1", h, w1, None),
    ]


def _time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    H.add_common_args(p, quick="smoke run: N=256, threads 1, 3 calls", threads=False,
                      seed=False, child=False)
    p.add_argument("--rows", type=int, default=1024, help="chunk rows N")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--d-ff", type=int, default=2048)
    p.add_argument("--threads", default="1,2", help="comma separated thread counts")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=7, help="timed calls per implementation")
    args = p.parse_args(argv)
    if args.quick:
        for name, value in (("rows", 256), ("threads", "1"), ("repeats", 3)):
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    H.finish_common_args(p, args, cpu_only=CPU_ONLY)
    gemm = _gemm_op()
    header = H.report_header(f"## Fixed-order GEMM vs torch.mm ({H.now_utc()}"
                             f"{', quick' if args.quick else ''})", H.machine_info())
    dtype = getattr(torch, args.dtype)
    shapes = _shapes(args.rows, args.d_model, args.d_ff, dtype)
    lines = [f"N={args.rows} D={args.d_model} F={args.d_ff} {args.dtype}; median ms of "
             f"{args.repeats} calls, GFLOP/s in brackets",
             f"{'shape':<18} {'threads':>7} {'torch.mm':>16} {'_gemm':>16} {'ratio':>6}"]
    print("\n".join(header + [""] + lines), flush=True)
    saved = torch.get_num_threads()
    try:
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            for name, a, b, acc in shapes:
                flop = 2 * a.shape[0] * a.shape[1] * b.shape[1]
                if acc is None:
                    ref, ours = (lambda: torch.mm(a, b)), (lambda: gemm(a, b))
                else:
                    ref, ours = (lambda: torch.addmm(acc, a, b)), (lambda: gemm(a, b, c=acc))
                ref(), ours()  # warm-up
                t_ref, t_ours = [], []
                for _ in range(args.repeats):  # interleaved
                    t_ref += _time(ref, 1)
                    t_ours += _time(ours, 1)
                m_ref, m_ours = statistics.median(t_ref), statistics.median(t_ours)
                lines.append(f"{name:<18} {threads:>7} {m_ref * 1e3:>8.2f} "
                             f"({flop / m_ref / 1e9:>4.0f}) {m_ours * 1e3:>8.2f} "
                             f"({flop / m_ours / 1e9:>4.0f}) {m_ours / m_ref:>5.2f}x")
                print(lines[-1], flush=True)
    finally:
        torch.set_num_threads(saved)
    if args.output:  # the header, then the table as printed
        H.append_section(args.output, "\n".join(header + ["", "```", *lines, "```"]))
        print(f"appended to {args.output}", file=sys.stderr)


def _gemm_op():
    H.import_rx()  # registers torch.ops.reformer
    return torch.ops.reformer._gemm


if __name__ == "__main__":
    main()

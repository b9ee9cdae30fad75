#!/usr/bin/env python
"""Local attention (docs/semantics.md §9): ``rx.local_attention`` against HF's
``LocalSelfAttention`` arithmetic (its chunk / look-adjacent / matmul / softmax written with
torch ops on the same q, k, v; transformers itself is not needed) and the project's plain-PyTorch
reference, forward + backward, at a few lengths. The two torch-op versions materialise the
``(L/m, m, (before + 1 + after)·m)`` logits; the operator keeps O(L) memory (chunk tiles only).

Each configuration is timed back to back for every implementation in one process (interleaved
repetitions, so load from other processes on a shared machine hits all alike); medians reported.

    python benchmarks/bench_local_attention.py                  # L=4K,16K, m=64, window (1, 0)
    python benchmarks/bench_local_attention.py --quick          # smoke run: L=1K, 3 calls
    python benchmarks/bench_local_attention.py --device cuda --lengths 16K,64K
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402


def hf_style_local(q, k, v, m, before, after, causal):
    """HF LocalSelfAttention's arithmetic (L a multiple of m): split into chunks, concatenate the
    rolled neighbours, one matmul, mask by replacement, logsumexp softmax, matmul."""
    B, Hh, L, D = q.shape
    n = L // m
    k = k / math.sqrt(D)

    def chunks(x):
        return x.reshape(B, Hh, n, m, x.shape[-1])

    def adjacent(x):
        return torch.cat([x if i == 0 else torch.cat([x[:, :, i:], x[:, :, :i]], dim=2)
                          for i in range(-before, after + 1)], dim=3)

    qc, kc, vc = chunks(q), adjacent(chunks(k)), adjacent(chunks(v))
    dots = qc @ kc.transpose(-1, -2)
    if causal:
        idx = torch.arange(L, device=q.device).reshape(n, m)
        kidx = adjacent(idx[None, None])[0, 0]
        dots = torch.where(idx[:, :, None] >= kidx[:, None, :], dots, dots.new_tensor(-1e9))
    probs = torch.exp(dots - torch.logsumexp(dots, dim=-1, keepdim=True))
    return (probs @ vc).reshape(B, Hh, L, -1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    H.add_common_args(p, quick="smoke run: L=1K, 3 calls", threads=False, child=False)
    p.add_argument("--lengths", default="4K,16K", help="comma separated L (K = 1024)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64, help="head dim D = Dv")
    p.add_argument("--chunk-length", type=int, default=64)
    p.add_argument("--before", type=int, default=1)
    p.add_argument("--after", type=int, default=0)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    p.add_argument("--repeats", type=int, default=5, help="timed calls per configuration")
    args = p.parse_args(argv)
    if args.quick:
        for name, value in (("lengths", "1K"), ("repeats", 3)):
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    H.finish_common_args(p, args)
    rx = H.import_rx()
    from reformer_ext.reference import local_attention_reference

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dtype = getattr(torch, args.dtype)
    m, before, after, causal = args.chunk_length, args.before, args.after, args.causal
    impls = {
        "reformer_ext": lambda q, k, v: rx.local_attention(
            q, k, v, chunk_length=m, n_chunks_before=before, n_chunks_after=after,
            causal=causal),
        "HF arithmetic": lambda q, k, v: hf_style_local(q, k, v, m, before, after, causal),
        "reference": lambda q, k, v: local_attention_reference(
            q, k, v, chunk_length=m, n_chunks_before=before, n_chunks_after=after,
            causal=causal)[0],
    }
    header = H.report_header(
        f"## Local attention, forward + backward ({H.now_utc()}"
        f"{', quick' if args.quick else ''})", H.machine_info(),
        {"device": args.device, "threads": torch.get_num_threads()})
    lines = [f"B=1 H={args.heads} D=Dv={args.dim} m={m} window=({before}, {after}) "
             f"causal={causal} {args.dtype}; median ms of {args.repeats} calls (interleaved)",
             f"{'L':>7} " + " ".join(f"{name:>14}" for name in impls)]
    print("\n".join(header + [""] + lines), flush=True)
    for length in H.parse_lengths(args.lengths):
        length = -(-length // m) * m  # HF needs a multiple of the chunk length
        g = torch.Generator().manual_seed(args.seed)
        q, k, v = (torch.randn(1, args.heads, length, args.dim, generator=g)
                   .to(device, dtype).requires_grad_() for _ in range(3))
        go = torch.randn(1, args.heads, length, args.dim, generator=g).to(device, dtype)

        def step(fn):
            out = fn(q, k, v)
            torch.autograd.grad(out, (q, k, v), go)

        for fn in impls.values():  # warm-up
            step(fn)
        sync()
        times = {name: [] for name in impls}
        for _ in range(args.repeats):
            for name, fn in impls.items():
                sync()
                t0 = time.perf_counter()
                step(fn)
                sync()
                times[name].append(time.perf_counter() - t0)
        row = f"{length:>7} " + " ".join(
            f"{statistics.median(t) * 1e3:>14.2f}" for t in times.values())
        lines.append(row)
        print(row, flush=True)
    if args.output:
        H.append_section(args.output, "\n".join(header + ["", "```", *lines, "```"]))
        print(f"appended to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()

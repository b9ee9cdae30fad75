#!/usr/bin/env python
"""LSH hashing with one bucket count against the same count factorised (docs/semantics.md §1
step 1; HF/trax ``num_buckets`` as a list): ``n_buckets=2048`` projects every position onto
R·1024 rotation columns, ``n_buckets=[32, 64]`` (also 2048 buckets) onto R·48, so the hash costs
O(L·Σf) instead of O(L·Πf). Times ``rx.lsh_buckets`` (the hash alone) and, unless
``--no-attention``, the ``rx.lsh_attention`` forward (hash, sort, attention) at each length.

Each configuration is timed back to back for both bucket counts in one process (interleaved
repetitions, so load from other processes on a shared machine hits both alike); medians are
reported.

    python benchmarks/bench_lsh_hash.py                      # L=65536, 2048 vs [32, 64]
    python benchmarks/bench_lsh_hash.py --quick              # smoke run: L=4096, 3 calls
    python benchmarks/bench_lsh_hash.py --device cuda --lengths 16K,64K
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


def _parse_buckets(text: str):
    """'2048' -> 2048; '32x64' -> [32, 64]."""
    parts = [int(x) for x in text.split("x")]
    return parts[0] if len(parts) == 1 else parts


def _median_ms(fn, repeats, sync):
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    H.add_common_args(p, quick="smoke run: L=4096, 3 calls", threads=False, child=False)
    p.add_argument("--lengths", default="64K", help="comma separated L (K = 1024)")
    p.add_argument("--buckets", default="2048,32x64",
                   help="comma separated bucket counts: an int, or factors joined by x")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--dim", type=int, default=64, help="head dim D")
    p.add_argument("--n-hashes", type=int, default=2)
    p.add_argument("--bucket-size", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    p.add_argument("--repeats", type=int, default=5, help="timed calls per configuration")
    p.add_argument("--no-attention", action="store_true", help="time the hash only")
    args = p.parse_args(argv)
    if args.quick:
        for name, value in (("lengths", "4K"), ("repeats", 3)):
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    H.finish_common_args(p, args)
    rx = H.import_rx()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dtype = getattr(torch, args.dtype)
    buckets = [_parse_buckets(b) for b in args.buckets.split(",")]
    header = H.report_header(
        f"## LSH hashing: one bucket count vs factorised ({H.now_utc()}"
        f"{', quick' if args.quick else ''})", H.machine_info(),
        {"device": args.device, "threads": torch.get_num_threads()})
    lines = [f"B=1 H={args.heads} D={args.dim} R={args.n_hashes} m={args.bucket_size} "
             f"{args.dtype}; median ms of {args.repeats} calls (interleaved)",
             f"{'L':>7} {'what':<14} " + " ".join(f"{str(b):>12}" for b in buckets)
             + (f" {'ratio':>7}" if len(buckets) == 2 else "")]
    print("\n".join(header + [""] + lines), flush=True)
    for length in H.parse_lengths(args.lengths):
        g = torch.Generator().manual_seed(args.seed)
        qk = torch.randn(1, args.heads, length, args.dim, generator=g).to(device, dtype)
        v = torch.randn(1, args.heads, length, args.dim, generator=g).to(device, dtype)
        rots = [rx.random_rotations(qk, args.n_hashes, b,
                                    torch.Generator(device).manual_seed(args.seed))
                for b in buckets]
        calls = {"hash": [lambda b=b, r=r: rx.lsh_buckets(
            qk, r, bucket_factors=b if isinstance(b, list) else None)
            for b, r in zip(buckets, rots)]}
        if not args.no_attention:
            calls["attention fwd"] = [lambda b=b, r=r: rx.lsh_attention(
                qk, v, rotations=r, n_buckets=b, n_hashes=args.n_hashes,
                bucket_size=args.bucket_size) for b, r in zip(buckets, rots)]
        with torch.no_grad():
            for what, fns in calls.items():
                for fn in fns:  # warm-up
                    fn()
                sync()
                times = [[] for _ in fns]
                for _ in range(args.repeats):  # interleaved
                    for t, fn in zip(times, fns):
                        t += _median_ms(fn, 1, sync)
                med = [statistics.median(t) * 1e3 for t in times]
                row = f"{length:>7} {what:<14} " + " ".join(f"{m:>12.2f}" for m in med)
                if len(med) == 2:
                    row += f" {med[0] / med[1]:>6.1f}x"
                lines.append(row)
                print(row, flush=True)
    if args.output:  # the header, then the table as printed
        H.append_section(args.output, "\n".join(header + ["", "```", *lines, "```"]))
        print(f"appended to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()

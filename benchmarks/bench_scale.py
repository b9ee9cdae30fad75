#!/usr/bin/env python
"""Scale benchmark: peak memory of ONE forward of rx.lsh_attention for sequences up to one
million tokens, to show that memory grows linearly in L.

    qk, v: (B=1, H=1, L, D=64) float32; n_hashes=4, bucket_size=64, n_buckets=--n-buckets
    (default 128), causal=False, one chunk before, none after; under torch.no_grad(), on
    --device (default cpu)

Why an explicit n_buckets: the default (docs/semantics.md §4) is 2·ceil(L / bucket_size) buckets per
round, about L/32, so the hash projection qk · rotations costs L · D · n_hashes · n_buckets/2
multiply-adds: quadratic in L (about 9 TFLOP at L = 1M: minutes per forward on a small CPU,
4x per doubling of L) while everything else is linear. A fixed n_buckets keeps hashing linear
(34 GFLOP at 1M with 128) and changes neither the attention's cost nor its memory, which depend
on bucket_size (the chunk length after sorting), not on n_buckets. This is what models trained
at a fixed n_buckets do (HF's ReformerConfig.num_buckets).

Each L runs in a fresh process (see _harness.py): warm-up, then the peak memory of one step,
"peak extra" = resident-set high-water mark during the step minus the resident set before it
(inputs qk and v are in the baseline; the output and everything the step allocates are not;
on CUDA, torch.cuda.max_memory_allocated during the step minus what was allocated before it).
The table also gives "per token" (peak extra / L) and the ratio to the previous row: linear
growth is a constant per-token cost and a ratio of 2.0 per doubling of L. The time of the step
is the warm-up step's wall time (one sample on a shared machine: indicative only).

    python benchmarks/bench_scale.py                         # L = 128K, 256K, 512K, 1M
    python benchmarks/bench_scale.py --quick                 # smoke run, L = 16K, 32K
    python benchmarks/bench_scale.py --output notes.md       # also append the Markdown section
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _harness as H  # noqa: E402


def child_main(spec: dict) -> None:
    import torch

    H.child_setup(spec["threads"])
    rx = H.import_rx("lsh_attention")

    device = spec.get("device", "cpu")
    g = torch.Generator().manual_seed(spec["seed"])
    L, D = spec["L"], spec["D"]
    qk = torch.randn(1, 1, L, D, generator=g).to(device)
    v = torch.randn(1, 1, L, D, generator=g).to(device)
    rotations = torch.randn(1, D, spec["n_hashes"], spec["n_buckets"] // 2, generator=g)
    rotations = rotations.to(device)

    def step():
        with torch.no_grad():
            out = rx.lsh_attention(qk, v, rotations=rotations, bucket_size=spec["bucket_size"])
        assert out.shape == v.shape  # the output is part of the step's peak (not freed earlier)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    step()  # warm-up (also the one time sample)
    sync()
    step_s = time.perf_counter() - t0
    if device == "cuda":
        peak, note = H.measure_peak_cuda(step, device)
    else:
        peak, note = H.measure_peak_cpu(step)
    H.emit_result({"status": "ok", "peak_mib": peak, "step_s": step_s, "note": note,
                   "input_mib": 2 * qk.numel() * qk.element_size() / 2**20})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    H.add_common_args(p, quick="smoke run: L = 16K, 32K")
    p.add_argument("--lengths", default="128K,256K,512K,1M", help="comma separated L (K=1024)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--n-hashes", type=int, default=4)
    p.add_argument("--bucket-size", type=int, default=64)
    p.add_argument("--n-buckets", type=int, default=128)
    p.add_argument("--timeout", type=float, default=1800.0, help="per length, seconds")
    args = p.parse_args(argv)
    if args.quick and args.lengths == p.get_default("lengths"):
        args.lengths = "16K,32K"
    H.finish_common_args(p, args)
    if H.child_entry(args, child_main):
        return

    info = H.machine_info()
    threads = args.threads or H.num_cores()
    rows, prev = [], None
    for L in H.parse_lengths(args.lengths):
        spec = dict(L=L, D=args.dim, n_hashes=args.n_hashes, bucket_size=args.bucket_size,
                    n_buckets=args.n_buckets, threads=threads, seed=args.seed, device=args.device)
        res = H.run_child(__file__, spec, timeout_s=args.timeout)
        print(f"L={L}: {res}", file=sys.stderr, flush=True)
        peak = res.get("peak_mib") if res.get("status") == "ok" else None
        ratio = H.fmt_ratio(peak / prev) if peak and prev else "-"
        rows.append([f"{L:,}", H.fmt_mib(res.get("input_mib")), H.fmt_mib(peak),
                     f"{peak * 2**20 / L:.0f}" if peak else "-", ratio,
                     f"{res['step_s']:.1f}" if "step_s" in res else res.get("status", "-")])
        prev = peak
    table = H.markdown_table(
        ["L", "inputs qk+v (MiB)", "peak extra (MiB)", "bytes per token", "vs previous L",
         "one forward (s)"], rows, align="rrrrrr")
    text = "\n".join([
        *H.report_header(f"### LSH attention forward at scale ({args.device}, {H.now_utc()})",
                         info, {"threads": threads,
                                "memory": H.memory_definition(args.device)}),
        "",
        f"B=1, H=1, D={args.dim}, n_hashes={args.n_hashes}, bucket_size={args.bucket_size}, "
        f"n_buckets={args.n_buckets} (fixed: the default grows with L and makes hashing "
        "quadratic), float32, torch.no_grad(), one forward per fresh process.",
        "",
        table,
    ])
    H.publish(text, args.output)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""GPU benchmark of LSH attention (issue 5): reformer_ext against SDPA and the public Reformers.

Configuration: bfloat16, B=1, H=8, D=Dv=64, n_hashes=4, bucket_size=64 (one chunk back),
L in {4K, 16K, 64K}; modes "fwd" (forward under no_grad) and "fwdbwd" (forward, then backward of a
fixed output gradient). Rows:
  ours        rx.lsh_attention(qk, v, rotations=<drawn once>), qk, v (B, H, L, D): bf16 with
              D = Dv = 64 runs the tensor-core kernels
  ours_ffma   the same on the FFMA kernels (REFORMER_EXT_TENSOR_CORES=0): what tensor cores buy
  ours_hash   forward only: torch.ops.reformer.lsh_buckets(qk, rotations), the hashing part of
              ours (where its time goes; n_buckets = 2 * L / bucket_size grows with L)
  sdpa        F.scaled_dot_product_attention(q, k, v), full non-causal attention; PyTorch picks the
              fused backend (flash or cuDNN on H100/H200)
  reformer_pytorch  reformer-pytorch's LSHAttention(bucket_size, n_hashes) on (B*H, L, D)
              (only if importable)
  ours_proj   ours with the query_key / value / output projections (Linear, no bias)
  hf          HuggingFace LSHSelfAttention + ReformerSelfOutput: the same work as ours_proj
              (only if importable)
Ratios in the table: row time / ours time (hf against ours_proj), so above 1 means ours is faster.

Timing: CUDA events around each step, after warm-up; the median of up to --repeats steps within
--budget seconds per configuration. Memory: torch.cuda.max_memory_allocated during one step minus
what was allocated before it. An implementation whose step takes longer than --step-limit seconds,
or that runs out of memory, is not run at larger L. Every finished row is appended to --results
(JSON lines) at once, so `--table-from` can print the table even if this run is cut short.

    python benchmarks/bench_gpu.py --results /tmp/gpu.jsonl
    python benchmarks/bench_gpu.py --table-from /tmp/gpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

LENGTHS = (4096, 16384, 65536)
TENSOR_CORE_SWITCH = "REFORMER_EXT_TENSOR_CORES"
MODES = ("fwd", "fwdbwd")
IMPLS = ("ours", "ours_ffma", "ours_hash", "sdpa", "reformer_pytorch", "ours_proj", "hf")
BASELINE = {"ours": "ours", "ours_ffma": "ours", "ours_hash": "ours", "sdpa": "ours", "reformer_pytorch": "ours", "ours_proj": "ours_proj",
            "hf": "ours_proj"}


def build(impl: str, L: int, mode: str, a):
    """(step function returning the output, leaf tensors that receive gradients)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    dev, dtype = torch.device("cuda"), torch.bfloat16
    B, H, D, R, m = a.batch, a.heads, a.dim, a.n_hashes, a.bucket_size
    grad = mode == "fwdbwd"
    g = torch.Generator(device=dev).manual_seed(0)
    nb = max(2, 2 * math.ceil(L / m))

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=dev, dtype=dtype).requires_grad_(grad)

    def modules(*mods):
        for mod in mods:
            mod.to(device=dev, dtype=dtype).train(grad)
            for p in mod.parameters():
                p.requires_grad_(grad)
        return [p for mod in mods for p in mod.parameters()]

    rot = torch.randn(H, D, R, nb // 2, generator=g, device=dev)
    if impl in ("ours", "ours_ffma", "ours_hash", "ours_proj"):
        import reformer_ext as rx  # noqa: F401 - also registers torch.ops.reformer
    if impl in ("ours", "ours_ffma"):
        qk, v = randn(B, H, L, D), randn(B, H, L, D)
        return (lambda: rx.lsh_attention(qk, v, n_hashes=R, bucket_size=m, rotations=rot)), [qk, v]
    if impl == "ours_hash":
        qk = randn(B, H, L, D).detach()
        return (lambda: torch.ops.reformer.lsh_buckets(qk, rot, None)), []
    if impl == "sdpa":
        q, k, v = randn(B, H, L, D), randn(B, H, L, D), randn(B, H, L, D)
        return (lambda: F.scaled_dot_product_attention(q, k, v)), [q, k, v]
    if impl == "reformer_pytorch":
        from reformer_pytorch import LSHAttention

        attn = LSHAttention(bucket_size=m, n_hashes=R, causal=False, dropout=0.0)
        modules(attn)
        qk, v = randn(B * H, L, D), randn(B * H, L, D)
        return (lambda: attn(qk, v)[0]), [qk, v]
    hidden = H * D
    if impl == "ours_proj":
        to_qk, to_v, to_out = (nn.Linear(hidden, hidden, bias=False) for _ in range(3))
        params = modules(to_qk, to_v, to_out)
        x = randn(B, L, hidden)

        def step():
            qk = to_qk(x).view(B, L, H, D).transpose(1, 2)
            v = to_v(x).view(B, L, H, D).transpose(1, 2)
            o = rx.lsh_attention(qk, v, n_hashes=R, bucket_size=m, rotations=rot)
            return to_out(o.transpose(1, 2).reshape(B, L, hidden))

        return step, [x] + params
    if impl == "hf":
        from transformers import ReformerConfig
        from transformers.models.reformer.modeling_reformer import (LSHSelfAttention,
                                                                    ReformerSelfOutput)

        cfg = ReformerConfig(hidden_size=hidden, num_attention_heads=H, attention_head_size=D,
                             attn_layers=["lsh"], lsh_attn_chunk_length=m, num_hashes=R,
                             num_buckets=nb, lsh_num_chunks_before=1, lsh_num_chunks_after=0,
                             lsh_attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0,
                             is_decoder=False, hash_seed=None, max_position_embeddings=L)
        attn, out = LSHSelfAttention(cfg, layer_idx=0), ReformerSelfOutput(cfg)
        params = modules(attn, out)
        x = randn(B, L, hidden)
        return (lambda: out(attn(x).hidden_states)), [x] + params
    raise ValueError(impl)


def measure(impl: str, L: int, mode: str, a) -> dict:
    import torch

    row = {"impl": impl, "L": L, "mode": mode}
    # the kernels read the switch at every call: set it for this row only
    os.environ.pop(TENSOR_CORE_SWITCH, None)
    if impl == "ours_ffma":
        os.environ[TENSOR_CORE_SWITCH] = "0"
    try:
        return _measure(row, impl, L, mode, a)
    finally:
        os.environ.pop(TENSOR_CORE_SWITCH, None)


def _measure(row: dict, impl: str, L: int, mode: str, a) -> dict:
    import torch

    step_fn, leaves = build(impl, L, mode, a)
    grad_out = None

    def step():
        nonlocal grad_out
        if mode == "fwd":
            with torch.no_grad():
                step_fn()
            return
        for t in leaves:
            t.grad = None
        y = step_fn()
        if grad_out is None:
            grad_out = torch.randn_like(y)
        y.backward(grad_out)

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    wall0 = time.perf_counter()
    for i in range(a.repeats + 1):  # the first step is the warm-up
        start.record()
        step()
        end.record()
        end.synchronize()
        if i > 0:
            times.append(start.elapsed_time(end))
        elif start.elapsed_time(end) / 1e3 > a.step_limit:
            row["note"] = f"one step took {start.elapsed_time(end) / 1e3:.1f} s"
            times.append(start.elapsed_time(end))
            break
        if i >= 2 and time.perf_counter() - wall0 > a.budget:
            break
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    row.update(ms=statistics.median(times), steps=len(times),
               peak_mib=(torch.cuda.max_memory_allocated() - base) / 2**20)
    return row


def available(impl: str) -> str | None:
    """None when the implementation can run here, else why not."""
    import importlib.util

    module = {"reformer_pytorch": "reformer_pytorch", "hf": "transformers"}.get(impl)
    if module and importlib.util.find_spec(module) is None:
        return f"{module} not installed"
    return None


def run(a) -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA device")
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}",
          flush=True)
    too_big = {}  # impl -> reason it is not run at larger L
    with open(a.results, "a") as out:
        for impl in a.impls.split(","):
            reason = available(impl)
            for L in a.lengths:
                for mode in MODES:
                    if impl == "ours_hash" and mode != "fwd":
                        continue  # hashing has no backward
                    if reason or impl in too_big:
                        row = {"impl": impl, "L": L, "mode": mode,
                               "skipped": reason or too_big[impl]}
                    else:
                        try:
                            row = measure(impl, L, mode, a)
                            if row.get("note"):
                                too_big[impl] = f"skipped: slower than {a.step_limit} s at smaller L"
                        except torch.cuda.OutOfMemoryError:
                            row = {"impl": impl, "L": L, "mode": mode, "error": "out of memory"}
                            too_big[impl] = "skipped: out of memory at smaller L"
                        except Exception as e:  # noqa: BLE001 - report and go on
                            traceback.print_exc()
                            row = {"impl": impl, "L": L, "mode": mode,
                                   "error": f"{type(e).__name__}: {e}".splitlines()[0][:200]}
                        torch.cuda.empty_cache()
                    print(json.dumps(row), flush=True)
                    out.write(json.dumps(row) + "\n")
                    out.flush()


def table(rows: list[dict]) -> str:
    by_key = {(r["impl"], r["L"], r["mode"]): r for r in rows}
    lines = ["| impl | L | mode | median ms | peak MiB | time / ours | mem / ours |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        cell = f"| {r['impl']} | {r['L'] // 1024}K | {r['mode']} | "
        if "ms" not in r:
            lines.append(cell + f"{r.get('skipped') or r.get('error')} | | | |")
            continue
        base = by_key.get((BASELINE[r["impl"]], r["L"], r["mode"]), {})
        t = f"{r['ms'] / base['ms']:.2f}x" if base.get("ms") else "-"
        mem = f"{r['peak_mib'] / base['peak_mib']:.2f}x" if base.get("peak_mib") else "-"
        note = f" ({r['note']})" if r.get("note") else ""
        lines.append(cell + f"{r['ms']:.2f}{note} | {r['peak_mib']:.0f} | {t} | {mem} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="benchmarks/out/gpu.jsonl")
    p.add_argument("--table-from", help="print the table of a results file and exit")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--n-hashes", type=int, default=4)
    p.add_argument("--bucket-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timed steps per row")
    p.add_argument("--step-limit", type=float, default=2.0)
    a = p.parse_args()
    if a.table_from:
        with open(a.table_from) as f:
            print(table([json.loads(line) for line in f if line.strip()]))
        return
    run(a)


if __name__ == "__main__":
    main()

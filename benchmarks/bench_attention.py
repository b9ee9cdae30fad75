#!/usr/bin/env python
"""LSH attention benchmark: reformer_ext against the implementations users would otherwise pick,
on the CPU (``--device cpu``, the default) or a GPU (``--device cuda``).

Rows (``--impls``, comma separated ids):
  ours             rx.lsh_attention(qk, v, n_hashes, bucket_size, rotations=<drawn once>)
                   on qk, v of shape (B, H, L, D).  On CUDA, bf16 with D = Dv in {32, 64, 128}
                   runs the tensor-core kernels.
  ours_ffma        (cuda only) the same on the FFMA kernels (REFORMER_EXT_TENSOR_CORES=0, set for
                   this row only): what the tensor cores buy.
  ours_hash        forward only: torch.ops.reformer.lsh_buckets(qk, rotations), the hashing part
                   of ours (where its time goes; n_buckets grows with L).
  reference        reformer_ext.reference.lsh_attention_reference (plain PyTorch, same inputs and
                   rotations; slow: a configuration whose single step exceeds --step-limit is
                   reported as "timeout" and larger L are skipped).
  reformer_pytorch reformer-pytorch's LSHAttention(bucket_size, n_hashes, dropout=0) on qk, v of
                   shape (B*H, L, D).  It picks its own bucket count, L / bucket_size, and draws
                   fresh rotations every call (its only mode); its chunk length is bucket_size,
                   looking one chunk back, like ours.
  sdpa             torch.nn.functional.scaled_dot_product_attention, full non-causal attention
                   on separate q, k, v of shape (B, H, L, D) (on H100/H200 PyTorch picks a fused
                   backend, flash or cuDNN).
  ours_proj        "ours + projections": x (B, L, H*D) -> query_key Linear and value Linear
                   (no bias, hidden -> H*D), split into heads, rx.lsh_attention, merge heads,
                   output Linear (no bias, H*D -> hidden).
  hf               HuggingFace transformers: LSHSelfAttention (its query_key and value
                   projections, no bias) followed by ReformerSelfOutput (its output Linear, no
                   bias): the same work as ours_proj.  Config: hidden_size H*D, num_attention_heads
                   H, attention_head_size D, lsh_attn_chunk_length bucket_size, num_hashes,
                   num_buckets = ours, lsh_num_chunks_before 1, lsh_num_chunks_after 0, all
                   dropouts 0, is_decoder False, hash_seed None (fresh rotations every call).

Modes (``--modes``):
  fwd     forward only, under torch.no_grad().
  fwdbwd  forward with autograd enabled (inputs, and the weights of the projection rows,
          require grad) followed by backward of a fixed random output gradient; .grad is reset
          to None before each step, outside the clock.

The two devices (defaults; every one can be changed with its flag):
  cpu   fp32, B=1, H=4, D=Dv=64, n_hashes=4, bucket_size=64, L in {1K, 4K, 16K}; rows ours,
        reference, reformer_pytorch, sdpa, ours_proj, hf.  Every (implementation, L, mode) runs
        in its own fresh processes; see _harness.py for the timing (median of an adaptive
        number of steps) and the peak-memory (resident set) definitions.
  cuda  bf16, B=1, H=8, D=Dv=64, n_hashes=4, bucket_size=64, L in {4K, 16K, 64K}; rows ours,
        ours_ffma, ours_hash, sdpa, reformer_pytorch, ours_proj, hf.  All rows in this process
        (_harness.measure_cuda_events): CUDA events around each step after one warm-up step,
        the median of up to --repeats (20) steps within --budget (3) seconds; peak memory =
        torch.cuda.max_memory_allocated during one more step minus what was allocated before
        it.  An implementation whose first step takes longer than --step-limit (2) seconds, or
        that runs out of memory, is not run at larger L.  (This was benchmarks/bench_gpu.py.)

Ratios are row / ours at the same L and mode (the hf and ours_proj rows are compared with
ours_proj): above 1 means ours is faster or smaller.  With --results every finished row is
appended to a JSON-lines file at once, so that --table-from can print the table of a run that
was cut short.

    python benchmarks/bench_attention.py                 # CPU, full run, L = 1K, 4K, 16K
    python benchmarks/bench_attention.py --quick         # smoke run, L = 1K, < 1 minute
    python benchmarks/bench_attention.py --output benchmarks/RESULTS.md
    python benchmarks/bench_attention.py --device cuda --results /tmp/gpu.jsonl
    python benchmarks/bench_attention.py --table-from /tmp/gpu.jsonl
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import _harness as H  # noqa: E402

IMPLS = {
    # id: (display name, id of the row it is compared with)
    "ours": ("ours: rx.lsh_attention", "ours"),
    "ours_ffma": ("ours, FFMA kernels (no tensor cores)", "ours"),
    "ours_hash": ("ours: hashing only (lsh_buckets)", "ours"),
    "reference": ("reformer_ext.reference", "ours"),
    "reformer_pytorch": ("reformer-pytorch LSHAttention", "ours"),
    "sdpa": ("torch SDPA (full attention)", "ours"),
    "ours_proj": ("ours + projections", "ours_proj"),
    "hf": ("HF transformers LSHSelfAttention + output Linear", "ours_proj"),
}
MODES = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}
CUDA_ONLY = ("ours_ffma",)
SHORT_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
FWD_ONLY = ("ours_hash",)
TENSOR_CORE_SWITCH = "REFORMER_EXT_TENSOR_CORES"

# per-device defaults (see the module docstring)
DEFAULTS = {
    "cpu": dict(lengths="1K,4K,16K", quick_lengths="1K", heads=4, dtype="float32",
                impls="ours,reference,reformer_pytorch,sdpa,ours_proj,hf"),
    "cuda": dict(lengths="4K,16K,64K", quick_lengths="4K", heads=8, dtype="bfloat16",
                 impls="ours,ours_ffma,ours_hash,sdpa,reformer_pytorch,ours_proj,hf"),
}
TIMING = {  # _harness.add_common_args / finish_common_args
    "cpu": dict(budget=(0.5, 15.0), warmup=(0.1, 1.0), step_limit=60.0, timeout_factor=5),
    "cuda": dict(budget=(1.0, 3.0), warmup=(0.0, 0.0), step_limit=2.0, repeats=20),
}


# --------------------------------------------------------------------------------------------
# one configuration


def _load_reference():
    """reformer_ext.reference.lsh_attention_reference; by file path if the package won't import."""
    try:
        from reformer_ext.reference import lsh_attention_reference

        return lsh_attention_reference
    except Exception as pkg_err:
        path = REPO / "reformer_ext" / "reference.py"
        if not path.exists():
            raise ImportError(f"reformer_ext.reference: {pkg_err}; {path} missing") from pkg_err
        spec = importlib.util.spec_from_file_location("_reformer_ext_reference", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.lsh_attention_reference


def default_n_buckets(L: int, bucket_size: int) -> int:
    """docs/semantics.md §4 default: max(2, 2 * ceil(L / bucket_size))."""
    return max(2, 2 * math.ceil(L / bucket_size))


def build(spec: dict):
    """Return (forward fn producing the output tensor, leaf tensors that get .grad, notes)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    impl, L, mode = spec["impl"], spec["L"], spec["mode"]
    B, Hh, D, Dv = spec["B"], spec["H"], spec["D"], spec["Dv"]
    R, m = spec["n_hashes"], spec["bucket_size"]
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec.get("dtype", "float32"))
    nb = default_n_buckets(L, m)
    hidden = Hh * D
    grad = mode == "fwdbwd"
    g = torch.Generator(device=device).manual_seed(spec["seed"])
    torch.manual_seed(spec["seed"])

    def randn(*shape, requires_grad=grad):
        t = torch.randn(*shape, generator=g, dtype=dtype, device=device)
        return t.requires_grad_(requires_grad)

    def rotations():
        # fixed rotations drawn once, shape (H, D, n_hashes, n_buckets // 2) (docs/semantics.md §1)
        return torch.randn(Hh, D, R, nb // 2, generator=g, dtype=torch.float32, device=device)

    def set_mode(*mods):
        for mod in mods:
            mod.to(device=device, dtype=dtype).train(grad)
            for p in mod.parameters():
                p.requires_grad_(grad)
        return [p for mod in mods for p in mod.parameters()]

    notes = []
    if impl in ("ours", "ours_ffma"):
        rx = H.import_rx("lsh_attention")
        qk, v, rot = randn(B, Hh, L, D), randn(B, Hh, L, Dv), rotations()

        def fn():
            return rx.lsh_attention(qk, v, n_hashes=R, bucket_size=m, rotations=rot)

        leaves = [qk, v]
    elif impl == "ours_hash":
        H.import_rx()  # registers torch.ops.reformer
        qk, rot = randn(B, Hh, L, D, requires_grad=False), rotations()

        def fn():
            return torch.ops.reformer.lsh_buckets(qk, rot, None)

        leaves = []
    elif impl == "reference":
        ref = _load_reference()
        qk, v, rot = randn(B, Hh, L, D), randn(B, Hh, L, Dv), rotations()

        def fn():
            return ref(qk, v, rot, bucket_size=m)[0]

        leaves = [qk, v]
    elif impl == "reformer_pytorch":
        from reformer_pytorch import LSHAttention

        attn = LSHAttention(bucket_size=m, n_hashes=R, causal=False, dropout=0.0)
        set_mode(attn)
        qk, v = randn(B * Hh, L, D), randn(B * Hh, L, Dv)

        def fn():
            return attn(qk, v)[0]

        leaves = [qk, v]
        notes.append(f"{L // m} buckets")
    elif impl == "sdpa":
        q, k, v = randn(B, Hh, L, D), randn(B, Hh, L, D), randn(B, Hh, L, Dv)

        def fn():
            return F.scaled_dot_product_attention(q, k, v, is_causal=False)

        leaves = [q, k, v]
    elif impl == "ours_proj":
        rx = H.import_rx("lsh_attention")
        to_qk = nn.Linear(hidden, Hh * D, bias=False)
        to_v = nn.Linear(hidden, Hh * Dv, bias=False)
        to_out = nn.Linear(Hh * Dv, hidden, bias=False)
        params = set_mode(to_qk, to_v, to_out)
        x, rot = randn(B, L, hidden), rotations()

        def fn():
            qk = to_qk(x).view(B, L, Hh, D).transpose(1, 2)
            v = to_v(x).view(B, L, Hh, Dv).transpose(1, 2)
            o = rx.lsh_attention(qk, v, n_hashes=R, bucket_size=m, rotations=rot)
            return to_out(o.transpose(1, 2).reshape(B, L, Hh * Dv))

        leaves = [x] + params
    elif impl == "hf":
        from transformers import ReformerConfig
        from transformers.models.reformer.modeling_reformer import (
            LSHSelfAttention,
            ReformerSelfOutput,
        )

        if Dv != D:
            raise ValueError("HF LSHSelfAttention needs Dv == D")
        cfg = ReformerConfig(
            hidden_size=hidden,
            num_attention_heads=Hh,
            attention_head_size=D,
            attn_layers=["lsh"],
            lsh_attn_chunk_length=m,
            num_hashes=R,
            num_buckets=nb,
            lsh_num_chunks_before=1,
            lsh_num_chunks_after=0,
            lsh_attention_probs_dropout_prob=0.0,
            hidden_dropout_prob=0.0,
            is_decoder=False,
            hash_seed=None,
            max_position_embeddings=max(L, 64),
        )
        attn = LSHSelfAttention(cfg, layer_idx=0)
        out = ReformerSelfOutput(cfg)
        params = set_mode(attn, out)
        x = randn(B, L, hidden)

        def fn():
            return out(attn(x).hidden_states)

        leaves = [x] + params
    else:
        raise ValueError(f"unknown impl {impl!r}")
    return fn, leaves, notes


def make_step(spec: dict, fn, leaves):
    """(prepare, step) of one configuration: see "Modes" in the module docstring. The output
    gradient is drawn once, at the first step (a warm-up step)."""
    import torch

    if spec["mode"] == "fwd":
        def step():
            with torch.no_grad():
                fn()

        return None, step
    g = torch.Generator(device=spec["device"]).manual_seed(spec["seed"] + 1)
    grad_out = None

    def prepare():
        for t in leaves:
            t.grad = None

    def step():
        nonlocal grad_out
        out = fn()
        if grad_out is None:
            grad_out = torch.randn(out.shape, generator=g, dtype=out.dtype, device=out.device)
        out.backward(grad_out)

    return prepare, step


# --------------------------------------------------------------------------------------------
# cpu: each configuration in fresh child processes


def child_main(spec: dict) -> None:
    def child_step(spec, fn, leaves, notes):
        def finish(res):
            res["note"] = H.join_notes(res.get("note"), *notes)

        return (*make_step(spec, fn, leaves), finish)

    H.measure_child(spec, build, child_step)


def run_cpu(args, record) -> None:
    configs = [(i, L, mo) for L in args.L for mo in args.mode_list for i in args.impl_list
               if not (mo != "fwd" and i in FWD_ONLY)]
    timed_out = set()  # (impl, mode) that timed out at a smaller L: larger L are skipped
    for n, (impl, L, mode) in enumerate(configs, 1):
        key = dict(impl=impl, L=L, mode=mode)
        if (impl, mode) in timed_out:
            r = {"status": "skipped", "note": "timed out at a smaller L"}
        else:
            r = H.measure_in_children(__file__, spec_of(args, key), args)
        if r["status"] == "timeout":
            timed_out.add((impl, mode))
        record(dict(r, **key), f"[{n}/{len(configs)}]")


# --------------------------------------------------------------------------------------------
# cuda: every configuration in this process, CUDA events


def measure_cuda(spec: dict) -> dict:
    """One configuration on the GPU (see _harness.measure_cuda_events)."""
    # the kernels read the switch at every call: set it for this row only
    os.environ.pop(TENSOR_CORE_SWITCH, None)
    if spec["impl"] == "ours_ffma":
        os.environ[TENSOR_CORE_SWITCH] = "0"
    try:
        fn, leaves, notes = build(spec)
        prepare, step = make_step(spec, fn, leaves)

        def prepared_step():
            if prepare:
                prepare()
            step()

        res = H.measure_cuda_events(prepared_step, repeats=spec["repeats"],
                                    budget_s=spec["budget_s"],
                                    step_limit_s=spec["step_limit_s"],
                                    warmup_s=spec["warmup_s"])
        res["note"] = H.join_notes(res.get("note"), *notes)
        return res
    finally:
        os.environ.pop(TENSOR_CORE_SWITCH, None)


def run_cuda(args, record) -> None:
    import torch

    configs = [(i, L, mo) for i in args.impl_list for L in args.L for mo in args.mode_list
               if not (mo != "fwd" and i in FWD_ONLY)]
    too_big = {}  # impl -> why it is not run at larger L
    for n, (impl, L, mode) in enumerate(configs, 1):
        key = dict(impl=impl, L=L, mode=mode)
        if impl in too_big:
            r = {"status": "skipped", "note": too_big[impl]}
        else:
            try:
                r = measure_cuda(spec_of(args, key))
                if r["note"].startswith("one step took"):
                    too_big[impl] = f"slower than {args.step_limit:g} s at a smaller L"
            except ImportError as e:
                r = {"status": f"unavailable: {H.error_summary(e)}"}
                too_big[impl] = r["status"]
            except torch.cuda.OutOfMemoryError:
                r = {"status": "error: out of memory"}
                too_big[impl] = "out of memory at a smaller L"
            except Exception as e:  # noqa: BLE001 - report and go on
                r = {"status": f"error: {H.error_summary(e)}"}
            torch.cuda.empty_cache()
        record(dict(r, **key), f"[{n}/{len(configs)}]")


# --------------------------------------------------------------------------------------------
# parent


def spec_of(args, key: dict) -> dict:
    return dict(key, **H.timing_spec(args), B=args.batch, H=args.heads, D=args.dim,
                Dv=args.dim, n_hashes=args.n_hashes, bucket_size=args.bucket_size,
                dtype=args.dtype)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    H.add_common_args(p, quick="smoke run: L = 1K (cuda: 4K), short budgets",
                      timing=TIMING["cpu"])
    p.add_argument("--lengths", default=None,
                   help="comma separated L (1K = 1024; default cpu 1K,4K,16K, cuda 4K,16K,64K)")
    p.add_argument("--impls", default=None,
                   help=f"comma separated, from {list(IMPLS)} (default: see the docstring)")
    p.add_argument("--modes", default="fwd,fwdbwd", help="comma separated, from fwd,fwdbwd")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=None, help="default cpu 4, cuda 8")
    p.add_argument("--dim", type=int, default=64, help="head dim D of qk (and Dv of v)")
    p.add_argument("--n-hashes", type=int, default=4)
    p.add_argument("--bucket-size", type=int, default=64)
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="default cpu float32, cuda bfloat16")
    p.add_argument("--results", default=None,
                   help="append every finished row to this JSON-lines file at once")
    p.add_argument("--table-from", default=None,
                   help="print the table of a --results file and exit")
    args = p.parse_args(argv)
    if args.table_from:
        return args
    H.finish_common_args(p, args, **TIMING[args.device])
    d = DEFAULTS[args.device]
    if args.lengths is None:
        args.lengths = d["quick_lengths"] if args.quick else d["lengths"]
    args.impls = args.impls or d["impls"]
    args.heads = args.heads or d["heads"]
    args.dtype = args.dtype or d["dtype"]
    args.L = H.parse_lengths(args.lengths)
    args.impl_list = H.parse_ids(p, args.impls, IMPLS)
    args.mode_list = H.parse_ids(p, args.modes.replace("+", ""), MODES, "mode")
    if args.device != "cuda" and set(args.impl_list) & set(CUDA_ONLY):
        p.error(f"{', '.join(CUDA_ONLY)}: only with --device cuda")
    return args


def table(results: list[dict]) -> str:
    by_key = {(r["impl"], r["L"], r["mode"]): r for r in results}
    rows = []
    for r in results:
        ok = r["status"] == "ok"
        base = by_key.get((IMPLS[r["impl"]][1], r["L"], r["mode"]))
        t_ratio = m_ratio = None
        if ok and base is not None and base["status"] == "ok" and base is not r:
            t_ratio = r["median_ms"] / base["median_ms"]
            if r.get("peak_mib") is not None and base.get("peak_mib"):
                m_ratio = r["peak_mib"] / base["peak_mib"]
        if ok and base is r:
            t_ratio = m_ratio = 1.0
        note = r.get("note", "") if ok else f"{r['status']} {r.get('note', '')}".strip()
        rows.append([
            IMPLS[r["impl"]][0],
            f"{r['L'] // 1024}K" if r["L"] % 1024 == 0 else str(r["L"]),
            MODES[r["mode"]],
            H.fmt_ms(r.get("median_ms")) if ok else "-",
            H.fmt_ms(r.get("min_ms")) if ok else "-",
            H.fmt_mib(r.get("peak_mib")) if ok else "-",
            H.fmt_ratio(t_ratio),
            H.fmt_ratio(m_ratio),
            str(r.get("repeats", "-")),
            note,
        ])
    header = ["implementation", "L", "mode", "median ms", "min ms", "peak extra MiB",
              "time / ours", "mem / ours", "n", "note"]
    return H.markdown_table(header, rows, align="lrlrrrrrrl")


def report(args, results: list[dict], info: dict, checks: tuple = ()) -> str:
    extra = {"peers": H.peer_versions()}
    cpu = args.device == "cpu"
    if cpu:
        extra["machine check"] = H.machine_check_text(checks)
    nb = ", ".join(f"{default_n_buckets(L, args.bucket_size)} at L={L}" for L in args.L)
    if cpu:
        timing = (
            f"- Each (implementation, L, mode) in a fresh process; median (and min) of n timed "
            f"steps after warm-up (n >= {args.min_repeats}, about {args.budget:g} s of timed "
            "steps per row). " + ("Time and memory measured in the same process (started with "
            "MALLOC_MMAP_THRESHOLD_, so times include the page faults of fresh mmaps)."
            if args.one_process else "Times come from a process with the default allocator "
            "settings, peak memory from a second fresh process (below).")
        )
        limit = (f"- A configuration whose first step takes longer than {args.step_limit:g} s "
                 "is reported as timeout and not timed; larger L of the same row are then "
                 "skipped.")
    else:
        timing = (
            "- All rows in one process; CUDA events around each step, after one warm-up step; "
            f"median (and min) of up to {args.repeats} timed steps within about "
            f"{args.budget:g} s per row; peak memory from one more step afterwards.")
        limit = (f"- An implementation whose first step takes longer than {args.step_limit:g} s "
                 "is reported with that one time (note) and, like one that runs out of memory, "
                 "not run at larger L.")
    lines = [
        *H.report_header(f"## LSH attention ({args.device}, {SHORT_DTYPE[args.dtype]}"
                         f"{', quick' if args.quick else ''}) — {H.now_utc()}", info, extra),
        "",
        f"- B={args.batch}, H={args.heads}, D=Dv={args.dim}, n_hashes={args.n_hashes}, "
        f"bucket_size (chunk length)={args.bucket_size}, one chunk back, non-causal; "
        f"n_buckets: {nb} (ours, reference, HF); reformer-pytorch uses L/bucket_size.",
        "- Rows: see the docstring of benchmarks/bench_attention.py. The projection rows "
        "(ours + projections, HF) take x of shape (B, L, H*D) and include the query_key, value "
        "and output Linear layers (no bias); the others take per-head tensors.",
        "- fwd: forward under torch.no_grad(). fwd+bwd: forward with autograd on (inputs and "
        "weights require grad) + backward of a fixed random output gradient.",
        timing,
        "- " + H.memory_definition(args.device) + ".",
        "- time / ours, mem / ours: this row divided by ours at the same L and mode "
        "(HF and ours + projections are divided by ours + projections); above 1 means ours is "
        "faster or smaller.",
        limit,
        "",
        table(results),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if args.table_from:
        with open(args.table_from) as f:
            print(table([json.loads(line) for line in f if line.strip()]))
        return
    if H.child_entry(args, child_main):
        return
    info = H.machine_info()
    cpu = args.device == "cpu"
    checks = H.machine_checks(__file__, args) if cpu else ()
    results = []
    t_all = time.perf_counter()
    out = open(args.results, "a") if args.results else None

    def record(r: dict, where: str) -> None:
        results.append(r)
        if out:
            out.write(json.dumps({k: v for k, v in r.items() if k != "times_ms"}) + "\n")
            out.flush()
        if r["status"] == "ok":
            what = (f"{H.fmt_ms(r.get('median_ms'))} ms (min {H.fmt_ms(r.get('min_ms'))}), "
                    f"{H.fmt_mib(r.get('peak_mib'))} MiB, n={r.get('repeats')}")
        else:
            what = r["status"]
        what = H.join_notes(what, r.get("note"))
        print(f"{where} {r['impl']:16s} L={r['L']:<6d} {MODES[r['mode']]:7s} {what} "
              f"({r.get('wall_s', 0.0):.1f} s)", file=sys.stderr, flush=True)

    try:
        (run_cpu if cpu else run_cuda)(args, record)
    finally:
        if out:
            out.close()
    print(f"total {time.perf_counter() - t_all:.0f} s", file=sys.stderr)
    if cpu:
        checks = H.machine_checks(__file__, args, checks)
    H.publish(report(args, results, info, checks), args.output)


if __name__ == "__main__":
    main()

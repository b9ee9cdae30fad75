#!/usr/bin/env python
"""LSH attention benchmark: reformer_ext against the implementations users would otherwise pick.

Rows (``--impls``, comma separated ids):
  ours             rx.lsh_attention(qk, v, n_hashes, bucket_size, rotations=<drawn once>)
                   on qk, v of shape (B, H, L, D).
  reference        reformer_ext.reference.lsh_attention_reference (plain PyTorch, same inputs and
                   rotations; slow: a configuration whose single step exceeds --step-limit is
                   reported as "timeout" and larger L are skipped).
  reformer_pytorch reformer-pytorch's LSHAttention(bucket_size, n_hashes, dropout=0) on qk, v of
                   shape (B*H, L, D).  It picks its own bucket count, L / bucket_size, and draws
                   fresh rotations every call (its only mode); its chunk length is bucket_size,
                   looking one chunk back, like ours.
  sdpa             torch.nn.functional.scaled_dot_product_attention, full non-causal attention
                   on separate q, k, v of shape (B, H, L, D).
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

Every (implementation, L, mode) runs in its own fresh process; see _harness.py for the timing
and the peak-memory definitions.  Ratios are row / ours at the same L and mode (the hf and
ours_proj rows are compared with ours_proj): above 1 means ours is faster or smaller.

    python benchmarks/bench_attention.py                 # full run, L = 1K, 4K, 16K
    python benchmarks/bench_attention.py --quick         # smoke run, L = 1K, < 1 minute
    python benchmarks/bench_attention.py --output benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
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
    "reference": ("reformer_ext.reference", "ours"),
    "reformer_pytorch": ("reformer-pytorch LSHAttention", "ours"),
    "sdpa": ("torch SDPA (full attention)", "ours"),
    "ours_proj": ("ours + projections", "ours_proj"),
    "hf": ("HF transformers LSHSelfAttention + output Linear", "ours_proj"),
}
MODES = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}


# --------------------------------------------------------------------------------------------
# imports of the project (may be unavailable while it is being built)


def _import_rx():
    try:
        import reformer_ext as rx
    except Exception:
        if str(REPO) in sys.path:
            raise
        sys.path.append(str(REPO))  # not installed: try the source tree (in-place build)
        import reformer_ext as rx
    if not hasattr(rx, "lsh_attention"):
        raise ImportError(f"reformer_ext ({getattr(rx, '__file__', None) or 'namespace package'}) "
                          "has no lsh_attention")
    return rx


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
    """SPEC §4 default: max(2, 2 * ceil(L / bucket_size))."""
    return max(2, 2 * math.ceil(L / bucket_size))


# --------------------------------------------------------------------------------------------
# child: build one configuration and measure it


def build(spec: dict):
    """Return (forward fn producing the output tensor, leaf tensors that get .grad, notes)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    impl, L, mode = spec["impl"], spec["L"], spec["mode"]
    B, Hh, D, Dv = spec["B"], spec["H"], spec["D"], spec["Dv"]
    R, m = spec["n_hashes"], spec["bucket_size"]
    device = torch.device(spec["device"])
    dtype = torch.float32
    nb = default_n_buckets(L, m)
    hidden = Hh * D
    grad = mode == "fwdbwd"
    g = torch.Generator().manual_seed(spec["seed"])
    torch.manual_seed(spec["seed"])

    def randn(*shape, requires_grad=grad):
        t = torch.randn(*shape, generator=g, dtype=dtype).to(device)
        return t.requires_grad_(requires_grad)

    def rotations():
        # fixed rotations drawn once, shape (H, D, n_hashes, n_buckets // 2) (SPEC §1)
        return torch.randn(Hh, D, R, nb // 2, generator=g, dtype=torch.float32).to(device)

    def set_mode(*mods):
        for mod in mods:
            mod.to(device=device, dtype=dtype).train(grad)
            for p in mod.parameters():
                p.requires_grad_(grad)
        return [p for mod in mods for p in mod.parameters()]

    notes = []
    if impl == "ours":
        rx = _import_rx()
        qk, v, rot = randn(B, Hh, L, D), randn(B, Hh, L, Dv), rotations()

        def fn():
            return rx.lsh_attention(qk, v, n_hashes=R, bucket_size=m, rotations=rot)

        leaves = [qk, v]
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
        rx = _import_rx()
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


def child_main(spec: dict) -> None:
    threads = H.child_setup(spec.get("threads"))
    import torch

    if H.emit_calibration(spec, threads):
        return
    try:
        fn, leaves, notes = build(spec)
    except ImportError as e:  # the row says why (e.g. the extension is not built yet)
        H.emit_result({"status": f"unavailable: {H.error_summary(e)}", "threads": threads})
        return
    except Exception as e:
        H.emit_result({"status": f"error: {H.error_summary(e)}", "threads": threads})
        return
    if spec["mode"] == "fwdbwd":
        try:
            with torch.no_grad():
                shape = fn().shape
        except Exception as e:
            H.emit_result({"status": f"error: {H.error_summary(e)}", "threads": threads})
            return

    if spec["mode"] == "fwdbwd":
        g = torch.Generator().manual_seed(spec["seed"] + 1)
        grad_out = torch.randn(shape, generator=g).to(spec["device"])

        def prepare():
            for t in leaves:
                t.grad = None

        def step():
            out = fn()
            out.backward(grad_out)

    else:
        prepare = None

        def step():
            with torch.no_grad():
                fn()

    try:
        res = H.measure(
            step,
            what=spec["what"],
            budget_s=spec["budget_s"],
            min_repeats=spec["min_repeats"],
            warmup_s=spec["warmup_s"],
            step_limit_s=spec["step_limit_s"],
            device=spec["device"] if spec["device"] != "cpu" else None,
            prepare=prepare,
        )
    except Exception as e:
        res = {"status": f"error: {H.error_summary(e)}"}
    res["threads"] = threads
    res["note"] = "; ".join(filter(None, [res.get("note", "")] + notes))
    H.emit_result(res)


# --------------------------------------------------------------------------------------------
# parent: run every configuration, then report


def parse_length(s: str) -> int:
    s = s.strip().lower()
    if s.endswith("k"):
        return int(float(s[:-1]) * 1024)
    return int(s)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="1K,4K,16K", help="comma separated L (1K = 1024)")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma separated, from {list(IMPLS)}")
    p.add_argument("--modes", default="fwd,fwdbwd", help="comma separated, from fwd,fwdbwd")
    p.add_argument("--quick", action="store_true", help="smoke run: L=1K, short budgets")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64, help="head dim D of qk (and Dv of v)")
    p.add_argument("--n-hashes", type=int, default=4)
    p.add_argument("--bucket-size", type=int, default=64)
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed steps per configuration (default 15, quick 0.5)")
    p.add_argument("--min-repeats", type=int, default=3)
    p.add_argument("--step-limit", type=float, default=60.0,
                   help="a configuration whose first step runs longer is reported as timeout")
    p.add_argument("--timeout", type=float, default=None,
                   help="hard limit for one child process, seconds (default 5*step-limit+120)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads in each child (default: usable cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one-process", action="store_true",
                   help="measure time and memory in the same child (default with --quick); "
                        "otherwise timing runs in a child with the default allocator and the "
                        "peak memory in a second child started with MALLOC_MMAP_THRESHOLD_")
    p.add_argument("--output", default=None, help="append the Markdown section to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.lengths = "1K" if args.lengths == p.get_default("lengths") else args.lengths
    args.L = [parse_length(x) for x in args.lengths.split(",") if x.strip()]
    args.impl_list = [x.strip() for x in args.impls.split(",") if x.strip()]
    args.mode_list = [x.strip().replace("+", "") for x in args.modes.split(",") if x.strip()]
    for i in args.impl_list:
        if i not in IMPLS:
            p.error(f"unknown impl {i!r}; choose from {list(IMPLS)}")
    for mo in args.mode_list:
        if mo not in MODES:
            p.error(f"unknown mode {mo!r}; choose from {list(MODES)}")
    if args.quick:
        args.one_process = True
    if args.budget is None:
        args.budget = 0.5 if args.quick else 15.0
    if args.timeout is None:
        args.timeout = 5 * args.step_limit + 120
    return args


def run_all(args) -> list[dict]:
    configs = [(i, L, mo) for L in args.L for mo in args.mode_list for i in args.impl_list]
    results = []
    timed_out = set()  # (impl, mode) that timed out at a smaller L: larger L are skipped
    t_all = time.perf_counter()
    for n, (impl, L, mode) in enumerate(configs, 1):
        key = dict(impl=impl, L=L, mode=mode)
        spec = dict(
            key, B=args.batch, H=args.heads, D=args.dim, Dv=args.dim,
            n_hashes=args.n_hashes, bucket_size=args.bucket_size, device=args.device,
            budget_s=args.budget, min_repeats=args.min_repeats,
            warmup_s=0.1 if args.quick else 1.0, step_limit_s=args.step_limit,
            seed=args.seed, threads=args.threads,
        )
        wall = 0.0
        if (impl, mode) in timed_out:
            r = {"status": "skipped", "note": "timed out at a smaller L"}
        elif args.one_process:
            r = H.run_child(__file__, dict(spec, what="both"), timeout_s=args.timeout)
            wall = r.get("wall_s", 0.0)
        else:
            # timing in a process with the default allocator, peak memory in another one
            r = H.run_child(__file__, dict(spec, what="time"), timeout_s=args.timeout,
                            malloc_env=False)
            wall = r.get("wall_s", 0.0)
            if r["status"] == "ok":
                m = H.run_child(__file__, dict(spec, what="memory"), timeout_s=args.timeout)
                wall += m.get("wall_s", 0.0)
                if m["status"] == "ok":
                    r["peak_mib"] = m.get("peak_mib")
                    r["note"] = "; ".join(filter(None, [r.get("note", ""), m.get("note", "")]))
                    r["note"] = "; ".join(dict.fromkeys(r["note"].split("; ")))
                else:
                    r["note"] = "; ".join(filter(None, [r.get("note", ""),
                                                        f"memory run: {m['status']}"]))
        if r["status"] == "timeout":
            timed_out.add((impl, mode))
        r.update(key)
        results.append(r)
        if r["status"] == "ok":
            what = (f"{H.fmt_ms(r.get('median_ms'))} ms (min {H.fmt_ms(r.get('min_ms'))}), "
                    f"{H.fmt_mib(r.get('peak_mib'))} MiB, n={r.get('repeats')}")
        else:
            what = f"{r['status']} {r.get('note', '')}".strip()
        print(f"[{n}/{len(configs)}] {impl:16s} L={L:<6d} {MODES[mode]:7s} {what} "
              f"({wall:.1f} s)", file=sys.stderr, flush=True)
    print(f"total {time.perf_counter() - t_all:.0f} s", file=sys.stderr)
    return results


def report(args, results: list[dict], info: dict, versions: dict,
           checks: tuple = ()) -> str:
    by_key = {(r["impl"], r["L"], r["mode"]): r for r in results}
    rows = []
    for r in results:
        ok = r["status"] == "ok"
        base_id = IMPLS[r["impl"]][1]
        base = by_key.get((base_id, r["L"], r["mode"]))
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
    table = H.markdown_table(header, rows, align="lrlrrrrrrl")
    extra = {"peers": ", ".join(f"{k} {v}" for k, v in versions.items())}
    if checks:
        (g0, l0), (g1, l1) = checks

        def f(x, spec):
            return "?" if x is None else format(x, spec)

        extra["machine check"] = (
            f"1024x1024 fp32 matmul {f(g0, '.0f')} / {f(g1, '.0f')} GFLOP/s, 1-minute load "
            f"average {f(l0, '.1f')} / {f(l1, '.1f')}, before / after the run (if they differ, "
            "or the load exceeds the core count, the machine was shared or throttled and the "
            "times are noisy: compare min with median)")
    nb = ", ".join(f"{default_n_buckets(L, args.bucket_size)} at L={L}" for L in args.L)
    cpu = args.device == "cpu"
    lines = [
        f"## LSH attention ({args.device}, fp32{', quick' if args.quick else ''}) — {H.now_utc()}",
        "",
        f"Command: `{H.command_line()}`",
        "",
        *H.machine_lines(info, extra),
        "",
        f"- B={args.batch}, H={args.heads}, D=Dv={args.dim}, n_hashes={args.n_hashes}, "
        f"bucket_size (chunk length)={args.bucket_size}, one chunk back, non-causal; "
        f"n_buckets: {nb} (ours, reference, HF); reformer-pytorch uses L/bucket_size.",
        "- Rows: see the docstring of benchmarks/bench_attention.py. The projection rows "
        "(ours + projections, HF) take x of shape (B, L, H*D) and include the query_key, value "
        "and output Linear layers (no bias); the others take per-head tensors.",
        "- fwd: forward under torch.no_grad(). fwd+bwd: forward with autograd on (inputs and "
        "weights require grad) + backward of a fixed random output gradient.",
        f"- Each (implementation, L, mode) in a fresh process; median (and min) of n timed "
        f"steps after warm-up (n >= {args.min_repeats}, about {args.budget:g} s of timed steps "
        "per row). " + ("Time and memory measured in the same process (started with "
        "MALLOC_MMAP_THRESHOLD_, so times include the page faults of fresh mmaps)."
        if args.one_process else "Times come from a process with the default allocator "
        "settings, peak memory from a second fresh process (below)."),
        "- " + (H.MEMORY_DEFINITION_CPU if cpu else H.MEMORY_DEFINITION_CUDA) + ".",
        "- time / ours, mem / ours: this row divided by ours at the same L and mode "
        "(HF and ours + projections are divided by ours + projections); above 1 means ours is "
        "faster or smaller.",
        f"- A configuration whose first step takes longer than {args.step_limit:g} s is "
        "reported as timeout and not timed; larger L of the same row are then skipped.",
        "",
        table,
    ]
    return "\n".join(lines) + "\n"


def peer_versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("reformer-pytorch", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.child is not None:
        child_main(json.loads(args.child))
        return
    info = H.machine_info()
    check = not args.quick and args.device == "cpu"
    c0 = H.machine_check(__file__, args.threads) if check else None
    results = run_all(args)
    c1 = H.machine_check(__file__, args.threads) if check else None
    text = report(args, results, info, peer_versions(), (c0, c1) if check else ())
    print(text)
    if args.output:
        H.append_section(args.output, text)
        print(f"appended to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Chunked feed-forward benchmark: forward+backward time and peak memory of reformer_ext's
chunked FFN against the feed-forwards users would otherwise write.

    y = W2 · gelu(W1 · x + b1) + b2,   x: (B, L, d_model), fp32, exact GELU

Rows (``--impls``, comma separated ids):
  plain       F.linear -> F.gelu -> F.linear under autograd: the whole (B·L, d_ff) hidden
              activation (pre- and post-GELU) is saved for the backward.
  hf          HuggingFace's style: ``transformers.pytorch_utils.apply_chunking_to_forward`` over
              the sequence dimension (our own few-line equivalent when transformers is not
              installed): the forward runs chunk by chunk but autograd keeps every chunk's
              hidden activation for the backward, so training memory barely drops.
  checkpoint  the forward chunk by chunk, each chunk under torch.utils.checkpoint
              (use_reentrant=False): the backward recomputes each chunk's hidden activation
              from its input slice (what a user would write with stock PyTorch to chunk both).
  ours        rx.chunked_feed_forward(x, w1, b1, w2, b2, chunk_size=c): the C++ operator, chunked
              in forward and backward, weight gradients accumulated across chunks in C++.

Every (impl, chunk_size) runs in fresh processes: timing in children with the default allocator,
``--rounds`` rounds over all configurations (so that load from other processes on a shared
machine hits every row alike), peak memory in one more child (see _harness.py for both
definitions). Each step is one
forward and one backward of a fixed random output gradient; .grad is reset to None before each
step (outside the clock), so every step allocates fresh gradients.

"Beyond unavoidable" memory: the peak extra RSS of one step minus what every implementation must
hold at the end of the step: the output y and the gradients of x, W1, b1, W2, b2 (the inputs,
weights and output gradient exist before the step and are in the baseline already).

    python benchmarks/bench_ffn.py                          # full run (about 8 minutes)
    python benchmarks/bench_ffn.py --quick                  # smoke run, small L, < 1 minute
    python benchmarks/bench_ffn.py --output benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import _harness as H  # noqa: E402

IMPLS = {
    "plain": "plain PyTorch FFN (autograd)",
    "hf": "HF apply_chunking_to_forward (fwd chunked)",
    "checkpoint": "chunks under torch.utils.checkpoint",
    "ours": "ours: rx.chunked_feed_forward",
}
CHUNKED = ("hf", "checkpoint", "ours")


def _import_rx():
    try:
        import reformer_ext as rx
    except Exception:
        if str(REPO) in sys.path:
            raise
        sys.path.append(str(REPO))
        import reformer_ext as rx
    if not hasattr(rx, "chunked_feed_forward"):
        raise ImportError("reformer_ext has no chunked_feed_forward (rebuild the package)")
    return rx


def _apply_chunking(forward_fn, chunk_size, chunk_dim, x):
    """The HF style (forward chunked, backward not): transformers' apply_chunking_to_forward
    when installed, else the same few lines: split, run, concatenate."""
    try:
        from transformers.pytorch_utils import apply_chunking_to_forward
    except ImportError:
        import torch

        return torch.cat([forward_fn(c) for c in x.split(chunk_size, dim=chunk_dim)],
                         dim=chunk_dim)
    return apply_chunking_to_forward(forward_fn, chunk_size, chunk_dim, x)


def unavoidable_bytes(spec: dict) -> int:
    """y and the gradients of x, W1, b1, W2, b2 (fp32)."""
    n = spec["B"] * spec["L"]
    d, f = spec["d_model"], spec["d_ff"]
    return 4 * (2 * n * d + 2 * d * f + f + d)


# --------------------------------------------------------------------------------------------
# child


def build(spec: dict):
    """Return (forward fn producing y, leaf tensors that get .grad, notes)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    impl, c = spec["impl"], spec["chunk_size"]
    B, L, d, f = spec["B"], spec["L"], spec["d_model"], spec["d_ff"]
    g = torch.Generator().manual_seed(spec["seed"])

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    x = randn(B, L, d)
    w1, b1 = randn(f, d, scale=d ** -0.5), randn(f, scale=0.1)
    w2, b2 = randn(d, f, scale=f ** -0.5), randn(d, scale=0.1)
    leaves = [x, w1, b1, w2, b2]
    notes = []

    def ffn(t):
        return F.linear(F.gelu(F.linear(t, w1, b1)), w2, b2)

    if impl == "plain":
        def fn():
            return ffn(x)
    elif impl == "hf":
        try:
            import transformers.pytorch_utils  # noqa: F401
        except ImportError:
            notes.append("transformers not installed: same-style local chunking")

        def fn():
            return _apply_chunking(ffn, c, 1, x)
    elif impl == "checkpoint":
        def fn():
            return torch.cat([checkpoint(ffn, t, use_reentrant=False)
                              for t in x.split(c, dim=1)], dim=1)
    elif impl == "ours":
        rx = _import_rx()

        def fn():
            return rx.chunked_feed_forward(x, w1, b1, w2, b2, chunk_size=c, activation="gelu")
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
    except ImportError as e:
        H.emit_result({"status": f"unavailable: {H.error_summary(e)}", "threads": threads})
        return
    except Exception as e:
        H.emit_result({"status": f"error: {H.error_summary(e)}", "threads": threads})
        return
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    grad_out = torch.randn(spec["B"], spec["L"], spec["d_model"], generator=g)

    def prepare():
        for t in leaves:
            t.grad = None

    def step():
        fn().backward(grad_out)

    try:
        res = H.measure(step, what=spec["what"], budget_s=spec["budget_s"],
                        min_repeats=spec["min_repeats"], warmup_s=spec["warmup_s"],
                        step_limit_s=spec["step_limit_s"], prepare=prepare)
    except Exception as e:
        res = {"status": f"error: {H.error_summary(e)}"}
    res["threads"] = threads
    res["note"] = "; ".join(filter(None, [res.get("note", "")] + notes))
    H.emit_result(res)


# --------------------------------------------------------------------------------------------
# parent


def parse_length(s: str) -> int:
    s = s.strip().lower()
    return int(float(s[:-1]) * 1024) if s.endswith("k") else int(s)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma separated, from {list(IMPLS)}")
    p.add_argument("--chunks", default="512,1024,4096", help="comma separated chunk sizes")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--length", default="16K", help="sequence length L (16K = 16384)")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--d-ff", type=int, default=2048)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: L=2K, chunk sizes 256,1024, short budgets, one process")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed steps per configuration (default 20, quick 0.5)")
    p.add_argument("--min-repeats", type=int, default=3,
                   help="timed steps per timing process, at least")
    p.add_argument("--rounds", type=int, default=3,
                   help="timing rounds over all configurations (steps pooled; default 3)")
    p.add_argument("--step-limit", type=float, default=60.0)
    p.add_argument("--timeout", type=float, default=None,
                   help="hard limit for one child process, seconds (default 5*step-limit+120)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads in each child (default: usable cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one-process", action="store_true",
                   help="measure time and memory in the same child (default with --quick)")
    p.add_argument("--output", default=None, help="append the Markdown section to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.length = "2K" if args.length == p.get_default("length") else args.length
        args.chunks = "256,1024" if args.chunks == p.get_default("chunks") else args.chunks
        args.one_process = True
        args.min_repeats = 3
    args.L = parse_length(args.length)
    args.chunk_list = [int(c) for c in args.chunks.split(",") if c.strip()]
    args.impl_list = [i.strip() for i in args.impls.split(",") if i.strip()]
    for i in args.impl_list:
        if i not in IMPLS:
            p.error(f"unknown impl {i!r}; choose from {list(IMPLS)}")
    if args.budget is None:
        args.budget = 0.5 if args.quick else 20.0
    if args.timeout is None:
        args.timeout = 5 * args.step_limit + 120
    return args


def _merge_rounds(parts: list[dict]) -> dict:
    """One timing result from the timing children of every round (all their steps pooled)."""
    ok = [r for r in parts if r["status"] == "ok"]
    if not ok:
        return dict(parts[-1])
    times = [t for r in ok for t in r["times_ms"]]
    return {
        "status": "ok", "times_ms": times, "repeats": len(times),
        "median_ms": statistics.median(times), "min_ms": min(times),
        "round_medians_ms": [r["median_ms"] for r in ok],
        "wall_s": sum(r.get("wall_s", 0.0) for r in parts),
        "note": "; ".join(dict.fromkeys(filter(None, (r.get("note", "") for r in ok)))),
    }


def run_all(args) -> list[dict]:
    configs = []
    for impl in args.impl_list:
        for c in (args.chunk_list if impl in CHUNKED else [None]):
            configs.append((impl, c))
    t_all = time.perf_counter()

    def spec_of(impl, c, what, budget):
        return dict(impl=impl, chunk_size=c, B=args.batch, L=args.L, d_model=args.d_model,
                    d_ff=args.d_ff, budget_s=budget, min_repeats=args.min_repeats,
                    warmup_s=0.1 if args.quick else 1.0, step_limit_s=args.step_limit,
                    seed=args.seed, threads=args.threads, what=what)

    def log(msg):
        print(f"{msg} ({time.perf_counter() - t_all:.0f} s total)", file=sys.stderr, flush=True)

    if args.one_process:
        results = []
        for impl, c in configs:
            r = H.run_child(__file__, spec_of(impl, c, "both", args.budget), timeout_s=args.timeout)
            results.append(dict(r, impl=impl, chunk_size=c))
            log(f"{impl:10s} chunk={c or '-':>5}: {r['status']}")
        return results

    # Timing: `rounds` rounds, each running every configuration once (in its own process, with
    # budget / rounds seconds of timed steps), so that load from other processes on a shared
    # machine hits every configuration alike; the steps of all rounds are pooled.
    parts = {cfg: [] for cfg in configs}
    for rnd in range(args.rounds):
        for impl, c in configs:
            r = H.run_child(__file__, spec_of(impl, c, "time", args.budget / args.rounds),
                            timeout_s=args.timeout, malloc_env=False)
            parts[(impl, c)].append(r)
            what = f"{H.fmt_ms(r.get('median_ms'))} ms" if r["status"] == "ok" else r["status"]
            log(f"round {rnd + 1}/{args.rounds} {impl:10s} chunk={c or '-':>5}: {what}")
    results = []
    for impl, c in configs:
        r = _merge_rounds(parts[(impl, c)])
        if r["status"] == "ok":
            m = H.run_child(__file__, spec_of(impl, c, "memory", args.budget),
                            timeout_s=args.timeout)
            if m["status"] == "ok":
                r["peak_mib"] = m.get("peak_mib")
                r["note"] = "; ".join(dict.fromkeys(
                    filter(None, [r.get("note", ""), m.get("note", "")])))
            else:
                r["note"] = "; ".join(filter(None, [r.get("note", ""),
                                                    f"memory run: {m['status']}"]))
            log(f"memory {impl:10s} chunk={c or '-':>5}: {H.fmt_mib(r.get('peak_mib'))} MiB")
        results.append(dict(r, impl=impl, chunk_size=c))
    return results


def report(args, results, machine, gflops_before, gflops_after) -> str:
    spec = dict(B=args.batch, L=args.L, d_model=args.d_model, d_ff=args.d_ff)
    must_mib = unavoidable_bytes(spec) / 2**20
    plain = next((r for r in results if r["impl"] == "plain" and r["status"] == "ok"), None)

    def beyond(r):
        return None if r.get("peak_mib") is None else max(r["peak_mib"] - must_mib, 0.0)

    header = ["implementation", "chunk_size", "fwd+bwd median ms", "min ms", "time / plain",
              "peak extra MiB", "beyond unavoidable MiB", "beyond / plain's", "notes"]
    rows = []
    for r in results:
        ok = r["status"] == "ok"
        t_ratio = m_ratio = None
        if ok and plain:
            t_ratio = r["median_ms"] / plain["median_ms"]
            if beyond(r) is not None and beyond(plain):
                m_ratio = beyond(r) / beyond(plain)
        rows.append([
            IMPLS[r["impl"]], r["chunk_size"] or "-",
            H.fmt_ms(r.get("median_ms")) if ok else r["status"],
            H.fmt_ms(r.get("min_ms")) if ok else "-",
            H.fmt_ratio(t_ratio), H.fmt_mib(r.get("peak_mib")), H.fmt_mib(beyond(r)),
            H.fmt_ratio(m_ratio) if m_ratio is None or m_ratio >= 0.01 else f"{m_ratio:.3f}x",
            "; ".join(filter(None, [
                r.get("note", ""), f"n={r['repeats']}" if ok else "",
                "round medians " + "/".join(H.fmt_ms(t) for t in r["round_medians_ms"])
                if ok and len(r.get("round_medians_ms", [])) > 1 else ""])),
        ])
    extra = {
        "calibration": f"{gflops_before:.0f} GFLOP/s before, {gflops_after:.0f} after "
                       "(1024x1024 fp32 matmul)",
        "shape": f"B={args.batch}, L={args.L}, d_model={args.d_model}, d_ff={args.d_ff}, fp32, "
                 "exact GELU, biases",
        "unavoidable": f"{must_mib:.1f} MiB = y + grad of x, W1, b1, W2, b2 (subtracted from "
                       "the peak for 'beyond unavoidable'; inputs, weights and the output "
                       "gradient are in the baseline)",
        "memory": H.MEMORY_DEFINITION_CPU,
        "time": (f"median and min over all timed steps of {args.rounds} rounds; each round "
                 f"runs every configuration once in a fresh process (warm-up, then >= "
                 f"{args.min_repeats} steps, {args.budget / args.rounds:g} s budget), so load "
                 "from other processes hits all rows alike; one step = forward + backward, "
                 ".grad reset outside the clock") if not args.one_process else
                (f"median of >= {args.min_repeats} steps (budget {args.budget:g} s) after "
                 "warm-up, in the same process as the memory step; one step = forward + "
                 "backward, .grad reset outside the clock"),
    }
    lines = [f"## Chunked feed-forward, fwd+bwd ({H.now_utc()})", "",
             f"Command: `{H.command_line()}`", ""]
    lines += H.machine_lines(machine, extra)
    lines += ["", H.markdown_table(header, rows, "llrrrrrrl"), ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        import json

        child_main(json.loads(args.child))
        return
    import torch

    machine = H.machine_info()
    before = H.machine_check(__file__, args.threads)[0] or 0.0
    results = run_all(args)
    after = H.machine_check(__file__, args.threads)[0] or 0.0
    del torch
    text = report(args, results, machine, before, after)
    print(text)
    if args.output:
        H.append_section(args.output, text)


if __name__ == "__main__":
    main()

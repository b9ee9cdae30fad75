#!/usr/bin/env python
"""Chunked feed-forward benchmark: forward+backward time and peak memory of reformer_ext's
chunked FFN against the feed-forwards users would otherwise write.

    y = W2 · gelu(W1 · x + b1) + b2,   x: (B, L, d_model), fp32, exact GELU, on --device

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
definitions, on the CPU and on CUDA). Each step is one forward and one backward of a fixed
random output gradient; .grad is reset to None before each step (outside the clock), so every
step allocates fresh gradients.

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
sys.path.insert(0, str(HERE))

import _harness as H  # noqa: E402

IMPLS = {
    "plain": "plain PyTorch FFN (autograd)",
    "hf": "HF apply_chunking_to_forward (fwd chunked)",
    "checkpoint": "chunks under torch.utils.checkpoint",
    "ours": "ours: rx.chunked_feed_forward",
}
CHUNKED = ("hf", "checkpoint", "ours")


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
        return (torch.randn(*shape, generator=g) * scale).to(spec["device"]).requires_grad_()

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
        rx = H.import_rx("chunked_feed_forward")

        def fn():
            return rx.chunked_feed_forward(x, w1, b1, w2, b2, chunk_size=c, activation="gelu")
    else:
        raise ValueError(f"unknown impl {impl!r}")
    return fn, leaves, notes


def make_step(spec: dict, fn, leaves, notes):
    """(prepare, step, finish) for _harness.measure_child: one step = forward + backward of a
    fixed output gradient; .grad reset to None before each step."""
    import torch

    g = torch.Generator().manual_seed(spec["seed"] + 1)
    grad_out = torch.randn(spec["B"], spec["L"], spec["d_model"], generator=g).to(spec["device"])

    def prepare():
        for t in leaves:
            t.grad = None

    def step():
        fn().backward(grad_out)

    def finish(res):
        res["note"] = H.join_notes(res.get("note"), *notes)

    return prepare, step, finish


def child_main(spec: dict) -> None:
    H.measure_child(spec, build, make_step)


# --------------------------------------------------------------------------------------------
# parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    H.add_common_args(p, quick="smoke run: L=2K, chunk sizes 256,1024, short budgets, one "
                               "process", timing=dict(budget=(0.5, 20.0), warmup=(0.1, 1.0),
                                                      step_limit=60.0, timeout_factor=5))
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma separated, from {list(IMPLS)}")
    p.add_argument("--chunks", default="512,1024,4096", help="comma separated chunk sizes")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--length", default="16K", help="sequence length L (16K = 16384)")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--d-ff", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3,
                   help="timing rounds over all configurations (steps pooled; default 3)")
    args = p.parse_args(argv)
    if args.quick:
        args.length = "2K" if args.length == p.get_default("length") else args.length
        args.chunks = "256,1024" if args.chunks == p.get_default("chunks") else args.chunks
    H.finish_common_args(p, args)
    args.L = H.parse_length(args.length)
    args.chunk_list = [int(c) for c in args.chunks.split(",") if c.strip()]
    args.impl_list = H.parse_ids(p, args.impls, IMPLS)
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
        return dict(H.timing_spec(args), impl=impl, chunk_size=c, B=args.batch, L=args.L,
                    d_model=args.d_model, d_ff=args.d_ff, budget_s=budget, what=what)

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
            H.add_memory(r, H.run_child(__file__, spec_of(impl, c, "memory", args.budget),
                                        timeout_s=args.timeout))
            log(f"memory {impl:10s} chunk={c or '-':>5}: {H.fmt_mib(r.get('peak_mib'))} MiB")
        results.append(dict(r, impl=impl, chunk_size=c))
    return results


def report(args, results, machine, checks) -> str:
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
        "machine check": H.machine_check_text(checks),
        "shape": f"B={args.batch}, L={args.L}, d_model={args.d_model}, d_ff={args.d_ff}, fp32, "
                 "exact GELU, biases",
        "unavoidable": f"{must_mib:.1f} MiB = y + grad of x, W1, b1, W2, b2 (subtracted from "
                       "the peak for 'beyond unavoidable'; inputs, weights and the output "
                       "gradient are in the baseline)",
        "memory": H.memory_definition(args.device),
        "time": (f"median and min over all timed steps of {args.rounds} rounds; each round "
                 f"runs every configuration once in a fresh process (warm-up, then >= "
                 f"{args.min_repeats} steps, {args.budget / args.rounds:g} s budget), so load "
                 "from other processes hits all rows alike; one step = forward + backward, "
                 ".grad reset outside the clock") if not args.one_process else
                (f"median of >= {args.min_repeats} steps (budget {args.budget:g} s) after "
                 "warm-up, in the same process as the memory step; one step = forward + "
                 "backward, .grad reset outside the clock"),
    }
    lines = H.report_header(f"## Chunked feed-forward, fwd+bwd ({args.device}, {H.now_utc()}"
                            f"{', quick' if args.quick else ''})", machine, extra)
    lines += ["", H.markdown_table(header, rows, "llrrrrrrl"), ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if H.child_entry(args, child_main):
        return
    machine = H.machine_info()
    checks = H.machine_checks(__file__, args)
    results = run_all(args)
    checks = H.machine_checks(__file__, args, checks)
    H.publish(report(args, results, machine, checks), args.output)


if __name__ == "__main__":
    main()

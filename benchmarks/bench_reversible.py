#!/usr/bin/env python
"""Reversible Reformer benchmark: training-step (forward + backward) time and peak memory of the
whole stack against depth, for reformer_ext's reversible stack and the alternatives.

Rows (``--impls``, comma separated ids), all on x of shape (B, L, d_model), fp32, training mode,
dropout 0, fresh LSH rotations every step:
  rev         rx.nn.Reformer(d_model, depth, heads, reversible=True): the stack operator
              reformer::reformer_stack (only the final streams are kept; each layer's inputs
              are rebuilt in the backward and its activations recomputed).
  plain       the same model with reversible=False: ordinary autograd, every activation kept.
  checkpoint  the same model's layers run one by one under torch.utils.checkpoint
              (use_reentrant=False, RNG state preserved): the inputs of every layer are kept,
              each layer is recomputed in the backward.
  reformer_pytorch  reformer-pytorch's Reformer(dim=d_model, depth, heads, dim_head=d_model/heads,
              bucket_size, n_hashes, ff_chunks=L/ff_chunk_size, causal=False): its reversible
              stack (reverse_thres=0), LayerNorm pre-norm, GELU feed-forward of 4·d_model, mean of
              the two streams at the end. It uses L/bucket_size buckets per round (ours: the
              SPEC default 2·ceil(L/bucket_size)) and no positional input (none passed).

Ours use: d_ff = 4·d_model (exact GELU), bucket_size 64, n_hashes 4, one chunk back,
ff_chunk_size 1024, merge "concat" (LayerNorm(2·d_model) + Linear(2·d_model, d_model)).

One step = forward of x (requires grad) + backward of a fixed random output gradient. Before
every step (outside the clock) the parameters' and x's .grad are set to None, as
``optimizer.zero_grad()`` does by default, so the step allocates the gradients itself; the
reported "peak extra" memory subtracts their size (that of the parameters and of x), so it is
the memory ABOVE the parameters, their gradients, the input and the output gradient: the
step's activations and temporaries. (With gradients zeroed in place instead, the reversible
stack operator holds one more parameter-sized set of gradients for a moment: it returns all
layers' weight gradients at once and autograd then adds them into the existing .grad.)

Every (impl, depth) runs in its own fresh processes (see _harness.py: timing in one with the
default allocator, peak memory in another started with MALLOC_MMAP_THRESHOLD_).

    python benchmarks/bench_reversible.py                  # full run (about 20-30 minutes)
    python benchmarks/bench_reversible.py --quick          # smoke run, L=512, < 2 minutes
    python benchmarks/bench_reversible.py --output benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import _harness as H  # noqa: E402

IMPLS = {
    "rev": "ours: Reformer(reversible=True)",
    "plain": "ours: Reformer(reversible=False)",
    "checkpoint": "ours, reversible=False, checkpoint per layer",
    "reformer_pytorch": "reformer-pytorch Reformer",
}


def _import_rx():
    try:
        import reformer_ext as rx
    except Exception:
        if str(REPO) in sys.path:
            raise
        sys.path.append(str(REPO))
        import reformer_ext as rx
    if not hasattr(rx.nn, "Reformer"):
        raise ImportError("reformer_ext.nn has no Reformer")
    return rx


# --------------------------------------------------------------------------------------------
# child


def build(spec: dict):
    """(step function returning the output, the model, x)."""
    import torch

    impl, depth = spec["impl"], spec["depth"]
    B, L, d, heads = spec["B"], spec["L"], spec["d_model"], spec["heads"]
    m, R, ffc = spec["bucket_size"], spec["n_hashes"], spec["ff_chunk_size"]
    torch.manual_seed(spec["seed"])
    if impl in ("rev", "plain", "checkpoint"):
        rx = _import_rx()
        model = rx.nn.Reformer(d, depth, heads, bucket_size=m, n_hashes=R, ff_chunk_size=ffc,
                               reversible=impl == "rev")
    elif impl == "reformer_pytorch":
        from reformer_pytorch import Reformer

        model = Reformer(d, depth, heads=heads, dim_head=d // heads, bucket_size=m, n_hashes=R,
                         ff_chunks=max(1, L // ffc), causal=False)
    else:
        raise ValueError(f"unknown impl {impl!r}")
    model.train()
    x = torch.randn(B, L, d, generator=torch.Generator().manual_seed(spec["seed"] + 1))
    x.requires_grad_(True)

    if impl == "checkpoint":
        from torch.utils.checkpoint import checkpoint

        def fn():
            x1 = x2 = x
            for block in model.layers:
                x1, x2 = checkpoint(block, x1, x2, {}, {}, use_reentrant=False)
            return model.proj(model.norm(torch.cat([x1, x2], dim=-1)))
    else:
        def fn():
            return model(x)

    return fn, model, x


def child_main(spec: dict) -> None:
    threads = H.child_setup(spec.get("threads"))
    import torch

    if H.emit_calibration(spec, threads):
        return
    if spec.get("paired"):
        H.emit_result(paired_main(spec))
        return
    try:
        fn, model, x = build(spec)
    except ImportError as e:
        H.emit_result({"status": f"unavailable: {H.error_summary(e)}", "threads": threads})
        return
    except Exception as e:
        H.emit_result({"status": f"error: {H.error_summary(e)}", "threads": threads})
        return
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(spec["seed"] + 2))

    grads_mib = (n_params + x.numel()) * x.element_size() / 2**20

    def prepare():
        for t in params + [x]:
            t.grad = None

    def step():
        fn().backward(grad_out)

    try:
        res = H.measure(step, what=spec["what"], budget_s=spec["budget_s"],
                        min_repeats=spec["min_repeats"], warmup_s=spec["warmup_s"],
                        step_limit_s=spec["step_limit_s"], prepare=prepare)
        if res.get("peak_mib") is not None:  # the gradients the step leaves are not "extra"
            res["peak_mib"] = max(res["peak_mib"] - grads_mib, 0.0)
    except Exception as e:
        res = {"status": f"error: {H.error_summary(e)}"}
    res["threads"] = threads
    res["params_mib"] = n_params * 4 / 2**20
    H.emit_result(res)


def paired_main(spec: dict) -> dict:
    """One model, steps alternating reversible=True / reversible=False (same parameters, same
    input): both modes see the same machine load, so the ratio survives a shared machine."""
    import statistics

    import torch

    try:
        fn, model, x = build(dict(spec, impl="rev"))
    except Exception as e:
        return {"status": f"error: {H.error_summary(e)}"}
    params = list(model.parameters())
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(spec["seed"] + 2))

    def step(reversible: bool) -> float:
        for t in params + [x]:
            t.grad = None
        model.reversible = reversible
        t0 = time.perf_counter()
        fn().backward(grad_out)
        return time.perf_counter() - t0

    step(True), step(False)  # warm-up
    rev, plain = [], []
    for i in range(spec["pairs"]):
        order = (True, False) if i % 2 == 0 else (False, True)
        for mode in order:
            (rev if mode else plain).append(step(mode))
    ratios = [a / b for a, b in zip(rev, plain)]
    return {"status": "ok", "rev_ms": statistics.median(rev) * 1e3,
            "plain_ms": statistics.median(plain) * 1e3, "rev_min_ms": min(rev) * 1e3,
            "plain_min_ms": min(plain) * 1e3, "ratio_median": statistics.median(ratios),
            "ratio_of_mins": min(rev) / min(plain), "pairs": len(ratios)}


# --------------------------------------------------------------------------------------------
# parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", default="2,6,12,24")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma separated, from {list(IMPLS)}")
    p.add_argument("--quick", action="store_true", help="smoke run: L=512, depths 2,6")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--n-hashes", type=int, default=4)
    p.add_argument("--bucket-size", type=int, default=64)
    p.add_argument("--ff-chunk-size", type=int, default=1024)
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed steps per configuration (default 10, quick 0.5)")
    p.add_argument("--min-repeats", type=int, default=3)
    p.add_argument("--step-limit", type=float, default=150.0,
                   help="a configuration whose first step runs longer is reported as timeout")
    p.add_argument("--timeout", type=float, default=None,
                   help="hard limit for one child process, seconds (default 6*step-limit+120)")
    p.add_argument("--paired-depths", default="12",
                   help="depths at which reversible and plain steps are also timed alternately "
                        "in one process (robust time ratio on a shared machine); '' to skip")
    p.add_argument("--pairs", type=int, default=5, help="alternating pairs per paired depth")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one-process", action="store_true",
                   help="time and memory in the same child (default with --quick)")
    p.add_argument("--output", default=None, help="append the Markdown section to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        if args.depths == p.get_default("depths"):
            args.depths = "2,6"
        if args.length == p.get_default("length"):
            args.length = 512
        args.one_process = True
    if args.quick and args.paired_depths == p.get_default("paired_depths"):
        args.paired_depths = "2"
    args.depth_list = [int(s) for s in args.depths.split(",") if s.strip()]
    args.paired_list = [int(s) for s in args.paired_depths.split(",") if s.strip()]
    args.impl_list = [s.strip() for s in args.impls.split(",") if s.strip()]
    for i in args.impl_list:
        if i not in IMPLS:
            p.error(f"unknown impl {i!r}; choose from {list(IMPLS)}")
    if args.budget is None:
        args.budget = 0.5 if args.quick else 10.0
    if args.timeout is None:
        args.timeout = 6 * args.step_limit + 120
    return args


def run_all(args) -> list:
    configs = [(impl, depth) for depth in args.depth_list for impl in args.impl_list]
    results = []
    t_all = time.perf_counter()
    for n, (impl, depth) in enumerate(configs, 1):
        key = dict(impl=impl, depth=depth)
        spec = dict(key, B=args.batch, L=args.length, d_model=args.d_model, heads=args.heads,
                    n_hashes=args.n_hashes, bucket_size=args.bucket_size,
                    ff_chunk_size=args.ff_chunk_size, budget_s=args.budget,
                    min_repeats=args.min_repeats, warmup_s=0.1 if args.quick else 1.0,
                    step_limit_s=args.step_limit, seed=args.seed, threads=args.threads)
        if args.one_process:
            r = H.run_child(__file__, dict(spec, what="both"), timeout_s=args.timeout)
        else:
            r = H.run_child(__file__, dict(spec, what="time"), timeout_s=args.timeout,
                            malloc_env=False)
            if r["status"] == "ok":
                mem = H.run_child(__file__, dict(spec, what="memory"), timeout_s=args.timeout)
                r["wall_s"] = r.get("wall_s", 0.0) + mem.get("wall_s", 0.0)
                if mem["status"] == "ok":
                    r["peak_mib"] = mem.get("peak_mib")
                    r["note"] = "; ".join(dict.fromkeys(
                        filter(None, [r.get("note", ""), mem.get("note", "")])))
                else:
                    r["note"] = "; ".join(filter(None, [r.get("note", ""),
                                                        f"memory run: {mem['status']}"]))
        r.update(key)
        results.append(r)
        if r["status"] == "ok":
            what = (f"{H.fmt_ms(r.get('median_ms'))} ms (min {H.fmt_ms(r.get('min_ms'))}), "
                    f"{H.fmt_mib(r.get('peak_mib'))} MiB, n={r.get('repeats')}")
        else:
            what = f"{r['status']} {r.get('note', '')}"
        print(f"[{n}/{len(configs)}] {impl:16s} depth={depth:<3d} {what} "
              f"({r.get('wall_s', 0):.0f} s; {time.perf_counter() - t_all:.0f} s total, "
              f"load {H.load_average() or 0:.1f})", file=sys.stderr, flush=True)
    return results


def run_paired(args) -> list:
    out = []
    for depth in args.paired_list:
        spec = dict(paired=True, depth=depth, B=args.batch, L=args.length, d_model=args.d_model,
                    heads=args.heads, n_hashes=args.n_hashes, bucket_size=args.bucket_size,
                    ff_chunk_size=args.ff_chunk_size, seed=args.seed, threads=args.threads,
                    pairs=args.pairs)
        r = H.run_child(__file__, spec, timeout_s=args.timeout, malloc_env=False)
        r["depth"] = depth
        out.append(r)
        what = (f"ratio {r['ratio_median']:.2f} (of mins {r['ratio_of_mins']:.2f})"
                if r["status"] == "ok" else r["status"])
        print(f"[paired] depth={depth}: {what} ({r.get('wall_s', 0):.0f} s, load "
              f"{H.load_average() or 0:.1f})", file=sys.stderr, flush=True)
    return out


def _targets(by_key, paired=()) -> list:
    """The issue's acceptance checks, as lines."""

    def get(impl, depth, field):
        r = by_key.get((impl, depth))
        return r.get(field) if r and r["status"] == "ok" else None

    lines = []

    def check(label, value, limit, kind):
        if value is None:
            lines.append(f"- {label}: not measured")
            return
        ok = value <= limit if kind == "<=" else value < limit
        lines.append(f"- {label}: {value:.2f} ({kind} {limit:.2f}: {'met' if ok else 'NOT met'})")

    rev2, rev24 = get("rev", 2, "peak_mib"), get("rev", 24, "peak_mib")
    check("reversible peak extra memory, depth 24 / depth 2",
          rev24 / rev2 if rev2 and rev24 is not None else None, 1.2, "<=")
    rt, pt = get("rev", 12, "median_ms"), get("plain", 12, "median_ms")
    check("depth 12 step time, reversible / plain (separate processes, medians)",
          rt / pt if rt and pt else None, 1.4, "<=")
    for r in paired:
        if r["depth"] == 12 and r["status"] == "ok":
            check("depth 12 step time, reversible / plain (paired, median of per-pair ratios)",
                  r["ratio_median"], 1.4, "<=")
    rm, pm, cm = (get(i, 12, "peak_mib") for i in ("rev", "plain", "checkpoint"))
    check("depth 12 peak extra memory, reversible / plain",
          rm / pm if rm is not None and pm else None, 1 / 3, "<=")
    check("depth 12 peak extra memory, reversible / checkpoint",
          rm / cm if rm is not None and cm else None, 1.0, "<")
    return lines


def report(args, results, machine, calib, paired=()) -> str:
    by_key = {(r["impl"], r["depth"]): r for r in results}
    header = ["implementation", "depth", "median ms", "min ms", "time / plain",
              "peak extra MiB", "mem / plain", "params MiB", "n", "note"]
    rows = []
    for r in results:
        ok = r["status"] == "ok"
        base = by_key.get(("plain", r["depth"]))
        t_ratio = m_ratio = None
        if ok and base is not None and base["status"] == "ok":
            t_ratio = r["median_ms"] / base["median_ms"]
            if r.get("peak_mib") is not None and base.get("peak_mib"):
                m_ratio = r["peak_mib"] / base["peak_mib"]
        rows.append([
            IMPLS[r["impl"]], r["depth"],
            H.fmt_ms(r.get("median_ms")) if ok else r["status"],
            H.fmt_ms(r.get("min_ms")) if ok else "-",
            H.fmt_ratio(t_ratio), H.fmt_mib(r.get("peak_mib")) if ok else "-",
            H.fmt_ratio(m_ratio), H.fmt_mib(r.get("params_mib")),
            str(r.get("repeats", "-")), r.get("note", "") if ok else r.get("note", ""),
        ])
    versions = {}
    try:
        from importlib import metadata

        versions["reformer-pytorch"] = metadata.version("reformer-pytorch")
    except Exception:
        pass
    (g0, l0), (g1, l1) = calib

    def f(x, fmt):
        return "?" if x is None else format(x, fmt)

    extra = {
        "peers": ", ".join(f"{k} {v}" for k, v in versions.items()) or "-",
        "machine check": f"1024x1024 fp32 matmul {f(g0, '.0f')} / {f(g1, '.0f')} GFLOP/s, "
                         f"1-minute load average {f(l0, '.1f')} / {f(l1, '.1f')}, before / after "
                         "the run (a load above the core count means a shared machine: noisy "
                         "times; compare min with median)",
        "shape": f"B={args.batch}, L={args.length}, d_model={args.d_model}, heads={args.heads} "
                 f"(d_head {args.d_model // args.heads}), d_ff={4 * args.d_model}, "
                 f"n_hashes={args.n_hashes}, bucket_size={args.bucket_size}, ff chunk "
                 f"{args.ff_chunk_size}, fp32, training mode, dropout 0, non-causal",
        "memory": H.MEMORY_DEFINITION_CPU + "; .grad of the parameters and of x are None "
                  "before the step (optimizer.zero_grad()'s default) and their size is "
                  "subtracted, so this is the memory above parameters, their gradients, x and "
                  "the output gradient",
        "threads": f"torch.set_num_threads({args.threads or H.num_cores()}) in every child "
                   "(overrides the line above when --threads is given)",
        "time": f"median of >= {args.min_repeats} steps (about {args.budget:g} s of timed steps) "
                "after warm-up; one step = forward + backward",
    }
    lines = [f"## Reversible Reformer stack, training step vs depth ({H.now_utc()}"
             f"{', quick' if args.quick else ''})", "",
             f"Command: `{H.command_line()}`", ""]
    lines += H.machine_lines(machine, extra)
    lines += ["", "Rows: see the docstring of benchmarks/bench_reversible.py; ratios are divided "
              "by ours with reversible=False at the same depth.", "",
              H.markdown_table(header, rows, "lrrrrrrrrl"), ""]
    if paired:
        prow = []
        for r in paired:
            ok = r["status"] == "ok"
            prow.append([r["depth"], H.fmt_ms(r.get("rev_ms")) if ok else r["status"],
                         H.fmt_ms(r.get("plain_ms")) if ok else "-",
                         f"{r['ratio_median']:.2f}x" if ok else "-",
                         f"{r['ratio_of_mins']:.2f}x" if ok else "-", str(r.get("pairs", "-"))])
        lines += ["Paired timing: one process per depth, one model, steps alternating "
                  "reversible=True / reversible=False (after one warm-up step each), so both "
                  "see the same machine load:", "",
                  H.markdown_table(["depth", "reversible median ms", "plain median ms",
                                    "median of per-pair ratios", "ratio of mins", "pairs"],
                                   prow, "rrrrrr"), ""]
    lines += ["Targets (issue 4):"]
    lines += _targets(by_key, paired)
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        child_main(json.loads(args.child))
        return
    machine = H.machine_info()
    c0 = H.machine_check(__file__, args.threads)
    results = run_all(args)
    paired = run_paired(args)
    c1 = H.machine_check(__file__, args.threads)
    text = report(args, results, machine, (c0, c1), paired)
    print(text)
    if args.output:
        H.append_section(args.output, text)
        print(f"appended to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()

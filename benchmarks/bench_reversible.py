#!/usr/bin/env python
"""Reversible Reformer benchmark: training-step (forward + backward) time and peak memory of the
whole stack against depth, for reformer_ext's reversible stack and the alternatives.

Rows (``--impls``, comma separated ids), all on x of shape (B, L, d_model), fp32, training mode,
dropout 0, fresh LSH rotations every step, on --device (default cpu):
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
              default of docs/semantics.md, 2·ceil(L/bucket_size)) and no positional input (none passed).

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
default allocator, peak memory in another started with MALLOC_MMAP_THRESHOLD_; on CUDA the
peak of torch.cuda.max_memory_allocated).

    python benchmarks/bench_reversible.py                  # full run (about 20-30 minutes)
    python benchmarks/bench_reversible.py --quick          # smoke run, L=512, < 2 minutes
    python benchmarks/bench_reversible.py --output benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _harness as H  # noqa: E402

IMPLS = {
    "rev": "ours: Reformer(reversible=True)",
    "plain": "ours: Reformer(reversible=False)",
    "checkpoint": "ours, reversible=False, checkpoint per layer",
    "reformer_pytorch": "reformer-pytorch Reformer",
}


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
        rx = H.import_rx("nn.Reformer")
        model = rx.nn.Reformer(d, depth, heads, bucket_size=m, n_hashes=R, ff_chunk_size=ffc,
                               reversible=impl == "rev")
    elif impl == "reformer_pytorch":
        from reformer_pytorch import Reformer

        model = Reformer(d, depth, heads=heads, dim_head=d // heads, bucket_size=m, n_hashes=R,
                         ff_chunks=max(1, L // ffc), causal=False)
    else:
        raise ValueError(f"unknown impl {impl!r}")
    device = spec.get("device", "cpu")
    model.to(device).train()
    x = torch.randn(B, L, d, generator=torch.Generator().manual_seed(spec["seed"] + 1))
    x = x.to(device).requires_grad_(True)

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


def _grad_out(spec: dict, x):
    import torch

    g = torch.Generator().manual_seed(spec["seed"] + 2)
    return torch.randn(x.shape, generator=g).to(x.device)


def make_step(spec: dict, fn, model, x):
    """(prepare, step, finish) for _harness.measure_child: one step = forward + backward;
    the size of the gradients the step leaves (parameters' and x's) is taken off the peak."""
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    grad_out = _grad_out(spec, x)

    grads_mib = (n_params + x.numel()) * x.element_size() / 2**20

    def prepare():
        for t in params + [x]:
            t.grad = None

    def step():
        fn().backward(grad_out)

    def finish(res):
        if res.get("peak_mib") is not None:  # the gradients the step leaves are not "extra"
            res["peak_mib"] = max(res["peak_mib"] - grads_mib, 0.0)
        res["params_mib"] = n_params * 4 / 2**20

    return prepare, step, finish


def child_main(spec: dict) -> None:
    if spec.get("paired"):
        H.child_setup(spec.get("threads"))
        H.emit_result(paired_main(spec))
        return
    H.measure_child(spec, build, make_step)


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
    grad_out = _grad_out(spec, x)
    cuda = x.device.type == "cuda"

    def step(reversible: bool) -> float:
        for t in params + [x]:
            t.grad = None
        model.reversible = reversible
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn().backward(grad_out)
        if cuda:
            torch.cuda.synchronize()
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
    H.add_common_args(p, quick="smoke run: L=512, depths 2,6, paired depth 2",
                      timing=dict(budget=(0.5, 10.0), warmup=(0.1, 1.0), step_limit=150.0,
                                  timeout_factor=6))
    p.add_argument("--depths", default="2,6,12,24")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma separated, from {list(IMPLS)}")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--n-hashes", type=int, default=4)
    p.add_argument("--bucket-size", type=int, default=64)
    p.add_argument("--ff-chunk-size", type=int, default=1024)
    p.add_argument("--paired-depths", default="12",
                   help="depths at which reversible and plain steps are also timed alternately "
                        "in one process (robust time ratio on a shared machine); '' to skip")
    p.add_argument("--pairs", type=int, default=5, help="alternating pairs per paired depth")
    args = p.parse_args(argv)
    if args.quick:
        if args.depths == p.get_default("depths"):
            args.depths = "2,6"
        if args.length == p.get_default("length"):
            args.length = 512
        if args.paired_depths == p.get_default("paired_depths"):
            args.paired_depths = "2"
    H.finish_common_args(p, args)
    args.depth_list = [int(s) for s in args.depths.split(",") if s.strip()]
    args.paired_list = [int(s) for s in args.paired_depths.split(",") if s.strip()]
    args.impl_list = H.parse_ids(p, args.impls, IMPLS)
    return args


def run_all(args) -> list:
    configs = [(impl, depth) for depth in args.depth_list for impl in args.impl_list]
    results = []
    t_all = time.perf_counter()
    for n, (impl, depth) in enumerate(configs, 1):
        key = dict(impl=impl, depth=depth)
        r = H.measure_in_children(__file__, dict(model_spec(args), **key), args)
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


def model_spec(args) -> dict:
    return dict(H.timing_spec(args), B=args.batch, L=args.length, d_model=args.d_model,
                heads=args.heads, n_hashes=args.n_hashes, bucket_size=args.bucket_size,
                ff_chunk_size=args.ff_chunk_size)


def run_paired(args) -> list:
    out = []
    for depth in args.paired_list:
        spec = dict(model_spec(args), paired=True, depth=depth, pairs=args.pairs)
        r = H.run_child(__file__, spec, timeout_s=args.timeout, malloc_env=False)
        r["depth"] = depth
        out.append(r)
        what = (f"ratio {r['ratio_median']:.2f} (of mins {r['ratio_of_mins']:.2f})"
                if r["status"] == "ok" else r["status"])
        print(f"[paired] depth={depth}: {what} ({r.get('wall_s', 0):.0f} s, load "
              f"{H.load_average() or 0:.1f})", file=sys.stderr, flush=True)
    return out


def _targets(by_key, paired=()) -> list:
    """The reversible-memory targets (acceptance checks), as lines."""

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
    extra = {
        "peers": H.peer_versions(["reformer-pytorch"]),
        "machine check": H.machine_check_text(calib),
        "shape": f"B={args.batch}, L={args.length}, d_model={args.d_model}, heads={args.heads} "
                 f"(d_head {args.d_model // args.heads}), d_ff={4 * args.d_model}, "
                 f"n_hashes={args.n_hashes}, bucket_size={args.bucket_size}, ff chunk "
                 f"{args.ff_chunk_size}, fp32, training mode, dropout 0, non-causal, {args.device}",
        "memory": H.memory_definition(args.device) + "; .grad of the parameters and of x are None "
                  "before the step (optimizer.zero_grad()'s default) and their size is "
                  "subtracted, so this is the memory above parameters, their gradients, x and "
                  "the output gradient",
        "threads": f"torch.set_num_threads({args.threads or H.num_cores()}) in every child "
                   "(overrides the line above when --threads is given)",
        "time": f"median of >= {args.min_repeats} steps (about {args.budget:g} s of timed steps) "
                "after warm-up; one step = forward + backward",
    }
    lines = H.report_header(f"## Reversible Reformer stack, training step vs depth "
                            f"({H.now_utc()}{', quick' if args.quick else ''})", machine, extra)
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
    lines += ["Targets (reversible memory):"]
    lines += _targets(by_key, paired)
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    if H.child_entry(args, child_main):
        return
    machine = H.machine_info()
    checks = H.machine_checks(__file__, args)
    results = run_all(args)
    paired = run_paired(args)
    checks = H.machine_checks(__file__, args, checks)
    H.publish(report(args, results, machine, checks, paired), args.output)


if __name__ == "__main__":
    main()

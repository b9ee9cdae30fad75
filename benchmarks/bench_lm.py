#!/usr/bin/env python
"""End-to-end language-model training step: reformer_ext's ReformerLM against reformer-pytorch's
ReformerLM and HuggingFace's ReformerModelWithLMHead, with matched settings.

One training step = forward of (B, L) random tokens, next-token cross-entropy, backward, AdamW
step (``zero_grad(set_to_none=True)`` first, so gradients are allocated inside the step, as in
real training). All three models (``--impls``):

  ours              rx.nn.ReformerLM(num_tokens, d_model, depth, heads, max_seq_len=L,
                    bucket_size, n_hashes, causal=True, ff_chunk_size): reversible stack,
                    learned absolute position embedding, n_buckets = 2·L/bucket_size.
  reformer_pytorch  reformer_pytorch.ReformerLM(num_tokens, dim=d_model, depth, max_seq_len=L,
                    heads, dim_head=d_model/heads, bucket_size, n_hashes, causal=True,
                    ff_chunks=L/ff_chunk_size, absolute_position_emb=True): its reversible stack
                    (reverse_thres=0); n_buckets = L/bucket_size (fixed by the library).
  hf                transformers ReformerModelWithLMHead(ReformerConfig(attn_layers=["lsh"]*depth,
                    hidden_size=d_model, num_attention_heads=heads, attention_head_size=
                    d_model/heads, feed_forward_size=4·d_model, lsh_attn_chunk_length=bucket_size,
                    num_hashes=n_hashes, num_buckets=2·L/bucket_size, is_decoder=True,
                    axial_pos_embds=False (learned absolute positions, like ours),
                    chunk_size_feed_forward=ff_chunk_size, dropouts 0)): reversible stack.

All: fp32, on --device (default cpu), dropout 0, vocabulary ``--num-tokens``, one chunk back, d_ff = 4·d_model, GELU.

Measurements, each configuration in its own fresh processes (see _harness.py):

1. tokens per second (B·L / median step time, timing process with the default allocator) and
   peak extra memory of one step (VmHWM - VmRSS around the step, after warm-up, in a process
   started with MALLOC_MMAP_THRESHOLD_; parameters, Adam state and the inputs are in the
   baseline, the step's gradients and activations are not; on CUDA the peak of
   torch.cuda.max_memory_allocated instead) for each L in ``--lengths``;
2. the longest trainable L under ``--cap-gib``: for L = ``--search-start`` doubling up to
   ``--search-max``, a fresh process builds the model and runs two training steps; the memory
   of training at that L is the process' RSS high-water mark minus its RSS before the model was
   built (parameters, gradients, Adam state, activations: everything training needs beyond the
   imported libraries). A watchdog thread ends the process as soon as that exceeds the cap. The
   search stops at the first L that does not fit (or times out after ``--step-limit`` seconds
   per step). CPU only (it measures the resident set): skipped with --device cuda.

    python benchmarks/bench_lm.py --quick                 # smoke run (a few minutes)
    python benchmarks/bench_lm.py --output benchmarks/RESULTS.md --plot benchmarks/bench_lm.png
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _harness as H  # noqa: E402

IMPLS = {
    "ours": "ours: rx.nn.ReformerLM",
    "reformer_pytorch": "reformer-pytorch ReformerLM",
    "hf": "HF ReformerModelWithLMHead",
}
SHORT = {"ours": "ours", "reformer_pytorch": "reformer-pytorch", "hf": "HF"}
OVER_CAP_EXIT = 3  # exit status of a child the watchdog stopped


# --------------------------------------------------------------------------------------------
# child


def build(spec: dict):
    """(model, logits function of tokens)."""
    import torch

    impl, L = spec["impl"], spec["L"]
    V, d, depth, heads = spec["num_tokens"], spec["d_model"], spec["depth"], spec["heads"]
    m, R, ffc = spec["bucket_size"], spec["n_hashes"], spec["ff_chunk_size"]
    torch.manual_seed(spec["seed"])
    if impl == "ours":
        import reformer_ext as rx

        model = rx.nn.ReformerLM(V, d, depth, heads, L, causal=True, bucket_size=m, n_hashes=R,
                                 ff_chunk_size=ffc)
        return model, model
    if impl == "reformer_pytorch":
        from reformer_pytorch import ReformerLM

        model = ReformerLM(V, d, depth, L, heads=heads, dim_head=d // heads, bucket_size=m,
                           n_hashes=R, causal=True, ff_chunks=max(1, L // ffc),
                           absolute_position_emb=True)
        return model, model
    if impl == "hf":
        from transformers import ReformerConfig, ReformerModelWithLMHead

        cfg = ReformerConfig(vocab_size=V, hidden_size=d, num_attention_heads=heads,
                             attention_head_size=d // heads, feed_forward_size=4 * d,
                             attn_layers=["lsh"] * depth, lsh_attn_chunk_length=m,
                             num_hashes=R, num_buckets=max(2, 2 * L // m),
                             lsh_num_chunks_before=1, lsh_num_chunks_after=0,
                             is_decoder=True, axial_pos_embds=False, max_position_embeddings=L,
                             chunk_size_feed_forward=ffc, hidden_act="gelu",
                             hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0,
                             hash_seed=None, tie_word_embeddings=False)
        model = ReformerModelWithLMHead(cfg)
        return model, lambda tokens: model(input_ids=tokens).logits
    raise ValueError(f"unknown impl {impl!r}")


def training_step_fn(spec: dict, model, logits_fn):
    import torch
    import torch.nn.functional as F

    device = spec.get("device", "cpu")
    model.to(device)
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    tokens = torch.randint(0, spec["num_tokens"], (spec["B"], spec["L"] + 1), generator=gen)
    tokens = tokens.to(device)
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        logits = logits_fn(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        opt.step()

    return step


def _watch_memory(base_kib: int, cap_kib: int) -> None:
    """Ends the process (exit OVER_CAP_EXIT) once VmHWM - base exceeds cap."""
    def loop():
        while True:
            if H._status_kib("VmHWM") - base_kib > cap_kib:
                sys.stdout.write(f"over cap: {(H._status_kib('VmHWM') - base_kib) / 2**20:.2f} GiB\n")
                sys.stdout.flush()
                os._exit(OVER_CAP_EXIT)
            time.sleep(0.02)

    threading.Thread(target=loop, daemon=True).start()


def search_child(spec: dict) -> dict:
    """Two training steps at spec["L"] under the memory cap (see the module docstring)."""
    import torch  # noqa: F401  (libraries loaded before the baseline)
    import torch.nn.functional  # noqa: F401

    if spec["impl"] == "hf":
        import transformers  # noqa: F401
    H.reset_rss_peak()
    base = H._status_kib("VmRSS")
    cap_kib = int(spec["cap_gib"] * 2**20)
    _watch_memory(base, cap_kib)
    model, logits_fn = build(spec)
    step = training_step_fn(spec, model, logits_fn)
    t0 = time.perf_counter()
    for _ in range(2):
        step()
        if time.perf_counter() - t0 > 2 * spec["step_limit_s"]:
            return {"status": "timeout", "note": f"two steps took > {2 * spec['step_limit_s']:g} s"}
    used = (H._status_kib("VmHWM") - base) / 2**20
    if used > spec["cap_gib"]:
        return {"status": "over cap", "used_gib": used}
    return {"status": "ok", "used_gib": used, "step_s": (time.perf_counter() - t0) / 2}


def child_main(spec: dict) -> None:
    threads = H.child_begin(spec)
    if threads is None:
        return
    try:
        if spec.get("search"):
            res = search_child(spec)
        else:
            model, logits_fn = build(spec)
            step = training_step_fn(spec, model, logits_fn)
            res = H.measure_spec(step, spec)
            res["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    except ImportError as e:
        res = {"status": f"unavailable: {H.error_summary(e)}"}
    except Exception as e:
        res = {"status": f"error: {H.error_summary(e)}"}
    res["threads"] = threads
    H.emit_result(res)


# --------------------------------------------------------------------------------------------
# parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    H.add_common_args(p, quick="smoke run: L=1024, depth 2, small memory-cap search",
                      timing=dict(budget=(1.0, 20.0), warmup=(0.0, 0.0), step_limit=300.0,
                                  timeout_factor=6))
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma separated, from {list(IMPLS)}")
    p.add_argument("--lengths", default="4096,16384", help="sequence lengths of the timed runs")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--num-tokens", type=int, default=256, help="vocabulary size")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--n-hashes", type=int, default=4)
    p.add_argument("--bucket-size", type=int, default=64)
    p.add_argument("--ff-chunk-size", type=int, default=1024)
    p.add_argument("--cap-gib", type=float, default=None,
                   help="memory cap of the longest-L search, GiB (default 4, quick 1)")
    p.add_argument("--search-start", type=int, default=None,
                   help="first L of the search (default 8192, quick 1024)")
    p.add_argument("--search-max", type=int, default=None,
                   help="largest L tried (default 262144, quick 4096)")
    p.add_argument("--no-search", action="store_true",
                   help="skip the longest-L search (always skipped with --device cuda)")
    p.add_argument("--plot", default=None, help="write a PNG figure here (needs matplotlib)")
    args = p.parse_args(argv)
    if args.quick:
        if args.lengths == p.get_default("lengths"):
            args.lengths = "1024"
        if args.depth == p.get_default("depth"):
            args.depth = 2
    H.finish_common_args(p, args)
    if args.device != "cpu":
        args.no_search = True  # it measures the resident set
    defaults = dict(cap_gib=(1.0, 4.0), search_start=(1024, 8192), search_max=(4096, 262144))
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.length_list = H.parse_lengths(args.lengths)
    args.impl_list = H.parse_ids(p, args.impls, IMPLS)
    for L in args.length_list + [args.search_start]:
        if L % args.bucket_size:
            p.error(f"L={L} must be a multiple of --bucket-size (HF requires it in training)")
    return args


def base_spec(args) -> dict:
    return dict(H.timing_spec(args), B=args.batch, num_tokens=args.num_tokens, depth=args.depth,
                d_model=args.d_model, heads=args.heads, n_hashes=args.n_hashes,
                bucket_size=args.bucket_size, ff_chunk_size=args.ff_chunk_size)


def run_timed(args) -> list:
    configs = [(impl, L) for L in args.length_list for impl in args.impl_list]
    results = []
    t_all = time.perf_counter()
    for n, (impl, L) in enumerate(configs, 1):
        r = H.measure_in_children(__file__, dict(base_spec(args), impl=impl, L=L), args)
        r.update(impl=impl, L=L)
        if r["status"] == "ok":
            r["tokens_per_s"] = args.batch * L / (r["median_ms"] / 1e3)
            what = (f"{r['tokens_per_s']:.0f} tokens/s ({H.fmt_ms(r['median_ms'])} ms, min "
                    f"{H.fmt_ms(r['min_ms'])}), {H.fmt_mib(r.get('peak_mib'))} MiB")
        else:
            what = f"{r['status']} {r.get('note', '')}"
        results.append(r)
        print(f"[{n}/{len(configs)}] {impl:16s} L={L:<6d} {what} ({r.get('wall_s', 0):.0f} s; "
              f"{time.perf_counter() - t_all:.0f} s total, load {H.load_average() or 0:.1f})",
              file=sys.stderr, flush=True)
    return results


def run_search(args) -> dict:
    """impl -> list of (L, result) in the order tried."""
    out = {}
    for impl in args.impl_list:
        tried = []
        L = args.search_start
        while L <= args.search_max:
            spec = dict(base_spec(args), impl=impl, L=L, search=True, cap_gib=args.cap_gib)
            r = H.run_child(__file__, spec, timeout_s=3 * args.step_limit + 120)
            if r["status"].startswith("error: exit 3"):
                r["status"] = "over cap"
            tried.append((L, r))
            used = f"{r['used_gib']:.2f} GiB" if "used_gib" in r else r.get("note", "")
            print(f"[search] {impl:16s} L={L:<7d} {r['status']} {used} ({r.get('wall_s', 0):.0f} s)",
                  file=sys.stderr, flush=True)
            if r["status"] != "ok":
                break
            L *= 2
        out[impl] = tried
    return out


def longest_ok(tried) -> int | None:
    ok = [L for L, r in tried if r["status"] == "ok"]
    return max(ok) if ok else None


def _fmt_k(L: int) -> str:
    return f"{L // 1024}K" if L % 1024 == 0 else str(L)


def report(args, results, search, machine, calib) -> str:
    by = {(r["impl"], r["L"]): r for r in results}
    header = ["implementation", "L", "tokens/s", "median ms", "min ms", "peak extra MiB",
              "ours: speed-up", "ours: memory fraction", "params M", "n", "note"]
    rows = []
    for r in results:
        ok = r["status"] == "ok"
        ours = by.get(("ours", r["L"]))
        speed = mem = None
        if ok and ours and ours["status"] == "ok":
            speed = ours["tokens_per_s"] / r["tokens_per_s"]
            if r.get("peak_mib") and ours.get("peak_mib") is not None:
                mem = ours["peak_mib"] / r["peak_mib"]
        rows.append([IMPLS[r["impl"]], _fmt_k(r["L"]),
                     f"{r['tokens_per_s']:.0f}" if ok else r["status"],
                     H.fmt_ms(r.get("median_ms")), H.fmt_ms(r.get("min_ms")),
                     H.fmt_mib(r.get("peak_mib")), H.fmt_ratio(speed),
                     "-" if mem is None else f"{mem:.2f}",
                     f"{r['params_m']:.1f}" if "params_m" in r else "-",
                     str(r.get("repeats", "-")), r.get("note", "")])
    extra = {
        "peers": H.peer_versions(),
        "machine check": H.machine_check_text(calib),
        "model": f"B={args.batch}, vocabulary {args.num_tokens}, depth {args.depth}, d_model "
                 f"{args.d_model}, {args.heads} heads, d_ff {4 * args.d_model}, n_hashes "
                 f"{args.n_hashes}, bucket/chunk {args.bucket_size}, ff chunk "
                 f"{args.ff_chunk_size}, causal, all layers LSH, fp32, dropout 0, {args.device}",
        "threads": f"torch.set_num_threads({args.threads or H.num_cores()}) in every child "
                   "(this line wins over the CPU line above)",
        "step": "zero_grad(set_to_none) + forward + cross-entropy + backward + AdamW step",
        "memory": H.memory_definition(args.device),
        "time": f"median of >= {args.min_repeats} steps (about {args.budget:g} s of timed steps) "
                "after one warm-up step; tokens/s = B·L / median",
    }
    lines = H.report_header(f"## Language-model training step vs the peers ({H.now_utc()}"
                            f"{', quick' if args.quick else ''})", machine, extra)
    lines += ["", "Rows: see the docstring of benchmarks/bench_lm.py. ours: speed-up = our "
              "tokens/s over this row's; ours: memory fraction = our peak extra MiB over this "
              "row's.", "", H.markdown_table(header, rows, "lrrrrrrrrrl"), ""]
    if search:
        srows = []
        for impl, tried in search.items():
            steps = ", ".join(
                f"{_fmt_k(L)}: " + (f"{r['used_gib']:.2f} GiB" if "used_gib" in r and r["status"] == "ok"
                                    else r["status"]) for L, r in tried)
            best = longest_ok(tried)
            srows.append([IMPLS[impl], _fmt_k(best) if best else "none", steps])
        lines += [f"Longest trainable L under a {args.cap_gib:g} GiB cap (two training steps in a "
                  f"fresh process; memory = RSS high-water mark minus RSS before the model was "
                  f"built; L doubled from {_fmt_k(args.search_start)} up to "
                  f"{_fmt_k(args.search_max)}):", "",
                  H.markdown_table(["implementation", "longest L", "tried (memory used)"], srows,
                                   "lrl"), ""]
    lines += targets(args, by, search)
    return "\n".join(lines) + "\n"


def targets(args, by, search) -> list:
    """The LM training-step targets (acceptance checks) at the largest timed L."""
    L = max(args.length_list)
    ours = by.get(("ours", L))
    peers = [by.get((i, L)) for i in ("reformer_pytorch", "hf")]
    peers = [r for r in peers if r and r["status"] == "ok"]
    lines = [f"Targets (LM training step, at L={_fmt_k(L)}):"]
    if not ours or ours["status"] != "ok" or not peers:
        return lines + ["- not measured"]
    fastest = max(peers, key=lambda r: r["tokens_per_s"])
    ratio = ours["tokens_per_s"] / fastest["tokens_per_s"]
    lines.append(f"- tokens/s vs the faster peer ({IMPLS[fastest['impl']]}): {ratio:.2f}x "
                 f"(>= 3x: {'met' if ratio >= 3 else 'NOT met'})")
    mems = [r for r in peers if r.get("peak_mib")]
    if mems and ours.get("peak_mib") is not None:
        smallest = min(mems, key=lambda r: r["peak_mib"])
        frac = ours["peak_mib"] / smallest["peak_mib"]
        lines.append(f"- peak memory vs the smaller peer ({IMPLS[smallest['impl']]}): {frac:.2f} "
                     f"(<= 1/3: {'met' if frac <= 1 / 3 else 'NOT met'})")
    if search and "ours" in search:
        best = {impl: longest_ok(t) or 0 for impl, t in search.items()}
        others = [v for k, v in best.items() if k != "ours"]
        if others:
            ok = best["ours"] > max(others)
            capped = best["ours"] * 2 > args.search_max
            lines.append(f"- longest trainable L: ours {_fmt_k(best['ours'])} vs peers "
                         f"{', '.join(_fmt_k(v) for v in others)} ({'met' if ok else 'NOT met'}"
                         f"{'; ours hit --search-max' if capped else ''})")
    return lines


def plot(args, results, search, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    impls = args.impl_list
    fig, axes = plt.subplots(1, 3 if search else 2, figsize=(15 if search else 10, 4.5))
    width = 0.8 / len(impls)
    for k, (ax, key, label) in enumerate(((axes[0], "tokens_per_s", "tokens / s (higher is better)"),
                                          (axes[1], "peak_mib", "peak extra MiB (lower is better)"))):
        for j, impl in enumerate(impls):
            vals = []
            for L in args.length_list:
                r = next((r for r in results if r["impl"] == impl and r["L"] == L), None)
                vals.append(r.get(key) or 0.0 if r and r["status"] == "ok" else 0.0)
            xs = [i + j * width for i in range(len(args.length_list))]
            ax.bar(xs, vals, width, label=IMPLS[impl])
        ax.set_xticks([i + width * (len(impls) - 1) / 2 for i in range(len(args.length_list))])
        ax.set_xticklabels([f"L={_fmt_k(L)}" for L in args.length_list])
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend()
    if search:
        best = [longest_ok(search[i]) or 0 for i in impls]
        axes[2].bar([SHORT[i] for i in impls], best,
                    color=[f"C{j}" for j in range(len(impls))])
        axes[2].set_yscale("log", base=2)
        axes[2].set_ylabel(f"longest trainable L under {args.cap_gib:g} GiB")
        axes[2].grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"LM training step, depth {args.depth}, d_model {args.d_model}, "
                 f"{args.device.upper()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    if H.child_entry(args, child_main):
        return
    machine = H.machine_info()
    checks = H.machine_checks(__file__, args)
    results = run_timed(args)
    search = {} if args.no_search else run_search(args)
    checks = H.machine_checks(__file__, args, checks)
    H.publish(report(args, results, search, machine, checks), args.output)
    if args.plot:
        plot(args, results, search, args.plot)
        print(f"figure: {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""``python -m reformer_ext``: what LSH attention, reversible layers and chunked feed-forward buy,
measured on this machine in about a minute (CPU by default, the GPU when one is present).

Three measurements, printed as tables and drawn into one PNG:

(a) Attention forward time and peak memory against sequence length L, with batch × L held
    constant (the set-up of the Reformer paper's Figure 5): LSH attention
    (``reformer_ext.lsh_attention``) against full attention, both torch's fused
    ``scaled_dot_product_attention`` (SDPA) and the explicit ``softmax(Q Kᵀ) V`` that keeps the
    L × L score matrix. Full attention costs O(L) per token, LSH attention about O(1): the LSH
    row stays flat while the full rows grow with L.
(b) Memory (and time) of a training step (forward + backward) of a Reformer stack against its
    depth (1 to 16 layers by default): reversible (``rx.nn.Reformer``), the same model with
    ``reversible=False`` (every activation stored) and the same layers each wrapped in
    ``torch.utils.checkpoint`` (each layer's inputs stored, the layer recomputed). Each row
    gives the activations (the step's peak without the parameter gradients), the parameter
    gradients and the peak with them: gradients grow with depth for every variant, the
    activations of the reversible stack do not, at the price of recomputing each layer in the
    backward. What it still keeps per layer is its random state (the LSH rotations,
    n_hashes / bucket_size of one (L, d_model) stream, and three dropout seeds), and from depth
    2 on its backward holds the saved final streams while it rebuilds the ones below (two
    streams more than at depth 1): the note under the table gives depth 16 / depth 1.
(c) Peak memory (and time) of a feed-forward training step: ``rx.nn.ChunkedFeedForward`` at a
    few chunk sizes against the plain ``Linear -> GELU -> Linear`` with the same weights.

Memory is tensor bytes, counted the way PyTorch counts them (``reformer_ext/_profiling.py``,
``measure_step_memory``): the most bytes live at once during one step beyond what was live
before it (inputs, weights; in (b) and (c) the previous step's gradients are set to None before
the step, so the step allocates its gradients). On CUDA the peak is
``torch.cuda.max_memory_allocated``. On the CPU, where PyTorch keeps no peak counter, the step
runs under ``torch.autograd.profiler.profile(profile_memory=True)`` and its allocation events
(every allocation and free of PyTorch's CPU allocator, including those inside reformer_ext's
C++ operators and in the backward) are replayed into a running total; its maximum is the peak.
The gradients are the allocations whose storage is a parameter's ``.grad`` after the step. Not
counted: memory outside PyTorch's allocator (the C++ kernels' small per-thread scratch vectors,
BLAS workspaces, the Python heap), so these are not resident-set figures (``benchmarks/``
measures the resident set). Tensor bytes do not vary between runs, so each step is measured
once, after a warm-up. Times are medians of a few repeats (one for slow steps) and are only as
quiet as the machine.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

import reformer_ext as rx

from ._profiling import measure_step_memory, median_time

# --------------------------------------------------------------------------------------------
# options


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reformer_ext",
        description="Measure what LSH attention, reversible layers and chunked feed-forward buy "
                    "on this machine: three tables and a PNG figure (about a minute on 2 idle CPU "
                    "cores with the defaults).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto",
                   help="'auto' (the GPU when torch sees one and this build has the CUDA kernels, "
                        "else the CPU), 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--output", default="reformer_ext_demo.png", help="where to write the figure")
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch.set_num_threads for the CPU (None: torch's choice; on a busy "
                        "machine 1 is often faster)")
    p.add_argument("--repeats", type=_positive, default=3, help="timed repeats per measurement")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    a = p.add_argument_group("(a) attention against sequence length")
    a.add_argument("--tokens", type=_positive, default=4096,
                   help="batch × length, held constant; each length L runs batch tokens/L")
    a.add_argument("--lengths", type=_int_list, default="512,1024,2048,4096",
                   help="sequence lengths (each must divide --tokens)")
    a.add_argument("--heads", type=_positive, default=4, help="attention heads")
    a.add_argument("--d-head", type=_positive, default=64, help="width of each head")
    a.add_argument("--n-hashes", type=_positive, default=4, help="LSH hash rounds")
    a.add_argument("--bucket-size", type=_positive, default=64,
                   help="LSH chunk length (also used by the Reformer stack of (b))")
    a.add_argument("--no-explicit", action="store_true",
                   help="skip the explicit softmax(QKᵀ)V row (it needs tokens × L × heads × 8 bytes)")

    b = p.add_argument_group("(b) training-step memory against depth")
    b.add_argument("--depths", type=_int_list, default="1,4,16", help="numbers of layers")
    b.add_argument("--stack-length", type=_positive, default=1024, help="sequence length (batch 1)")
    b.add_argument("--d-model", type=_positive, default=128,
                   help="model width of (b) and (c); d_ff = 4 × d_model")
    b.add_argument("--stack-heads", type=_positive, default=2, help="attention heads")

    c = p.add_argument_group("(c) feed-forward memory")
    c.add_argument("--ffn-length", type=_positive, default=8192, help="positions (batch 1)")
    c.add_argument("--ffn-chunks", type=_int_list, default="256,1024",
                   help="chunk sizes of ChunkedFeedForward")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    bad = [L for L in args.lengths if args.tokens % L]
    if bad:
        parser.error(f"--lengths {bad} do not divide --tokens {args.tokens}")
    if args.d_model % args.stack_heads:
        parser.error(f"--d-model {args.d_model} is not divisible by --stack-heads {args.stack_heads}")
    try:
        args.device = resolve_device(args.device)
    except (RuntimeError, ValueError) as e:
        parser.error(str(e))
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return rx.default_device()
    device = torch.device(name)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    rx.require_device(device)
    return device


# --------------------------------------------------------------------------------------------
# measuring


@dataclass
class Measurement:
    """One row of a table: what was run, its median time and its memory (tensor MiB beyond
    what was live before the step: ``peak`` all of it, ``activations`` all but the parameter
    gradients, ``grads`` those gradients; see reformer_ext/_profiling.py)."""
    table: str
    variant: str
    x: int  # the swept quantity: L, depth or chunk size (0 for the plain FFN)
    seconds: Optional[float] = None
    peak_mib: Optional[float] = None
    activations_mib: Optional[float] = None
    grads_mib: Optional[float] = None
    note: str = ""
    extra: dict = field(default_factory=dict)


class Runner:
    """Warms a step up, times it, measures its peak memory; advances the progress bar."""

    def __init__(self, args, progress):
        self.args = args
        self.device = args.device
        self.progress = progress

    def run(self, table: str, variant: str, x: int, step: Callable[[], None],
            prepare: Callable[[], None] = lambda: None, params=(), **extra) -> Measurement:
        """``params``: the parameters whose gradients the step makes (split off the peak)."""
        if self.progress is not None:
            self.progress.set_description(f"({table}) {variant} @ {x}")
        m = Measurement(table, variant, x, extra=extra)
        try:
            prepare()
            t0 = time.perf_counter()
            step()  # warm-up (first-call costs)
            warm = time.perf_counter() - t0
            # one measurement is enough: tensor bytes do not vary from run to run
            prepare()
            mem = measure_step_memory(step, self.device, params)
            m.peak_mib, m.activations_mib, m.grads_mib = (mem.peak_mib, mem.activations_mib,
                                                          mem.grads_mib)
            m.note = mem.note
            # a slow step is timed fewer times (the warm-up tells how slow): the whole demo
            # has to stay near a minute on two CPU cores
            repeats = self.args.repeats if warm < 1.0 else 1
            m.seconds = median_time(step, self.device, repeats=repeats, max_seconds=2.0,
                                    prepare=prepare)
        except (RuntimeError, MemoryError) as e:  # e.g. out of memory at a large size
            m.note = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        if self.progress is not None:
            self.progress.update(1)
        return m


# --------------------------------------------------------------------------------------------
# (a) attention against sequence length


def explicit_attention(q, k, v):
    """softmax(Q Kᵀ / sqrt(D)) V with the L × L score matrix in memory (the textbook form)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def attention_rows(args, runner: Runner) -> list[Measurement]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for length in args.lengths:
        rows += attention_at_length(args, runner, length, gen)
    return rows


def attention_at_length(args, runner: Runner, length: int, gen) -> list[Measurement]:
    batch = args.tokens // length
    shape = (batch, args.heads, length, args.d_head)
    qk = torch.randn(shape, generator=gen).to(args.device)
    v = torch.randn(shape, generator=gen).to(args.device)
    # the default number of buckets (docs/semantics.md §4)
    n_buckets = max(2, 2 * math.ceil(length / args.bucket_size))
    rotations = rx.random_rotations(qk, n_hashes=args.n_hashes, n_buckets=n_buckets)
    variants = {
        f"LSH-{args.n_hashes}": lambda: rx.lsh_attention(qk, v, bucket_size=args.bucket_size,
                                                         rotations=rotations),
        "full (SDPA)": lambda: F.scaled_dot_product_attention(qk, qk, v),
    }
    if not args.no_explicit:
        variants["full (explicit)"] = lambda: explicit_attention(qk, qk, v)
    rows = []
    for name, attend in variants.items():
        def step(attend=attend):
            with torch.no_grad():
                attend()
        rows.append(runner.run("a", name, length, step, batch=batch))
    return rows


# --------------------------------------------------------------------------------------------
# (b) training-step memory against depth


class PlainReformerLayer(nn.Module):
    """One Reformer layer in ordinary autograd, built from the public modules:
    ``y1 = x1 + Attention(LayerNorm(x2))``, ``y2 = x2 + FeedForward(LayerNorm(y1))``.
    Used for the checkpointed row, which needs the layers one by one."""

    def __init__(self, d_model, heads, d_ff, bucket_size, n_hashes):
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = rx.nn.LSHSelfAttention(d_model, heads, bucket_size=bucket_size,
                                           n_hashes=n_hashes)
        self.ff_norm = nn.LayerNorm(d_model)
        self.ff = rx.nn.ChunkedFeedForward(d_model, d_ff)

    def forward(self, x1, x2):
        y1 = x1 + self.attn(self.attn_norm(x2))
        return y1, x2 + self.ff(self.ff_norm(y1))


class CheckpointedStack(nn.Module):
    """``depth`` PlainReformerLayers, each run under torch.utils.checkpoint: only every layer's
    inputs are stored in the forward, each layer is recomputed in the backward. The streams are
    merged as rx.nn.Reformer's default does (LayerNorm and Linear of their concatenation), so
    the three variants of (b) have the same parameters."""

    def __init__(self, depth, d_model, *layer_args):
        super().__init__()
        self.layers = nn.ModuleList(PlainReformerLayer(d_model, *layer_args)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(2 * d_model)
        self.proj = nn.Linear(2 * d_model, d_model)

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        x1 = x2 = x
        for layer in self.layers:
            x1, x2 = checkpoint(layer, x1, x2, use_reentrant=False)
        return self.proj(self.norm(torch.cat([x1, x2], dim=-1)))


def training_step(model, x):
    """(step, prepare): step = forward + backward of a fixed output gradient; prepare =
    ``zero_grad()`` (set to None, PyTorch's default), run before every step off the clock and
    outside the memory measurement. So the step allocates the parameter gradients (counted
    apart from the activations) and frees nothing that existed before it."""
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(x.device)

    def step():
        model(x).backward(grad_out)

    def prepare():
        model.zero_grad(set_to_none=True)
    return step, prepare


def depth_rows(args, runner: Runner) -> list[Measurement]:
    rows = []
    d, heads = args.d_model, args.stack_heads
    x = torch.randn(1, args.stack_length, d, generator=torch.Generator().manual_seed(1))
    x = x.to(args.device)
    for depth in args.depths:
        torch.manual_seed(depth)
        models = {
            "reversible": rx.nn.Reformer(d, depth, heads, bucket_size=args.bucket_size,
                                         n_hashes=args.n_hashes, reversible=True),
            "plain (reversible=False)": rx.nn.Reformer(d, depth, heads,
                                                       bucket_size=args.bucket_size,
                                                       n_hashes=args.n_hashes, reversible=False),
            "checkpoint per layer": CheckpointedStack(depth, d, heads, 4 * d, args.bucket_size,
                                                      args.n_hashes),
        }
        for name, model in models.items():
            model.to(args.device).train()
            rows.append(runner.run("b", name, depth, *training_step(model, x),
                                   params=list(model.parameters())))
        del models, model  # free this depth's parameters before building the next
    return rows


# --------------------------------------------------------------------------------------------
# (c) feed-forward memory


class PlainFeedForward(nn.Module):
    """Linear -> GELU -> Linear (sharing the given Linear layers): autograd stores the (N, d_ff)
    hidden activation twice (before and after the GELU)."""

    def __init__(self, w1: nn.Linear, w2: nn.Linear):
        super().__init__()
        self.w1, self.w2 = w1, w2

    def forward(self, x):
        return self.w2(F.gelu(self.w1(x)))


def ffn_rows(args, runner: Runner) -> list[Measurement]:
    d = args.d_model
    torch.manual_seed(2)
    x = torch.randn(1, args.ffn_length, d).to(args.device)
    chunked = rx.nn.ChunkedFeedForward(d, 4 * d).to(args.device)
    params = list(chunked.parameters())
    rows = [runner.run("c", "plain", 0, *training_step(PlainFeedForward(chunked.w1, chunked.w2), x),
                       params=params)]
    for chunk in args.ffn_chunks:
        chunked.chunk_size = chunk
        rows.append(runner.run("c", f"chunked ({chunk})", chunk, *training_step(chunked, x),
                               params=params))
    return rows


# --------------------------------------------------------------------------------------------
# report


def _fmt_ms(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}"


def _fmt_mib(mib: Optional[float]) -> str:
    return "-" if mib is None else (f"{mib:.0f}" if mib >= 10 else f"{mib:.1f}")


def _fmt_mib1(mib: Optional[float]) -> str:
    return "-" if mib is None else f"{mib:.1f}"


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _note(text: str) -> str:
    """An explanation under a table, indented and wrapped."""
    return textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="    ")


def _notes(rows: list[Measurement]) -> str:
    notes = sorted({f"  note: {m.variant} @ {m.x}: {m.note}" for m in rows if m.note})
    return ("\n" + "\n".join(notes)) if notes else ""


def attention_table(args, rows: list[Measurement]) -> str:
    variants = list(dict.fromkeys(m.variant for m in rows))
    by = {(m.variant, m.x): m for m in rows}
    header = ["L", "batch"] + [f"{v} ms" for v in variants] + [f"{v} MiB" for v in variants]
    body = []
    for length in args.lengths:
        cells = [by.get((v, length)) for v in variants]
        batch = next((m.extra["batch"] for m in cells if m is not None), args.tokens // length)
        body.append([str(length), str(batch)] + [_fmt_ms(m and m.seconds) for m in cells]
                    + [_fmt_mib(m and m.peak_mib) for m in cells])
    title = (f"(a) attention forward, batch × L = {args.tokens}, {args.heads} heads of "
             f"{args.d_head}, LSH: {args.n_hashes} hashes, bucket size {args.bucket_size}")
    note = _note("MiB: the most tensor bytes live at once during the forward beyond its inputs; "
                 f"{memory_source(args.device)}")
    return title + "\n" + text_table(header, body) + "\n" + note + _notes(rows)


def memory_source(device: torch.device) -> str:
    """Where the MiB columns come from, for the tables' notes and the figure."""
    if device.type == "cuda":
        return ("tensor bytes of the CUDA caching allocator (peak: torch.cuda.max_memory_allocated; "
                "the split off the gradients: the profiler's allocation events)")
    return ("tensor bytes of PyTorch's CPU allocator, from the profiler's allocation events "
            "(not the process' resident set)")


def _growth(rows: list[Measurement], variant: str, depths: list[int]) -> Optional[str]:
    """'depth D / depth 1 = r x' for the variant's activations, deepest against shallowest."""
    by = {m.x: m.activations_mib for m in rows if m.variant == variant}
    lo, hi = min(depths), max(depths)
    if lo == hi or not by.get(lo) or by.get(hi) is None:
        return None
    return f"{variant} {by[hi] / by[lo]:.2f}x"


def depth_table(args, rows: list[Measurement]) -> str:
    variants = list(dict.fromkeys(m.variant for m in rows))
    by = {(m.variant, m.x): m for m in rows}
    header = ["variant", "depth", "activations MiB", "param grads MiB", "peak MiB", "ms"]
    body = []
    for v in variants:
        for depth in args.depths:
            m = by.get((v, depth))
            # one decimal throughout: the reversible rows differ by tenths of a MiB
            body.append([v, str(depth)] + ([_fmt_mib1(m.activations_mib), _fmt_mib1(m.grads_mib),
                                             _fmt_mib1(m.peak_mib), _fmt_ms(m.seconds)]
                                            if m is not None else ["-"] * 4))
    title = (f"(b) training step (forward + backward) of a Reformer stack against depth, "
             f"L = {args.stack_length}, batch 1, d_model {args.d_model}, {args.stack_heads} heads, "
             f"{args.n_hashes} hashes, bucket size {args.bucket_size}")
    growth = [g for g in (_growth(rows, v, args.depths) for v in variants) if g]
    lines = [
        "activations: the most tensor bytes live at once during the step beyond what existed "
        "before it, parameter gradients not counted (saved activations, recomputed inputs, "
        "activation gradients, temporaries, the output)",
        "param grads: the parameters' gradients, which the step allocates (they are set to None "
        "before it); the three variants have the same parameters, so these grow with depth "
        "alike",
        "peak: the most tensor bytes live at once, gradients included",
        f"MiB: {memory_source(args.device)}",
    ]
    if growth:
        lines.append(f"activations, depth {max(args.depths)} / depth {min(args.depths)}: "
                     + ", ".join(growth))
    return (title + "\n" + text_table(header, body) + "\n"
            + "\n".join(_note(line) for line in lines) + _notes(rows))


def ffn_table(args, rows: list[Measurement]) -> str:
    plain = rows[0]
    body = []
    for m in rows:
        ratio = "-"
        if m.peak_mib and plain.peak_mib:
            ratio = f"{m.peak_mib / plain.peak_mib:.2f}"
        body.append([m.variant, _fmt_mib(m.peak_mib), ratio, _fmt_ms(m.seconds)])
    title = (f"(c) feed-forward training step, {args.ffn_length} positions, d_model {args.d_model}, "
             f"d_ff {4 * args.d_model}")
    note = _note("peak: the most tensor bytes live at once during the step beyond what existed "
                 f"before it, the gradients of w1, w2 included; {memory_source(args.device)}")
    return title + "\n" + text_table(["feed-forward", "peak MiB", "memory / plain", "ms"],
                                     body) + "\n" + note + _notes(rows)


def draw_figure(args, attn, depth, ffn, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    ax_t, ax_m, ax_d, ax_f = axes.flat
    for variant in dict.fromkeys(m.variant for m in attn):
        pts = [m for m in attn if m.variant == variant]
        xs = [m.x for m in pts if m.seconds is not None]
        ax_t.plot(xs, [m.seconds * 1e3 for m in pts if m.seconds is not None], "o-", label=variant)
        xs = [m.x for m in pts if m.peak_mib is not None]
        ax_m.plot(xs, [m.peak_mib for m in pts if m.peak_mib is not None], "o-", label=variant)
    for ax, what in ((ax_t, "forward time (ms)"), (ax_m, "peak tensor memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"sequence length L (batch × L = {args.tokens})")
        ax.set_ylabel(what)
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    ax_t.set_title("(a) attention: time")
    ax_m.set_title("(a) attention: memory")
    for i, variant in enumerate(dict.fromkeys(m.variant for m in depth)):
        color = f"C{i}"
        pts = [m for m in depth if m.variant == variant and m.activations_mib is not None]
        ax_d.plot([m.x for m in pts], [m.activations_mib for m in pts], "o-", color=color,
                  label=f"{variant}: activations")
        pts = [m for m in depth if m.variant == variant and m.peak_mib is not None]
        ax_d.plot([m.x for m in pts], [m.peak_mib for m in pts], "--", color=color, alpha=0.6,
                  label=f"{variant}: with param grads")
    # a linear axis: memory that grows linearly with depth shows as a straight line
    ax_d.set_xticks(args.depths, [str(d) for d in args.depths])
    ax_d.set_xlabel("depth (layers)")
    ax_d.set_ylabel("training-step peak tensor memory (MiB)")
    ax_d.set_title(f"(b) Reformer stack, L = {args.stack_length}, d_model {args.d_model}")
    ax_d.set_ylim(bottom=0)
    ax_d.legend(fontsize="small")
    ax_d.grid(True, alpha=0.3)
    ax_f.bar([m.variant for m in ffn], [m.peak_mib or 0.0 for m in ffn],
             color=["tab:gray"] + ["tab:blue"] * (len(ffn) - 1))
    ax_f.set_ylabel("training-step peak tensor memory (MiB)")
    ax_f.set_title(f"(c) feed-forward, {args.ffn_length} positions")
    ax_f.grid(True, axis="y", alpha=0.3)
    source = ("CUDA caching allocator" if args.device.type == "cuda"
              else "CPU allocator, profiler memory events")
    fig.suptitle(f"reformer_ext on {describe_device(args.device)}; memory: tensor bytes beyond "
                 f"each step's inputs ({source})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU, {threads} thread{'s' if threads > 1 else ''}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_attn = len(args.lengths) * (2 if args.no_explicit else 3)
    total = n_attn + 3 * len(args.depths) + 1 + len(args.ffn_chunks)
    print(f"reformer_ext demo on {describe_device(args.device)} (torch {torch.__version__})",
          flush=True)

    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=total, unit="run", file=sys.stderr, leave=False)
    start = time.perf_counter()
    runner = Runner(args, progress)
    try:
        attn = attention_rows(args, runner)
        depth = depth_rows(args, runner)
        ffn = ffn_rows(args, runner)
    finally:
        if progress is not None:
            progress.close()
    elapsed = time.perf_counter() - start

    print()
    for table in (attention_table(args, attn), depth_table(args, depth), ffn_table(args, ffn)):
        print(table, end="\n\n")
    output = os.path.abspath(args.output)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    draw_figure(args, attn, depth, ffn, output)
    print(f"figure: {output}")
    print(f"measured in {elapsed:.0f} s. MiB = tensor bytes live at once during one step beyond "
          "what existed before it (inputs, weights); ms = median time (see the module docstring "
          "of reformer_ext.demo).")
    return 0

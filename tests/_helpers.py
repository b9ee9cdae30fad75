"""Helpers shared by several test files (fixtures are in conftest.py).

Sections: common names (dtypes, the operator namespace, the CUDA skip mark) and the imports of
reformer_ext's internals; LSH attention cases (the inputs, runs and comparisons of
tests/test_lsh_attention.py, tests/test_cuda.py and tests/test_opcheck.py); chunked
feed-forward inputs and a plain FFN; reformer_stack operator inputs; the modules (a small
Reformer, the reversible-vs-plain tolerances); resource hygiene (memory over many calls,
concurrent Python threads); the machinery of the bad-input catalogues (cases, outcomes, the
child processes for the cases that could crash).
"""

import gc
import json
import math
import os
import re
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict

import pytest
import torch
import torch.nn.functional as F

import reformer_ext as rx
# reformer_ext's internals used by the tests: their only imports in tests/ (but the demo's
# parse_args, imported where test_demo.py uses it); the test files take them from here.
from reformer_ext._profiling import _replay, measure_peak, measure_step_memory
from reformer_ext.ops import reformer_stack as stack_ops
from reformer_ext.ops.chunked_ffn import ACTIVATIONS
from reformer_ext.ops.reformer_stack import LAYER_WEIGHT_NAMES, WEIGHTS_PER_LAYER, StackOptions
from reformer_ext.ops.seeded_random import (ATTENTION_PROBS_SALT, hidden_dropout_keep_mask, mix64,
                                            seeded_rotations)
from reformer_ext.reference import (local_attention_reference, lsh_attention_reference,
                                    lsh_buckets_reference, reformer_stack_reference)

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
ops = torch.ops.reformer
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ------------------------------------------------------------------------ LSH attention cases

# A case is a dict of shapes and options (lsh_case); the inputs are drawn from a seed derived
# from the case (lsh_seed).
#
# Buckets are piecewise constant in qk: a projection within rounding distance of a tie could
# hash differently in float32 and float64 (or on CPU and GPU). The input helper resamples the
# few qk rows whose top two projections are closer than a margin, so every implementation
# sees the same buckets and the comparisons test the attention, not the tie-breaking.


def lsh_case(**kw):
    c = dict(B=2, H=2, L=19, D=8, Dv=8, m=4, R=2, half=3, Hr=2, causal=False, mask=None,
             before=1, after=0, scale=1.0, noncontig=False, factors=None)
    c.update(kw)
    if c["factors"] is not None:  # factorised buckets: half = sum(factors) / 2 columns
        c["factors"] = tuple(c["factors"])
        c["half"] = sum(c["factors"]) // 2
    return c


def lsh_case_id(c):
    d = lsh_case()
    return "-".join(f"{k}{v}" for k, v in c.items() if v != d[k]) or "default"


def lsh_seed(c, extra=""):
    return zlib.crc32((lsh_case_id(c) + extra).encode())


def factor_slices(factors, half):
    """(offset, width) of each factor's rotation columns (one factor: (0, half))."""
    slices, offset = [], 0
    for f in factors or (2 * half,):
        slices.append((offset, f // 2))
        offset += f // 2
    return slices


def _separate_ties(qk, rot, g, margin, factors=None):
    """Resample the qk rows whose two largest entries of [p, -p] (per factor's slice of p when
    factorised) are closer than margin."""
    B, H, L, D = qk.shape
    for _ in range(200):
        r = rot.double().expand(H, -1, -1, -1)
        p = torch.einsum("bhld,hdrk->bhrlk", qk.double(), r)
        bad = torch.zeros(B, H, L, dtype=torch.bool)
        for offset, width in factor_slices(factors, rot.shape[-1]):
            pj = p[..., offset:offset + width]
            top = torch.cat([pj, -pj], -1).topk(2, dim=-1).values
            bad |= (top[..., 0] - top[..., 1] < margin).any(dim=2)  # (B, H, L)
        if not bad.any():
            return qk
        qk[bad] = torch.randn(int(bad.sum()), D, generator=g).to(qk.dtype)
    raise AssertionError("could not separate bucket ties")


def _make_mask(kind, B, L, g):
    if kind is None:
        return None
    if kind == "random":
        return torch.rand(B, L, generator=g) < 0.25
    if kind == "row":  # batch row 1 is all padding, row 0 random
        mask = torch.rand(B, L, generator=g) < 0.25
        mask[1:] = True
        return mask
    if kind == "suffix":  # right padding of different lengths
        lengths = torch.randint(0, L + 1, (B,), generator=g)
        return torch.arange(L)[None, :] >= lengths[:, None]
    raise ValueError(kind)


def lsh_inputs(c, dtype, seed, margin=1e-4):
    """qk, v, rotations, key_padding_mask for case c; qk/v in dtype, rotations float32 values."""
    g = torch.Generator().manual_seed(seed)
    rot = torch.randn(c["Hr"], c["D"], c["R"], c["half"], generator=g)
    qk = torch.randn(c["B"], c["H"], c["L"], c["D"], generator=g).to(dtype)
    qk = _separate_ties(qk, rot, g, margin, c["factors"])
    v = torch.randn(c["B"], c["H"], c["L"], c["Dv"], generator=g).to(dtype)
    mask = _make_mask(c["mask"], c["B"], c["L"], g)
    if dtype == F64:
        rot = rot.double()
    return qk, v, rot, mask


def lsh_kwargs(c, rot, mask):
    n_buckets = list(c["factors"]) if c["factors"] else 2 * c["half"]
    return dict(n_hashes=c["R"], bucket_size=c["m"], n_buckets=n_buckets, causal=c["causal"],
                key_padding_mask=mask, rotations=rot, n_chunks_before=c["before"],
                n_chunks_after=c["after"], scale=c["scale"])


def lsh_ref_kwargs(c, mask):
    return dict(bucket_size=c["m"], causal=c["causal"], key_padding_mask=mask,
                n_chunks_before=c["before"], n_chunks_after=c["after"], scale=c["scale"],
                bucket_factors=c["factors"])


def lsh_cotangents(c, seed, dtype):
    g = torch.Generator().manual_seed(seed + 1)
    go = torch.randn(c["B"], c["H"], c["L"], c["Dv"], generator=g).to(dtype)
    gl = torch.randn(c["B"], c["H"], c["L"], generator=g).to(F64 if dtype == F64 else F32)
    return go, gl


def _strided(x, noncontig):
    """A leaf holding x's values and the (possibly non-contiguous) view to pass in."""
    if not noncontig:
        leaf = x.detach().clone().requires_grad_()
        return leaf, leaf, lambda t: t
    # (B, L, H, D) storage seen as (B, H, L, D): a transposed, non-contiguous view.
    leaf = x.detach().transpose(1, 2).contiguous().requires_grad_()
    return leaf, leaf.transpose(1, 2), lambda t: t.transpose(1, 2)


def run_lsh(c, qk, v, rot, mask, go, gl, device="cpu"):
    qk_leaf, qk_in, back_qk = _strided(qk.to(device), c["noncontig"])
    v_leaf, v_in, back_v = _strided(v.to(device), c["noncontig"])
    if c["noncontig"]:
        rot = rot.transpose(0, 1).contiguous().transpose(0, 1)
    rot = rot.to(device)
    mask = None if mask is None else mask.to(device)
    out, lse = rx.lsh_attention(qk_in, v_in, return_lse=True, **lsh_kwargs(c, rot, mask))
    loss = (out * go.to(device)).sum() + (lse * gl.to(device)).sum()
    gq, gv = torch.autograd.grad(loss, (qk_leaf, v_leaf))
    return [t.detach().cpu() for t in (out, lse, back_qk(gq), back_v(gv))]


def run_lsh_reference(c, qk, v, rot, mask, go, gl, compute_dtype):
    qk = qk.detach().to(compute_dtype).requires_grad_()
    v = v.detach().to(compute_dtype).requires_grad_()
    out, lse = lsh_attention_reference(qk, v, rot.to(compute_dtype), **lsh_ref_kwargs(c, mask))
    loss = (out * go.to(compute_dtype)).sum() + (lse * gl.to(compute_dtype)).sum()
    gq, gv = torch.autograd.grad(loss, (qk, v))
    return [out.detach(), lse.detach(), gq, gv]


LSH_NAMES = ("out", "lse", "grad_qk", "grad_v")


def assert_lsh_close(ours, ref, rtol, atol):
    """Every tensor close to the reference, atol scaled by the reference's magnitude."""
    for name, a, b in zip(LSH_NAMES, ours, ref):
        assert a.shape == b.shape, name
        a, b = a.double(), b.double()
        # atol relative to the size of the reference tensor, so large gradients are fair.
        scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _max_err(a, b):
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def assert_lsh_lowp(ours, ref64, ref_lp, dtype, factor_out=3.0, factor_grad=5.0):
    """Our low-precision error vs float64 may be a few times that of PyTorch's own
    (the reference computed in float32 on the same rounded inputs, then rounded)."""
    eps = torch.finfo(dtype).eps
    for name, a, b, r in zip(LSH_NAMES, ours, ref64, ref_lp):
        mag = max(1.0, float(b.abs().max())) if b.numel() else 1.0
        if name == "lse":
            # lse is float32 for every input dtype; logits may carry a rounding of the keys.
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=2 * eps * mag,
                                       msg=lambda m: f"lse: {m}")
            continue
        factor = factor_out if name == "out" else factor_grad
        err, err_ref = _max_err(a, b), _max_err(r, b)
        bound = factor * err_ref + 0.5 * eps * mag
        assert err <= bound, (f"{name}: error {err:.3g} vs float64 exceeds {factor} x "
                              f"PyTorch's {err_ref:.3g} (+ floor): bound {bound:.3g}")


# The foundation matrix: every option against the reference (tests/test_lsh_attention.py), and
# the same cases on the GPU (tests/test_cuda.py).
LSH_CASES = []
for _L in (1, 3, 4, 5, 23):  # 1, m-1, m, m+1, a prime > 4m
    for _causal in (False, True):
        LSH_CASES.append(lsh_case(L=_L, causal=_causal))
for _R in (1, 2, 4, 8):
    for _ba in ((1, 0), (0, 0), (2, 1)):
        for _causal in (False, True):
            LSH_CASES.append(lsh_case(R=_R, before=_ba[0], after=_ba[1], causal=_causal))
for _mask in ("random", "row", "suffix"):
    for _causal in (False, True):
        for _Hr in (1, 2):
            LSH_CASES.append(lsh_case(mask=_mask, causal=_causal, Hr=_Hr, L=17))
LSH_CASES += [
    lsh_case(L=37, D=8, Dv=16, m=8, R=4, half=4, causal=True),
    lsh_case(L=37, D=16, Dv=4, m=8, R=2, half=2, mask="random"),
    lsh_case(noncontig=True, mask="random", causal=True, Hr=1),
    lsh_case(noncontig=True, R=4, before=2, after=1),
    lsh_case(scale=0.5, D=16, causal=True, mask="suffix"),
    lsh_case(L=7, m=1, R=2, causal=True),  # chunks of one item
    # one chunk per round: neighbours wrap across rounds
    lsh_case(L=5, m=8, R=3, before=1, after=1),
    lsh_case(L=13, half=1, R=4, causal=True),  # n_buckets = 2
    lsh_case(B=1, H=3, Hr=1, L=29, m=4, R=4, half=4, mask="random", causal=True, before=2, after=1),
    # factorised bucket counts (HF num_buckets as a list): 1 to 3 factors
    lsh_case(L=23, factors=(6,)),
    lsh_case(L=23, factors=(2, 4), causal=True, mask="random"),
    lsh_case(L=29, factors=(4, 2, 6), R=3, Hr=1, mask="suffix", before=2, after=1),
]

# A case for bitwise determinism (runs, thread counts, the GPU).
LSH_DET_CASE = lsh_case(B=2, H=3, Hr=1, L=203, D=16, Dv=16, m=8, R=4, half=8, causal=True,
                        mask="random", before=1, after=1)


def assert_lsh_bitwise(a, b):
    for name, x, y in zip(LSH_NAMES, a, b):
        assert torch.equal(x, y), f"{name} differs between runs"


# --------------------------------------------------------------------- chunked feed-forward


def ffn_params(d_model, d_ff, dtype=F64, bias=True, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(d_ff, d_model, generator=g, dtype=dtype) / math.sqrt(d_model)
    w2 = torch.randn(d_model, d_ff, generator=g, dtype=dtype) / math.sqrt(d_ff)
    b1 = torch.randn(d_ff, generator=g, dtype=dtype) if bias else None
    b2 = torch.randn(d_model, generator=g, dtype=dtype) if bias else None
    return [t.to(device) if t is not None else None for t in (w1, b1, w2, b2)]


def ffn_randn(shape, dtype=F64, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype).to(device)


# The activations by name, in plain PyTorch.
FFN_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def plain_ffn(x, w1, b1, w2, b2, activation="gelu", keep=None, p=0.0):
    """Unchunked reference; keep is an explicit (N, d_ff) dropout keep mask."""
    h = FFN_ACTIVATIONS[activation](F.linear(x, w1, b1))
    if keep is not None:
        h = h * keep.reshape(*x.shape[:-1], -1).to(h.dtype) / (1.0 - p)
    return F.linear(h, w2, b2)


def assert_rel(actual, expected, tol, what=""):
    """max |actual - expected| <= tol * max |expected| (relative to the tensor's scale)."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= tol * max(scale, 1e-30), f"{what}: max error {err:.3e}, scale {scale:.3e}"


# ------------------------------------------------------------------- reformer_stack operator


def reformer_stack(x1, x2, weights, rotations, seeds, *, key_padding_mask=None, dropout_p=0.0,
                   lsh_attention_dropout_p=0.0, local_attention_dropout_p=0.0, **options):
    """The package's stack wrapper called with a flat weight list (LAYER_WEIGHT_NAMES order per
    layer), as the reference takes them."""
    layers = [dict(zip(LAYER_WEIGHT_NAMES, weights[i:i + WEIGHTS_PER_LAYER]))
              for i in range(0, len(weights), WEIGHTS_PER_LAYER)]
    return stack_ops.reformer_stack(x1, x2, layers, rotations, seeds, StackOptions(**options),
                                    key_padding_mask=key_padding_mask, dropout_p=dropout_p,
                                    lsh_attention_dropout_p=lsh_attention_dropout_p,
                                    local_attention_dropout_p=local_attention_dropout_p)


def stack_problem(depth=2, batch=2, length=21, d_model=8, n_heads=2, d_ff=12, n_hashes=2,
             n_buckets=4, dtype=F64, seed=0, local_layers=()):
    """Random streams, weights (LayerNorm weights around 1), rotations and dropout seeds. The
    layers in local_layers get a stacked query/key weight (2·H·Dh rows) and empty rotations."""
    g = torch.Generator().manual_seed(seed)
    d_head = d_model // n_heads
    inner = n_heads * d_head
    shapes = {"norm1_weight": (d_model,), "norm1_bias": (d_model,),
              "qk_weight": (inner, d_model), "v_weight": (inner, d_model),
              "out_weight": (d_model, inner), "out_bias": (d_model,),
              "norm2_weight": (d_model,), "norm2_bias": (d_model,),
              "ffn_w1": (d_ff, d_model), "ffn_b1": (d_ff,), "ffn_w2": (d_model, d_ff),
              "ffn_b2": (d_model,)}
    weights = []
    for layer in range(depth):
        for name in LAYER_WEIGHT_NAMES:
            shape = shapes[name]
            if name == "qk_weight" and layer in local_layers:
                shape = (2 * inner, d_model)
            w = torch.randn(shape, generator=g, dtype=dtype) * 0.5
            if name.startswith("norm") and name.endswith("weight"):
                w = w * 0.2 + 1.0
            weights.append(w.requires_grad_(True))
    x1 = torch.randn(batch, length, d_model, generator=g, dtype=dtype, requires_grad=True)
    x2 = torch.randn(batch, length, d_model, generator=g, dtype=dtype, requires_grad=True)
    # n_buckets: an int, or a list of factors (rotations of sum(factors) // 2 columns)
    cols = sum(n_buckets) // 2 if isinstance(n_buckets, (list, tuple)) else n_buckets // 2
    rotations = [torch.randn(n_heads, d_head, n_hashes, cols, generator=g, dtype=dtype)
                 if layer not in local_layers else torch.empty(0, dtype=dtype)
                 for layer in range(depth)]
    seeds = torch.randint(0, 2**62, (depth, 3), generator=g, dtype=torch.int64)
    return x1, x2, weights, rotations, seeds


def stack_op_args(dtype=torch.float32, requires_grad=True, dropout_p=0.2, masked=True,
                  factors=None, local_layers=()):
    """The stack operator's positional arguments for opcheck and the error catalogue; with
    local_layers, the trailing bucket_factors and local options (chunk length 4) too."""
    x1, x2, weights, rotations, seeds = stack_problem(depth=2, batch=1, length=10, dtype=dtype,
                                                      n_buckets=factors or 4,
                                                      local_layers=local_layers)
    for t in [x1, x2, *weights]:
        t.requires_grad_(requires_grad)
    mask = torch.zeros(1, 10, dtype=torch.bool)
    if masked:
        mask[0, 8:] = True
    args = (x1, x2, weights, rotations, mask, seeds, 2, 4, True, 1, 0, 3, "gelu", dropout_p, 1e-5)
    if local_layers:
        return args + (list(factors or ()), list(local_layers), 4, 1, 0)
    return args + (list(factors),) if factors else args


# ------------------------------------------------------------------------------ the modules

TOL = {F64: 1e-8, F32: 1e-4}  # reversible vs plain: relative error of outputs and gradients


def rel_error(a, b):
    """|a - b| / |b| in the Frobenius norm."""
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def small_reformer(dtype=F64, **kwargs):
    kw = dict(bucket_size=8, n_hashes=2, ff_chunk_size=16)
    kw.update(kwargs)
    torch.manual_seed(0)
    return rx.nn.Reformer(32, 3, 2, **kw).to(dtype)


# --------------------------------------------------------------------------- resource hygiene


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def assert_memory_flat_over_1000_calls(step) -> None:
    """Calls ``step()`` 1,000 times on one thread (short on a 2-core CI machine); the resident
    memory after call 1,000 must be within 4 MiB of that after call 100. ``step`` must drop its
    results (a leak of one small tensor per call then shows as several MiB)."""
    n_threads = torch.get_num_threads()
    rss = {}
    try:
        torch.set_num_threads(1)
        for it in range(1, 1001):
            step()
            if it in (100, 1000):
                gc.collect()
                rss[it] = _rss_bytes()
    finally:
        torch.set_num_threads(n_threads)
    growth = rss[1000] - rss[100]
    assert growth < 4 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB"


def run_in_threads(calls, repeats: int = 3) -> list:
    """Makes each call (a function without arguments) ``repeats`` times from its own Python
    thread, all threads released at once; returns results[k][rep]. Fails if a thread raises or
    hangs."""
    results = [[None] * repeats for _ in calls]
    errors = []
    barrier = threading.Barrier(len(calls))

    def worker(k):
        try:
            barrier.wait()
            for rep in range(repeats):
                results[k][rep] = calls[k]()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((k, e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker thread hangs"
    assert not errors, errors
    return results


# ------------------------------------------------------------------------ bad-input catalogues
#
# The bad-input catalogues (tests/test_lsh_attention_errors.py, test_chunked_ffn_errors.py,
# test_nn_errors.py; their completeness and the Markdown note: test_errors_catalogue.py). Each
# file holds a Catalogue: its entry points (name -> call(base arguments, overrides)), the
# valid base arguments of each, the arguments each entry point takes, and its cases. A case
# replaces some of the base arguments and names the regex the error message must contain.

ERRORS = (ValueError, TypeError, RuntimeError)


@dataclass
class Case:
    name: str
    make: Callable[[dict], dict]  # base tensors -> argument overrides
    match: str  # regex the message must contain: names the argument
    entries: tuple
    # entry -> reason: a known product bug on that entry point (xfail, strict)
    bugs: Dict[str, str] = field(default_factory=dict)
    # "clear": must raise with `match`; "no_crash": any clean outcome but a signal
    expect: str = "clear"


def C(name, make, match, entries, bugs=None, expect="clear"):
    if isinstance(bugs, str):
        bugs = {e: bugs for e in entries}
    return Case(name, make, match, tuple(entries), dict(bugs or {}), expect)


def to_meta(x):
    return x.to("meta")


# Regexes naming the LSH arguments (the functions' and the modules' cases).
QK, V, ROT, MASK = r"\bqk\b", r"\bv\b", r"\brotations\b", r"key_padding_mask"

_CHILD = r"""
import sys
sys.path.insert(0, {tests!r})
import {module}
{module}.CATALOGUE.child_main(sys.argv[1:])
"""


@dataclass
class Catalogue:
    calls: Dict[str, Callable]  # entry -> call(base arguments, overrides)
    base_of: Dict[str, Callable]  # entry -> the function making its valid base arguments
    args: Dict[str, set]  # entry -> the arguments it takes (every one needs a case)
    cases: list = field(default_factory=list)  # run in-process
    dangerous: list = field(default_factory=list)  # run only in child processes

    def outcome(self, entry: str, case: Case) -> str:
        """Runs one bad call; returns 'clear: ...', 'unclear: ...' or 'no error: ...'."""
        t = self.base_of[entry]()
        try:
            result = self.calls[entry](t, case.make(t))
        except ERRORS as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            kind = "clear" if re.search(case.match, msg) else "unclear"
            return f"{kind}: {type(e).__name__}: {msg}"
        except Exception as e:  # noqa: BLE001 - an exception of another type is a finding too
            return f"unclear: {type(e).__name__}: {e}"
        res = result if isinstance(result, tuple) else (result,)
        desc = ", ".join(f"{tuple(r.shape)} {r.dtype} on {r.device}"
                         if isinstance(r, torch.Tensor) else repr(r) for r in res)
        return f"no error: returned {desc}"

    @staticmethod
    def params(cases):
        out = []
        for case in cases:
            for entry in case.entries:
                marks = []
                if entry in case.bugs:
                    marks.append(pytest.mark.xfail(strict=True, reason=case.bugs[entry]))
                out.append(pytest.param(entry, case, id=f"{entry}:{case.name}", marks=marks))
        return out

    @staticmethod
    def check(case: Case, result: str):
        if case.expect == "no_crash":
            assert not result.startswith(("crash", "unclear")), result
        else:
            assert result.startswith("clear"), (
                f"expected an error matching {case.match!r}, got {result}")

    def in_process_test(self):
        """The test running each case in this process: in a catalogue file,
        ``test_bad_input = CATALOGUE.in_process_test()``."""
        @pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
        @pytest.mark.parametrize("entry,case", self.params(self.cases))
        def test_bad_input(entry, case):
            self.check(case, self.outcome(entry, case))
        return test_bad_input

    def child_process_tests(self, module):
        """The fixture running the dangerous cases in child processes (they import the test
        module `module` for its CATALOGUE) and the test checking each result: in a catalogue
        file, ``child_results, test_bad_input_in_child_process =
        CATALOGUE.child_process_tests(__name__)``."""
        @pytest.fixture(scope="module")
        def child_results():
            return self.run_children(module, self.child_keys())

        @pytest.mark.parametrize("entry,case", self.params(self.dangerous))
        def test_bad_input_in_child_process(entry, case, child_results):
            self.check(case, child_results[f"{entry}|{case.name}"])
        return child_results, test_bad_input_in_child_process

    def child_keys(self):
        return [f"{e}|{c.name}" for c in self.dangerous for e in c.entries]

    def child_main(self, keys):
        """In a child process that has imported torch but run no operator yet (so no OpenMP
        threads exist and fork is safe): runs each `entry|case` key in its own forked process
        and prints one JSON object, key -> result. A case killed by a signal is reported as a
        crash."""
        cases = {c.name: c for c in self.dangerous}
        results = {}
        for key in keys:
            entry, name = key.split("|", 1)
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the case runs here
                os.close(read_end)
                try:
                    res = self.outcome(entry, cases[name])
                except BaseException as e:  # noqa: BLE001
                    res = f"unclear: {type(e).__name__}: {e}"
                os.write(write_end, res.encode())
                os._exit(0)
            os.close(write_end)
            chunks = []
            while True:
                data = os.read(read_end, 65536)
                if not data:
                    break
                chunks.append(data)
            os.close(read_end)
            _, status = os.waitpid(pid, 0)
            res = b"".join(chunks).decode(errors="replace")
            if os.WIFSIGNALED(status):
                res = f"crash: signal {os.WTERMSIG(status)}" + (f" after {res}" if res else "")
            elif os.WEXITSTATUS(status) != 0 or not res:
                res = f"crash: exit status {os.WEXITSTATUS(status)}"
            results[key] = res
        print(json.dumps(results), flush=True)

    @staticmethod
    def run_children(module, keys):
        """key -> result for the dangerous keys of the catalogue in test module `module` (its
        CATALOGUE), each run in a process of its own."""
        code = _CHILD.format(tests=os.path.dirname(os.path.abspath(__file__)), module=module)
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.run([sys.executable, "-c", code, *keys], capture_output=True,
                              text=True, timeout=300, env=env)
        assert proc.returncode == 0, f"the case runner failed ({proc.returncode}): {proc.stderr}"
        return json.loads(proc.stdout.strip().splitlines()[-1])

"""Catalogue of bad inputs (issue 8, item 1) for every public entry point.

Functions and operators: rx.lsh_attention, rx.lsh_buckets, rx.random_rotations,
rx.chunked_feed_forward and torch.ops.reformer.lsh_buckets / lsh_attention /
lsh_attention_backward / chunked_ffn / chunked_ffn_backward get, argument by argument: wrong
rank, shape, dtype and device (meta as the mismatching device, since CI has no GPU),
zero/negative sizes, non-tensors where a tensor is expected, floats/bools/None where an int is
expected, and out-of-range options. Modules (reformer_ext.nn: LSHSelfAttention,
ChunkedFeedForward, ReversibleSequence, Reformer, ReformerLM): each constructor argument, and
each forward argument of a module built from valid ones. Each call must raise ValueError,
TypeError or RuntimeError whose message names the argument (the case's `match` regex).

The calls that could take the process down (bad sorted_positions / softmax_stats handed to the
backward, undefined tensors, integer overflow in the options, degenerate shapes, a forward on
mixed devices followed by its backward) run in a child process, each case forked off on its
own; a case killed by a signal is reported as a crash.

Cases marked xfail(strict=True) (a case's `bugs`) are known product bugs: the lead removes the
mark with the fix. `python tests/test_errors.py --markdown PATH` writes every bad input tried
and what it got.
"""

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict

import pytest
import torch

import reformer_ext as rx
import reformer_ext.nn as rnn

ops = torch.ops.reformer
ERRORS = (ValueError, TypeError, RuntimeError)

B, H, L, D, DV, R, HALF, M = 2, 2, 10, 8, 6, 2, 2, 4
LP = -(-L // M) * M  # padded length: 12


def _base():
    """Valid inputs: every case replaces one of them."""
    g = torch.Generator().manual_seed(0)
    qk = torch.randn(B, H, L, D, generator=g)
    v = torch.randn(B, H, L, DV, generator=g)
    rot = torch.randn(H, D, R, HALF, generator=g)
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[1, -3:] = True
    t = dict(qk=qk, v=v, rotations=rot, key_padding_mask=mask)
    out, lse, sp, st = ops.lsh_attention(qk, v, rot, mask, M, False, 1, 0, 1.0)
    t.update(out=out, lse=lse, sorted_positions=sp, softmax_stats=st,
             grad_out=torch.randn(out.shape, generator=g),
             grad_lse=torch.randn(lse.shape, generator=g))
    return t


# ------------------------------------------------------------------------------ entry points

_ATTN_KW = dict(n_hashes=R, bucket_size=M, n_buckets=2 * HALF, causal=False, generator=None,
                n_chunks_before=1, n_chunks_after=0, scale=1.0, return_lse=False)
_OP_ATTN = ("qk", "v", "rotations", "key_padding_mask", "bucket_size", "causal",
            "n_chunks_before", "n_chunks_after", "scale")
_OP_BW = ("grad_out", "grad_lse", "qk", "v", "out", "softmax_stats", "sorted_positions",
          "key_padding_mask", "bucket_size", "causal", "n_chunks_before", "n_chunks_after",
          "scale")


def _merged(t, over):
    a = dict(t)
    a.update(_ATTN_KW)
    a.update(over)
    return a


def _call_rx_attention(t, over):
    a = _merged(t, over)
    kw = {k: a[k] for k in _ATTN_KW}
    return rx.lsh_attention(a["qk"], a["v"], rotations=a["rotations"],
                            key_padding_mask=a["key_padding_mask"], **kw)


def _call_op_attention(t, over):
    a = _merged(t, over)
    return ops.lsh_attention(*[a[k] for k in _OP_ATTN])


def _call_rx_buckets(t, over):
    a = _merged(t, over)
    return rx.lsh_buckets(a["qk"], a["rotations"], a["key_padding_mask"])


def _call_op_buckets(t, over):
    a = _merged(t, over)
    return ops.lsh_buckets(a["qk"], a["rotations"], a["key_padding_mask"])


def _call_rx_rotations(t, over):
    a = _merged(t, over)
    return rx.random_rotations(a["qk"], a["n_hashes"], a["n_buckets"], a["generator"])


def _call_op_backward(t, over):
    a = _merged(t, over)
    return ops.lsh_attention_backward(*[a[k] for k in _OP_BW])


def _call_rx_attention_backward(t, over):
    """The public API end to end: forward with autograd, then backward."""
    a = _merged(t, over)
    qk = a["qk"].detach().requires_grad_() if a["qk"].is_floating_point() else a["qk"]
    out = rx.lsh_attention(qk, a["v"], rotations=a["rotations"],
                           key_padding_mask=a["key_padding_mask"],
                           **{k: a[k] for k in _ATTN_KW})
    out.sum().backward()
    return qk.grad


CALLS = {
    "rx.lsh_attention": _call_rx_attention,
    "ops.lsh_attention": _call_op_attention,
    "rx.lsh_buckets": _call_rx_buckets,
    "ops.lsh_buckets": _call_op_buckets,
    "rx.random_rotations": _call_rx_rotations,
    "ops.lsh_attention_backward": _call_op_backward,
    "rx.lsh_attention+backward": _call_rx_attention_backward,
}
# entry -> the function making its valid base arguments
BASE_OF = {e: _base for e in CALLS}
ATTN = ("rx.lsh_attention", "ops.lsh_attention")
HASH = ("rx.lsh_buckets", "ops.lsh_buckets")
ALL_FWD = ATTN + HASH
BW = ("ops.lsh_attention_backward",)


# --------------------------------------------------------------------------------- catalogue


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


def _meta(x):
    return x.to("meta")


def C(name, make, match, entries, bugs=None, expect="clear"):
    if isinstance(bugs, str):
        bugs = {e: bugs for e in entries}
    return Case(name, make, match, tuple(entries), dict(bugs or {}), expect)


QK, V, ROT, MASK = r"\bqk\b", r"\bv\b", r"\brotations\b", r"key_padding_mask"

CASES = [
    # ---- qk
    C("qk=None", lambda t: dict(qk=None), QK, ALL_FWD + ("rx.random_rotations",)),
    C("qk=list", lambda t: dict(qk=t["qk"].tolist()), QK, ALL_FWD + ("rx.random_rotations",)),
    C("qk=int", lambda t: dict(qk=3), QK, ALL_FWD + ("rx.random_rotations",)),
    C("qk rank 3", lambda t: dict(qk=t["qk"][0]), QK, ALL_FWD + ("rx.random_rotations",)),
    C("qk rank 5", lambda t: dict(qk=t["qk"][None]), QK, ALL_FWD + ("rx.random_rotations",)),
    C("qk int64", lambda t: dict(qk=t["qk"].long(), v=t["v"].long()), QK, ALL_FWD),
    C("qk bool", lambda t: dict(qk=t["qk"] > 0), QK, ALL_FWD),
    C("qk complex64", lambda t: dict(qk=t["qk"].to(torch.complex64)), QK, ALL_FWD),
    C("qk L=0", lambda t: dict(qk=t["qk"][:, :, :0], v=t["v"][:, :, :0],
                               key_padding_mask=None), QK, ALL_FWD),
    C("qk D=0", lambda t: dict(qk=t["qk"][..., :0], rotations=t["rotations"][:, :0]), QK,
      ALL_FWD),
    C("qk on meta", lambda t: dict(qk=_meta(t["qk"])), QK + "|device", ALL_FWD),
    # ---- v
    C("v=None", lambda t: dict(v=None), V, ATTN),
    C("v=list", lambda t: dict(v=t["v"].tolist()), V, ATTN),
    C("v=int", lambda t: dict(v=1), V, ATTN),
    C("v rank 3", lambda t: dict(v=t["v"][0]), V, ATTN),
    C("v rank 5", lambda t: dict(v=t["v"][None]), V, ATTN),
    C("v batch 1 of 2", lambda t: dict(v=t["v"][:1]), V, ATTN),
    C("v heads 1 of 2", lambda t: dict(v=t["v"][:, :1]), V, ATTN),
    C("v length L-1", lambda t: dict(v=t["v"][:, :, :-1]), V, ATTN),
    C("v Dv=0", lambda t: dict(v=t["v"][..., :0]), V, ATTN),
    C("v float64 (qk float32)", lambda t: dict(v=t["v"].double()), V, ATTN),
    C("v float16 (qk float32)", lambda t: dict(v=t["v"].half()), V, ATTN),
    C("v int64", lambda t: dict(v=t["v"].long()), V, ATTN),
    C("v on meta", lambda t: dict(v=_meta(t["v"])), V + "|device", ATTN),
    # ---- rotations
    C("rotations=None (op)", lambda t: dict(rotations=None), ROT, ("ops.lsh_attention",) + HASH),
    C("rotations=list", lambda t: dict(rotations=t["rotations"].tolist()), ROT, ALL_FWD),
    C("rotations=int", lambda t: dict(rotations=2), ROT, ALL_FWD),
    C("rotations rank 3", lambda t: dict(rotations=t["rotations"][0]), ROT, ALL_FWD),
    C("rotations rank 5", lambda t: dict(rotations=t["rotations"][None]), ROT, ALL_FWD),
    C("rotations Hr=3 (H=2)", lambda t: dict(rotations=torch.randn(3, D, R, HALF)), ROT, ALL_FWD),
    C("rotations Hr=0", lambda t: dict(rotations=t["rotations"][:0]), ROT, ALL_FWD),
    C("rotations D-1", lambda t: dict(rotations=t["rotations"][:, :-1]), ROT, ALL_FWD),
    C("rotations D+1", lambda t: dict(rotations=torch.randn(H, D + 1, R, HALF)), ROT, ALL_FWD),
    C("rotations n_hashes=0", lambda t: dict(rotations=t["rotations"][:, :, :0]), ROT, ALL_FWD),
    C("rotations n_buckets//2=0", lambda t: dict(rotations=t["rotations"][..., :0],
                                                 n_buckets=None), ROT, ALL_FWD),
    C("rotations int64", lambda t: dict(rotations=t["rotations"].long()), ROT, ALL_FWD),
    C("rotations bool", lambda t: dict(rotations=t["rotations"] > 0), ROT, ALL_FWD),
    C("rotations complex64", lambda t: dict(rotations=t["rotations"].to(torch.complex64)), ROT,
      ALL_FWD),
    C("rotations on meta", lambda t: dict(rotations=_meta(t["rotations"])), ROT + "|device",
      ALL_FWD),
    # ---- key_padding_mask
    C("mask=list", lambda t: dict(key_padding_mask=t["key_padding_mask"].tolist()), MASK,
      ALL_FWD),
    C("mask=int", lambda t: dict(key_padding_mask=1), MASK, ALL_FWD),
    C("mask float32", lambda t: dict(key_padding_mask=t["key_padding_mask"].float()), MASK,
      ALL_FWD),
    C("mask uint8", lambda t: dict(key_padding_mask=t["key_padding_mask"].to(torch.uint8)),
      MASK, ALL_FWD),
    C("mask int64", lambda t: dict(key_padding_mask=t["key_padding_mask"].long()), MASK,
      ALL_FWD),
    C("mask rank 1", lambda t: dict(key_padding_mask=t["key_padding_mask"][0]), MASK, ALL_FWD),
    C("mask rank 3", lambda t: dict(key_padding_mask=t["key_padding_mask"][None]), MASK,
      ALL_FWD),
    C("mask (B,H,L)", lambda t: dict(key_padding_mask=torch.zeros(B, H, L, dtype=torch.bool)),
      MASK, ALL_FWD),
    C("mask batch 1 of 2", lambda t: dict(key_padding_mask=t["key_padding_mask"][:1]), MASK,
      ALL_FWD),
    C("mask length L+1", lambda t: dict(key_padding_mask=torch.zeros(B, L + 1, dtype=torch.bool)),
      MASK, ALL_FWD),
    C("mask on meta", lambda t: dict(key_padding_mask=_meta(t["key_padding_mask"])),
      MASK + "|device", ALL_FWD),
    # ---- n_hashes (functional only: the operator reads it off rotations)
    C("n_hashes=0", lambda t: dict(n_hashes=0, rotations=None), "n_hashes",
      ("rx.lsh_attention", "rx.random_rotations")),
    C("n_hashes=0 with rotations", lambda t: dict(n_hashes=0), "n_hashes", ("rx.lsh_attention",)),
    C("n_hashes=-1", lambda t: dict(n_hashes=-1, rotations=None), "n_hashes",
      ("rx.lsh_attention", "rx.random_rotations")),
    C("n_hashes=2.0", lambda t: dict(n_hashes=2.0, rotations=None), "n_hashes",
      ("rx.lsh_attention", "rx.random_rotations")),
    C("n_hashes=True", lambda t: dict(n_hashes=True, rotations=None), "n_hashes",
      ("rx.lsh_attention", "rx.random_rotations")),
    C("n_hashes=None", lambda t: dict(n_hashes=None, rotations=None), "n_hashes",
      ("rx.lsh_attention", "rx.random_rotations")),
    C("n_hashes='2'", lambda t: dict(n_hashes="2", rotations=None), "n_hashes",
      ("rx.lsh_attention", "rx.random_rotations")),
    # ---- n_buckets (functional only)
    C("n_buckets=3 (odd)", lambda t: dict(n_buckets=3, rotations=None), "n_buckets",
      ("rx.lsh_attention", "rx.random_rotations")),
    C("n_buckets=3 with rotations", lambda t: dict(n_buckets=3), "n_buckets",
      ("rx.lsh_attention",)),
    C("n_buckets=1", lambda t: dict(n_buckets=1, rotations=None), "n_buckets",
      ("rx.lsh_attention", "rx.random_rotations")),
    C("n_buckets=0", lambda t: dict(n_buckets=0, rotations=None), "n_buckets",
      ("rx.lsh_attention", "rx.random_rotations")),
    C("n_buckets=-2", lambda t: dict(n_buckets=-2, rotations=None), "n_buckets",
      ("rx.lsh_attention", "rx.random_rotations")),
    C("n_buckets=4.0", lambda t: dict(n_buckets=4.0, rotations=None), "n_buckets",
      ("rx.lsh_attention", "rx.random_rotations")),
    C("n_buckets=True", lambda t: dict(n_buckets=True, rotations=None), "n_buckets",
      ("rx.lsh_attention", "rx.random_rotations")),
    C("n_buckets='4'", lambda t: dict(n_buckets="4", rotations=None), "n_buckets",
      ("rx.lsh_attention", "rx.random_rotations")),
    C("n_buckets=None (random_rotations)", lambda t: dict(n_buckets=None), "n_buckets",
      ("rx.random_rotations",)),
    C("n_buckets=[2, 2] (factorised)", lambda t: dict(n_buckets=[2, 2], rotations=None),
      "n_buckets.*not supported", ("rx.lsh_attention", "rx.random_rotations")),
    C("n_buckets=[2, 2] with rotations", lambda t: dict(n_buckets=[2, 2]),
      "n_buckets.*not supported", ("rx.lsh_attention",)),
    C("n_buckets=(4,)", lambda t: dict(n_buckets=(4,), rotations=None),
      "n_buckets.*not supported", ("rx.lsh_attention", "rx.random_rotations")),
    C("n_buckets=8 vs rotations of 4", lambda t: dict(n_buckets=8), "n_buckets",
      ("rx.lsh_attention",)),
    # ---- bucket_size
    C("bucket_size=0", lambda t: dict(bucket_size=0), "bucket_size", ATTN),
    C("bucket_size=-3", lambda t: dict(bucket_size=-3), "bucket_size", ATTN),
    C("bucket_size=4.0", lambda t: dict(bucket_size=4.0), "bucket_size", ATTN),
    C("bucket_size=None", lambda t: dict(bucket_size=None), "bucket_size", ATTN),
    C("bucket_size=True", lambda t: dict(bucket_size=True), "bucket_size", ("rx.lsh_attention",)),
    C("bucket_size=2**31 (L' >= 2^31)", lambda t: dict(bucket_size=2**31), "bucket_size", ATTN),
    C("bucket_size=2**64", lambda t: dict(bucket_size=2**64), "bucket_size", ATTN),
    # ---- window
    C("n_chunks_before=-1", lambda t: dict(n_chunks_before=-1), "n_chunks_before", ATTN),
    C("n_chunks_before=1.0", lambda t: dict(n_chunks_before=1.0), "n_chunks_before", ATTN),
    C("n_chunks_before=None", lambda t: dict(n_chunks_before=None), "n_chunks_before", ATTN),
    C("n_chunks_before=True", lambda t: dict(n_chunks_before=True), "n_chunks_before",
      ("rx.lsh_attention",)),
    C("n_chunks_after=-1", lambda t: dict(n_chunks_after=-1), "n_chunks_after", ATTN),
    C("n_chunks_after=0.0", lambda t: dict(n_chunks_after=0.0), "n_chunks_after", ATTN),
    C("n_chunks_after=False", lambda t: dict(n_chunks_after=False), "n_chunks_after",
      ("rx.lsh_attention",)),
    C("window 64 chunks (before=63, after=1)", lambda t: dict(n_chunks_before=63,
                                                              n_chunks_after=1),
      "n_chunks_before", ATTN),
    C("huge window before=10**6", lambda t: dict(n_chunks_before=10**6), "n_chunks_before",
      ATTN),
    C("huge window after=2**62", lambda t: dict(n_chunks_after=2**62), "n_chunks_after", ATTN),
    # ---- scale, flags, generator (functional)
    C("scale='a'", lambda t: dict(scale="a"), "scale", ATTN),
    C("scale=None", lambda t: dict(scale=None), "scale", ATTN),
    C("scale=[1.0]", lambda t: dict(scale=[1.0]), "scale", ATTN),
    C("causal=None", lambda t: dict(causal=None), "causal", ("rx.lsh_attention",)),
    C("causal='no'", lambda t: dict(causal="no"), "causal", ATTN + BW),
    C("return_lse='yes'", lambda t: dict(return_lse="yes"), "return_lse", ("rx.lsh_attention",)),
    C("generator='seed'", lambda t: dict(generator="seed", rotations=None), "generator",
      ("rx.lsh_attention", "rx.random_rotations")),
    C("generator=0", lambda t: dict(generator=0, rotations=None), "generator",
      ("rx.lsh_attention", "rx.random_rotations")),
    # ---- the backward operator, argument by argument (sorted_positions and softmax_stats,
    #      the dangerous ones, are in DANGEROUS below and run in child processes)
    C("grad_out=None", lambda t: dict(grad_out=None), "grad_out", BW),
    C("grad_out shape", lambda t: dict(grad_out=t["grad_out"][:1]), "grad_out", BW),
    C("grad_out rank 3", lambda t: dict(grad_out=t["grad_out"][0]), "grad_out", BW),
    C("grad_out float64", lambda t: dict(grad_out=t["grad_out"].double()), "grad_out", BW),
    C("grad_out=list", lambda t: dict(grad_out=[1.0]), "grad_out", BW),
    C("grad_out on meta", lambda t: dict(grad_out=_meta(t["grad_out"])), "grad_out|device", BW),
    C("grad_lse shape (B,L)", lambda t: dict(grad_lse=t["grad_lse"][0]), "grad_lse", BW),
    C("grad_lse float64", lambda t: dict(grad_lse=t["grad_lse"].double()), "grad_lse", BW),
    C("grad_lse float16", lambda t: dict(grad_lse=t["grad_lse"].half()), "grad_lse", BW),
    C("grad_lse=list", lambda t: dict(grad_lse=[0.0]), "grad_lse", BW),
    C("grad_lse on meta", lambda t: dict(grad_lse=_meta(t["grad_lse"])), "grad_lse|device", BW),
    C("qk=None (backward)", lambda t: dict(qk=None), QK, BW),
    C("qk rank 3 (backward)", lambda t: dict(qk=t["qk"][0]), QK, BW),
    C("qk int64 (backward)", lambda t: dict(qk=t["qk"].long()), QK, BW),
    C("qk L-1 (backward)", lambda t: dict(qk=t["qk"][:, :, :-1]), QK + "|" + V + "|key_padding",
      BW),
    C("v=None (backward)", lambda t: dict(v=None), V, BW),
    C("v shape (backward)", lambda t: dict(v=t["v"][:1]), V, BW),
    C("v float64 (backward)", lambda t: dict(v=t["v"].double()), V, BW),
    C("out=None", lambda t: dict(out=None), r"\bout\b", BW),
    C("out shape", lambda t: dict(out=t["out"][..., :1]), r"\bout\b", BW),
    C("out float64", lambda t: dict(out=t["out"].double()), r"\bout\b", BW),
    C("mask shape (backward)", lambda t: dict(key_padding_mask=t["key_padding_mask"][:1]), MASK,
      BW),
    C("mask float32 (backward)", lambda t: dict(key_padding_mask=t["key_padding_mask"].float()),
      MASK, BW),
    C("bucket_size=0 (backward)", lambda t: dict(bucket_size=0), "bucket_size", BW),
    C("bucket_size=5: L'=10 does not divide sorted_positions (24)",
      lambda t: dict(bucket_size=5), "sorted_positions", BW),
    C("n_chunks_before=-1 (backward)", lambda t: dict(n_chunks_before=-1), "n_chunks_before", BW),
    C("n_chunks_after=100 (backward)", lambda t: dict(n_chunks_after=100), "n_chunks_", BW),
    C("scale='a' (backward)", lambda t: dict(scale="a"), "scale", BW),
]

# ---- all-meta calls (fake tensors): the shapes must be checked there too (torch.compile
#      traces with them, and a meta-device model would otherwise go on with invalid shapes)
_META = {k: (lambda k: lambda t: _meta(t[k]))(k) for k in ("qk", "v", "rotations",
                                                            "key_padding_mask")}


def _all_meta(**bad):
    def make(t):
        over = {k: f(t) for k, f in _META.items()}
        over.update({k: f(t) for k, f in bad.items()})
        return over
    return make


CASES += [
    C("all meta, v length L-1", _all_meta(v=lambda t: _meta(t["v"][:, :, :-1])), V, ATTN),
    C("all meta, rotations D-1", _all_meta(rotations=lambda t: _meta(t["rotations"][:, :-1])),
      ROT, ALL_FWD),
    C("all meta, mask length L+1",
      _all_meta(key_padding_mask=lambda t: torch.zeros(B, L + 1, dtype=torch.bool,
                                                       device="meta")),
      MASK, ALL_FWD),
]


def _sp_with(value, b=0, h=0, i=3):
    def make(t):
        sp = t["sorted_positions"].clone()
        sp[b, h, i] = value
        return dict(sorted_positions=sp)
    return make


SP, ST = "sorted_positions", "softmax_stats"

# Run only in child processes: a crash here must not take the test run down.
DANGEROUS = [
    C("sorted_positions=None", lambda t: dict(sorted_positions=None), SP, BW),
    C("sorted_positions one item short", lambda t: dict(
        sorted_positions=t[SP][..., :-1]), SP, BW),
    C("sorted_positions rank 2", lambda t: dict(sorted_positions=t[SP][0]), SP, BW),
    C("sorted_positions rank 4", lambda t: dict(sorted_positions=t[SP].reshape(B, H, R, LP)),
      SP, BW),
    C("sorted_positions batch 1 of 2", lambda t: dict(sorted_positions=t[SP][:1]), SP, BW),
    C("sorted_positions heads 1 of 2", lambda t: dict(sorted_positions=t[SP][:, :1]), SP, BW),
    C("sorted_positions empty (B,H,0)", lambda t: dict(sorted_positions=t[SP][..., :0]), SP, BW),
    C("sorted_positions int64", lambda t: dict(sorted_positions=t[SP].long()), SP, BW),
    C("sorted_positions float32", lambda t: dict(sorted_positions=t[SP].float()), SP, BW),
    C("sorted_positions on meta", lambda t: dict(sorted_positions=_meta(t[SP])),
      SP + "|device", BW),
    C("sorted_positions value 10**9", _sp_with(10**9), SP, BW),
    C("sorted_positions value -1", _sp_with(-1), SP, BW),
    C("sorted_positions value -2**31", _sp_with(-2**31), SP, BW),
    C("sorted_positions value L' (last batch row)", _sp_with(LP, b=B - 1, h=H - 1), SP, BW),
    # In range but not a permutation: garbage in, but never a crash.
    C("sorted_positions all zero (not a permutation)",
      lambda t: dict(sorted_positions=torch.zeros_like(t[SP])), SP, BW, expect="no_crash"),
    C("softmax_stats=None", lambda t: dict(softmax_stats=None), ST, BW),
    C("softmax_stats = lse (B,H,L)", lambda t: dict(softmax_stats=t["lse"]), ST, BW),
    C("softmax_stats (B,H,L,1)", lambda t: dict(softmax_stats=t[ST][..., :1]), ST, BW),
    C("softmax_stats (B,H,L,3)", lambda t: dict(softmax_stats=torch.zeros(B, H, L, 3)), ST, BW),
    C("softmax_stats length L-1", lambda t: dict(softmax_stats=t[ST][:, :, :-1]), ST, BW),
    C("softmax_stats batch 1 of 2", lambda t: dict(softmax_stats=t[ST][:1]), ST, BW),
    C("softmax_stats float64", lambda t: dict(softmax_stats=t[ST].double()), ST, BW),
    C("softmax_stats float16", lambda t: dict(softmax_stats=t[ST].half()), ST, BW),
    C("softmax_stats int32", lambda t: dict(softmax_stats=t[ST].int()), ST, BW),
    C("softmax_stats=list", lambda t: dict(softmax_stats=t[ST].tolist()), ST, BW),
    C("softmax_stats on meta", lambda t: dict(softmax_stats=_meta(t[ST])), ST + "|device", BW),
    C("softmax_stats with NaN/inf values", lambda t: dict(softmax_stats=torch.where(
        torch.arange(t[ST].numel()).view(t[ST].shape) % 2 == 0, float("nan"), float("inf"))),
      ST, BW, expect="no_crash"),
    # Integer overflow in the options.
    C("window before=2**62, after=2**62", lambda t: dict(n_chunks_before=2**62,
                                                         n_chunks_after=2**62),
      "n_chunks_", ATTN + BW),
    C("window before=2**63-1, after=1", lambda t: dict(n_chunks_before=2**63 - 1,
                                                       n_chunks_after=1),
      "n_chunks_", ATTN + BW),
    C("bucket_size=2**63-1", lambda t: dict(bucket_size=2**63 - 1), "bucket_size", ATTN + BW),
    C("bucket_size=2**63-1, no mask", lambda t: dict(bucket_size=2**63 - 1,
                                                     key_padding_mask=None),
      "bucket_size", ATTN),
    # The public API end to end on mixed devices: forward, then backward.
    C("rotations on meta, then backward", lambda t: dict(rotations=_meta(t["rotations"])),
      ROT + "|device", ("rx.lsh_attention+backward",)),
    C("mask on meta, then backward", lambda t: dict(key_padding_mask=_meta(t[MASK])),
      MASK + "|device", ("rx.lsh_attention+backward",)),
]

# ==================================================================== chunked feed-forward
#
# rx.chunked_feed_forward, torch.ops.reformer.chunked_ffn and chunked_ffn_backward. Their
# arguments live in their own base dict (`_ffn_base`): x, w1, b1, w2, b2, grad_out and the
# options below; "dropout" is the functional API's name, "dropout_p" the operator's.

DM, DFF, FFN_CHUNK = 8, 12, 4


def _ffn_base():
    g = torch.Generator().manual_seed(1)
    return dict(x=torch.randn(2, 5, DM, generator=g), w1=torch.randn(DFF, DM, generator=g),
                b1=torch.randn(DFF, generator=g), w2=torch.randn(DM, DFF, generator=g),
                b2=torch.randn(DM, generator=g), grad_out=torch.randn(2, 5, DM, generator=g))


# The operators take the seed as a one-element int64 CPU tensor (None only when dropout_p is 0);
# the functional API takes that or an int.
_FFN_KW = dict(chunk_size=FFN_CHUNK, activation="gelu", dropout=0.1,
               dropout_seed=torch.tensor(5), generator=None)
_OP_FFN = ("x", "w1", "b1", "w2", "b2", "chunk_size", "activation", "dropout_p", "dropout_seed")
_OP_FFN_BW = ("grad_out", *_OP_FFN, "output_mask")


def _ffn_merged(t, over):
    a = dict(t)
    a.update(_FFN_KW, dropout_p=0.1, output_mask=[True] * 5)
    a.update(over)
    return a


def _call_rx_ffn(t, over):
    a = _ffn_merged(t, over)
    return rx.chunked_feed_forward(a["x"], a["w1"], a["b1"], a["w2"], a["b2"],
                                   **{k: a[k] for k in _FFN_KW})


def _call_op_ffn(t, over):
    a = _ffn_merged(t, over)
    return ops.chunked_ffn(*[a[k] for k in _OP_FFN])


def _call_op_ffn_backward(t, over):
    a = _ffn_merged(t, over)
    return ops.chunked_ffn_backward(*[a[k] for k in _OP_FFN_BW])


def _call_rx_ffn_backward(t, over):
    """The functional API end to end: forward with autograd, then backward."""
    a = _ffn_merged(t, over)
    x = a["x"].detach().requires_grad_() if a["x"].is_floating_point() else a["x"]
    y = rx.chunked_feed_forward(x, a["w1"], a["b1"], a["w2"], a["b2"],
                                **{k: a[k] for k in _FFN_KW})
    y.sum().backward()
    return x.grad


CALLS.update({
    "rx.chunked_feed_forward": _call_rx_ffn,
    "ops.chunked_ffn": _call_op_ffn,
    "ops.chunked_ffn_backward": _call_op_ffn_backward,
    "rx.chunked_feed_forward+backward": _call_rx_ffn_backward,
})
BASE_OF.update({e: _ffn_base for e in ("rx.chunked_feed_forward", "ops.chunked_ffn",
                                       "ops.chunked_ffn_backward",
                                       "rx.chunked_feed_forward+backward")})
FFN = ("rx.chunked_feed_forward", "ops.chunked_ffn")
FFN_BW = ("ops.chunked_ffn_backward",)
FFN_ALL = FFN + FFN_BW
RX_FFN, OP_FFN = ("rx.chunked_feed_forward",), ("ops.chunked_ffn",) + FFN_BW

_FFN_W = r"\bw1\b|\bx\b"  # a dtype/shape clash between x and w1 may name either

CASES += [
    # ---- x
    C("ffn x=list", lambda t: dict(x=t["x"].tolist()), r"\bx\b", FFN_ALL),
    C("ffn x=int", lambda t: dict(x=3), r"\bx\b", FFN_ALL),
    C("ffn x rank 0", lambda t: dict(x=t["x"][0, 0, 0]), r"\bx\b", FFN_ALL),
    C("ffn x last dim d_model-1", lambda t: dict(x=t["x"][..., :-1]), r"\bx\b|d_model",
      FFN_ALL),
    C("ffn x int64 (all int64)", lambda t: {k: t[k].long() for k in ("x", "w1", "b1", "w2",
                                                                       "b2", "grad_out")},
      r"\bx\b", FFN_ALL),
    C("ffn x bool", lambda t: dict(x=t["x"] > 0), r"\bx\b", FFN_ALL),
    C("ffn x complex64 (all complex64)",
      lambda t: {k: t[k].to(torch.complex64) for k in ("x", "w1", "b1", "w2", "b2",
                                                        "grad_out")}, r"\bx\b", FFN_ALL),
    C("ffn x float16 (weights float32)", lambda t: dict(x=t["x"].half()), _FFN_W, FFN_ALL),
    C("ffn x on meta", lambda t: dict(x=_meta(t["x"])), r"\bx\b|\bw1\b|device", FFN_ALL),
    # ---- w1
    C("ffn w1=list", lambda t: dict(w1=t["w1"].tolist()), r"\bw1\b", FFN_ALL),
    C("ffn w1 rank 1", lambda t: dict(w1=t["w1"][0]), r"\bw1\b", FFN_ALL),
    C("ffn w1 rank 3", lambda t: dict(w1=t["w1"][None]), r"\bw1\b", FFN_ALL),
    C("ffn w1 (d_ff, d_model-1)", lambda t: dict(w1=t["w1"][:, :-1]), r"\bw1\b", FFN_ALL),
    C("ffn w1 transposed", lambda t: dict(w1=t["w1"].t()), r"\bw1\b", FFN_ALL),
    C("ffn w1 float64", lambda t: dict(w1=t["w1"].double()), r"\bw1\b", FFN_ALL),
    C("ffn w1 int64", lambda t: dict(w1=t["w1"].long()), r"\bw1\b", FFN_ALL),
    C("ffn w1 on meta", lambda t: dict(w1=_meta(t["w1"])), r"\bw1\b|device", FFN_ALL),
    # ---- b1
    C("ffn b1=list", lambda t: dict(b1=t["b1"].tolist()), r"\bb1\b", FFN_ALL),
    C("ffn b1 rank 2", lambda t: dict(b1=t["b1"][None]), r"\bb1\b", FFN_ALL),
    C("ffn b1 length d_ff-1", lambda t: dict(b1=t["b1"][:-1]), r"\bb1\b", FFN_ALL),
    C("ffn b1 float64", lambda t: dict(b1=t["b1"].double()), r"\bb1\b", FFN_ALL),
    C("ffn b1 on meta", lambda t: dict(b1=_meta(t["b1"])), r"\bb1\b|device", FFN_ALL),
    # ---- w2
    C("ffn w2=list", lambda t: dict(w2=t["w2"].tolist()), r"\bw2\b", FFN_ALL),
    C("ffn w2 rank 1", lambda t: dict(w2=t["w2"][0]), r"\bw2\b", FFN_ALL),
    C("ffn w2 (d_model, d_ff-1)", lambda t: dict(w2=t["w2"][:, :-1]), r"\bw2\b", FFN_ALL),
    C("ffn w2 transposed", lambda t: dict(w2=t["w2"].t()), r"\bw2\b", FFN_ALL),
    C("ffn w2 float64", lambda t: dict(w2=t["w2"].double()), r"\bw2\b", FFN_ALL),
    C("ffn w2 on meta", lambda t: dict(w2=_meta(t["w2"])), r"\bw2\b|device", FFN_ALL),
    # ---- b2
    C("ffn b2=list", lambda t: dict(b2=t["b2"].tolist()), r"\bb2\b", FFN_ALL),
    C("ffn b2 rank 0", lambda t: dict(b2=t["b2"][0]), r"\bb2\b", FFN_ALL),
    C("ffn b2 = b1 (length d_ff)", lambda t: dict(b2=t["b1"]), r"\bb2\b", FFN_ALL),
    C("ffn b2 float16", lambda t: dict(b2=t["b2"].half()), r"\bb2\b", FFN_ALL),
    C("ffn b2 on meta", lambda t: dict(b2=_meta(t["b2"])), r"\bb2\b|device", FFN_ALL),
    # ---- options
    C("ffn chunk_size=0", lambda t: dict(chunk_size=0), "chunk_size", FFN_ALL),
    C("ffn chunk_size=-1", lambda t: dict(chunk_size=-1), "chunk_size", FFN_ALL),
    C("ffn chunk_size=2.0", lambda t: dict(chunk_size=2.0), "chunk_size", FFN_ALL),
    C("ffn chunk_size=None", lambda t: dict(chunk_size=None), "chunk_size", FFN_ALL),
    C("ffn chunk_size='4'", lambda t: dict(chunk_size="4"), "chunk_size", FFN_ALL),
    C("ffn chunk_size=True", lambda t: dict(chunk_size=True), "chunk_size", RX_FFN),
    C("ffn activation='tanh'", lambda t: dict(activation="tanh"), "activation", FFN_ALL),
    C("ffn activation='GELU'", lambda t: dict(activation="GELU"), "activation", FFN_ALL),
    C("ffn activation=''", lambda t: dict(activation=""), "activation", FFN_ALL),
    C("ffn activation=None", lambda t: dict(activation=None), "activation", FFN_ALL),
    C("ffn activation=nn.GELU()", lambda t: dict(activation=torch.nn.GELU()), "activation",
      FFN_ALL),
    C("ffn dropout=1.0", lambda t: dict(dropout=1.0), "dropout", RX_FFN),
    C("ffn dropout=-0.1", lambda t: dict(dropout=-0.1), "dropout", RX_FFN),
    C("ffn dropout=nan", lambda t: dict(dropout=float("nan")), "dropout", RX_FFN),
    C("ffn dropout='0.1'", lambda t: dict(dropout="0.1"), "dropout", RX_FFN),
    C("ffn dropout=None", lambda t: dict(dropout=None), "dropout", RX_FFN),
    C("ffn dropout=True", lambda t: dict(dropout=True), "dropout", RX_FFN),
    C("ffn dropout_p=1.0", lambda t: dict(dropout_p=1.0), "dropout_p", OP_FFN),
    C("ffn dropout_p=-0.5", lambda t: dict(dropout_p=-0.5), "dropout_p", OP_FFN),
    C("ffn dropout_p=nan", lambda t: dict(dropout_p=float("nan")), "dropout_p", OP_FFN),
    C("ffn dropout_p=inf", lambda t: dict(dropout_p=float("inf")), "dropout_p", OP_FFN),
    C("ffn dropout_p='a'", lambda t: dict(dropout_p="a"), "dropout_p", OP_FFN),
    C("ffn dropout_seed=1.5", lambda t: dict(dropout_seed=1.5), "dropout_seed", FFN_ALL),
    C("ffn dropout_seed='5'", lambda t: dict(dropout_seed="5"), "dropout_seed", FFN_ALL),
    C("ffn dropout_seed=2**64", lambda t: dict(dropout_seed=2**64), "dropout_seed", OP_FFN),
    C("ffn dropout_seed=5 (an int, op)", lambda t: dict(dropout_seed=5), "dropout_seed", OP_FFN),
    C("ffn dropout_seed int32 tensor",
      lambda t: dict(dropout_seed=torch.tensor(5, dtype=torch.int32)), "dropout_seed", FFN_ALL),
    C("ffn dropout_seed float tensor", lambda t: dict(dropout_seed=torch.tensor(5.0)),
      "dropout_seed", FFN_ALL),
    C("ffn dropout_seed of 2 elements", lambda t: dict(dropout_seed=torch.tensor([5, 6])),
      "dropout_seed", FFN_ALL),
    C("ffn dropout_seed of 0 elements",
      lambda t: dict(dropout_seed=torch.zeros(0, dtype=torch.long)), "dropout_seed", FFN_ALL),
    C("ffn dropout_seed on meta", lambda t: dict(dropout_seed=_meta(torch.tensor(5))),
      "dropout_seed", FFN_ALL),
    C("ffn dropout_seed=None with dropout_p > 0", lambda t: dict(dropout_seed=None),
      "dropout_seed", OP_FFN),
    C("ffn generator='seed'", lambda t: dict(generator="seed", dropout_seed=None), "generator",
      RX_FFN),
    C("ffn generator=0", lambda t: dict(generator=0, dropout_seed=None), "generator", RX_FFN),
    # ---- the backward operator's own arguments
    C("ffn grad_out=list", lambda t: dict(grad_out=t["grad_out"].tolist()), "grad_out", FFN_BW),
    C("ffn grad_out shape (1, 5, d_model)", lambda t: dict(grad_out=t["grad_out"][:1]),
      "grad_out", FFN_BW),
    C("ffn grad_out flattened (10, d_model)",
      lambda t: dict(grad_out=t["grad_out"].reshape(10, DM)), "grad_out", FFN_BW),
    C("ffn grad_out float64", lambda t: dict(grad_out=t["grad_out"].double()), "grad_out",
      FFN_BW),
    C("ffn grad_out on meta", lambda t: dict(grad_out=_meta(t["grad_out"])),
      "grad_out|device", FFN_BW),
    C("ffn output_mask=None", lambda t: dict(output_mask=None), "output_mask", FFN_BW),
    C("ffn output_mask='TTTTT'", lambda t: dict(output_mask="TTTTT"), "output_mask", FFN_BW),
    # Accepted as PyTorch's own message: a list of the wrong length for the schema's bool[5] is
    # rejected while the Python arguments are converted, before any code of this extension runs
    # (the fake kernel included), and that message does not name the argument: "Tried to
    # convert a List with 4 elements to a fixed-size array of size 5". output_mask is the
    # only fixed-size array of the schema, so the size in the message identifies it; naming it
    # would take a schema change (bool[] plus a length check), which this catalogue does not
    # justify.
    C("ffn output_mask of 4", lambda t: dict(output_mask=[True] * 4),
      "List with 4 elements to a fixed-size array of size 5", FFN_BW),
    C("ffn output_mask of 6", lambda t: dict(output_mask=[True] * 6),
      "List with 6 elements to a fixed-size array of size 5", FFN_BW),
    # ---- everything on meta (fake tensors, as under torch.compile): shapes must be checked too
    C("ffn all meta, w1 (d_ff, d_model-1)",
      lambda t: {**{k: _meta(v) for k, v in t.items()}, "w1": _meta(t["w1"][:, :-1])},
      r"\bw1\b", FFN_ALL),
    C("ffn all meta, chunk_size=0",
      lambda t: {**{k: _meta(v) for k, v in t.items()}, "chunk_size": 0},
      "chunk_size", FFN_ALL),
]

# Run in child processes: undefined tensors reach C++ through the schema (None for a required
# Tensor is accepted by the dispatcher), extreme sizes and degenerate shapes.
DANGEROUS += [
    C("ffn x=None", lambda t: dict(x=None), r"\bx\b", FFN_ALL),
    C("ffn w1=None", lambda t: dict(w1=None), r"\bw1\b", FFN_ALL),
    C("ffn w2=None", lambda t: dict(w2=None), r"\bw2\b", FFN_ALL),
    C("ffn grad_out=None", lambda t: dict(grad_out=None), "grad_out", FFN_BW),
    C("ffn chunk_size=-2**63", lambda t: dict(chunk_size=-2**63), "chunk_size", OP_FFN),
    # valid inputs at the edges: any clean outcome, never a crash
    C("ffn chunk_size=2**63-1", lambda t: dict(chunk_size=2**63 - 1), "", OP_FFN,
      expect="no_crash"),
    C("ffn d_ff=0", lambda t: dict(w1=t["w1"][:0], b1=t["b1"][:0], w2=t["w2"][:, :0]), "",
      FFN_ALL, expect="no_crash"),
    C("ffn d_model=0", lambda t: dict(x=t["x"][..., :0], grad_out=t["grad_out"][..., :0],
                                      w1=t["w1"][:, :0], w2=t["w2"][:0], b2=t["b2"][:0]), "",
      FFN_ALL, expect="no_crash"),
    C("ffn zero rows (0, 5, d_model)", lambda t: dict(x=t["x"][:0], grad_out=t["grad_out"][:0]),
      "", FFN_ALL, expect="no_crash"),
    C("ffn stride-0 x, w1 and grad_out (expanded)",
      lambda t: dict(x=t["x"][:1, :1].expand(2, 5, DM), w1=t["w1"][:1].expand(DFF, DM),
                     grad_out=t["grad_out"][:1, :1].expand(2, 5, DM)), "", FFN_ALL,
      expect="no_crash"),
    C("ffn dropout_seed=-2**63", lambda t: dict(dropout_seed=torch.tensor(-2**63)), "", FFN_ALL,
      expect="no_crash"),
    # the functional API end to end with one weight on another device
    C("ffn w1 on meta, then backward", lambda t: dict(w1=_meta(t["w1"])), r"\bw1\b|device",
      ("rx.chunked_feed_forward+backward",)),
]


# ================================================================================== modules
#
# Every reformer_ext.nn module: the constructor ("<Module>()") with each argument bad in turn,
# and forward ("<Module>.forward") on a module built from valid arguments.


MB, ML, MD, VOCAB, MAX_LEN = 2, 10, 8, 11, 16


def _module_inputs():
    g = torch.Generator().manual_seed(2)
    mask = torch.zeros(MB, ML, dtype=torch.bool)
    mask[1, -3:] = True
    return dict(x=torch.randn(MB, ML, MD, generator=g), key_padding_mask=mask, rotations=None,
                dropout_seed=None, tokens=torch.randint(0, VOCAB, (MB, ML), generator=g),
                x1=torch.randn(MB, ML, MD, generator=g).requires_grad_(),
                x2=torch.randn(MB, ML, MD, generator=g).requires_grad_(),
                g_kwargs=None, f_kwargs={})


def _linear_pairs():
    return [(torch.nn.Linear(MD, MD), torch.nn.Linear(MD, MD)) for _ in range(2)]


@dataclass
class ModuleAPI:
    cls: type
    ctor: Callable[[], dict]  # valid constructor arguments (fresh objects on every call)
    positional: tuple  # the constructor arguments passed by position
    forward: Callable  # (module, merged inputs) -> result
    forward_args: tuple


MODULES = {
    "LSHSelfAttention": ModuleAPI(
        rnn.LSHSelfAttention,
        lambda: dict(d_model=MD, n_heads=2, d_head=None, bucket_size=4, n_hashes=2,
                     n_buckets=None, causal=False, n_chunks_before=1, n_chunks_after=0,
                     dropout=0.0, seed=0, fixed_rotations=None, device=None, dtype=None),
        ("d_model", "n_heads"),
        lambda m, a: m(a["x"], a["key_padding_mask"], rotations=a["rotations"]),
        ("x", "key_padding_mask", "rotations")),
    "ChunkedFeedForward": ModuleAPI(
        rnn.ChunkedFeedForward,
        lambda: dict(d_model=MD, d_ff=16, chunk_size=4, activation="gelu", dropout=0.1,
                     bias=True, device=None, dtype=None),
        ("d_model", "d_ff"),
        lambda m, a: m(a["x"], dropout_seed=a["dropout_seed"]),
        ("x", "dropout_seed")),
    "ReversibleSequence": ModuleAPI(
        rnn.ReversibleSequence,
        lambda: dict(blocks=_linear_pairs(), reversible=True, preserve_rng_state=True),
        ("blocks",),
        lambda m, a: m(a["x1"], a["x2"], g_kwargs=a["g_kwargs"], **a["f_kwargs"]),
        ("x1", "x2", "g_kwargs", "f_kwargs")),
    "Reformer": ModuleAPI(
        rnn.Reformer,
        lambda: dict(d_model=MD, depth=1, n_heads=2, d_ff=None, bucket_size=4, n_hashes=2,
                     causal=False, ff_chunk_size=4, dropout=0.0, reversible=True,
                     merge="concat", d_head=None, n_buckets=None, n_chunks_before=1,
                     n_chunks_after=0, activation="gelu", fixed_rotations=None, device=None,
                     dtype=None),
        ("d_model", "depth", "n_heads"),
        lambda m, a: m(a["x"], a["key_padding_mask"]),
        ("x", "key_padding_mask")),
    "ReformerLM": ModuleAPI(
        rnn.ReformerLM,
        lambda: dict(num_tokens=VOCAB, d_model=MD, depth=1, n_heads=2, max_seq_len=MAX_LEN,
                     causal=True, init_std=0.02, device=None, dtype=None, bucket_size=4,
                     n_hashes=2),
        ("num_tokens", "d_model", "depth", "n_heads", "max_seq_len"),
        lambda m, a: m(a["tokens"], a["key_padding_mask"]),
        ("tokens", "key_padding_mask")),
}


def _build(api: ModuleAPI, over=None):
    kw = api.ctor()
    kw.update(over or {})
    args = [kw.pop(k) for k in api.positional]
    return api.cls(*args, **kw)


def _ctor_call(api):
    return lambda t, over: _build(api, over)


def _forward_call(api):
    def call(t, over):
        torch.manual_seed(0)
        a = dict(t)
        a.update(over)
        return api.forward(_build(api), a)
    return call


for _name, _api in MODULES.items():
    CALLS[f"{_name}()"] = _ctor_call(_api)
    CALLS[f"{_name}.forward"] = _forward_call(_api)
    BASE_OF[f"{_name}()"] = dict
    BASE_OF[f"{_name}.forward"] = _module_inputs

ATTN_M, ATTN_F = ("LSHSelfAttention()",), ("LSHSelfAttention.forward",)
FF_M, FF_F = ("ChunkedFeedForward()",), ("ChunkedFeedForward.forward",)
RS_M, RS_F = ("ReversibleSequence()",), ("ReversibleSequence.forward",)
REF_M, REF_F = ("Reformer()",), ("Reformer.forward",)
LM_M, LM_F = ("ReformerLM()",), ("ReformerLM.forward",)
STACK_M = REF_M + LM_M  # constructor arguments the LM passes on to the Reformer

CASES += [
    # ---- LSHSelfAttention constructor
    C("d_model=0", lambda t: dict(d_model=0), "d_model", ATTN_M + FF_M + STACK_M),
    C("d_model=-8", lambda t: dict(d_model=-8), "d_model", ATTN_M + FF_M + STACK_M),
    C("d_model=8.0", lambda t: dict(d_model=8.0), "d_model", ATTN_M + FF_M + STACK_M),
    C("d_model=None", lambda t: dict(d_model=None), "d_model", ATTN_M + REF_M),
    C("n_heads=0", lambda t: dict(n_heads=0), "n_heads", ATTN_M + STACK_M),
    C("n_heads=3 (d_model=8 not divisible)", lambda t: dict(n_heads=3), "n_heads|d_head",
      ATTN_M + STACK_M),
    C("n_heads='2'", lambda t: dict(n_heads="2"), "n_heads", ATTN_M + STACK_M),
    C("d_head=0", lambda t: dict(d_head=0), "d_head", ATTN_M + REF_M),
    C("d_head=4.0", lambda t: dict(d_head=4.0), "d_head", ATTN_M + REF_M),
    C("bucket_size=0 (module)", lambda t: dict(bucket_size=0), "bucket_size",
      ATTN_M + STACK_M),
    C("bucket_size=4.0 (module)", lambda t: dict(bucket_size=4.0), "bucket_size",
      ATTN_M + STACK_M),
    C("n_hashes=0 (module)", lambda t: dict(n_hashes=0), "n_hashes", ATTN_M + STACK_M),
    C("n_hashes=None (module)", lambda t: dict(n_hashes=None), "n_hashes", ATTN_M + STACK_M),
    C("n_buckets=3 (module)", lambda t: dict(n_buckets=3), "n_buckets", ATTN_M + STACK_M),
    C("n_buckets=0 (module)", lambda t: dict(n_buckets=0), "n_buckets", ATTN_M + STACK_M),
    C("n_buckets=[2, 2] (module)", lambda t: dict(n_buckets=[2, 2]), "n_buckets",
      ATTN_M + STACK_M),
    C("causal='no' (module)", lambda t: dict(causal="no"), "causal", ATTN_M + STACK_M),
    C("n_chunks_before=-1 (module)", lambda t: dict(n_chunks_before=-1), "n_chunks_before",
      ATTN_M + STACK_M),
    C("n_chunks_after=1.5 (module)", lambda t: dict(n_chunks_after=1.5), "n_chunks_after",
      ATTN_M + STACK_M),
    C("dropout=1.0 (module)", lambda t: dict(dropout=1.0), "dropout",
      ATTN_M + FF_M + STACK_M),
    C("dropout=-0.1 (module)", lambda t: dict(dropout=-0.1), "dropout",
      ATTN_M + FF_M + STACK_M),
    C("dropout='0.1' (module)", lambda t: dict(dropout="0.1"), "dropout",
      ATTN_M + FF_M + STACK_M),
    C("dropout=None (module)", lambda t: dict(dropout=None), "dropout",
      ATTN_M + FF_M + REF_M),
    C("seed='a'", lambda t: dict(seed="a"), "seed", ATTN_M),
    C("fixed_rotations='yes'", lambda t: dict(fixed_rotations="yes"), "fixed_rotations",
      ATTN_M + STACK_M),
    C("dtype=torch.int64", lambda t: dict(dtype=torch.int64), r"dtype.*int64|int64.*dtype",
      ATTN_M + FF_M + STACK_M),
    C("device='nonsense'", lambda t: dict(device="nonsense"), "device",
      ATTN_M + FF_M + STACK_M),
    # ---- ChunkedFeedForward constructor
    C("d_ff=0", lambda t: dict(d_ff=0), "d_ff", FF_M + STACK_M),
    C("d_ff=-1", lambda t: dict(d_ff=-1), "d_ff", FF_M + STACK_M),
    C("chunk_size=0 (module)", lambda t: dict(chunk_size=0), "chunk_size", FF_M),
    C("chunk_size=4.0 (module)", lambda t: dict(chunk_size=4.0), "chunk_size", FF_M),
    C("activation='tanh' (module)", lambda t: dict(activation="tanh"), "activation",
      FF_M + STACK_M),
    C("activation=None (module)", lambda t: dict(activation=None), "activation",
      FF_M + STACK_M),
    C("bias='yes'", lambda t: dict(bias="yes"), "bias", FF_M),
    # ---- ReversibleSequence constructor
    C("blocks=None", lambda t: dict(blocks=None), "blocks|ReversibleSequence", RS_M),
    C("blocks=[Linear] (not a pair)", lambda t: dict(blocks=[torch.nn.Linear(MD, MD)]),
      "blocks|ReversibleSequence expects", RS_M),
    C("blocks=[(Linear, 'g')]", lambda t: dict(blocks=[(torch.nn.Linear(MD, MD), "g")]),
      "blocks|ReversibleSequence expects", RS_M),
    C("blocks=[(f, g, h)]", lambda t: dict(blocks=[tuple(torch.nn.Linear(MD, MD)
                                                          for _ in range(3))]),
      "blocks|ReversibleSequence expects", RS_M),
    C("reversible='no'", lambda t: dict(reversible="no"), "reversible", RS_M + STACK_M),
    C("preserve_rng_state='no'", lambda t: dict(preserve_rng_state="no"), "preserve_rng_state",
      RS_M),
    # ---- Reformer / ReformerLM constructors
    C("depth=0", lambda t: dict(depth=0), "depth", STACK_M),
    C("depth=2.0", lambda t: dict(depth=2.0), "depth", STACK_M),
    C("ff_chunk_size=0", lambda t: dict(ff_chunk_size=0), "chunk_size", STACK_M),
    C("merge='sum'", lambda t: dict(merge="sum"), "merge", STACK_M),
    C("num_tokens=0", lambda t: dict(num_tokens=0), "num_tokens", LM_M),
    C("num_tokens=11.0", lambda t: dict(num_tokens=11.0), "num_tokens", LM_M),
    C("max_seq_len=0", lambda t: dict(max_seq_len=0), "max_seq_len", LM_M),
    C("max_seq_len=None", lambda t: dict(max_seq_len=None), "max_seq_len", LM_M),
    C("init_std=-1", lambda t: dict(init_std=-1.0), "init_std", LM_M),
    C("init_std='a'", lambda t: dict(init_std="a"), "init_std", LM_M),
    C("unknown keyword foo=1", lambda t: dict(foo=1), "foo", ATTN_M + FF_M + RS_M + STACK_M),
    # ---- forward: x
    C("module x=None", lambda t: dict(x=None), r"\bx\b", ATTN_F + FF_F + REF_F),
    C("module x=list", lambda t: dict(x=t["x"].tolist()), r"\bx\b", ATTN_F + FF_F + REF_F),
    C("module x rank 2", lambda t: dict(x=t["x"][0]), r"\bx\b", ATTN_F + REF_F),
    C("module x rank 0", lambda t: dict(x=t["x"][0, 0, 0]), r"\bx\b", FF_F),
    C("module x last dim d_model-1", lambda t: dict(x=t["x"][..., :-1]), r"\bx\b",
      ATTN_F + FF_F + REF_F),
    C("module x float64 (parameters float32)", lambda t: dict(x=t["x"].double()), r"\bx\b",
      ATTN_F + FF_F + REF_F),
    C("module x int64", lambda t: dict(x=t["x"].long()), r"\bx\b", ATTN_F + FF_F + REF_F),
    C("module x L=0", lambda t: dict(x=t["x"][:, :0], key_padding_mask=None), r"\bx\b",
      ATTN_F + REF_F),
    C("module x on meta", lambda t: dict(x=_meta(t["x"]), key_padding_mask=None),
      r"\bx\b", ATTN_F + FF_F + REF_F),
    # ---- forward: key_padding_mask
    C("module mask float32", lambda t: dict(key_padding_mask=t["key_padding_mask"].float()),
      MASK, ATTN_F + REF_F + LM_F),
    C("module mask (B, L-1)", lambda t: dict(key_padding_mask=t["key_padding_mask"][:, :-1]),
      MASK, ATTN_F + REF_F + LM_F),
    C("module mask (1, L)", lambda t: dict(key_padding_mask=t["key_padding_mask"][:1]),
      MASK, ATTN_F + REF_F + LM_F),
    C("module mask rank 3", lambda t: dict(key_padding_mask=t["key_padding_mask"][None]),
      MASK, ATTN_F + REF_F + LM_F),
    C("module mask=list", lambda t: dict(key_padding_mask=t["key_padding_mask"].tolist()),
      MASK, ATTN_F + REF_F + LM_F),
    C("module mask on meta", lambda t: dict(key_padding_mask=_meta(t["key_padding_mask"])),
      MASK + "|device", ATTN_F + REF_F + LM_F),
    # ---- forward: rotations (LSHSelfAttention), dropout_seed (ChunkedFeedForward)
    C("module rotations=list", lambda t: dict(rotations=[1.0]), ROT, ATTN_F),
    C("module rotations d_head-1", lambda t: dict(rotations=torch.randn(2, 3, 2, 1)), ROT,
      ATTN_F),
    C("module rotations n_hashes 0", lambda t: dict(rotations=torch.randn(2, 4, 0, 1)), ROT,
      ATTN_F),
    C("module rotations heads 3 of 2", lambda t: dict(rotations=torch.randn(3, 4, 2, 1)), ROT,
      ATTN_F),
    C("module dropout_seed=1.5", lambda t: dict(dropout_seed=1.5), "dropout_seed", FF_F),
    C("module dropout_seed='5'", lambda t: dict(dropout_seed="5"), "dropout_seed", FF_F),
    # ---- forward: ReversibleSequence
    C("x1=None", lambda t: dict(x1=None), "x1", RS_F),
    C("x2=list", lambda t: dict(x2=t["x2"].tolist()), "x2", RS_F),
    C("x2 shape (B, L-1, d)", lambda t: dict(x2=t["x2"][:, :-1]), "x2", RS_F),
    C("x2 float64 (x1 float32)", lambda t: dict(x2=t["x2"].double()), "x2", RS_F),
    C("x2 on meta", lambda t: dict(x2=_meta(t["x2"])), "x2", RS_F),
    C("g_kwargs='a'", lambda t: dict(g_kwargs="a"), "g_kwargs", RS_F),
    C("g_kwargs tensor requiring grad", lambda t: dict(g_kwargs=dict(
        w=torch.ones(1, requires_grad=True))), "g_kwargs|g argument", RS_F),
    C("f_kwargs tensor requiring grad", lambda t: dict(f_kwargs=dict(
        w=torch.ones(1, requires_grad=True))), "f argument|f_kwargs", RS_F),
    C("f_kwargs unknown to f (foo=1)", lambda t: dict(f_kwargs=dict(foo=1)), "foo", RS_F),
    # ---- forward: ReformerLM tokens
    C("tokens=None", lambda t: dict(tokens=None), "tokens", LM_F),
    C("tokens rank 1", lambda t: dict(tokens=t["tokens"][0]), "tokens", LM_F),
    C("tokens rank 3", lambda t: dict(tokens=t["tokens"][..., None]), "tokens", LM_F),
    C("tokens float32", lambda t: dict(tokens=t["tokens"].float()), "tokens", LM_F),
    C("tokens bool", lambda t: dict(tokens=t["tokens"] > 3), "tokens", LM_F),
    C("tokens = num_tokens", lambda t: dict(tokens=torch.full_like(t["tokens"], VOCAB)),
      "tokens|num_tokens", LM_F),
    C("tokens = -1", lambda t: dict(tokens=torch.full_like(t["tokens"], -1)),
      "tokens|num_tokens", LM_F),
    C("tokens L=0", lambda t: dict(tokens=t["tokens"][:, :0], key_padding_mask=None),
      "tokens", LM_F),
    C("tokens L = max_seq_len+1",
      lambda t: dict(tokens=torch.zeros(MB, MAX_LEN + 1, dtype=torch.long),
                     key_padding_mask=None), "max_seq_len", LM_F),
]


def _params(cases):
    out = []
    for case in cases:
        for entry in case.entries:
            marks = []
            if entry in case.bugs:
                marks.append(pytest.mark.xfail(strict=True, reason=case.bugs[entry]))
            out.append(pytest.param(entry, case, id=f"{entry}:{case.name}", marks=marks))
    return out


def outcome(entry: str, case: Case) -> str:
    """Runs one bad call; returns 'clear: ...', 'unclear: ...' or 'no error: ...'."""
    t = BASE_OF[entry]()
    try:
        result = CALLS[entry](t, case.make(t))
    except ERRORS as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        kind = "clear" if re.search(case.match, msg) else "unclear"
        return f"{kind}: {type(e).__name__}: {msg}"
    except Exception as e:  # noqa: BLE001 - an exception of another type is a finding too
        return f"unclear: {type(e).__name__}: {e}"
    res = result if isinstance(result, tuple) else (result,)
    desc = ", ".join(f"{tuple(r.shape)} {r.dtype} on {r.device}" if isinstance(r, torch.Tensor)
                     else repr(r) for r in res)
    return f"no error: returned {desc}"


def _check(case: Case, result: str):
    if case.expect == "no_crash":
        assert not result.startswith(("crash", "unclear")), result
    else:
        assert result.startswith("clear"), (
            f"expected an error matching {case.match!r}, got {result}")


# ------------------------------------------------------------------------- in-process tests


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
@pytest.mark.parametrize("entry,case", _params(CASES))
def test_bad_input(entry, case):
    _check(case, outcome(entry, case))


# ----------------------------------------------------------------------- child-process tests

_CHILD = r"""
import sys
sys.path.insert(0, {tests!r})
import test_errors
test_errors._child_main(sys.argv[1:])
"""


def _child_main(keys):
    """In a child process that has imported torch but run no operator yet (so no OpenMP
    threads exist and fork is safe): runs each `entry|case` key in its own forked process and
    prints one JSON object, key -> result. A case killed by a signal is reported as a crash."""
    cases = {c.name: c for c in DANGEROUS}
    results = {}
    for key in keys:
        entry, name = key.split("|", 1)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the case runs here
            os.close(read_end)
            try:
                res = outcome(entry, cases[name])
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


def _run_children(keys):
    """key -> result for the DANGEROUS keys, each run in a process of its own."""
    code = _CHILD.format(tests=os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-c", code, *keys], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, f"the case runner failed ({proc.returncode}): {proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def child_results():
    keys = [f"{e}|{c.name}" for c in DANGEROUS for e in c.entries]
    return _run_children(keys)


@pytest.mark.parametrize("entry,case", _params(DANGEROUS))
def test_bad_input_in_child_process(entry, case, child_results):
    _check(case, child_results[f"{entry}|{case.name}"])


@pytest.mark.parametrize("shape", [(0, H, L, D), (B, 0, L, D)], ids=["B=0", "H=0"])
def test_empty_batch_or_heads_are_valid(shape):
    """Zero batch or heads is not an error (as for torch's own ops): empty results, and the
    backward runs."""
    qk = torch.randn(shape, requires_grad=True)
    v = torch.randn(*shape[:3], DV, requires_grad=True)
    rot = torch.randn(max(shape[1], 1), D, R, HALF)
    out, lse = rx.lsh_attention(qk, v, rotations=rot, bucket_size=M, return_lse=True)
    assert out.shape == v.shape and lse.shape == shape[:3]
    assert rx.lsh_buckets(qk, rot).shape == (shape[0], shape[1], R, L)
    (out.sum() + lse.sum()).backward()
    assert qk.grad.shape == qk.shape and v.grad.shape == v.shape


def test_catalogue_is_exhaustive():
    """Every argument of every entry point has at least one bad-input case, and every public
    module has constructor and forward cases."""
    args = {
        "rx.lsh_attention": {"qk", "v", "rotations", "key_padding_mask", *_ATTN_KW},
        "ops.lsh_attention": set(_OP_ATTN),
        "rx.lsh_buckets": {"qk", "rotations", "key_padding_mask"},
        "ops.lsh_buckets": {"qk", "rotations", "key_padding_mask"},
        "rx.random_rotations": {"qk", "n_hashes", "n_buckets", "generator"},
        "ops.lsh_attention_backward": set(_OP_BW),
        "rx.chunked_feed_forward": {"x", "w1", "b1", "w2", "b2", *_FFN_KW},
        "ops.chunked_ffn": set(_OP_FFN),
        "ops.chunked_ffn_backward": set(_OP_FFN_BW),
    }
    for name, api in MODULES.items():
        args[f"{name}()"] = set(api.ctor())
        args[f"{name}.forward"] = set(api.forward_args)
    # Every public name of reformer_ext and reformer_ext.nn is catalogued or listed here.
    not_catalogued = {
        "ReversibleBlock",  # the pair (f, g) inside ReversibleSequence: no checks of its own
        # landed while this catalogue was extended (drop-in for nn.MultiheadAttention): TODO
        "SequenceFirstLSHAttention", "replace_attention",
    }
    # What the build holds: no tensor arguments; require_device's errors are in test_build.py.
    build_queries = {"default_device", "has_cuda_kernels", "require_device"}
    public_fns = {n for n in rx.__all__ if n != "nn"} - build_queries
    assert public_fns <= {e.split(".", 1)[1] for e in args if e.startswith("rx.")}, \
        "a public function has no catalogue entry"
    missing_modules = set(rnn.__all__) - set(MODULES) - not_catalogued
    assert not missing_modules, f"public modules without a catalogue entry: {missing_modules}"
    covered = {e: set() for e in args}
    bases = {f: f() for f in set(BASE_OF.values())}
    for case in CASES + DANGEROUS:
        for entry in case.entries:
            if entry in covered:
                covered[entry] |= set(case.make(bases[BASE_OF[entry]]))
    # The LM passes these on to the Reformer (tested there and through the LM's own cases).
    covered["ReformerLM()"] |= {"bucket_size", "n_hashes"}
    missing = {e: sorted(args[e] - covered[e]) for e in args if args[e] - covered[e]}
    assert not missing, f"arguments without a bad-input case: {missing}"


# ------------------------------------------------------------------------ the bad-input note


def _split(result: str):
    """'clear: ValueError: msg' -> ('clear', 'ValueError', 'msg'); crash/no-error lines keep
    their text as the message."""
    kind, _, rest = result.partition(": ")
    if kind in ("clear", "unclear") and ": " in rest:
        exc, _, msg = rest.partition(": ")
        if re.fullmatch(r"[A-Za-z_][\w.]*", exc):
            return kind, exc, msg
    return kind, "-", rest


def _markdown(rows) -> str:
    def cell(text, limit=160):
        text = " ".join(str(text).split())
        text = text if len(text) <= limit else text[:limit - 1] + "…"
        return text.replace("|", "\\|")

    lines = ["| entry point | bad input | argument(s) | outcome | exception | message (excerpt) "
             "| status |", "|---|---|---|---|---|---|---|"]
    for entry, case, result, child in rows:
        kind, exc, msg = _split(result)
        arg = ", ".join(sorted(case.make(BASE_OF[entry]())))
        status = (f"KNOWN BUG (xfail): {case.bugs[entry]}" if entry in case.bugs
                  else "ok" if (kind == "clear" or (case.expect == "no_crash"
                                                    and kind not in ("crash", "unclear")))
                  else "FAILS")
        where = " (child process)" if child else ""
        lines.append(f"| {cell(entry)} | {cell(case.name + where)} | {cell(arg)} | {kind} | "
                     f"{exc} | {cell(msg)} | {cell(status, 400)} |")
    return "\n".join(lines)


def main(argv=None):  # pragma: no cover - writes the catalogue for the issue note
    """python tests/test_errors.py [--markdown PATH]: every bad input and what it got."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--markdown", help="write the Markdown table here (default: stdout)")
    opts = parser.parse_args(argv)
    keys = [f"{e}|{c.name}" for c in DANGEROUS for e in c.entries]
    children = _run_children(keys)  # first: the child must fork before any operator ran here
    dangerous = {c.name: c for c in DANGEROUS}
    rows = [(e, c, outcome(e, c), False) for c in CASES for e in c.entries]
    for key, res in children.items():
        entry, name = key.split("|", 1)
        rows.append((entry, dangerous[name], res, True))
    counts = {}
    for entry, case, result, _ in rows:
        bug = entry in case.bugs
        counts["known bug (xfail)" if bug else result.split(":")[0]] = counts.get(
            "known bug (xfail)" if bug else result.split(":")[0], 0) + 1
    text = "\n".join([
        "# Bad inputs tried and what they got",
        "",
        "Generated by `python tests/test_errors.py --markdown <this file>` from the catalogue in "
        "tests/test_errors.py (CASES run in-process, DANGEROUS each in a forked child process).",
        "outcome: clear = ValueError/TypeError/RuntimeError whose message names the argument; "
        "unclear = another exception type, or a message not naming it; no error = returned "
        "normally; crash = the process died. status: ok, or the known bug the case is marked "
        "xfail(strict=True) for, or FAILS (an unmarked failure).",
        "",
        "Totals: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ".",
        "",
        _markdown(rows),
    ])
    if opts.markdown:
        with open(opts.markdown, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()

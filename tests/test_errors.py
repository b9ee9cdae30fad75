"""Catalogue of bad inputs (issue 8, item 1) for the LSH attention API.

Every public function (rx.lsh_attention, rx.lsh_buckets, rx.random_rotations) and every operator
(torch.ops.reformer.lsh_buckets / lsh_attention / lsh_attention_backward) gets, argument by
argument: wrong rank, shape, dtype and device (meta as the mismatching device, since CI has no
GPU), zero/negative sizes, non-tensors where a tensor is expected, floats/bools/None where an int
is expected, and out-of-range options. Each call must raise ValueError, TypeError or RuntimeError
whose message names the argument.

The calls that could take the process down (bad sorted_positions / softmax_stats handed to the
backward, integer overflow in the options, a forward on mixed devices followed by its backward)
run in a child process, each case forked off on its own; a case killed by a signal is reported
as a crash.

Cases marked xfail(strict=True) are known product bugs: the lead removes the mark with the fix.
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
    t = _base()
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
    """Every argument of every entry point has at least one bad-input case."""
    args = {
        "rx.lsh_attention": {"qk", "v", "rotations", "key_padding_mask", *_ATTN_KW},
        "ops.lsh_attention": set(_OP_ATTN),
        "rx.lsh_buckets": {"qk", "rotations", "key_padding_mask"},
        "ops.lsh_buckets": {"qk", "rotations", "key_padding_mask"},
        "rx.random_rotations": {"qk", "n_hashes", "n_buckets", "generator"},
        "ops.lsh_attention_backward": set(_OP_BW),
    }
    t = _base()
    covered = {e: set() for e in args}
    for case in CASES + DANGEROUS:
        for entry in case.entries:
            if entry in covered:
                covered[entry] |= set(case.make(t))
    missing = {e: sorted(args[e] - covered[e]) for e in args if args[e] - covered[e]}
    assert not missing, f"arguments without a bad-input case: {missing}"


def main():  # pragma: no cover - prints the catalogue for the issue note
    """python tests/test_errors.py: every bad input and what it got, as a table."""
    for case in CASES:
        for entry in case.entries:
            print(f"| {entry} | {case.name} | {outcome(entry, case)} |")
    keys = [f"{e}|{c.name}" for c in DANGEROUS for e in c.entries]
    for key, res in _run_children(keys).items():
        entry, name = key.split("|", 1)
        print(f"| {entry} | {name} (child process) | {res} |")


if __name__ == "__main__":
    main()

"""Bad inputs of the LSH attention functions and operators: rx.lsh_attention, rx.lsh_buckets,
rx.random_rotations and torch.ops.reformer.lsh_buckets / lsh_attention / lsh_attention_backward.

The catalogue (CATALOGUE; its machinery in tests/_helpers.py, its completeness checked in
tests/test_errors_catalogue.py) gets, argument by argument: wrong rank, shape, dtype and device
(meta as the mismatching device, since CI has no GPU), zero/negative sizes, non-tensors where a
tensor is expected, floats/bools/None where an int is expected, and out-of-range options. Each
call must raise ValueError, TypeError or RuntimeError whose message names the argument (the
case's `match` regex).

The calls that could take the process down (bad sorted_positions / softmax_stats handed to the
backward, integer overflow in the options, a forward on mixed devices followed by its backward)
run in a child process, each case forked off on its own; a case killed by a signal is reported
as a crash.

Cases marked xfail(strict=True) (a case's `bugs`) are known product bugs: the lead removes the
mark with the fix. Then the error messages of the functional API and the operator for the
common mistakes, and a device mismatch on CUDA.
"""

import pytest
import torch

import reformer_ext as rx

from _helpers import MASK, QK, ROT, V, C, Catalogue, cuda, ops, to_meta

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
    t = dict(qk=qk, v=v, rotations=rot, key_padding_mask=mask, bucket_factors=[])
    out, lse, sp, st = ops.lsh_attention(qk, v, rot, mask, M, False, 1, 0, 1.0)
    t.update(out=out, lse=lse, sorted_positions=sp, softmax_stats=st,
             grad_out=torch.randn(out.shape, generator=g),
             grad_lse=torch.randn(lse.shape, generator=g))
    return t


# ------------------------------------------------------------------------------ entry points

_ATTN_KW = dict(n_hashes=R, bucket_size=M, n_buckets=2 * HALF, causal=False, generator=None,
                n_chunks_before=1, n_chunks_after=0, scale=1.0, return_lse=False, dropout=0.0,
                dropout_seed=None)
_OP_ATTN = ("qk", "v", "rotations", "key_padding_mask", "bucket_size", "causal",
            "n_chunks_before", "n_chunks_after", "scale", "bucket_factors", "dropout_p",
            "dropout_seed")
_OP_BW = ("grad_out", "grad_lse", "qk", "v", "out", "softmax_stats", "sorted_positions",
          "key_padding_mask", "bucket_size", "causal", "n_chunks_before", "n_chunks_after",
          "scale", "dropout_p", "dropout_seed")


def _merged(t, over):
    a = dict(t)
    a.update(_ATTN_KW)
    a["dropout_p"] = 0.0
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
    return rx.lsh_buckets(a["qk"], a["rotations"], a["key_padding_mask"],
                          bucket_factors=a["bucket_factors"])


def _call_op_buckets(t, over):
    a = _merged(t, over)
    return ops.lsh_buckets(a["qk"], a["rotations"], a["key_padding_mask"], a["bucket_factors"])


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


CATALOGUE = Catalogue(calls={
    "rx.lsh_attention": _call_rx_attention,
    "ops.lsh_attention": _call_op_attention,
    "rx.lsh_buckets": _call_rx_buckets,
    "ops.lsh_buckets": _call_op_buckets,
    "rx.random_rotations": _call_rx_rotations,
    "ops.lsh_attention_backward": _call_op_backward,
    "rx.lsh_attention+backward": _call_rx_attention_backward,
}, base_of={}, args={
    "rx.lsh_attention": {"qk", "v", "rotations", "key_padding_mask", *_ATTN_KW},
    "ops.lsh_attention": set(_OP_ATTN),
    "rx.lsh_buckets": {"qk", "rotations", "key_padding_mask", "bucket_factors"},
    "ops.lsh_buckets": {"qk", "rotations", "key_padding_mask", "bucket_factors"},
    "rx.random_rotations": {"qk", "n_hashes", "n_buckets", "generator"},
    "ops.lsh_attention_backward": set(_OP_BW),
})
CATALOGUE.base_of.update({e: _base for e in CATALOGUE.calls})
ATTN = ("rx.lsh_attention", "ops.lsh_attention")
HASH = ("rx.lsh_buckets", "ops.lsh_buckets")
ALL_FWD = ATTN + HASH
BW = ("ops.lsh_attention_backward",)


# --------------------------------------------------------------------------------- catalogue

CATALOGUE.cases += [
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
    C("qk on meta", lambda t: dict(qk=to_meta(t["qk"])), QK + "|device", ALL_FWD),
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
    C("v on meta", lambda t: dict(v=to_meta(t["v"])), V + "|device", ATTN),
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
    C("rotations on meta", lambda t: dict(rotations=to_meta(t["rotations"])), ROT + "|device",
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
    C("mask on meta", lambda t: dict(key_padding_mask=to_meta(t["key_padding_mask"])),
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
    # n_buckets as a list of factors (factorised buckets)
    C("n_buckets=[2, 3] (odd factor)", lambda t: dict(n_buckets=[2, 3], rotations=None),
      "n_buckets.*even", ("rx.lsh_attention", "rx.random_rotations")),
    C("n_buckets=[] (no factor)", lambda t: dict(n_buckets=[], rotations=None),
      "n_buckets", ("rx.lsh_attention", "rx.random_rotations")),
    C("n_buckets=[0, 4]", lambda t: dict(n_buckets=[0, 4], rotations=None), "n_buckets",
      ("rx.lsh_attention", "rx.random_rotations")),
    C("n_buckets=[2.0, 4]", lambda t: dict(n_buckets=[2.0, 4], rotations=None), "n_buckets",
      ("rx.lsh_attention", "rx.random_rotations")),
    C("n_buckets=[2] * 9 (too many factors)", lambda t: dict(n_buckets=[2] * 9, rotations=None),
      "n_buckets", ("rx.lsh_attention", "rx.random_rotations")),
    C("n_buckets=[65536, 65536] (prod >= 2^31)",
      lambda t: dict(n_buckets=[65536, 65536], rotations=None), "n_buckets",
      ("rx.lsh_attention", "rx.random_rotations")),
    C("n_buckets=[2, 4] vs rotations of 2 columns", lambda t: dict(n_buckets=[2, 4]),
      "n_buckets", ("rx.lsh_attention",)),
    # ---- bucket_factors (the operators; rx.lsh_buckets' keyword)
    C("bucket_factors=[2, 4] (sum / 2 != rotations' 2 columns)",
      lambda t: dict(bucket_factors=[2, 4]), "bucket_factors.*sum.*got \\[2, 4\\]",
      ("ops.lsh_attention",) + HASH),
    C("bucket_factors=[1, 3] (odd)", lambda t: dict(bucket_factors=[1, 3]),
      "bucket_factors.*even", ("ops.lsh_attention", "ops.lsh_buckets")),
    C("bucket_factors=[0, 4]", lambda t: dict(bucket_factors=[0, 4]), "bucket_factors",
      ("ops.lsh_attention",) + HASH),
    C("bucket_factors=[-2, 6]", lambda t: dict(bucket_factors=[-2, 6]), "bucket_factors",
      ("ops.lsh_attention",) + HASH),
    C("bucket_factors=[2] * 9", lambda t: dict(bucket_factors=[2] * 9),
      "bucket_factors.*at most 8", ("ops.lsh_attention",) + HASH),
    C("bucket_factors=[65536, 65536] (prod >= 2^31)",
      lambda t: dict(bucket_factors=[65536, 65536]), "bucket_factors.*2\\^31",
      ("ops.lsh_attention",) + HASH),
    C("bucket_factors=4 (not a list)", lambda t: dict(bucket_factors=4), "bucket_factors",
      ("rx.lsh_buckets",)),
    C("bucket_factors=[2.0, 2]", lambda t: dict(bucket_factors=[2.0, 2]), "bucket_factors",
      ("rx.lsh_buckets",)),
    C("bucket_factors=[2, 4] on meta (fake kernel)",
      lambda t: dict(qk=to_meta(t["qk"]), v=to_meta(t["v"]), rotations=to_meta(t["rotations"]),
                     key_padding_mask=to_meta(t["key_padding_mask"]), bucket_factors=[2, 4]),
      "bucket_factors.*sum", ("ops.lsh_attention", "ops.lsh_buckets")),
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
    # ---- attention dropout
    C("dropout=1.0", lambda t: dict(dropout=1.0), "dropout", ("rx.lsh_attention",)),
    C("dropout=None", lambda t: dict(dropout=None), "dropout", ("rx.lsh_attention",)),
    C("dropout_seed='a'", lambda t: dict(dropout=0.1, dropout_seed="a"), "dropout_seed",
      ("rx.lsh_attention",)),
    C("dropout_seed int32 tensor",
      lambda t: dict(dropout=0.1, dropout_seed=torch.tensor(1, dtype=torch.int32)),
      "dropout_seed", ("rx.lsh_attention",)),
    C("dropout_p=1.0", lambda t: dict(dropout_p=1.0, dropout_seed=torch.tensor(1)), "dropout_p",
      ("ops.lsh_attention",) + BW),
    C("dropout_p=-0.1", lambda t: dict(dropout_p=-0.1), "dropout_p",
      ("ops.lsh_attention",) + BW),
    C("dropout_p=None", lambda t: dict(dropout_p=None), "dropout_p",
      ("ops.lsh_attention",) + BW),
    C("dropout_p > 0 without dropout_seed", lambda t: dict(dropout_p=0.2), "dropout_seed",
      ("ops.lsh_attention",) + BW),
    C("dropout_seed float64", lambda t: dict(dropout_p=0.2, dropout_seed=torch.tensor(1.0)),
      "dropout_seed", ("ops.lsh_attention",) + BW),
    C("dropout_seed two elements",
      lambda t: dict(dropout_p=0.2, dropout_seed=torch.tensor([1, 2])), "dropout_seed",
      ("ops.lsh_attention",) + BW),
    C("dropout_seed on meta",
      lambda t: dict(dropout_p=0.2, dropout_seed=to_meta(torch.tensor(1))), "dropout_seed",
      ("ops.lsh_attention",) + BW),
    C("dropout_seed=int (operator)", lambda t: dict(dropout_p=0.2, dropout_seed=3),
      "dropout_seed", ("ops.lsh_attention",) + BW),
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
    C("grad_out on meta", lambda t: dict(grad_out=to_meta(t["grad_out"])), "grad_out|device", BW),
    C("grad_lse shape (B,L)", lambda t: dict(grad_lse=t["grad_lse"][0]), "grad_lse", BW),
    C("grad_lse float64", lambda t: dict(grad_lse=t["grad_lse"].double()), "grad_lse", BW),
    C("grad_lse float16", lambda t: dict(grad_lse=t["grad_lse"].half()), "grad_lse", BW),
    C("grad_lse=list", lambda t: dict(grad_lse=[0.0]), "grad_lse", BW),
    C("grad_lse on meta", lambda t: dict(grad_lse=to_meta(t["grad_lse"])), "grad_lse|device", BW),
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
_META = {k: (lambda k: lambda t: to_meta(t[k]))(k) for k in ("qk", "v", "rotations",
                                                            "key_padding_mask")}


def _all_meta(**bad):
    def make(t):
        over = {k: f(t) for k, f in _META.items()}
        over.update({k: f(t) for k, f in bad.items()})
        return over
    return make


CATALOGUE.cases += [
    C("all meta, v length L-1", _all_meta(v=lambda t: to_meta(t["v"][:, :, :-1])), V, ATTN),
    C("all meta, rotations D-1", _all_meta(rotations=lambda t: to_meta(t["rotations"][:, :-1])),
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
CATALOGUE.dangerous += [
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
    C("sorted_positions on meta", lambda t: dict(sorted_positions=to_meta(t[SP])),
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
    C("softmax_stats on meta", lambda t: dict(softmax_stats=to_meta(t[ST])), ST + "|device", BW),
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
    C("rotations on meta, then backward", lambda t: dict(rotations=to_meta(t["rotations"])),
      ROT + "|device", ("rx.lsh_attention+backward",)),
    C("mask on meta, then backward", lambda t: dict(key_padding_mask=to_meta(t[MASK])),
      MASK + "|device", ("rx.lsh_attention+backward",)),
]


# ------------------------------------------------------------------------------ the tests

# Each case in this process, test_bad_input[entry:case]; each dangerous case in a child
# process, test_bad_input_in_child_process[entry:case].
test_bad_input = CATALOGUE.in_process_test()
child_results, test_bad_input_in_child_process = CATALOGUE.child_process_tests(__name__)


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


# ------------------------------------------- error messages of the function and the operator

_B, _H, _L, _D, _R, _HALF = 2, 2, 10, 8, 2, 2


def _err_base():
    g = torch.Generator().manual_seed(0)
    qk = torch.randn(_B, _H, _L, _D, generator=g)
    v = torch.randn(_B, _H, _L, _D, generator=g)
    rot = torch.randn(_H, _D, _R, _HALF, generator=g)
    mask = torch.zeros(_B, _L, dtype=torch.bool)
    return qk, v, rot, mask


def _bad(name):
    """(overrides, regex naming the argument) for each kind of bad input."""
    qk, v, rot, mask = _err_base()
    table = {
        "qk_ndim": (dict(qk=qk[0]), "qk"),
        "qk_int": (dict(qk=qk.long(), v=v.long()), "qk"),
        "v_length": (dict(v=v[:, :, :-1]), r"\bv\b"),
        "v_batch": (dict(v=v[:1]), r"\bv\b"),
        "v_ndim": (dict(v=v[0]), r"\bv\b"),
        "v_dtype": (dict(v=v.double()), r"qk|\bv\b"),
        "rot_D": (dict(rotations=rot[:, :-1]), "rotations"),
        "rot_Hr": (dict(rotations=torch.randn(3, _D, _R, _HALF)), "rotations"),
        "rot_ndim": (dict(rotations=rot[0]), "rotations"),
        "bucket_size": (dict(bucket_size=0), "bucket_size"),
        "mask_shape": (dict(key_padding_mask=torch.zeros(_B, _L + 1, dtype=torch.bool)),
                       "key_padding_mask"),
        "mask_dtype": (dict(key_padding_mask=torch.zeros(_B, _L)), "key_padding_mask"),
        "before": (dict(n_chunks_before=-1), "n_chunks_before"),
        "after": (dict(n_chunks_after=-1), "n_chunks_after"),
        # Only meaningful through rx.lsh_attention (the operator takes them from rotations).
        "n_buckets_odd": (dict(rotations=None, n_buckets=3), "n_buckets"),
        "n_buckets_small": (dict(rotations=None, n_buckets=0), "n_buckets"),
        "n_hashes": (dict(rotations=None, n_hashes=0), "n_hashes"),
        # Only through the operator: rotations with no buckets or no rounds.
        "rot_no_buckets": (dict(rotations=rot[..., :0]), "rotations"),
        "rot_no_rounds": (dict(rotations=rot[:, :, :0]), "rotations"),
    }
    return table[name]


COMMON_ERRORS = ["qk_ndim", "qk_int", "v_length", "v_batch", "v_ndim", "v_dtype", "rot_D",
                 "rot_Hr", "rot_ndim", "bucket_size", "mask_shape", "mask_dtype", "before",
                 "after"]


@pytest.mark.parametrize("name", COMMON_ERRORS + ["n_buckets_odd", "n_buckets_small",
                                                  "n_hashes"])
def test_errors_functional(name):
    qk, v, rot, mask = _err_base()
    kw = dict(qk=qk, v=v, n_hashes=_R, bucket_size=4, n_buckets=2 * _HALF, rotations=rot,
              key_padding_mask=mask, n_chunks_before=1, n_chunks_after=0)
    over, match = _bad(name)
    kw.update(over)
    qk, v = kw.pop("qk"), kw.pop("v")
    with pytest.raises((ValueError, RuntimeError), match=match):
        rx.lsh_attention(qk, v, **kw)


@pytest.mark.parametrize("name", COMMON_ERRORS + ["rot_no_buckets", "rot_no_rounds"])
def test_errors_operator(name):
    qk, v, rot, mask = _err_base()
    kw = dict(qk=qk, v=v, rotations=rot, key_padding_mask=mask, bucket_size=4,
              n_chunks_before=1, n_chunks_after=0)
    over, match = _bad(name)
    kw.update(over)
    with pytest.raises((ValueError, RuntimeError), match=match):
        ops.lsh_attention(kw["qk"], kw["v"], kw["rotations"], kw["key_padding_mask"],
                          kw["bucket_size"], False, kw["n_chunks_before"], kw["n_chunks_after"],
                          1.0)


@pytest.mark.parametrize("name", ["qk_ndim", "rot_D", "rot_Hr", "rot_ndim", "mask_shape",
                                  "mask_dtype"])
@pytest.mark.parametrize("entry", ["functional", "operator"])
def test_errors_buckets(name, entry):
    qk, _, rot, mask = _err_base()
    kw = dict(qk=qk, rotations=rot, key_padding_mask=mask)
    over, match = _bad(name)
    kw.update(over)
    fn = rx.lsh_buckets if entry == "functional" else ops.lsh_buckets
    with pytest.raises((ValueError, RuntimeError), match=match):
        fn(kw["qk"], kw["rotations"], kw["key_padding_mask"])


# ------------------------------------------------------------------------------ CUDA


@cuda
def test_cuda_device_mismatch_is_an_error():
    qk, v, rot, mask = _err_base()
    with pytest.raises((ValueError, RuntimeError), match=r"\bv\b|device"):
        rx.lsh_attention(qk.cuda(), v, n_hashes=_R, bucket_size=4, n_buckets=2 * _HALF,
                         rotations=rot.cuda())
    with pytest.raises((ValueError, RuntimeError), match="key_padding_mask|device"):
        rx.lsh_attention(qk.cuda(), v.cuda(), n_hashes=_R, bucket_size=4, n_buckets=2 * _HALF,
                         rotations=rot.cuda(), key_padding_mask=mask)

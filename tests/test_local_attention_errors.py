"""Bad inputs of the local attention function, operators and module: rx.local_attention,
torch.ops.reformer.local_attention / local_attention_backward, rx.nn.LocalSelfAttention's
constructor and forward.

The catalogue (CATALOGUE; its machinery in tests/_helpers.py, its completeness checked in
tests/test_errors_catalogue.py) gets, argument by argument: wrong rank, shape, dtype and device
(meta as the mismatching device), zero sizes, non-tensors where a tensor is expected,
floats/bools/None where an int is expected, and out-of-range options. Each call must raise
ValueError, TypeError or RuntimeError whose message names the argument. The calls that could
take the process down (bad softmax_stats handed to the backward, integer overflow in the
options) run in a child process.
"""

import pytest
import torch

import reformer_ext as rx
import reformer_ext.nn as rnn

from _helpers import MASK, C, Catalogue, ops, to_meta
from test_nn_errors import ModuleAPI, add_modules

B, H, L, D, DV, M = 2, 2, 10, 8, 6, 4
Q, K, V = r"\bq\b", r"\bk\b", r"\bv\b"


def _base():
    """Valid inputs: every case replaces one of them."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, L, D, generator=g)
    k = torch.randn(B, H, L, D, generator=g)
    v = torch.randn(B, H, L, DV, generator=g)
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[1, -3:] = True
    out, lse, st = ops.local_attention(q, k, v, mask, M, False, 1, 0, 0.5)
    return dict(q=q, k=k, v=v, key_padding_mask=mask, out=out, lse=lse, softmax_stats=st,
                grad_out=torch.randn(out.shape, generator=g),
                grad_lse=torch.randn(lse.shape, generator=g))


_KW = dict(chunk_length=M, causal=False, n_chunks_before=1, n_chunks_after=0, scale=None,
           return_lse=False, dropout=0.0, dropout_seed=None)
_OP = ("q", "k", "v", "key_padding_mask", "chunk_length", "causal", "n_chunks_before",
       "n_chunks_after", "scale", "dropout_p", "dropout_seed")
_OP_BW = ("grad_out", "grad_lse", "q", "k", "v", "out", "softmax_stats", "key_padding_mask",
          "chunk_length", "causal", "n_chunks_before", "n_chunks_after", "scale", "dropout_p",
          "dropout_seed")


def _merged(t, over, op=False):
    a = dict(t)
    a.update(_KW)
    if op:
        a["scale"] = 0.5
        a["dropout_p"] = 0.0
    a.update(over)
    return a


def _call_rx(t, over):
    a = _merged(t, over)
    return rx.local_attention(a["q"], a["k"], a["v"], key_padding_mask=a["key_padding_mask"],
                              **{k: a[k] for k in _KW})


def _call_op(t, over):
    a = _merged(t, over, op=True)
    return ops.local_attention(*[a[k] for k in _OP])


def _call_op_backward(t, over):
    a = _merged(t, over, op=True)
    return ops.local_attention_backward(*[a[k] for k in _OP_BW])


# The module: constructor and forward, in the form of tests/test_nn_errors.py.
MD = 8
MODULES = {
    "LocalSelfAttention": ModuleAPI(
        rnn.LocalSelfAttention,
        lambda: dict(d_model=MD, n_heads=2, d_head=None, chunk_length=4, n_chunks_before=1,
                     n_chunks_after=0, causal=False, out_bias=True, attention_dropout=0.0,
                     device=None, dtype=None),
        ("d_model", "n_heads"),
        lambda m, a: m(a["x"], a["key_padding_mask"]),
        ("x", "key_padding_mask")),
}


def _module_inputs():
    g = torch.Generator().manual_seed(2)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[1, -3:] = True
    return dict(x=torch.randn(2, 10, MD, generator=g), key_padding_mask=mask)


CATALOGUE = Catalogue(calls={
    "rx.local_attention": _call_rx,
    "ops.local_attention": _call_op,
    "ops.local_attention_backward": _call_op_backward,
}, base_of={}, args={
    "rx.local_attention": {"q", "k", "v", "key_padding_mask", *_KW},
    "ops.local_attention": set(_OP),
    "ops.local_attention_backward": set(_OP_BW),
})
CATALOGUE.base_of.update({e: _base for e in CATALOGUE.calls})
add_modules(CATALOGUE, MODULES, _module_inputs)

FWD = ("rx.local_attention", "ops.local_attention")
BW = ("ops.local_attention_backward",)
ALL = FWD + BW
OPS = ("ops.local_attention",) + BW
MOD, MOD_F = ("LocalSelfAttention()",), ("LocalSelfAttention.forward",)


def _tensor_cases(name, regex, entries, other_shape_arg=None):
    """The common bad values of a (B, H, L, *) input tensor."""
    return [
        C(f"{name}=None", lambda t: {name: None}, regex, entries),
        C(f"{name}=list", lambda t: {name: t[name].tolist()}, regex, entries),
        C(f"{name}=int", lambda t: {name: 3}, regex, entries),
        C(f"{name} rank 3", lambda t: {name: t[name][0]}, regex, entries),
        C(f"{name} rank 5", lambda t: {name: t[name][None]}, regex, entries),
        C(f"{name} batch 1 of 2", lambda t: {name: t[name][:1]}, regex, entries),
        C(f"{name} length L-1", lambda t: {name: t[name][:, :, :-1]},
          regex + "|" + Q + "|key_padding_mask", entries),
        C(f"{name} float64 (others float32)", lambda t: {name: t[name].double()},
          regex + "|" + Q, entries),
        C(f"{name} on meta", lambda t: {name: to_meta(t[name])}, regex + "|device", entries),
    ]


CATALOGUE.cases += [
    *_tensor_cases("q", Q, ALL),
    C("q and k int64", lambda t: dict(q=t["q"].long(), k=t["k"].long(), v=t["v"].long()), Q,
      FWD),
    C("q, k, v bool", lambda t: dict(q=t["q"] > 0, k=t["k"] > 0, v=t["v"] > 0), Q, FWD),
    C("q L=0", lambda t: dict(q=t["q"][:, :, :0], k=t["k"][:, :, :0], v=t["v"][:, :, :0],
                              key_padding_mask=None), Q, FWD),
    C("q D=0", lambda t: dict(q=t["q"][..., :0], k=t["k"][..., :0]), Q, FWD),
    *_tensor_cases("k", K, ALL),
    C("k D-1", lambda t: dict(k=t["k"][..., :-1]), K, ALL),
    C("k heads 1 of 2", lambda t: dict(k=t["k"][:, :1]), K, FWD),
    *_tensor_cases("v", V, ALL),
    C("v Dv=0", lambda t: dict(v=t["v"][..., :0]), V, FWD),
    C("v heads 1 of 2", lambda t: dict(v=t["v"][:, :1]), V, FWD),
    # ---- key_padding_mask
    C("mask=list", lambda t: dict(key_padding_mask=t[MASK].tolist()), MASK, ALL),
    C("mask=int", lambda t: dict(key_padding_mask=1), MASK, FWD),
    C("mask float32", lambda t: dict(key_padding_mask=t[MASK].float()), MASK, ALL),
    C("mask uint8", lambda t: dict(key_padding_mask=t[MASK].to(torch.uint8)), MASK, FWD),
    C("mask rank 1", lambda t: dict(key_padding_mask=t[MASK][0]), MASK, FWD),
    C("mask (B,H,L)", lambda t: dict(key_padding_mask=torch.zeros(B, H, L, dtype=torch.bool)),
      MASK, FWD),
    C("mask batch 1 of 2", lambda t: dict(key_padding_mask=t[MASK][:1]), MASK, ALL),
    C("mask length L+1", lambda t: dict(key_padding_mask=torch.zeros(B, L + 1, dtype=torch.bool)),
      MASK, FWD),
    C("mask on meta", lambda t: dict(key_padding_mask=to_meta(t[MASK])), MASK + "|device", FWD),
    # ---- chunk_length and the window
    C("chunk_length=0", lambda t: dict(chunk_length=0), "chunk_length", ALL),
    C("chunk_length=-3", lambda t: dict(chunk_length=-3), "chunk_length", ALL),
    C("chunk_length=4.0", lambda t: dict(chunk_length=4.0), "chunk_length", ALL),
    C("chunk_length=None", lambda t: dict(chunk_length=None), "chunk_length", FWD),
    C("chunk_length=True", lambda t: dict(chunk_length=True), "chunk_length",
      ("rx.local_attention",)),
    C("chunk_length=2**31", lambda t: dict(chunk_length=2**31), "chunk_length", ALL),
    C("n_chunks_before=-1", lambda t: dict(n_chunks_before=-1), "n_chunks_before", ALL),
    C("n_chunks_before=1.0", lambda t: dict(n_chunks_before=1.0), "n_chunks_before", FWD),
    C("n_chunks_before=None", lambda t: dict(n_chunks_before=None), "n_chunks_before", FWD),
    C("n_chunks_before=True", lambda t: dict(n_chunks_before=True), "n_chunks_before",
      ("rx.local_attention",)),
    C("n_chunks_after=-1", lambda t: dict(n_chunks_after=-1), "n_chunks_after", ALL),
    C("n_chunks_after=0.0", lambda t: dict(n_chunks_after=0.0), "n_chunks_after", FWD),
    C("window 65 chunks (before=63, after=1)",
      lambda t: dict(n_chunks_before=63, n_chunks_after=1), "n_chunks_before", ALL),
    C("n_chunks_after=100", lambda t: dict(n_chunks_after=100), "n_chunks_after", ALL),
    # ---- scale and flags
    C("scale='a'", lambda t: dict(scale="a"), "scale", ALL),
    C("scale=[1.0]", lambda t: dict(scale=[1.0]), "scale", ALL),
    C("scale=None (operator)", lambda t: dict(scale=None), "scale", ("ops.local_attention",)),
    C("causal=None", lambda t: dict(causal=None), "causal", ("rx.local_attention",)),
    C("causal='no'", lambda t: dict(causal="no"), "causal", ALL),
    C("return_lse='yes'", lambda t: dict(return_lse="yes"), "return_lse",
      ("rx.local_attention",)),
    # ---- attention dropout
    C("dropout=1.0", lambda t: dict(dropout=1.0), "dropout", ("rx.local_attention",)),
    C("dropout='0.1'", lambda t: dict(dropout="0.1"), "dropout", ("rx.local_attention",)),
    C("dropout_seed=1.5", lambda t: dict(dropout=0.1, dropout_seed=1.5), "dropout_seed",
      ("rx.local_attention",)),
    C("dropout_seed float tensor", lambda t: dict(dropout=0.1, dropout_seed=torch.tensor(1.0)),
      "dropout_seed", ("rx.local_attention",)),
    C("dropout_p=1.0", lambda t: dict(dropout_p=1.0, dropout_seed=torch.tensor(1)), "dropout_p",
      OPS),
    C("dropout_p=-0.1", lambda t: dict(dropout_p=-0.1), "dropout_p", OPS),
    C("dropout_p='a'", lambda t: dict(dropout_p="a"), "dropout_p", OPS),
    C("dropout_p > 0 without dropout_seed", lambda t: dict(dropout_p=0.2), "dropout_seed", OPS),
    C("dropout_seed float64", lambda t: dict(dropout_p=0.2, dropout_seed=torch.tensor(1.0)),
      "dropout_seed", OPS),
    C("dropout_seed two elements",
      lambda t: dict(dropout_p=0.2, dropout_seed=torch.tensor([1, 2])), "dropout_seed", OPS),
    C("dropout_seed on meta",
      lambda t: dict(dropout_p=0.2, dropout_seed=to_meta(torch.tensor(1))), "dropout_seed",
      OPS),
    C("dropout_seed=int (operator)", lambda t: dict(dropout_p=0.2, dropout_seed=3),
      "dropout_seed", OPS),
    # ---- the backward's own arguments
    C("grad_out=None", lambda t: dict(grad_out=None), "grad_out", BW),
    C("grad_out shape", lambda t: dict(grad_out=t["grad_out"][:1]), "grad_out", BW),
    C("grad_out float64", lambda t: dict(grad_out=t["grad_out"].double()), "grad_out", BW),
    C("grad_out on meta", lambda t: dict(grad_out=to_meta(t["grad_out"])), "grad_out|device", BW),
    C("grad_lse shape (B,L)", lambda t: dict(grad_lse=t["grad_lse"][0]), "grad_lse", BW),
    C("grad_lse float64", lambda t: dict(grad_lse=t["grad_lse"].double()), "grad_lse", BW),
    C("grad_lse=list", lambda t: dict(grad_lse=[0.0]), "grad_lse", BW),
    C("out=None", lambda t: dict(out=None), r"\bout\b", BW),
    C("out shape", lambda t: dict(out=t["out"][..., :1]), r"\bout\b", BW),
    C("out float64", lambda t: dict(out=t["out"].double()), r"\bout\b", BW),
    # ---- the module's constructor
    C("d_model=0", lambda t: dict(d_model=0), "d_model", MOD),
    C("d_model=8.0", lambda t: dict(d_model=8.0), "d_model", MOD),
    C("n_heads=0", lambda t: dict(n_heads=0), "n_heads", MOD),
    C("n_heads=3 (d_model=8 not divisible)", lambda t: dict(n_heads=3), "n_heads|d_head", MOD),
    C("d_head=0", lambda t: dict(d_head=0), "d_head", MOD),
    C("d_head=4.0", lambda t: dict(d_head=4.0), "d_head", MOD),
    C("chunk_length=0 (module)", lambda t: dict(chunk_length=0), "chunk_length", MOD),
    C("chunk_length='4'", lambda t: dict(chunk_length="4"), "chunk_length", MOD),
    C("n_chunks_before=-1 (module)", lambda t: dict(n_chunks_before=-1), "n_chunks_before",
      MOD),
    C("n_chunks_after=64 (module)", lambda t: dict(n_chunks_after=64), "n_chunks_", MOD),
    C("causal=1 (module)", lambda t: dict(causal=1), "causal", MOD),
    C("out_bias=1 (module)", lambda t: dict(out_bias=1), "out_bias", MOD),
    C("attention_dropout=-0.5 (module)", lambda t: dict(attention_dropout=-0.5),
      "attention_dropout", MOD),
    C("attention_dropout=None (module)", lambda t: dict(attention_dropout=None),
      "attention_dropout", MOD),
    C("device='nowhere'", lambda t: dict(device="nowhere"), "device", MOD),
    C("dtype=int32", lambda t: dict(dtype=torch.int32), "dtype", MOD),
    # ---- the module's forward
    C("x=None", lambda t: dict(x=None), r"\bx\b", MOD_F),
    C("x rank 2", lambda t: dict(x=t["x"][0]), r"\bx\b", MOD_F),
    C("x d_model+1", lambda t: dict(x=torch.randn(2, 10, MD + 1)), r"\bx\b", MOD_F),
    C("x float64", lambda t: dict(x=t["x"].double()), r"\bx\b", MOD_F),
    C("x L=0", lambda t: dict(x=t["x"][:, :0], key_padding_mask=None), r"\bx\b", MOD_F),
    C("x on meta", lambda t: dict(x=to_meta(t["x"])), r"\bx\b", MOD_F),
    C("mask float32 (module)", lambda t: dict(key_padding_mask=t[MASK].float()), MASK, MOD_F),
    C("mask length L-1 (module)", lambda t: dict(key_padding_mask=t[MASK][:, :-1]), MASK, MOD_F),
    C("mask=list (module)", lambda t: dict(key_padding_mask=t[MASK].tolist()), MASK, MOD_F),
]

ST = "softmax_stats"
# Run only in child processes: a crash here must not take the test run down.
CATALOGUE.dangerous += [
    C("softmax_stats=None", lambda t: dict(softmax_stats=None), ST, BW),
    C("softmax_stats = lse (B,H,L)", lambda t: dict(softmax_stats=t["lse"]), ST, BW),
    C("softmax_stats (B,H,L,1)", lambda t: dict(softmax_stats=t[ST][..., :1]), ST, BW),
    C("softmax_stats length L-1", lambda t: dict(softmax_stats=t[ST][:, :, :-1]), ST, BW),
    C("softmax_stats float64", lambda t: dict(softmax_stats=t[ST].double()), ST, BW),
    C("softmax_stats int32", lambda t: dict(softmax_stats=t[ST].int()), ST, BW),
    C("softmax_stats on meta", lambda t: dict(softmax_stats=to_meta(t[ST])), ST + "|device", BW),
    C("softmax_stats with NaN/inf values", lambda t: dict(softmax_stats=torch.where(
        torch.arange(t[ST].numel()).view(t[ST].shape) % 2 == 0, float("nan"), float("inf"))),
      ST, BW, expect="no_crash"),
    C("window before=2**62, after=2**62",
      lambda t: dict(n_chunks_before=2**62, n_chunks_after=2**62), "n_chunks_", ALL),
    C("window before=2**63-1, after=1",
      lambda t: dict(n_chunks_before=2**63 - 1, n_chunks_after=1), "n_chunks_", ALL),
    C("chunk_length=2**63-1", lambda t: dict(chunk_length=2**63 - 1), "chunk_length", ALL),
]

test_bad_input = CATALOGUE.in_process_test()
child_results, test_bad_input_in_child_process = CATALOGUE.child_process_tests(__name__)


@pytest.mark.parametrize("shape", [(0, H, L, D), (B, 0, L, D)], ids=["B=0", "H=0"])
def test_empty_batch_or_heads_are_valid(shape):
    q = torch.randn(shape, requires_grad=True)
    k = torch.randn(shape, requires_grad=True)
    v = torch.randn(*shape[:3], DV, requires_grad=True)
    out, lse = rx.local_attention(q, k, v, chunk_length=M, return_lse=True)
    assert out.shape == v.shape and lse.shape == shape[:3]
    (out.sum() + lse.sum()).backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape

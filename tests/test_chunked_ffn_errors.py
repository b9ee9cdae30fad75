"""Bad inputs of the chunked feed-forward: rx.chunked_feed_forward and
torch.ops.reformer.chunked_ffn / chunked_ffn_backward.

The catalogue (CATALOGUE; its machinery in tests/_helpers.py, its completeness checked in
tests/test_errors_catalogue.py) gets, argument by argument, wrong ranks, shapes, dtypes and
devices, non-tensors, and out-of-range options; each call must raise ValueError, TypeError or
RuntimeError whose message names the argument. Undefined tensors, extreme sizes and degenerate
shapes run in child processes (a crash is reported, not suffered). Then the error messages of
the functional API and the operators for the common mistakes.

Their arguments live in their own base dict (`_ffn_base`): x, w1, b1, w2, b2, grad_out and the
options below; "dropout" is the functional API's name, "dropout_p" the operator's.
"""

import math

import pytest
import torch

import reformer_ext as rx

from _helpers import C, Catalogue, ffn_params, ffn_randn, ops, to_meta

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


CATALOGUE = Catalogue(calls={
    "rx.chunked_feed_forward": _call_rx_ffn,
    "ops.chunked_ffn": _call_op_ffn,
    "ops.chunked_ffn_backward": _call_op_ffn_backward,
    "rx.chunked_feed_forward+backward": _call_rx_ffn_backward,
}, base_of={}, args={
    "rx.chunked_feed_forward": {"x", "w1", "b1", "w2", "b2", *_FFN_KW},
    "ops.chunked_ffn": set(_OP_FFN),
    "ops.chunked_ffn_backward": set(_OP_FFN_BW),
})
CATALOGUE.base_of.update({e: _ffn_base for e in CATALOGUE.calls})
FFN = ("rx.chunked_feed_forward", "ops.chunked_ffn")
FFN_BW = ("ops.chunked_ffn_backward",)
FFN_ALL = FFN + FFN_BW
RX_FFN, OP_FFN = ("rx.chunked_feed_forward",), ("ops.chunked_ffn",) + FFN_BW

_FFN_W = r"\bw1\b|\bx\b"  # a dtype/shape clash between x and w1 may name either

CATALOGUE.cases += [
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
    C("ffn x on meta", lambda t: dict(x=to_meta(t["x"])), r"\bx\b|\bw1\b|device", FFN_ALL),
    # ---- w1
    C("ffn w1=list", lambda t: dict(w1=t["w1"].tolist()), r"\bw1\b", FFN_ALL),
    C("ffn w1 rank 1", lambda t: dict(w1=t["w1"][0]), r"\bw1\b", FFN_ALL),
    C("ffn w1 rank 3", lambda t: dict(w1=t["w1"][None]), r"\bw1\b", FFN_ALL),
    C("ffn w1 (d_ff, d_model-1)", lambda t: dict(w1=t["w1"][:, :-1]), r"\bw1\b", FFN_ALL),
    C("ffn w1 transposed", lambda t: dict(w1=t["w1"].t()), r"\bw1\b", FFN_ALL),
    C("ffn w1 float64", lambda t: dict(w1=t["w1"].double()), r"\bw1\b", FFN_ALL),
    C("ffn w1 int64", lambda t: dict(w1=t["w1"].long()), r"\bw1\b", FFN_ALL),
    C("ffn w1 on meta", lambda t: dict(w1=to_meta(t["w1"])), r"\bw1\b|device", FFN_ALL),
    # ---- b1
    C("ffn b1=list", lambda t: dict(b1=t["b1"].tolist()), r"\bb1\b", FFN_ALL),
    C("ffn b1 rank 2", lambda t: dict(b1=t["b1"][None]), r"\bb1\b", FFN_ALL),
    C("ffn b1 length d_ff-1", lambda t: dict(b1=t["b1"][:-1]), r"\bb1\b", FFN_ALL),
    C("ffn b1 float64", lambda t: dict(b1=t["b1"].double()), r"\bb1\b", FFN_ALL),
    C("ffn b1 on meta", lambda t: dict(b1=to_meta(t["b1"])), r"\bb1\b|device", FFN_ALL),
    # ---- w2
    C("ffn w2=list", lambda t: dict(w2=t["w2"].tolist()), r"\bw2\b", FFN_ALL),
    C("ffn w2 rank 1", lambda t: dict(w2=t["w2"][0]), r"\bw2\b", FFN_ALL),
    C("ffn w2 (d_model, d_ff-1)", lambda t: dict(w2=t["w2"][:, :-1]), r"\bw2\b", FFN_ALL),
    C("ffn w2 transposed", lambda t: dict(w2=t["w2"].t()), r"\bw2\b", FFN_ALL),
    C("ffn w2 float64", lambda t: dict(w2=t["w2"].double()), r"\bw2\b", FFN_ALL),
    C("ffn w2 on meta", lambda t: dict(w2=to_meta(t["w2"])), r"\bw2\b|device", FFN_ALL),
    # ---- b2
    C("ffn b2=list", lambda t: dict(b2=t["b2"].tolist()), r"\bb2\b", FFN_ALL),
    C("ffn b2 rank 0", lambda t: dict(b2=t["b2"][0]), r"\bb2\b", FFN_ALL),
    C("ffn b2 = b1 (length d_ff)", lambda t: dict(b2=t["b1"]), r"\bb2\b", FFN_ALL),
    C("ffn b2 float16", lambda t: dict(b2=t["b2"].half()), r"\bb2\b", FFN_ALL),
    C("ffn b2 on meta", lambda t: dict(b2=to_meta(t["b2"])), r"\bb2\b|device", FFN_ALL),
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
    C("ffn dropout_seed on meta", lambda t: dict(dropout_seed=to_meta(torch.tensor(5))),
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
    C("ffn grad_out on meta", lambda t: dict(grad_out=to_meta(t["grad_out"])),
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
      lambda t: {**{k: to_meta(v) for k, v in t.items()}, "w1": to_meta(t["w1"][:, :-1])},
      r"\bw1\b", FFN_ALL),
    C("ffn all meta, chunk_size=0",
      lambda t: {**{k: to_meta(v) for k, v in t.items()}, "chunk_size": 0},
      "chunk_size", FFN_ALL),
]

# Run in child processes: undefined tensors reach C++ through the schema (None for a required
# Tensor is accepted by the dispatcher), extreme sizes and degenerate shapes.
CATALOGUE.dangerous += [
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
    C("ffn w1 on meta, then backward", lambda t: dict(w1=to_meta(t["w1"])), r"\bw1\b|device",
      ("rx.chunked_feed_forward+backward",)),
]


# ------------------------------------------------------------------------------ the tests

# Each case in this process, test_bad_input[entry:case]; each dangerous case in a child
# process, test_bad_input_in_child_process[entry:case].
test_bad_input = CATALOGUE.in_process_test()
child_results, test_bad_input_in_child_process = CATALOGUE.child_process_tests(__name__)


# ------------------------------------------- error messages of the function and the operators


def _bad_calls():
    w1, b1, w2, b2 = ffn_params(8, 12)
    x = ffn_randn((4, 8))
    kw = dict(chunk_size=4)
    seed = torch.tensor(3)
    return [
        ("w1", lambda: rx.chunked_feed_forward(x, w1[:, :7], b1, w2, b2, **kw)),
        ("w1", lambda: rx.chunked_feed_forward(x, w1[0], b1, w2, b2, **kw)),
        ("w2", lambda: rx.chunked_feed_forward(x, w1, b1, w2[:, :11], b2, **kw)),
        ("w2", lambda: rx.chunked_feed_forward(x, w1, b1, w2.t(), b2, **kw)),
        ("b1", lambda: rx.chunked_feed_forward(x, w1, b1[:5], w2, b2, **kw)),
        ("b2", lambda: rx.chunked_feed_forward(x, w1, b1, w2, b1, **kw)),
        ("activation", lambda: rx.chunked_feed_forward(x, w1, b1, w2, b2, activation="tanh")),
        ("chunk_size", lambda: rx.chunked_feed_forward(x, w1, b1, w2, b2, chunk_size=0)),
        ("dropout", lambda: rx.chunked_feed_forward(x, w1, b1, w2, b2, dropout=1.0)),
        ("dropout", lambda: rx.chunked_feed_forward(x, w1, b1, w2, b2, dropout=-0.1)),
        ("w1 must have the dtype of x",
         lambda: rx.chunked_feed_forward(x, w1.float(), b1, w2, b2, **kw)),
        ("b2 must have the dtype of x",
         lambda: rx.chunked_feed_forward(x, w1, b1, w2, b2.float(), **kw)),
        ("x must be float", lambda: rx.chunked_feed_forward(x.long(), w1, b1, w2, b2, **kw)),
        ("x must have shape", lambda: rx.chunked_feed_forward(x[0, 0], w1, b1, w2, b2, **kw)),
        # the raw operators check their arguments themselves
        ("chunk_size", lambda: ops.chunked_ffn(x, w1, b1, w2, b2, 0, "gelu", 0.0, None)),
        ("activation", lambda: ops.chunked_ffn(x, w1, b1, w2, b2, 4, "GELU", 0.0, None)),
        ("dropout_p", lambda: ops.chunked_ffn(x, w1, b1, w2, b2, 4, "gelu", 1.5, seed)),
        ("dropout_p", lambda: ops.chunked_ffn(x, w1, b1, w2, b2, 4, "gelu", math.nan, seed)),
        ("dropout_seed must be given",
         lambda: ops.chunked_ffn(x, w1, b1, w2, b2, 4, "gelu", 0.5, None)),
        ("dropout_seed must be a one-element int64",
         lambda: ops.chunked_ffn(x, w1, b1, w2, b2, 4, "gelu", 0.5, seed.double())),
        ("dropout_seed must be a one-element int64",
         lambda: ops.chunked_ffn(x, w1, b1, w2, b2, 4, "gelu", 0.5, seed.expand(2))),
        ("dropout_seed must be an int or", lambda: rx.chunked_feed_forward(
            x, w1, b1, w2, b2, dropout=0.5, dropout_seed=seed.int())),
        ("w1 must have the dtype",
         lambda: ops.chunked_ffn(x, w1.float(), b1, w2, b2, 4, "gelu", 0.0, None)),
        ("grad_out must have the shape",
         lambda: ops.chunked_ffn_backward(x[:3], x, w1, b1, w2, b2, 4, "gelu", 0.0, None,
                                          [True] * 5)),
        ("grad_out must have the dtype",
         lambda: ops.chunked_ffn_backward(x.float(), x, w1, b1, w2, b2, 4, "gelu", 0.0, None,
                                          [True] * 5)),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_bad_input_raises_value_error(case):
    match, call = _bad_calls()[case]
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_argument_types():
    w1, b1, w2, b2 = ffn_params(8, 12)
    x = ffn_randn((4, 8))
    with pytest.raises(TypeError, match="chunk_size"):
        rx.chunked_feed_forward(x, w1, b1, w2, b2, chunk_size=2.0)
    with pytest.raises(TypeError, match="w1"):
        rx.chunked_feed_forward(x, w1.tolist(), b1, w2, b2)
    with pytest.raises(TypeError, match="dropout_seed"):
        rx.chunked_feed_forward(x, w1, b1, w2, b2, dropout=0.1, dropout_seed=1.5)

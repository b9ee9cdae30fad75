"""Bad inputs of the drop-in for nn.MultiheadAttention (reformer_ext/nn/drop_in.py):
rx.nn.SequenceFirstLSHAttention's constructor and forward (the nn.MultiheadAttention call with
sequence-first (L, B, d_model) tensors), and rx.nn.replace_attention.

The catalogue (CATALOGUE; its machinery in tests/_helpers.py, its completeness checked in
tests/test_errors_catalogue.py) gets, argument by argument: non-tensors, wrong rank, shape, dtype
and device (meta as the mismatching device) of the inputs, cross-attention (key or value not the
query tensor), the nn.MultiheadAttention options LSH attention cannot honour (need_weights=True,
an attn_mask that is not the causal one, is_causal against the module), non-bool flags; for
replace_attention, models with nothing (or nothing replaceable) to replace, names that are not
an iterable of the qualified names of nn.MultiheadAttention layers, and out-of-range options.
Each call must raise ValueError, TypeError or RuntimeError whose message names the argument.
"""

import torch
from torch import nn

import reformer_ext.nn as rnn

from _helpers import MASK, C, Catalogue, to_meta
from test_nn_errors import ModuleAPI, add_modules

MB, ML, MD, HEADS = 2, 10, 8, 2
QUERY, KEY, VALUE = r"\bquery\b", r"\bkey\b", r"\bvalue\b"


def _lsh(**kw):
    return rnn.LSHSelfAttention(MD, HEADS, bucket_size=4, n_hashes=2, **kw)


# The module: constructor and forward, in the form of tests/test_nn_errors.py. The forward is
# the nn.MultiheadAttention call attn(x, x, x, ...) with x of shape (L, B, d_model).
MODULES = {
    "SequenceFirstLSHAttention": ModuleAPI(
        rnn.SequenceFirstLSHAttention,
        lambda: dict(attn=_lsh()),
        ("attn",),
        lambda m, a: m(a["query"], a["key"], a["value"], key_padding_mask=a["key_padding_mask"],
                       need_weights=a["need_weights"], attn_mask=a["attn_mask"],
                       average_attn_weights=a["average_attn_weights"],
                       is_causal=a["is_causal"]),
        ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
         "average_attn_weights", "is_causal")),
}


def _module_inputs():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(ML, MB, MD, generator=g)
    mask = torch.zeros(MB, ML, dtype=torch.bool)  # (B, L) in either layout
    mask[1, -3:] = True
    return dict(query=x, key=x, value=x, key_padding_mask=mask, need_weights=False,
                attn_mask=None, average_attn_weights=True, is_causal=None)


# replace_attention: a sequence-first two-layer encoder, replaced and then run once (so that an
# option accepted by the swap but refused by the call would show too).
_RA = "rx.nn.replace_attention"
_RA_OPTIONS = dict(bucket_size=4, n_hashes=2, n_buckets=None, causal=False, n_chunks_before=1,
                   n_chunks_after=0, dropout=0.0, fixed_rotations=None)


def _encoder(**layer_kw):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(MD, HEADS, 16, dropout=0.0, **layer_kw)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def _replace_base():
    return dict(model=_encoder(), names=None, **_RA_OPTIONS,
                x=torch.randn(ML, MB, MD, generator=torch.Generator().manual_seed(3)))


def _call_replace(t, over):
    a = dict(t)
    a.update(over)
    x = a.pop("x")
    model = rnn.replace_attention(a.pop("model"), **a)
    return model(x) if isinstance(model, nn.TransformerEncoder) else model


CATALOGUE = Catalogue(calls={_RA: _call_replace}, base_of={_RA: _replace_base},
                      args={_RA: {"model", "names", *_RA_OPTIONS}})
add_modules(CATALOGUE, MODULES, _module_inputs)

SF_M, SF_F = ("SequenceFirstLSHAttention()",), ("SequenceFirstLSHAttention.forward",)
RA = (_RA,)


def _as_qkv(make):
    """A bad query passed as query, key and value alike (the self-attention call), so that the
    query's own check is what answers."""
    def over(t):
        q = make(t)
        return dict(query=q, key=q, value=q)
    return over


def _mha(**kw):
    return nn.MultiheadAttention(MD, HEADS, **kw)


CATALOGUE.cases += [
    # ---- SequenceFirstLSHAttention(attn)
    C("attn=None", lambda t: dict(attn=None), r"\battn\b", SF_M),
    C("attn=nn.MultiheadAttention", lambda t: dict(attn=_mha()), r"\battn\b", SF_M),
    C("attn=nn.Linear", lambda t: dict(attn=nn.Linear(MD, MD)), r"\battn\b", SF_M),
    C("attn=LSHSelfAttention class", lambda t: dict(attn=rnn.LSHSelfAttention), r"\battn\b",
      SF_M),
    C("attn=SequenceFirstLSHAttention (wrapped twice)",
      lambda t: dict(attn=rnn.SequenceFirstLSHAttention(_lsh())), r"\battn\b", SF_M),
    # ---- forward: query (given as key and value too)
    C("query=None", _as_qkv(lambda t: None), QUERY, SF_F),
    C("query=list", _as_qkv(lambda t: t["query"].tolist()), QUERY, SF_F),
    C("query=int", _as_qkv(lambda t: 3), QUERY, SF_F),
    C("query rank 1", _as_qkv(lambda t: t["query"][:, 0, 0]), QUERY, SF_F),
    C("query rank 2", _as_qkv(lambda t: t["query"][:, 0]), QUERY, SF_F),
    C("query rank 4", _as_qkv(lambda t: t["query"][None]), QUERY, SF_F),
    C("query d_model+1", _as_qkv(lambda t: torch.randn(ML, MB, MD + 1)), QUERY, SF_F),
    C("query batch-first (B, L, d) with its (B, L) mask",
      _as_qkv(lambda t: torch.randn(MB + 1, ML, MD)), QUERY + "|" + MASK, SF_F),
    C("query float64", _as_qkv(lambda t: t["query"].double()), QUERY, SF_F),
    C("query int64", _as_qkv(lambda t: t["query"].long()), QUERY, SF_F),
    C("query L=0", lambda t: dict(_as_qkv(lambda t: t["query"][:0])(t), key_padding_mask=None),
      QUERY, SF_F),
    C("query on meta", _as_qkv(lambda t: to_meta(t["query"])), QUERY, SF_F),
    # ---- key and value: self-attention only
    C("key=None", lambda t: dict(key=None), KEY, SF_F),
    C("key a copy of query", lambda t: dict(key=t["query"].clone()), KEY, SF_F),
    C("key=list", lambda t: dict(key=t["query"].tolist()), KEY, SF_F),
    C("key (S, B, d) memory (cross-attention)", lambda t: dict(key=torch.randn(5, MB, MD),
                                                               value=torch.randn(5, MB, MD)),
      KEY, SF_F),
    C("value=None", lambda t: dict(value=None), VALUE, SF_F),
    C("value another tensor", lambda t: dict(value=torch.randn_like(t["query"])), VALUE, SF_F),
    C("value a view of query", lambda t: dict(value=t["query"][:]), VALUE, SF_F),
    # ---- key_padding_mask: (B, L) in either layout
    C("mask=list", lambda t: dict(key_padding_mask=t[MASK].tolist()), MASK, SF_F),
    C("mask=int", lambda t: dict(key_padding_mask=1), MASK, SF_F),
    C("mask (L, B) (sequence-first by mistake)", lambda t: dict(key_padding_mask=t[MASK].T),
      MASK, SF_F),
    C("mask rank 1", lambda t: dict(key_padding_mask=t[MASK][0]), MASK, SF_F),
    C("mask length L-1", lambda t: dict(key_padding_mask=t[MASK][:, :-1]), MASK, SF_F),
    C("mask int64", lambda t: dict(key_padding_mask=t[MASK].long()), MASK, SF_F),
    C("mask float with additive biases",
      lambda t: dict(key_padding_mask=torch.full((MB, ML), -1.0)), MASK, SF_F),
    C("mask on meta", lambda t: dict(key_padding_mask=to_meta(t[MASK])), MASK, SF_F),
    # ---- the nn.MultiheadAttention options
    C("need_weights=True", lambda t: dict(need_weights=True), "need_weights", SF_F),
    C("need_weights='no'", lambda t: dict(need_weights="no"), "need_weights", SF_F),
    C("attn_mask (L, L) zeros", lambda t: dict(attn_mask=torch.zeros(ML, ML)), "attn_mask",
      SF_F),
    C("attn_mask causal mask on a non-causal module",
      lambda t: dict(attn_mask=nn.Transformer.generate_square_subsequent_mask(ML)),
      "attn_mask", SF_F),
    C("attn_mask=list", lambda t: dict(attn_mask=[[0.0]]), "attn_mask", SF_F),
    C("average_attn_weights='yes'", lambda t: dict(average_attn_weights="yes"),
      "average_attn_weights", SF_F),
    C("average_attn_weights=None", lambda t: dict(average_attn_weights=None),
      "average_attn_weights", SF_F),
    C("is_causal=True on a non-causal module", lambda t: dict(is_causal=True), "is_causal",
      SF_F),
    C("is_causal='yes'", lambda t: dict(is_causal="yes"), "is_causal", SF_F),
    C("is_causal tensor", lambda t: dict(is_causal=torch.tensor([True, False])), "is_causal",
      SF_F),
    # ---- replace_attention: model
    C("model=None", lambda t: dict(model=None), r"\bmodel\b", RA),
    C("model='encoder'", lambda t: dict(model="encoder"), r"\bmodel\b", RA),
    C("model=the nn.TransformerEncoder class", lambda t: dict(model=nn.TransformerEncoder),
      r"\bmodel\b", RA),
    C("model without nn.MultiheadAttention", lambda t: dict(model=nn.Linear(MD, MD)),
      r"\bmodel\b", RA),
    C("model=nn.MultiheadAttention(kdim=4)", lambda t: dict(model=_mha(kdim=4, vdim=4)),
      r"\bmodel\b", RA),
    C("model=nn.MultiheadAttention(add_bias_kv=True)",
      lambda t: dict(model=_mha(add_bias_kv=True)), r"\bmodel\b", RA),
    C("model with a cross-attention (kdim) layer",
      lambda t: dict(model=nn.ModuleDict({"a": _mha(), "b": _mha(kdim=4, vdim=4)})),
      r"\bmodel\b", RA),
    C("model with an add_zero_attn layer",
      lambda t: dict(model=nn.Sequential(_mha(add_zero_attn=True))), r"\bmodel\b", RA),
    C("model already replaced",
      lambda t: dict(model=rnn.replace_attention(_encoder(), bucket_size=4)), r"\bmodel\b",
      RA),
    # ---- replace_attention: names
    C("names a str", lambda t: dict(names="layers.0.self_attn"), r"\bnames\b", RA),
    C("names=5", lambda t: dict(names=5), r"\bnames\b", RA),
    C("names=[]", lambda t: dict(names=[]), r"\bnames\b", RA),
    C("names=['nope']", lambda t: dict(names=["nope"]), r"\bnames\b", RA),
    C("names=[0]", lambda t: dict(names=[0]), r"\bnames\b", RA),
    C("names=[None]", lambda t: dict(names=[None]), r"\bnames\b", RA),
    C("names a Linear layer", lambda t: dict(names=["layers.0.linear1"]), r"\bnames\b", RA),
    C("names the model itself ('')", lambda t: dict(names=[""]), r"\bnames\b", RA),
    C("names on a model that is an nn.MultiheadAttention",
      lambda t: dict(model=_mha(), names=["self_attn"]), r"\bnames\b", RA),
    # ---- replace_attention: the LSHSelfAttention options
    C("bucket_size=0", lambda t: dict(bucket_size=0), "bucket_size", RA),
    C("bucket_size=4.0", lambda t: dict(bucket_size=4.0), "bucket_size", RA),
    C("bucket_size=None", lambda t: dict(bucket_size=None), "bucket_size", RA),
    C("n_hashes=0", lambda t: dict(n_hashes=0), "n_hashes", RA),
    C("n_hashes='2'", lambda t: dict(n_hashes="2"), "n_hashes", RA),
    C("n_buckets=3 (odd)", lambda t: dict(n_buckets=3), "n_buckets", RA),
    C("n_buckets=0", lambda t: dict(n_buckets=0), "n_buckets", RA),
    C("n_buckets='4'", lambda t: dict(n_buckets="4"), "n_buckets", RA),
    C("causal=1", lambda t: dict(causal=1), "causal", RA),
    C("causal=None", lambda t: dict(causal=None), "causal", RA),
    C("n_chunks_before=-1", lambda t: dict(n_chunks_before=-1), "n_chunks_before", RA),
    C("n_chunks_before=1.0", lambda t: dict(n_chunks_before=1.0), "n_chunks_before", RA),
    C("n_chunks_after=-1", lambda t: dict(n_chunks_after=-1), "n_chunks_after", RA),
    C("n_chunks_after=None", lambda t: dict(n_chunks_after=None), "n_chunks_after", RA),
    C("dropout=1.5", lambda t: dict(dropout=1.5), "dropout", RA),
    C("dropout=-0.1", lambda t: dict(dropout=-0.1), "dropout", RA),
    C("dropout='0.1'", lambda t: dict(dropout="0.1"), "dropout", RA),
    C("fixed_rotations='yes'", lambda t: dict(fixed_rotations="yes"), "fixed_rotations", RA),
    C("fixed_rotations=1", lambda t: dict(fixed_rotations=1), "fixed_rotations", RA),
]

test_bad_input = CATALOGUE.in_process_test()


# ------------------------------------------------------------- what the checks must still let by


def test_names_may_be_any_iterable_of_str_with_repeats():
    model = _encoder()
    rnn.replace_attention(model, bucket_size=4,
                          names=(n for n in ["layers.1.self_attn", "layers.1.self_attn"]))
    assert isinstance(model.layers[0].self_attn, nn.MultiheadAttention)
    assert isinstance(model.layers[1].self_attn, rnn.SequenceFirstLSHAttention)


def test_a_multihead_attention_model_takes_names_of_itself_only():
    new = rnn.replace_attention(_mha(batch_first=True), bucket_size=4, names=[""])
    assert isinstance(new, rnn.LSHSelfAttention)


def test_sequence_first_call_runs_with_bool_flags():
    attn = rnn.SequenceFirstLSHAttention(_lsh(causal=True)).eval()
    x = torch.randn(ML, MB, MD)
    causal_mask = nn.Transformer.generate_square_subsequent_mask(ML)
    out, weights = attn(x, x, x, need_weights=False, attn_mask=causal_mask, is_causal=True,
                        average_attn_weights=False)
    assert weights is None and out.shape == x.shape
    torch.testing.assert_close(out, attn.attn(x.transpose(0, 1)).transpose(0, 1), rtol=0,
                               atol=0)

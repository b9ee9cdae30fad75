"""Tests of rx.nn.LocalSelfAttention (docs/semantics.md §4, §9): the module against the
functional reference, padding independence, constructor and forward checks, and equality with
HF's LocalSelfAttention (+ ReformerSelfOutput's dense) when transformers is importable."""

import math

import pytest
import torch

import reformer_ext as rx

from _helpers import F32, F64, local_attention_reference

# small tensors: one thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def plain_module(attn, x, mask=None):
    """The module's forward written out with the reference operator."""
    B, L, _ = x.shape
    H, Dh = attn.n_heads, attn.d_head
    split = lambda t: t.view(B, L, H, Dh).transpose(1, 2)  # noqa: E731
    out, _ = local_attention_reference(
        split(attn.to_q(x)), split(attn.to_k(x)), split(attn.to_v(x)),
        chunk_length=attn.chunk_length, causal=attn.causal,
        n_chunks_before=attn.n_chunks_before, n_chunks_after=attn.n_chunks_after,
        scale=1 / math.sqrt(Dh), key_padding_mask=mask)
    return attn.to_out(out.transpose(1, 2).reshape(B, L, H * Dh))


@pytest.mark.parametrize("causal", [False, True])
def test_module_matches_reference(causal):
    torch.manual_seed(0)
    attn = rx.nn.LocalSelfAttention(24, 3, chunk_length=5, n_chunks_before=1, n_chunks_after=1,
                                    causal=causal, dtype=F64)
    x = torch.randn(2, 23, 24, dtype=F64, requires_grad=True)
    mask = torch.zeros(2, 23, dtype=torch.bool)
    mask[1, 17:] = True
    ours = attn(x, mask)
    ref = plain_module(attn, x, mask)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    g1 = torch.autograd.grad(ours.sum(), [x] + list(attn.parameters()))
    g2 = torch.autograd.grad(ref.sum(), [x] + list(attn.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_padding_independence_and_zero_output():
    torch.manual_seed(1)
    attn = rx.nn.LocalSelfAttention(16, 2, chunk_length=4)
    x = torch.randn(3, 18, 16)
    mask = torch.zeros(3, 18, dtype=torch.bool)
    mask[0, 12:] = True
    mask[2, 3:] = True
    y = x.clone()
    y[mask] = torch.randn(int(mask.sum()), 16) * 100
    a, b = attn(x, mask), attn(y, mask)
    keep = ~mask
    torch.testing.assert_close(a[keep], b[keep], rtol=1e-5, atol=1e-5)
    assert (a[mask] == attn.to_out.bias).all()  # the operator's padding output is 0


def test_module_interface():
    attn = rx.nn.LocalSelfAttention(32, 4, chunk_length=16, n_chunks_after=1, causal=True)
    assert [n for n, _ in attn.named_parameters()] == ["to_q.weight", "to_k.weight",
                                                       "to_v.weight", "to_out.weight",
                                                       "to_out.bias"]
    hf_like = rx.nn.LocalSelfAttention(32, 4, out_bias=False)  # HF's projections: no bias
    assert [n for n, _ in hf_like.named_parameters()] == ["to_q.weight", "to_k.weight",
                                                          "to_v.weight", "to_out.weight"]
    assert attn.d_head == 8
    r = repr(attn)
    for part in ("d_model=32", "n_heads=4", "d_head=8", "chunk_length=16", "n_chunks_before=1",
                 "n_chunks_after=1", "causal=True"):
        assert part in r
    attn2 = rx.nn.LocalSelfAttention(30, 4, d_head=5)
    assert attn2.to_q.weight.shape == (20, 30) and attn2.to_out.weight.shape == (30, 20)
    assert attn2(torch.randn(1, 3, 30)).shape == (1, 3, 30)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(d_model=30, n_heads=4), ValueError, "divisible"),
    (dict(d_model=0, n_heads=1), ValueError, "d_model"),
    (dict(d_model=8, n_heads=2, chunk_length=0), ValueError, "chunk_length"),
    (dict(d_model=8, n_heads=2, chunk_length=2.0), TypeError, "chunk_length"),
    (dict(d_model=8, n_heads=2, n_chunks_before=-1), ValueError, "n_chunks_before"),
    (dict(d_model=8, n_heads=2, n_chunks_after=70), ValueError, "n_chunks_"),
    (dict(d_model=8, n_heads=2, causal=1), TypeError, "causal"),
    (dict(d_model=8, n_heads=2, dtype=torch.int32), TypeError, "dtype"),
])
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        rx.nn.LocalSelfAttention(**kwargs)


def test_forward_errors():
    attn = rx.nn.LocalSelfAttention(8, 2, chunk_length=4)
    with pytest.raises(TypeError, match="x"):
        attn([1.0])
    with pytest.raises(ValueError, match="x must have shape"):
        attn(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="dtype"):
        attn(torch.randn(2, 5, 8, dtype=F64))
    with pytest.raises(ValueError, match="key_padding_mask"):
        attn(torch.randn(2, 5, 8), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_padding_mask"):
        attn(torch.randn(2, 5, 8), torch.zeros(2, 5))


# ------------------------------------------------------------------------ equality with HF


def _hf_pair(dtype, *, is_decoder, chunk, before, after, d_model=24, heads=3):
    transformers = pytest.importorskip("transformers")
    from transformers.models.reformer import modeling_reformer as hf

    config = transformers.ReformerConfig(
        hidden_size=d_model, num_attention_heads=heads, attention_head_size=d_model // heads,
        attn_layers=["local"], local_attn_chunk_length=chunk, local_num_chunks_before=before,
        local_num_chunks_after=after, is_decoder=is_decoder,
        local_attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
    torch.manual_seed(0)
    theirs = hf.LocalSelfAttention(config).to(dtype).eval()
    dense = hf.ReformerSelfOutput(config).to(dtype).eval()
    ours = rx.nn.LocalSelfAttention(d_model, heads, chunk_length=chunk, n_chunks_before=before,
                                    n_chunks_after=after, causal=is_decoder, out_bias=False,
                                    dtype=dtype)
    with torch.no_grad():
        ours.to_q.weight.copy_(theirs.query.weight)
        ours.to_k.weight.copy_(theirs.key.weight)
        ours.to_v.weight.copy_(theirs.value.weight)
        ours.to_out.weight.copy_(dense.dense.weight)

    def hf_forward(x, attention_mask=None):
        return dense(theirs(x, attention_mask=attention_mask).hidden_states)

    return ours, hf_forward


HF_CASES = [  # (L, chunk, before, after)
    (24, 6, 1, 0),    # HF's defaults shape: 4 chunks, look back one
    (24, 8, 1, 1),    # 3 chunks, both sides
    (16, 8, 1, 1),    # 2 chunks: the neighbour chunk counts twice
    (18, 6, 2, 1),    # 3 chunks: offsets -2 and +1 coincide
    (7, 8, 1, 0),     # L <= chunk_length: HF's plain full attention
    (8, 8, 2, 2),     # L == chunk_length
]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("is_decoder", [False, True], ids=["encoder", "decoder"])
@pytest.mark.parametrize("case", HF_CASES, ids=lambda c: "L{}-m{}-b{}a{}".format(*c))
def test_equals_huggingface(case, is_decoder, dtype):
    L, chunk, before, after = case
    ours, theirs = _hf_pair(dtype, is_decoder=is_decoder, chunk=chunk, before=before,
                            after=after)
    x = torch.randn(2, L, 24, dtype=dtype)
    tol = 1e-10 if dtype == F64 else 2e-5
    torch.testing.assert_close(ours(x), theirs(x), rtol=tol, atol=tol)
    # with an attention mask (HF: 1 = keep; ours: True = padding); compare the real tokens
    attention_mask = torch.ones(2, L, dtype=torch.long)
    attention_mask[0, L - 3:] = 0
    attention_mask[1, :2] = 0
    padding = attention_mask == 0
    a, b = ours(x, padding), theirs(x, attention_mask)
    torch.testing.assert_close(a[~padding], b[~padding], rtol=tol, atol=tol)


def test_module_compiles_without_graph_breaks():
    torch.manual_seed(3)
    attn = rx.nn.LocalSelfAttention(16, 2, chunk_length=4, n_chunks_after=1, causal=True)
    x = torch.randn(2, 11, 16)
    mask = torch.zeros(2, 11, dtype=torch.bool)
    mask[1, 8:] = True
    compiled = torch.compile(attn, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, mask), attn(x, mask))

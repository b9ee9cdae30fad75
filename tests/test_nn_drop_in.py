"""Drop-in use: LSHSelfAttention accepts the nn.MultiheadAttention self-attention call,
and reformer_ext.nn.replace_attention swaps the attention of nn.TransformerEncoder (and
friends) for LSH attention.

The equivalence check: with one hash round and one chunk covering the whole sequence
(bucket_size >= L, n_chunks_before = 0), LSH attention is dense attention with shared
query/keys under the docs/semantics.md §1 rules (unit-normalised keys, scale 1, a token sees
itself only with logit -1e5). ``DenseSharedQK`` below computes that directly from a replaced
nn.MultiheadAttention's weights, so the replaced model must match a copy of the original model
that uses ``DenseSharedQK`` instead.
"""

import copy

import pytest
import torch
from torch import nn

import reformer_ext as rx
from reformer_ext.nn import LSHSelfAttention, SequenceFirstLSHAttention, replace_attention

D_MODEL, HEADS, LENGTH = 16, 2, 12
WHOLE_SEQUENCE = dict(bucket_size=16, n_hashes=1, n_chunks_before=0)  # 16 >= LENGTH


# small tensors: one thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def _attention(causal=False):
    torch.manual_seed(0)
    return LSHSelfAttention(D_MODEL, HEADS, bucket_size=4, n_hashes=2, causal=causal).eval()


def _x(batch=2, length=LENGTH):
    return torch.randn(batch, length, D_MODEL, generator=torch.Generator().manual_seed(1))


def _padding(batch=2, length=LENGTH):
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[1, length - 4:] = True
    return mask


def _as_float_mask(mask):
    """nn.TransformerEncoderLayer's conversion of a bool padding mask."""
    return torch.zeros(mask.shape).masked_fill(mask, float("-inf"))


# ------------------------------------------------------------------------ the MHA call


def test_mha_call_returns_the_native_output_and_no_weights():
    attn, x, mask = _attention(), _x(), _padding()
    out, weights = attn(x, x, x, key_padding_mask=mask, need_weights=False)
    assert weights is None
    torch.testing.assert_close(out, attn(x, mask), rtol=0, atol=0)
    # need_weights not given (nn.MultiheadAttention's default is True): still no weights
    out2, weights2 = attn(x, x, x, mask)
    assert weights2 is None and torch.equal(out2, out)


def test_mha_call_float_padding_mask_equals_bool():
    attn, x, mask = _attention(), _x(), _padding()
    out_float, _ = attn(x, x, x, key_padding_mask=_as_float_mask(mask), need_weights=False)
    torch.testing.assert_close(out_float, attn(x, key_padding_mask=mask), rtol=0, atol=0)


def test_mha_call_causal_with_the_causal_mask_hint():
    attn, x = _attention(causal=True), _x()
    causal_mask = nn.Transformer.generate_square_subsequent_mask(LENGTH)
    out, _ = attn(x, x, x, attn_mask=causal_mask, is_causal=True, need_weights=False)
    torch.testing.assert_close(out, attn(x), rtol=0, atol=0)
    out2, _ = attn(x, x, x, is_causal=True, need_weights=False)  # no mask needed
    assert torch.equal(out, out2)


@pytest.mark.parametrize("call, error, message", [
    (lambda a, x: a(x, x.clone(), x, need_weights=False), ValueError, "self-attention"),
    (lambda a, x: a(x, x, torch.randn_like(x)), ValueError, "self-attention"),
    (lambda a, x: a(x, x, x, need_weights=True), ValueError, "need_weights"),
    (lambda a, x: a(x, x, x, need_weights=False,
                    attn_mask=torch.zeros(LENGTH, LENGTH)), ValueError, "attn_mask"),
    (lambda a, x: a(x, x, x, need_weights=False, is_causal=True,
                    attn_mask=torch.zeros(LENGTH, LENGTH)), ValueError, "is_causal=True"),
    (lambda a, x: a(x, x, x, key_padding_mask=torch.full((2, LENGTH), -1.0)), ValueError,
     "float key_padding_mask"),
    (lambda a, x: a(x, x, x, key_padding_mask=torch.zeros(2, LENGTH, dtype=torch.int64)),
     TypeError, "key_padding_mask"),
    (lambda a, x: a(x, x), TypeError, "without value"),
    (lambda a, x: a(x, _padding(), key_padding_mask=_padding()), TypeError, "given twice"),
    (lambda a, x: a(x, is_causal=True), TypeError, "nn.MultiheadAttention call"),
], ids=["cross-key", "cross-value", "need_weights", "attn_mask", "is_causal-mismatch",
        "float-mask-bias", "int-mask", "no-value", "mask-twice", "mha-kwargs-native"])
def test_unsupported_calls_are_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(_attention(), _x())


def test_is_causal_must_agree_with_the_module():
    x = _x()
    with pytest.raises(ValueError, match="conflicts with this module's causal=False"):
        _attention(causal=False)(x, x, x, is_causal=True, need_weights=False)
    with pytest.raises(ValueError, match="conflicts with this module's causal=True"):
        _attention(causal=True)(x, x, x, is_causal=False, need_weights=False)
    causal_mask = nn.Transformer.generate_square_subsequent_mask(LENGTH)
    with pytest.raises(ValueError, match="attn_mask"):  # a causal mask on a non-causal module
        _attention(causal=False)(x, x, x, attn_mask=causal_mask, need_weights=False)


def test_native_call_is_unchanged():
    attn, x, mask = _attention(), _x(), _padding()
    rotations = attn.make_rotations(LENGTH)
    out = attn(x, mask)
    assert isinstance(out, torch.Tensor)
    assert torch.equal(out, attn(x, key_padding_mask=mask))
    assert torch.equal(out, attn(x, mask, rotations=rotations))


def test_mha_call_compiles_without_graph_breaks():
    attn, x, mask = _attention(), _x(), _as_float_mask(_padding())

    def fn(x):
        return attn(x, x, x, key_padding_mask=mask, need_weights=False)[0]

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(x)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), fn(x), rtol=0, atol=0)


# ------------------------------------------------------------------------ replace_attention


class DenseSharedQK(nn.Module):
    """Dense shared-QK attention (docs/semantics.md §1 steps 4-6 with every key in the
    window) from an nn.MultiheadAttention's weights, the way replace_attention maps them:
    queries from the query projection without bias, values with bias, keys = normalised
    queries."""

    def __init__(self, mha, causal=False):
        super().__init__()
        self.mha, self.causal = mha, causal
        self.batch_first = mha.batch_first

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        x = query if self.batch_first else query.transpose(0, 1)
        B, L, E = x.shape
        H = self.mha.num_heads
        w, b = self.mha.in_proj_weight, self.mha.in_proj_bias
        qk = (x @ w[:E].T).view(B, L, H, -1).transpose(1, 2)
        v = (x @ w[2 * E:].T + b[2 * E:]).view(B, L, H, -1).transpose(1, 2)
        keys = qk * torch.rsqrt(qk.square().mean(-1, keepdim=True) + 1e-6) / qk.shape[-1] ** 0.5
        logits = qk @ keys.transpose(-1, -2)
        if key_padding_mask is not None:
            padding = (key_padding_mask if key_padding_mask.dtype == torch.bool
                       else torch.isneginf(key_padding_mask))
            logits = logits.masked_fill(padding[:, None, None, :], -1e9)
        if self.causal:
            logits = logits.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), -1e9)
        logits = logits.masked_fill(torch.eye(L, dtype=torch.bool), -1e5)
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, L, E)
        out = self.mha.out_proj(out)
        return (out if self.batch_first else out.transpose(0, 1)), None


def _encoder(batch_first=True, layers=2):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, 32, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def _with_dense_reference(encoder, causal=False):
    reference = copy.deepcopy(encoder)
    for layer in reference.layers:
        layer.self_attn = DenseSharedQK(layer.self_attn, causal)
    return reference


def test_replaced_weights_are_copied():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True)
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    attn = replace_attention(mha, bucket_size=8)
    assert isinstance(attn, LSHSelfAttention) and attn.n_heads == HEADS
    E = D_MODEL
    assert torch.equal(attn.to_qk.weight, mha.in_proj_weight[:E])
    assert torch.equal(attn.to_v.weight, mha.in_proj_weight[2 * E:])
    assert torch.equal(attn.to_out.weight, mha.out_proj.weight)
    folded = mha.out_proj.bias + mha.out_proj.weight @ mha.in_proj_bias[2 * E:]
    torch.testing.assert_close(attn.to_out.bias, folded)


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq_first"])
def test_encoder_matches_dense_shared_qk_attention(batch_first):
    encoder = _encoder(batch_first)
    with torch.no_grad():
        for layer in encoder.layers:
            layer.self_attn.in_proj_bias.normal_()  # a value bias to fold, a query bias to drop
    reference = _with_dense_reference(encoder)
    assert replace_attention(encoder, **WHOLE_SEQUENCE) is encoder
    kind = LSHSelfAttention if batch_first else SequenceFirstLSHAttention
    assert all(isinstance(layer.self_attn, kind) for layer in encoder.layers)
    x, mask = _x(), _padding()
    x = x if batch_first else x.transpose(0, 1)
    out = encoder(x, src_key_padding_mask=mask)
    expected = reference(x, src_key_padding_mask=mask)
    keep = ~mask if batch_first else ~mask.T
    torch.testing.assert_close(out[keep], expected[keep], rtol=1e-4, atol=1e-5)


def test_causal_encoder_matches_dense_shared_qk_attention():
    encoder = _encoder()
    reference = _with_dense_reference(encoder, causal=True)
    replace_attention(encoder, causal=True, **WHOLE_SEQUENCE)
    x = _x()
    causal_mask = nn.Transformer.generate_square_subsequent_mask(LENGTH)
    out = encoder(x, mask=causal_mask, is_causal=True)
    torch.testing.assert_close(out, reference(x, mask=causal_mask, is_causal=True),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="causal"):  # the encoder called without its mask
        encoder(x)


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq_first"])
def test_encoder_trains_and_evaluates(batch_first):
    encoder = _encoder(batch_first)
    replace_attention(encoder, bucket_size=4, n_hashes=2)
    x, mask = _x().requires_grad_(), _padding()
    inputs = x if batch_first else x.transpose(0, 1)
    encoder(inputs, src_key_padding_mask=mask).square().mean().backward()
    assert x.grad is not None and x.grad[~mask].abs().sum() > 0
    for name, p in encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    attention_grads = [p.grad for n, p in encoder.named_parameters() if "to_qk" in n]
    assert len(attention_grads) == 2 and all(g.abs().sum() > 0 for g in attention_grads)
    # eval under no_grad: nn.TransformerEncoderLayer's fused path must decline, not crash
    encoder.eval()
    with torch.no_grad():
        out = encoder(inputs, src_key_padding_mask=mask)
    assert torch.isfinite(out).all()


def test_encoder_with_nested_tensor_fast_path_enabled_still_runs():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, 32, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2)  # enable_nested_tensor=True by default
    replace_attention(encoder, bucket_size=4).eval()
    assert encoder.use_nested_tensor is False
    with torch.no_grad():
        out = encoder(_x(), src_key_padding_mask=_padding())
    assert out.shape == (2, LENGTH, D_MODEL)


def test_decoder_cross_attention_is_kept():
    torch.manual_seed(0)
    decoder = nn.TransformerDecoder(
        nn.TransformerDecoderLayer(D_MODEL, HEADS, 32, dropout=0.0, batch_first=True), 2)
    replace_attention(decoder, causal=True, bucket_size=4)
    for layer in decoder.layers:
        assert isinstance(layer.self_attn, LSHSelfAttention)
        assert isinstance(layer.multihead_attn, nn.MultiheadAttention)
    x, memory = _x(), torch.randn(2, 5, D_MODEL)
    causal_mask = nn.Transformer.generate_square_subsequent_mask(LENGTH)
    out = decoder(x, memory, tgt_mask=causal_mask, tgt_is_causal=True)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_replace_by_name_and_bad_requests():
    model = nn.ModuleDict({"a": nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True),
                           "b": nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True),
                           "c": nn.MultiheadAttention(D_MODEL, HEADS, kdim=8, vdim=8)})
    replace_attention(model, names=["a"])
    assert isinstance(model["a"], LSHSelfAttention)
    assert isinstance(model["b"], nn.MultiheadAttention)
    with pytest.raises(ValueError, match="not an nn.MultiheadAttention"):
        replace_attention(model, names=["a"])
    with pytest.raises(ValueError, match="c: .*kdim"):
        replace_attention(model)  # c is not self-attention: nothing is replaced
    assert isinstance(model["b"], nn.MultiheadAttention)
    with pytest.raises(TypeError, match="nn.Module"):
        replace_attention("model")
    with pytest.raises(ValueError, match="no nn.MultiheadAttention"):
        replace_attention(nn.Linear(2, 2))


def test_replaced_module_is_exported_from_the_package():
    assert rx.nn.replace_attention is replace_attention

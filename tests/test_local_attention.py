"""Tests of the local attention operators (docs/semantics.md §9) against
reformer_ext/reference.py: forward and backward on random inputs (odd lengths, a single chunk,
1-3 chunks with windows that wrap onto the same chunk, causal, padding masks with fully padded
rows), every dtype, float64 gradcheck, fake shapes and bitwise determinism across thread counts.
opcheck is in tests/test_opcheck.py, bad inputs in tests/test_local_attention_errors.py, the
module and the comparison with HF in tests/test_nn_local_attention.py."""

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import reformer_ext as rx

from _helpers import BF16, F16, F32, F64, cuda, local_attention_reference, ops

# (B, H, L, D, Dv, chunk_length, before, after, causal, mask)
CASES = [
    (2, 2, 16, 8, 8, 4, 1, 0, False, None),          # 4 chunks, look back
    (2, 3, 37, 8, 6, 8, 1, 1, True, "random"),        # odd L (tail), both sides, causal
    (1, 2, 5, 4, 4, 8, 1, 0, False, None),            # L < chunk_length: full attention
    (1, 2, 8, 4, 4, 8, 2, 3, True, "random"),         # L == chunk_length, window > 1 chunk
    (2, 2, 12, 4, 5, 6, 1, 1, False, "random"),       # 2 chunks: chunk c±1 is the same chunk
    (2, 2, 12, 4, 4, 6, 1, 1, True, None),            # ... causal
    (2, 1, 17, 4, 4, 6, 2, 1, False, "row"),          # 3 chunks, offsets -2 and +1 coincide
    (1, 2, 18, 4, 4, 6, 3, 2, True, "random"),        # 3 chunks, window of 6 (each twice)
    (2, 2, 20, 8, 8, 5, 0, 0, False, "random"),       # no neighbours
    (2, 2, 21, 8, 8, 5, 0, 2, True, "row"),           # look ahead only, causal
    (1, 1, 1, 3, 2, 1, 1, 0, True, None),             # L = 1
    (1, 2, 9, 4, 4, 1, 2, 1, False, "random"),        # chunk_length 1
]


def case_id(c):
    B, H, L, D, Dv, m, before, after, causal, mask = c
    return f"L{L}-m{m}-b{before}a{after}-{'causal' if causal else 'full'}-{mask}"


def make_inputs(c, dtype, seed=0, device="cpu"):
    B, H, L, D, Dv, m, before, after, causal, mask_kind = c
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, D, generator=g, dtype=F64)
    k = torch.randn(B, H, L, D, generator=g, dtype=F64)
    v = torch.randn(B, H, L, Dv, generator=g, dtype=F64)
    mask = None
    if mask_kind == "random":
        mask = torch.rand(B, L, generator=g) < 0.3
    elif mask_kind == "row":  # the last row entirely padding, the first row partly
        mask = torch.zeros(B, L, dtype=torch.bool)
        mask[-1] = True
        mask[0, ::3] = True
    go = torch.randn(B, H, L, Dv, generator=g, dtype=F64)
    gl = torch.randn(B, H, L, generator=g, dtype=F64)
    conv = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    if mask is not None:
        mask = mask.to(device)
    return conv(q), conv(k), conv(v), mask, conv(go), gl.to(device=device,
                                                            dtype=F64 if dtype == F64 else F32)


def kwargs(c, mask):
    B, H, L, D, Dv, m, before, after, causal, _ = c
    return dict(chunk_length=m, causal=causal, n_chunks_before=before, n_chunks_after=after,
                key_padding_mask=mask)


def run(c, q, k, v, mask, go, gl, fn):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    if fn is local_attention_reference:
        out, lse = fn(q, k, v, **kwargs(c, mask))
    else:
        out, lse = fn(q, k, v, return_lse=True, **kwargs(c, mask))
    torch.autograd.backward([out, lse], [go, gl.to(lse.dtype)])
    return out.detach(), lse.detach(), q.grad, k.grad, v.grad


NAMES = ("out", "lse", "grad_q", "grad_k", "grad_v")


def assert_close(ours, ref, rtol, atol, valid=None):
    for name, a, b in zip(NAMES, ours, ref):
        a, b = a.to(F64), b.to(F64)
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_forward_backward_match_reference(c, dtype):
    q, k, v, mask, go, gl = make_inputs(c, dtype, seed=hash(case_id(c)) % 1000)
    ours = run(c, q, k, v, mask, go, gl, rx.local_attention)
    assert ours[0].dtype == dtype and ours[1].dtype == (F64 if dtype == F64 else F32)
    ref = run(c, q.to(F64), k.to(F64), v.to(F64), mask, go.to(F64), gl.to(F64),
              local_attention_reference)
    tol = 1e-10 if dtype == F64 else 2e-4
    assert_close(ours, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
@pytest.mark.parametrize("c", CASES[:8], ids=case_id)
def test_low_precision_close_to_float64(c, dtype):
    q, k, v, mask, go, gl = make_inputs(c, dtype, seed=3)
    ours = run(c, q, k, v, mask, go, gl, rx.local_attention)
    assert ours[0].dtype == dtype and ours[1].dtype == F32
    assert all(t.dtype == dtype for t in ours[2:])
    # the reference on the same rounded inputs, in float64: the kernels accumulate in float32,
    # so what remains is the rounding of out and of the gradients to the low-precision dtype
    ref = run(c, q.to(F64), k.to(F64), v.to(F64), mask, go.to(F64), gl.to(F64),
              local_attention_reference)
    tol = 3e-2 if dtype == BF16 else 4e-3
    for name, a, b in zip(NAMES, ours, ref):
        err = (a.to(F64) - b).abs().max().item()
        scale = b.abs().max().item() + 1
        assert err <= tol * scale, f"{name}: {err} > {tol * scale}"


def test_padding_positions_are_zero_and_pass_no_gradient():
    c = (2, 2, 15, 4, 4, 4, 1, 1, False, "row")
    q, k, v, mask, go, gl = make_inputs(c, F64, seed=5)
    out, lse, dq, dk, dv = run(c, q, k, v, mask, go, gl, rx.local_attention)
    pad = mask[:, None, :]
    assert (out[pad.expand(out.shape[:3])] == 0).all()
    assert (lse[pad.expand(lse.shape)] == 0).all()
    for grad in (dq, dk, dv):
        assert (grad[pad.expand(grad.shape[:3])] == 0).all()
    _, _, stats = ops.local_attention(q, k, v, mask, 4, False, 1, 1, 0.5)
    assert (stats[pad.expand(stats.shape[:3])] == 0).all()
    # non-padding outputs do not depend on padded tokens
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for t in (q2, k2, v2):
        t[pad.expand(t.shape[:3])] = 1e3
    out2 = rx.local_attention(q2, k2, v2, chunk_length=4, n_chunks_after=1, key_padding_mask=mask)
    torch.testing.assert_close(out2, out, rtol=0, atol=1e-12)


def test_single_chunk_is_full_attention():
    # L <= chunk_length: plain softmax attention over all keys, whatever the window (HF's rule)
    q, k, v, _, _, _ = make_inputs((2, 2, 7, 4, 4, 8, 0, 0, False, None), F64, seed=8)
    full = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v
    lse = torch.logsumexp(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    # a chunk_length far above L too (the kernels then use chunks of L: no huge buffers)
    for chunk, before, after in [(8, 0, 0), (8, 1, 0), (8, 2, 3), (7, 1, 1), (2**30, 2, 1)]:
        out, l = rx.local_attention(q, k, v, chunk_length=chunk, n_chunks_before=before,
                                    n_chunks_after=after, return_lse=True)
        torch.testing.assert_close(out, full, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(l, lse, rtol=1e-12, atol=1e-12)


def test_repeated_chunk_counts_twice():
    # 2 chunks, window -1..+1: chunk 0 sees chunk 1 at offsets -1 and +1, so chunk 1's keys
    # count twice: log 2 is added to their logits (docs/semantics.md §9 step 2).
    q, k, v, _, _, _ = make_inputs((1, 1, 8, 4, 4, 4, 1, 1, False, None), F64, seed=9)
    s = q @ k.transpose(-1, -2) * 0.5
    s[..., :4, 4:] += math.log(2)
    s[..., 4:, :4] += math.log(2)
    expected = torch.softmax(s, dim=-1) @ v
    out = rx.local_attention(q, k, v, chunk_length=4, n_chunks_before=1, n_chunks_after=1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_default_scale_is_inverse_sqrt_dim():
    q, k, v, _, _, _ = make_inputs((1, 2, 10, 9, 4, 4, 1, 0, False, None), F64, seed=1)
    a = rx.local_attention(q, k, v, chunk_length=4)
    b = rx.local_attention(q, k, v, chunk_length=4, scale=1 / 3)
    assert torch.equal(a, b)


@pytest.mark.parametrize("c", [CASES[1], CASES[4], CASES[6], CASES[9]], ids=case_id)
def test_gradcheck_float64(c):
    q, k, v, mask, _, _ = make_inputs(c, F64, seed=11)
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))

    def f(q, k, v):
        out, lse = rx.local_attention(q, k, v, return_lse=True, **kwargs(c, mask))
        return out, lse

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-7)


def test_noncontiguous_and_different_value_dim():
    c = (2, 3, 19, 8, 5, 4, 1, 1, True, "random")
    q, k, v, mask, go, gl = make_inputs(c, F64, seed=12)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    out = rx.local_attention(qt, k, v, **kwargs(c, mask))
    ref, _ = local_attention_reference(q, k, v, **kwargs(c, mask))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_fake_tensor_shapes():
    with FakeTensorMode():
        q = torch.empty(2, 3, 11, 8)
        v = torch.empty(2, 3, 11, 6)
        out, lse, stats = ops.local_attention(q, q, v, None, 4, True, 1, 0, 0.5)
        assert out.shape == (2, 3, 11, 6) and lse.shape == (2, 3, 11)
        assert stats.shape == (2, 3, 11, 2) and lse.dtype == F32
        dq, dk, dv = ops.local_attention_backward(out, None, q, q, v, out, stats, None, 4, True,
                                                  1, 0, 0.5)
        assert dq.shape == q.shape and dk.shape == q.shape and dv.shape == v.shape


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_bitwise_deterministic_across_runs_and_thread_counts(dtype):
    c = (2, 3, 203, 16, 16, 8, 2, 1, True, "random")
    q, k, v, mask, go, gl = make_inputs(c, dtype, seed=13)
    n_threads = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 4, 1):
            torch.set_num_threads(threads)
            results.append(run(c, q, k, v, mask, go, gl, rx.local_attention))
    finally:
        torch.set_num_threads(n_threads)
    for other in results[1:]:
        for name, a, b in zip(NAMES, results[0], other):
            assert torch.equal(a, b), name


def test_compiles_without_graph_breaks():
    c = (1, 2, 13, 4, 4, 4, 1, 1, True, "random")
    q, k, v, mask, _, _ = make_inputs(c, F32, seed=14)

    def f(q, k, v):
        return rx.local_attention(q, k, v, **kwargs(c, mask)).sum()

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v))


@cuda
@pytest.mark.parametrize("dtype", [F64, F32, BF16], ids=["f64", "f32", "bf16"])
@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_cuda_matches_cpu(c, dtype):
    q, k, v, mask, go, gl = make_inputs(c, dtype, seed=15)
    cpu = run(c, q, k, v, mask, go, gl, rx.local_attention)
    dev = run(c, *(t.cuda() for t in (q, k, v)), None if mask is None else mask.cuda(),
              go.cuda(), gl.cuda(), rx.local_attention)
    tol = {F64: 1e-10, F32: 1e-4, BF16: 3e-2}[dtype]
    assert_close([t.cpu() for t in dev], cpu, rtol=tol, atol=tol)


def test_autocast_casts_q_k_v():
    c = (1, 2, 13, 8, 8, 4, 1, 1, True, "random")
    q, k, v, mask, _, _ = make_inputs(c, F32, seed=16)
    with torch.autocast("cpu", dtype=BF16):
        out, lse = rx.local_attention(q, k, v, return_lse=True, **kwargs(c, mask))
    assert out.dtype == BF16 and lse.dtype == F32
    expected = rx.local_attention(q.to(BF16), k.to(BF16), v.to(BF16), **kwargs(c, mask))
    assert torch.equal(out, expected)
    q64, k64, v64 = q.double(), k.double(), v.double()
    with torch.autocast("cpu", dtype=BF16):
        assert rx.local_attention(q64, k64, v64, **kwargs(c, mask)).dtype == F64
    # gradients flow back through the casts to the float32 inputs
    q.requires_grad_(True)
    with torch.autocast("cpu", dtype=BF16):
        rx.local_attention(q, k, v, **kwargs(c, mask)).float().sum().backward()
    assert q.grad.dtype == F32 and torch.isfinite(q.grad).all()

"""Tests of the chunked feed-forward (docs/semantics.md §2): torch.ops.reformer.chunked_ffn /
chunked_ffn_backward and rx.chunked_feed_forward (the module rx.nn.ChunkedFeedForward:
tests/test_nn_feed_forward.py; opcheck: tests/test_opcheck.py; bad inputs:
tests/test_chunked_ffn_errors.py).

The forward and every gradient are compared with a plain PyTorch FFN (F.linear, activation,
F.linear, autograd) for chunk sizes that divide N, do not divide it, exceed it and equal 1, every
activation, with and without biases, inputs of rank 2 to 4. Dropout is checked against a plain
FFN with the explicit mask of reformer_ext.ops.seeded_random.hidden_dropout_keep_mask, which is itself
checked against a scalar SplitMix64 in pure Python. CUDA tests compare the GPU with the CPU and
skip when no GPU is present.
"""

import math

import pytest
import torch

import reformer_ext as rx

from _helpers import (ACTIVATIONS, F32, F64, assert_rel, cuda, ffn_params, ffn_randn,
                      hidden_dropout_keep_mask, ops, plain_ffn)

_TOL = {F64: 1e-10, F32: 1e-5}


# ------------------------------------------------------------------------ helpers


def _forward_backward(fn, tensors, grad_out):
    """Runs fn on leaf copies of tensors; returns (output, [grads or None])."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    out = fn(*leaves)
    out.backward(grad_out)
    return out.detach(), [t.grad if t is not None else None for t in leaves]


def _check_against_plain(x, params, *, chunk_size, activation, tol, p=0.0, seed=0):
    w1, b1, w2, b2 = params
    grad_out = ffn_randn(x.shape, x.dtype, x.device, seed=7)
    keep = None
    if p > 0:
        n = x.numel() // x.shape[-1]
        keep = hidden_dropout_keep_mask(n, w1.shape[0], p, seed, device=x.device)

    def ours(x, w1, b1, w2, b2):
        return rx.chunked_feed_forward(x, w1, b1, w2, b2, chunk_size=chunk_size,
                                       activation=activation, dropout=p, dropout_seed=seed)

    def plain(x, w1, b1, w2, b2):
        return plain_ffn(x, w1, b1, w2, b2, activation, keep, p)

    tensors = (x, w1, b1, w2, b2)
    y, grads = _forward_backward(ours, tensors, grad_out)
    y_ref, grads_ref = _forward_backward(plain, tensors, grad_out)
    assert_rel(y, y_ref, tol, "y")
    for name, g, g_ref in zip(("x", "w1", "b1", "w2", "b2"), grads, grads_ref):
        if g_ref is None:
            assert g is None, name
        else:
            assert_rel(g, g_ref, tol, f"grad {name}")


def _mask_through_op(n_rows, d_ff, p, seed, chunk_size, device="cpu"):
    """Reads the op's keep mask off its output: x = 1, W1 = 1/d_ff (so the ReLU hidden is 1),
    W2 = identity (so y = keep / (1 - p) exactly)."""
    x = torch.ones(n_rows, d_ff, dtype=F64, device=device)
    w1 = torch.full((d_ff, d_ff), 1.0 / d_ff, dtype=F64, device=device)
    w2 = torch.eye(d_ff, dtype=F64, device=device)
    y = ops.chunked_ffn(x, w1, None, w2, None, chunk_size, "relu", p, torch.tensor(seed))
    scaled = y * (1.0 - p)
    assert torch.all((scaled == 0) | ((scaled - 1).abs() < 1e-12))
    return scaled > 0.5


def _splitmix64_word(seed, index):
    """Reference: the (index + 1)-th output of SplitMix64 seeded with seed, as unsigned int."""
    mask = (1 << 64) - 1
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


# ------------------------------------------------------------------------ agreement with a plain FFN

# N = 24 positions: 8 divides N, 5 does not, 100 exceeds N, 1 is one position per chunk.
CHUNKS = [8, 5, 100, 1]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_matches_plain_ffn(dtype, bias, activation, chunk_size):
    x = ffn_randn((3, 8, 16), dtype)
    params = ffn_params(16, 40, dtype, bias)
    _check_against_plain(x, params, chunk_size=chunk_size, activation=activation,
                         tol=_TOL[dtype])


@pytest.mark.parametrize("shape", [(12, 16), (2, 6, 16), (2, 3, 2, 16), (16,)],
                         ids=["rank2", "rank3", "rank4", "rank1"])
def test_ranks(shape):
    _check_against_plain(ffn_randn(shape), ffn_params(16, 24), chunk_size=5, activation="gelu",
                         tol=1e-10)


def test_noncontiguous_inputs():
    x = ffn_randn((16, 2, 8)).transpose(0, 2)  # (8, 2, 16), not contiguous
    w1, b1, w2, b2 = ffn_params(16, 24)
    w1 = w1.t().contiguous().t()  # same values, transposed strides
    assert not x.is_contiguous() and not w1.is_contiguous()
    _check_against_plain(x, (w1, b1, w2, b2), chunk_size=3, activation="silu", tol=1e-10)


def test_partial_gradients():
    """Only the gradients that are asked for are computed; the others are None."""
    x = ffn_randn((10, 8))
    w1, b1, w2, b2 = ffn_params(8, 12)
    w1.requires_grad_()
    y = rx.chunked_feed_forward(x, w1, b1, w2, b2, chunk_size=3)
    (g,) = torch.autograd.grad(y.sum(), [w1])
    _, grads_ref = _forward_backward(lambda *t: plain_ffn(*t), (x, w1, b1, w2, b2),
                                     torch.ones_like(x))
    assert_rel(g, grads_ref[1], 1e-10)
    for mask in ([True, False, False, False, False], [False, False, False, True, True],
                 [False, False, True, False, False]):
        grads = ops.chunked_ffn_backward(torch.ones_like(x), x, w1.detach(), b1, w2, b2, 3,
                                         "gelu", 0.0, None, mask)
        for got, wanted, ref in zip(grads, mask, grads_ref):
            assert (got is not None) == wanted
            if wanted:
                assert_rel(got, ref, 1e-10)


def test_empty_input():
    w1, b1, w2, b2 = ffn_params(8, 12)
    x = torch.zeros(0, 3, 8, dtype=F64, requires_grad=True)
    y = rx.chunked_feed_forward(x, w1, b1, w2, b2, chunk_size=4)
    assert y.shape == x.shape
    grads = ops.chunked_ffn_backward(y, x.detach(), w1, b1, w2, b2, 4, "gelu", 0.0, None, [True] * 5)
    assert grads[0].shape == x.shape
    for g, t in zip(grads[1:], (w1, b1, w2, b2)):
        assert g.shape == t.shape and not g.any()


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["nodrop", "dropout"])
def test_reduced_precision_close_to_float32(activation, dropout):
    """bfloat16/float16 (the ATen-composed path, also used on CUDA): error against a float32
    reference comparable to PyTorch's own low-precision error."""
    x = ffn_randn((64, 32), F32)
    params = ffn_params(32, 64, F32)
    grad_out = ffn_randn(x.shape, F32, seed=3)
    seed = 99
    keep = hidden_dropout_keep_mask(64, 64, dropout, seed) if dropout else None

    def plain(*t):
        return plain_ffn(*t, activation=activation, keep=keep, p=dropout)

    y32, g32 = _forward_backward(plain, (x, *params), grad_out)
    for dtype in (torch.bfloat16, torch.float16):
        low = [t.to(dtype) for t in (x, *params)]
        y, grads = _forward_backward(
            lambda *t: rx.chunked_feed_forward(*t, chunk_size=24, activation=activation,
                                               dropout=dropout, dropout_seed=seed),
            low, grad_out.to(dtype))
        y_pt, grads_pt = _forward_backward(plain, low, grad_out.to(dtype))
        for ours, theirs, ref in zip([y, *grads], [y_pt, *grads_pt], [y32, *g32]):
            assert ours.dtype == dtype
            err = (ours.float() - ref).abs().max().item()
            err_pt = (theirs.float() - ref).abs().max().item()
            assert err <= 2 * err_pt + 1e-3 * ref.abs().max().item(), (dtype, err, err_pt)


def test_deterministic():
    x = ffn_randn((50, 16), F32)
    params = ffn_params(16, 32, F32)
    grad_out = ffn_randn(x.shape, F32, seed=3)

    def run():
        return _forward_backward(
            lambda *t: rx.chunked_feed_forward(*t, chunk_size=7, dropout=0.3, dropout_seed=5),
            (x, *params), grad_out)

    (y1, g1), (y2, g2) = run(), run()
    assert torch.equal(y1, y2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


# ------------------------------------------------------------------------ gradcheck


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias,dropout", [(True, 0.0), (False, 0.0), (True, 0.4)],
                         ids=["bias", "nobias", "dropout"])
def test_gradcheck(activation, bias, dropout):
    x = ffn_randn((2, 3, 4)).requires_grad_()
    params = [t.requires_grad_() if t is not None else None for t in ffn_params(4, 6, bias=bias)]

    def fn(*args):
        return rx.chunked_feed_forward(*args, chunk_size=4, activation=activation,
                                       dropout=dropout, dropout_seed=11)

    assert torch.autograd.gradcheck(fn, (x, *params))


# ------------------------------------------------------------------------ dropout


def test_dropout_mask_definition():
    """hidden_dropout_keep_mask is the documented SplitMix64 rule (checked element by element
    against pure-Python integers), including seeds outside int64 and large indices."""
    p = 0.3
    threshold = int(math.ldexp(p, 64))
    for seed, d_ff, row_offset in ((0, 7, 0), (123456789, 5, 3), (-5, 3, 2**40), (2**63 + 9, 4, 1)):
        keep = hidden_dropout_keep_mask(6, d_ff, p, seed, row_offset=row_offset)
        for r in range(6):
            for c in range(d_ff):
                index = (row_offset + r) * d_ff + c
                word = _splitmix64_word(seed & ((1 << 64) - 1), index)
                # signed(word) >= -2^63 + p 2^64  <=>  (word + 2^63) mod 2^64 >= p 2^64
                expected = ((word + (1 << 63)) & ((1 << 64) - 1)) >= threshold
                assert bool(keep[r, c]) == expected, (seed, r, c)


def test_dropout_mask_of_op_matches_definition_and_chunking():
    n, d_ff, p, seed = 37, 24, 0.35, 987654321
    expected = hidden_dropout_keep_mask(n, d_ff, p, seed)
    for chunk_size in (1, 5, 16, 37, 100):
        assert torch.equal(_mask_through_op(n, d_ff, p, seed, chunk_size), expected), chunk_size


def test_dropout_rate():
    for p in (0.1, 0.5, 0.9):
        keep = _mask_through_op(512, 256, p, seed=2024, chunk_size=200)
        rate = 1.0 - keep.double().mean().item()
        assert abs(rate - p) < 0.01, (p, rate)  # about 8 standard deviations
    # rows and columns are not correlated: neighbouring elements agree about as often as chance
    keep = hidden_dropout_keep_mask(512, 256, 0.5, seed=1)
    for a, b in ((keep[:, 1:], keep[:, :-1]), (keep[1:], keep[:-1])):
        assert abs((a == b).double().mean().item() - 0.5) < 0.01


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("chunk_size", [1, 6, 64])
def test_dropout_matches_explicit_mask(activation, chunk_size):
    """Forward and all gradients equal a plain FFN with the explicit mask: the backward's
    recompute regenerates exactly the forward's mask."""
    _check_against_plain(ffn_randn((3, 9, 8)), ffn_params(8, 20), chunk_size=chunk_size,
                         activation=activation, tol=1e-10, p=0.4, seed=31337)


def test_dropout_seeds():
    x = ffn_randn((20, 8))
    params = ffn_params(8, 16)
    grad_out = ffn_randn(x.shape, seed=4)

    def run(seed, chunk_size=4):
        return _forward_backward(
            lambda *t: rx.chunked_feed_forward(*t, chunk_size=chunk_size, dropout=0.5,
                                               dropout_seed=seed), (x, *params), grad_out)

    y1, g1 = run(42)
    y2, g2 = run(42)
    assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(g1, g2))
    y3, _ = run(42, chunk_size=7)
    torch.testing.assert_close(y3, y1, rtol=1e-12, atol=1e-12)
    y4, _ = run(43)
    assert not torch.allclose(y4, y1)
    y5, _ = run(42 + 2**64)  # seeds are taken modulo 2^64
    assert torch.equal(y5, y1)
    # without a seed one is drawn from torch's RNG
    torch.manual_seed(0)
    a = rx.chunked_feed_forward(x, *params, dropout=0.5)
    torch.manual_seed(0)
    b = rx.chunked_feed_forward(x, *params, dropout=0.5)
    c = rx.chunked_feed_forward(x, *params, dropout=0.5)
    assert torch.equal(a, b) and not torch.equal(b, c)


# ------------------------------------------------------------------------ CUDA


@cuda
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_cuda_matches_cpu(dtype, activation, bias):
    x = ffn_randn((4, 33, 32), dtype)
    params = ffn_params(32, 96, dtype, bias)
    grad_out = ffn_randn(x.shape, dtype, seed=5)

    def fn(*t):
        return rx.chunked_feed_forward(*t, chunk_size=40, activation=activation, dropout=0.2,
                                       dropout_seed=77)

    y_cpu, g_cpu = _forward_backward(fn, (x, *params), grad_out)
    moved = [t.cuda() if t is not None else None for t in (x, *params)]
    y_gpu, g_gpu = _forward_backward(fn, moved, grad_out.cuda())
    tol = 1e-10 if dtype == F64 else 2e-3  # TF32 may be enabled for float32 GEMMs
    assert_rel(y_gpu.cpu(), y_cpu, tol, "y")
    for name, a, b in zip(("x", "w1", "b1", "w2", "b2"), g_gpu, g_cpu):
        assert (a is None) == (b is None)
        if a is not None:
            assert_rel(a.cpu(), b, tol, name)


@cuda
def test_cuda_dropout_mask_matches_cpu():
    n, d_ff, p, seed = 300, 64, 0.3, -123
    expected = hidden_dropout_keep_mask(n, d_ff, p, seed)
    assert torch.equal(hidden_dropout_keep_mask(n, d_ff, p, seed, device="cuda").cpu(), expected)
    assert torch.equal(_mask_through_op(n, d_ff, p, seed, 128, device="cuda").cpu(), expected)


@cuda
def test_cuda_memory_stays_chunked():
    """The (N, d_ff) hidden activation never exists: forward+backward peak memory beyond
    inputs, weights, outputs and gradients stays far below N * d_ff elements."""
    n, d_model, d_ff, chunk = 16384, 256, 1024, 512
    x = torch.randn(n, d_model, device="cuda", requires_grad=True)
    w1, b1, w2, b2 = [t.requires_grad_() for t in ffn_params(d_model, d_ff, F32, device="cuda")]
    grad_out = torch.randn(n, d_model, device="cuda")
    y = rx.chunked_feed_forward(x, w1, b1, w2, b2, chunk_size=chunk)
    y.backward(grad_out)  # warm-up: cuBLAS workspaces exist from here on
    del y
    for t in (x, w1, b1, w2, b2):
        t.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = rx.chunked_feed_forward(x, w1, b1, w2, b2, chunk_size=chunk)
    y.backward(grad_out)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    # y and the gradients: 2 * n * d_model + 2 * d_model * d_ff + ... floats (about 34 MiB);
    # the hidden buffers 2 * chunk * d_ff floats (4 MiB). One (n, d_ff) float32 tensor alone would
    # be 64 MiB, and the plain FFN holds several.
    unavoidable = 4 * (2 * n * d_model + 2 * d_model * d_ff + d_ff + d_model)
    assert extra - unavoidable < 4 * 4 * chunk * d_ff, (extra, unavoidable)

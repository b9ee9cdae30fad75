"""Reliability of the chunked feed-forward operator (rx.chunked_feed_forward /
torch.ops.reformer.chunked_ffn{,_backward}): numerical safety, determinism and resource hygiene.

- Numerical safety: float16/bfloat16 inputs of large magnitude give no inf/NaN where the float32
  computation from the same (rounded) inputs is finite, for every activation, in the forward
  and the backward; a NaN or inf in one batch element does not leak into the others.
- Determinism: bitwise-equal outputs and gradients across runs and thread counts (1, 2, 3, 4,
  7), with and without dropout, every dtype, up to thousands of rows at transformer widths.
- Resource hygiene: 1,000 forward+backward calls with stable resident memory; Python threads
  calling at once get the results of sequential calls.
"""

import os

import pytest
import torch
import torch.nn.functional as F

import reformer_ext as rx

from _helpers import assert_memory_flat_over_1000_calls, run_in_threads

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
NAMES = ("y", "grad_x", "grad_w1", "grad_b1", "grad_w2", "grad_b2")


def _inputs(shape, d_model, d_ff, seed, dtype=F32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, d_model, generator=g)
    w1 = torch.randn(d_ff, d_model, generator=g) / d_model ** 0.5
    b1 = torch.randn(d_ff, generator=g)
    w2 = torch.randn(d_model, d_ff, generator=g) / d_ff ** 0.5
    b2 = torch.randn(d_model, generator=g)
    go = torch.randn(*shape, d_model, generator=g)
    return [t.to(dtype) for t in (x, w1, b1, w2, b2, go)]


def _forward_backward(x, w1, b1, w2, b2, go, **kw):
    """y and the gradients of x, w1, b1, w2, b2 through rx.chunked_feed_forward, detached."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, w1, b1, w2, b2)]
    y = rx.chunked_feed_forward(*leaves, **kw)
    grads = torch.autograd.grad(y, leaves, go)
    return [y.detach(), *grads]


def _reference_fb(x, w1, b1, w2, b2, go, activation, dtype):
    """The same with plain PyTorch ops in `dtype` (no dropout), from the same inputs."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (x, w1, b1, w2, b2)]
    xr, w1r, b1r, w2r, b2r = leaves
    act = {"gelu": F.gelu, "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"),
           "relu": F.relu, "silu": F.silu}[activation]
    y = F.linear(act(F.linear(xr, w1r, b1r)), w2r, b2r)
    grads = torch.autograd.grad(y, leaves, go.to(dtype))
    return [y.detach(), *grads]


# ----------------------------------------------------------------------- numerical safety

LARGE = [
    # (dtype, x scale, weight scale): hidden activations in the thousands in float16 (outputs
    # near the top of its range), and far beyond float16's range in bfloat16.
    (F16, 30.0, 8.0),
    (F16, 300.0, 2.0),
    (BF16, 1e15, 1e3),
    (BF16, 1e30, 10.0),
]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype,x_scale,w_scale", LARGE,
                         ids=[f"{d}-x{s:g}-w{w:g}".replace("torch.", "") for d, s, w in LARGE])
def test_low_precision_large_magnitudes_stay_finite(dtype, x_scale, w_scale, activation):
    x, w1, b1, w2, b2, go = _inputs((3, 37), 32, 96, seed=1)
    finfo = torch.finfo(dtype)
    x = (x * x_scale).clamp(-finfo.max, finfo.max).to(dtype)
    w1, w2 = (w1 * w_scale).to(dtype), (w2 * w_scale).to(dtype)
    b1, b2, go = (b1 * x_scale).to(dtype), b2.to(dtype), go.to(dtype)
    ours = _forward_backward(x, w1, b1, w2, b2, go, chunk_size=16, activation=activation)
    ref = _reference_fb(x, w1, b1, w2, b2, go, activation, F32)
    assert torch.isfinite(ref[0]).all(), "the float32 reference itself overflows: bad case"
    for name, a, r in zip(NAMES, ours, ref):
        bad = ~torch.isfinite(a) & torch.isfinite(r.to(a.dtype))
        assert not bad.any(), (f"{name}: {int(bad.sum())} non-finite values where the float32 "
                               f"reference is finite")
    # Where finite, the output is right to the precision of the dtype (sums of 96 rounded terms).
    y, y_ref = ours[0].float(), ref[0]
    mag = float(y_ref.abs().max())
    assert float((y - y_ref).abs().max()) <= 64 * finfo.eps * mag


@pytest.mark.parametrize("dtype", [F64, F32, F16, BF16], ids=["f64", "f32", "f16", "bf16"])
@pytest.mark.parametrize("poison", ["x_nan", "x_inf", "grad_nan", "grad_inf"])
def test_non_finite_values_do_not_leak_across_batch(dtype, poison):
    """A NaN/inf in one batch element of x or of the output gradient changes nothing in the
    others' outputs or input gradients (the weight gradients sum over the batch: not checked).
    The chunks straddle batch elements (L=13, chunk 8), so rows of a poisoned and a clean
    element share one GEMM."""
    x, w1, b1, w2, b2, go = _inputs((3, 13), 16, 40, seed=2, dtype=dtype)
    kw = dict(chunk_size=8, activation="gelu", dropout=0.2, dropout_seed=7)
    clean = _forward_backward(x, w1, b1, w2, b2, go, **kw)
    value = float("nan") if poison.endswith("nan") else float("inf")
    x2, go2 = x.clone(), go.clone()
    (x2 if poison.startswith("x") else go2)[1, 6, 3] = value
    dirty = _forward_backward(x2, w1, b1, w2, b2, go2, **kw)
    for name, a, b in zip(NAMES[:2], clean, dirty):
        for other in (0, 2):
            assert torch.equal(a[other], b[other]), f"{name} of batch element {other} changed"
    # The poison was really there: it reaches its own batch element.
    assert not torch.isfinite(dirty[1][1]).all()


# ------------------------------------------------------------------------------ determinism

THREAD_COUNTS = (1, 2, 3, 4, 7)  # 7: more threads than this machine may have cores

DET = [
    dict(shape=(2, 150), d_model=64, d_ff=256, chunk=64, activation="gelu", dropout=0.0,
         dtype=F32),
    dict(shape=(3, 70), d_model=32, d_ff=128, chunk=50, activation="silu", dropout=0.3,
         dtype=F32),
    dict(shape=(1, 97), d_model=24, d_ff=72, chunk=16, activation="gelu_tanh", dropout=0.1,
         dtype=F64),
    dict(shape=(2, 61), d_model=32, d_ff=96, chunk=32, activation="relu", dropout=0.1,
         dtype=BF16),
    dict(shape=(2, 61), d_model=32, d_ff=96, chunk=1000, activation="gelu", dropout=0.0,
         dtype=F16),
]
# Transformer widths and thousands of rows, where a BLAS splits its work between threads: chunks
# of 341 rows (the last one of 10: MKL splits 5 to 11 rows between 2 threads on some CPUs, with
# different results) and one chunk of every row; every dtype.
DET += [
    dict(shape=(2, 1028), d_model=256, d_ff=1024, chunk=chunk, activation=act, dropout=p,
         dtype=dtype)
    for dtype, act, p in [(F32, "silu", 0.3), (F64, "gelu_tanh", 0.0), (F16, "gelu", 0.1),
                          (BF16, "relu", 0.2)]
    for chunk in (341, 4096)
]


def _det_run(c):
    x, w1, b1, w2, b2, go = _inputs(c["shape"], c["d_model"], c["d_ff"], seed=3,
                                    dtype=c["dtype"])
    return _forward_backward(x, w1, b1, w2, b2, go, chunk_size=c["chunk"],
                             activation=c["activation"], dropout=c["dropout"], dropout_seed=11)


@pytest.mark.parametrize("c", DET, ids=lambda c: f"{c['dtype']}-{c['activation']}-"
                                                 f"p{c['dropout']}-rows{c['shape'][0] * c['shape'][1]}-"
                                                 f"chunk{c['chunk']}".replace("torch.", ""))
def test_bitwise_deterministic_across_runs_and_thread_counts(c):
    """y and every gradient bitwise equal across runs and for 1, 2, 3, 4 and 7 threads."""
    n_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(THREAD_COUNTS[0])
        first = _det_run(c)
        for name, a, b in zip(NAMES, first, _det_run(c)):
            assert torch.equal(a, b), f"{name} differs between two runs"
        for n in THREAD_COUNTS[1:]:
            torch.set_num_threads(n)
            for name, a, b in zip(NAMES, first, _det_run(c)):
                assert torch.equal(a, b), f"{name} differs with {n} thread(s) vs 1"
    finally:
        torch.set_num_threads(n_threads)


# --------------------------------------------------------------------------- resource hygiene


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_one_thousand_iterations_keep_memory_flat():
    """1,000 forward+backward calls (with dropout: the mask path too) leave resident memory
    where it was after 100 calls: leaking one input-sized tensor (16 KiB) per call would add
    ~14 MiB."""
    x, w1, b1, w2, b2, go = _inputs((2, 64), 32, 64, seed=4)
    leaves = [t.requires_grad_() for t in (x, w1, b1, w2, b2)]
    calls = iter(range(1, 1001))

    def step():
        y = rx.chunked_feed_forward(*leaves, chunk_size=48, dropout=0.1, dropout_seed=next(calls))
        torch.autograd.grad(y, leaves, go)

    assert_memory_flat_over_1000_calls(step)


def test_concurrent_python_threads_match_sequential_calls():
    """4 Python threads calling forward+backward at once (each with its own inputs, dtype and
    options) give bitwise the results of the same calls made one after another."""
    configs = []
    for k in range(4):
        tensors = _inputs((2, 30 + 9 * k), 16 + 8 * k, 48, seed=10 + k,
                          dtype=(F32, F64, BF16, F32)[k])
        kw = dict(chunk_size=8 + 5 * k, activation=ACTIVATIONS[k], dropout=0.1 * (k % 2),
                  dropout_seed=k)
        configs.append((tensors, kw))
    expected = [_forward_backward(*t, **kw) for t, kw in configs]
    results = run_in_threads([lambda c=c: _forward_backward(*c[0], **c[1]) for c in configs])
    for k in range(len(configs)):
        for rep in range(3):
            for name, a, b in zip(NAMES, expected[k], results[k][rep]):
                assert torch.equal(a, b), f"{name} differs in thread {k}, call {rep}"

"""Dropout on the attention probabilities of LSH attention (docs/semantics.md §1 "Dropout") and
local attention (§9 "Dropout"): the CPU kernels against the plain-PyTorch references with the
same seed (outputs and every gradient, float64), gradcheck, reproducibility, the mask's
statistics, thread-count determinism, p = 0 equal to the path without dropout, low-precision
dtypes, the modules' attention_dropout and torch.compile."""

import pytest
import torch

import reformer_ext as rx
import reformer_ext.nn as rnn
from reformer_ext.ops.seeded_random import attention_dropout_keep_mask
from reformer_ext.reference import local_attention_reference, lsh_attention_reference

from _helpers import cuda, ops

SEED = torch.tensor(1234567, dtype=torch.int64)

# (L, m, R, nb/2, causal, before, after, padding): several rounds with the cyclic wrap, causal,
# padding and a tail, look-ahead, few chunks (offsets wrapping onto one chunk).
LSH_CONFIGS = [
    (37, 8, 3, 2, False, 1, 0, True),
    (40, 8, 2, 3, True, 1, 1, False),
    (16, 4, 2, 2, False, 2, 2, True),
    (9, 16, 2, 1, False, 1, 0, False),
]
# (L, m, causal, before, after, padding): local windows with repeats (few chunks), one chunk.
LOCAL_CONFIGS = [
    (37, 8, False, 1, 0, True),
    (40, 8, True, 1, 1, False),
    (12, 4, False, 2, 2, True),   # 3 chunks, 5 offsets: repeated listings
    (10, 16, False, 1, 1, True),  # a single chunk: full attention
]


def _inputs(L, D=8, Dv=6, B=2, H=2, dtype=torch.float64, padding=False, seed=0, k=False):
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(B, H, L, D, generator=g, dtype=torch.float64),
         torch.randn(B, H, L, Dv, generator=g, dtype=torch.float64)]
    if k:
        t.insert(1, torch.randn(B, H, L, D, generator=g, dtype=torch.float64))
    t = [x.to(dtype).requires_grad_() for x in t]
    mask = None
    if padding:
        mask = torch.zeros(B, L, dtype=torch.bool)
        mask[1, -4:] = True
        mask[0, 1] = True
    return t, mask, g


def _lsh_op(qk, v, rot, mask, m, causal, before, after, p, seed, scale=0.8):
    out, lse, _, _ = ops.lsh_attention(qk, v, rot, mask, m, causal, before, after, scale, [], p,
                                       seed)
    return out, lse


def _local_op(q, k, v, mask, m, causal, before, after, p, seed, scale=0.4):
    out, lse, _ = ops.local_attention(q, k, v, mask, m, causal, before, after, scale, p, seed)
    return out, lse


def _grads(out, lse, inputs, g):
    go = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    gl = torch.randn(lse.shape, generator=g, dtype=torch.float64).to(lse.dtype)
    return torch.autograd.grad((out * go).sum() + (lse * gl).sum(), inputs)


def _valid(mask, L):
    return torch.ones(2, 1, L, 1, dtype=torch.bool) if mask is None else ~mask[:, None, :, None]


# ------------------------------------------------------------------------ kernel vs reference


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("cfg", LSH_CONFIGS)
def test_lsh_matches_reference(cfg, p):
    L, m, R, half, causal, before, after, padding = cfg
    (qk, v), mask, g = _inputs(L, padding=padding)
    rot = torch.randn(1, 8, R, half, generator=g, dtype=torch.float64)
    out, lse = _lsh_op(qk, v, rot, mask, m, causal, before, after, p, SEED)
    ref_out, ref_lse = lsh_attention_reference(
        qk, v, rot, bucket_size=m, causal=causal, key_padding_mask=mask, n_chunks_before=before,
        n_chunks_after=after, scale=0.8, dropout_p=p, dropout_seed=SEED)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-10)
    g2 = torch.Generator().manual_seed(5)
    grads = _grads(out, lse, (qk, v), g2)
    g2 = torch.Generator().manual_seed(5)
    ref_grads = _grads(ref_out, ref_lse, (qk, v), g2)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # dropout did something: the output differs from the undropped one
    plain, _ = _lsh_op(qk, v, rot, mask, m, causal, before, after, 0.0, None)
    assert not torch.allclose(out, plain)


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("cfg", LOCAL_CONFIGS)
def test_local_matches_reference(cfg, p):
    L, m, causal, before, after, padding = cfg
    (q, k, v), mask, g = _inputs(L, padding=padding, k=True)
    out, lse = _local_op(q, k, v, mask, m, causal, before, after, p, SEED)
    ref_out, ref_lse = local_attention_reference(
        q, k, v, chunk_length=m, causal=causal, key_padding_mask=mask, n_chunks_before=before,
        n_chunks_after=after, scale=0.4, dropout_p=p, dropout_seed=SEED)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-10)
    g2 = torch.Generator().manual_seed(5)
    grads = _grads(out, lse, (q, k, v), g2)
    g2 = torch.Generator().manual_seed(5)
    ref_grads = _grads(ref_out, ref_lse, (q, k, v), g2)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    plain, _ = _local_op(q, k, v, mask, m, causal, before, after, 0.0, None)
    assert not torch.allclose(out, plain)


def test_functional_api_matches_reference():
    (qk, v), mask, g = _inputs(30, padding=True)
    rot = torch.randn(2, 8, 2, 2, generator=g, dtype=torch.float64)
    out = rx.lsh_attention(qk, v, rotations=rot, bucket_size=4, key_padding_mask=mask,
                           dropout=0.3, dropout_seed=99)
    ref, _ = lsh_attention_reference(qk, v, rot, bucket_size=4, key_padding_mask=mask,
                                     dropout_p=0.3, dropout_seed=99)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    (q, k, v), mask, _ = _inputs(30, padding=True, k=True)
    out = rx.local_attention(q, k, v, chunk_length=8, key_padding_mask=mask, dropout=0.3,
                             dropout_seed=torch.tensor(99))
    ref, _ = local_attention_reference(q, k, v, chunk_length=8, key_padding_mask=mask,
                                       dropout_p=0.3, dropout_seed=99)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------ gradcheck


def test_gradcheck_lsh():
    (qk, v), mask, g = _inputs(11, D=4, Dv=3, B=1, padding=False)
    rot = torch.randn(1, 4, 2, 2, generator=g, dtype=torch.float64)
    torch.autograd.gradcheck(
        lambda a, b: _lsh_op(a, b, rot, None, 4, True, 1, 0, 0.3, SEED), (qk, v))


def test_gradcheck_local():
    (q, k, v), mask, _ = _inputs(11, D=4, Dv=3, B=1, padding=False, k=True)
    torch.autograd.gradcheck(
        lambda a, b, c: _local_op(a, b, c, None, 4, False, 1, 1, 0.3, SEED), (q, k, v))


# ------------------------------------------------------------------------ reproducibility


def _lsh_run(seed, p=0.3):
    (qk, v), mask, g = _inputs(37, dtype=torch.float32, padding=True)
    rot = torch.randn(1, 8, 3, 2, generator=g)
    out, lse = _lsh_op(qk, v, rot, mask, 8, False, 1, 1, p, seed)
    return (out, lse) + _grads(out, lse, (qk, v), torch.Generator().manual_seed(1))


def _local_run(seed, p=0.3):
    (q, k, v), mask, _ = _inputs(37, dtype=torch.float32, padding=True, k=True)
    out, lse = _local_op(q, k, v, mask, 8, False, 1, 1, p, seed)
    return (out, lse) + _grads(out, lse, (q, k, v), torch.Generator().manual_seed(1))


@pytest.mark.parametrize("run", [_lsh_run, _local_run])
def test_reproducible_and_seed_dependent(run):
    a, b = run(torch.tensor(7)), run(torch.tensor(7))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    c = run(torch.tensor(8))
    assert not torch.equal(a[0], c[0])
    assert torch.equal(a[1], c[1])  # lse is that of the undropped weights


@pytest.mark.parametrize("run", [_lsh_run, _local_run])
def test_thread_count_determinism(run):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(SEED)
        torch.set_num_threads(max(2, threads))
        many = run(SEED)
    finally:
        torch.set_num_threads(threads)
    for x, y in zip(one, many):
        assert torch.equal(x, y)


@pytest.mark.parametrize("run", [_lsh_run, _local_run])
def test_p0_is_the_plain_path(run):
    plain = run(None, p=0.0)
    seeded = run(SEED, p=0.0)
    for x, y in zip(plain, seeded):
        assert torch.equal(x, y)


def test_p0_default_arguments_bitwise():
    """Calls without the dropout arguments are the old schema's calls: same bits as p = 0."""
    (qk, v), mask, g = _inputs(37, dtype=torch.float32, padding=True)
    rot = torch.randn(1, 8, 3, 2, generator=g)
    a = ops.lsh_attention(qk, v, rot, mask, 8, False, 1, 1, 0.8)
    b = ops.lsh_attention(qk, v, rot, mask, 8, False, 1, 1, 0.8, [], 0.0, SEED)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    (q, k, v), mask, _ = _inputs(37, dtype=torch.float32, padding=True, k=True)
    a = ops.local_attention(q, k, v, mask, 8, True, 1, 0, 0.4)
    b = ops.local_attention(q, k, v, mask, 8, True, 1, 0, 0.4, 0.0, SEED)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# ------------------------------------------------------------------------ statistics


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_fraction_dropped_through_the_kernel(p):
    """Uniform weights (q = k = 0) and one-hot values: out[i, j] is z_ij / 16 on the 16 keys of
    the window, so the zeros among them are the dropped weights."""
    B, H, L, m = 2, 2, 64, 8
    q = torch.zeros(B, H, L, 4, dtype=torch.float64)
    v = torch.eye(L, dtype=torch.float64).expand(B, H, L, L).contiguous()
    out, _ = _local_op(q, q, v, None, m, False, 1, 0, p, SEED)
    pos = torch.arange(L)
    chunk = pos // m
    in_window = (chunk[None, :] == chunk[:, None]) | \
        (chunk[None, :] == (chunk[:, None] - 1) % (L // m))
    vals = out[..., in_window]
    kept = vals != 0
    torch.testing.assert_close(vals[kept], torch.full_like(vals[kept], 1 / (16 * (1 - p))))
    assert (out[..., ~in_window] == 0).all()
    frac = 1 - kept.double().mean().item()
    n = vals.numel()
    assert abs(frac - p) < 5 * (p * (1 - p) / n) ** 0.5


def test_mask_fraction_and_independence():
    p = 0.3
    idx = torch.arange(200_000)
    keep = attention_dropout_keep_mask(p, 42, 0, 0, idx // 1000, 0, idx % 1000, n_hashes=1,
                                       length=1000, window_slots=1)
    frac = 1 - keep.double().mean().item()
    assert abs(frac - p) < 5 * (p * (1 - p) / idx.numel()) ** 0.5
    other = attention_dropout_keep_mask(p, 43, 0, 0, idx // 1000, 0, idx % 1000, n_hashes=1,
                                        length=1000, window_slots=1)
    both_dropped = (~keep & ~other).double().mean().item()
    assert abs(both_dropped - p * p) < 0.01


@pytest.mark.parametrize("op", ["lsh", "local"])
def test_expectation_is_the_undropped_output(op):
    (qk, k, v), mask, g = _inputs(24, B=1, H=1, padding=False, k=True)
    rot = torch.randn(1, 8, 2, 2, generator=g, dtype=torch.float64)
    if op == "lsh":
        run = lambda p, s: _lsh_op(qk, v, rot, None, 4, False, 1, 0, p, s)[0]  # noqa: E731
    else:
        run = lambda p, s: _local_op(qk, k, v, None, 4, False, 1, 0, p, s)[0]  # noqa: E731
    plain = run(0.0, None).detach()
    n = 400
    mean = sum(run(0.3, torch.tensor(s)).detach() for s in range(n)) / n
    err = (mean - plain).abs().max().item()
    assert err < 0.12 * plain.abs().max().item(), err


# ------------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2),
                                        (torch.float16, 1e-2)])
def test_low_precision_against_float64_reference(dtype, tol):
    (qk, v), mask, g = _inputs(37, padding=True)
    rot = torch.randn(1, 8, 3, 2, generator=g, dtype=torch.float64)
    qk_l, v_l = (t.detach().to(dtype).requires_grad_() for t in (qk, v))
    out, lse = _lsh_op(qk_l, v_l, rot.float(), mask, 8, False, 1, 0, 0.2, SEED)
    q64, v64 = (t.detach().to(dtype).double().requires_grad_() for t in (qk, v))
    ref_out, ref_lse = lsh_attention_reference(q64, v64, rot, bucket_size=8,
                                               key_padding_mask=mask, scale=0.8, dropout_p=0.2,
                                               dropout_seed=SEED)
    torch.testing.assert_close(out.double(), ref_out, rtol=tol, atol=tol)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=tol, atol=tol)
    ga = _grads(out, lse, (qk_l, v_l), torch.Generator().manual_seed(3))
    gb = _grads(ref_out, ref_lse, (q64, v64), torch.Generator().manual_seed(3))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a.double(), b, rtol=4 * tol, atol=4 * tol)

    (q, k, v), mask, _ = _inputs(37, padding=True, k=True)
    ql, kl, vl = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    out, lse = _local_op(ql, kl, vl, mask, 8, True, 1, 1, 0.2, SEED)
    q64, k64, v64 = (t.detach().to(dtype).double().requires_grad_() for t in (q, k, v))
    ref_out, ref_lse = local_attention_reference(q64, k64, v64, chunk_length=8, causal=True,
                                                 key_padding_mask=mask, n_chunks_after=1,
                                                 scale=0.4, dropout_p=0.2, dropout_seed=SEED)
    torch.testing.assert_close(out.double(), ref_out, rtol=tol, atol=tol)
    ga = _grads(out, lse, (ql, kl, vl), torch.Generator().manual_seed(3))
    gb = _grads(ref_out, ref_lse, (q64, k64, v64), torch.Generator().manual_seed(3))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a.double(), b, rtol=4 * tol, atol=4 * tol)


# ------------------------------------------------------------------------ checks


def test_operator_checks():
    (qk, v), mask, g = _inputs(10)
    rot = torch.randn(1, 8, 2, 2, generator=g, dtype=torch.float64)
    with pytest.raises(ValueError, match="dropout_seed"):
        _lsh_op(qk, v, rot, None, 4, False, 1, 0, 0.2, None)
    with pytest.raises(ValueError, match="dropout_p"):
        _lsh_op(qk, v, rot, None, 4, False, 1, 0, 1.0, SEED)
    with pytest.raises(ValueError, match="dropout_seed"):
        _lsh_op(qk, v, rot, None, 4, False, 1, 0, 0.2, torch.tensor(1.0))
    with pytest.raises(ValueError, match="dropout"):
        rx.lsh_attention(qk, v, rotations=rot, bucket_size=4, dropout=-0.1)


# ------------------------------------------------------------------------ modules


@pytest.mark.parametrize("kind", ["lsh", "local"])
def test_module_attention_dropout_training_only(kind):
    torch.manual_seed(0)
    if kind == "lsh":
        mod = rnn.LSHSelfAttention(16, 2, bucket_size=4, n_hashes=2, attention_dropout=0.4,
                                   fixed_rotations=True)
        plain = rnn.LSHSelfAttention(16, 2, bucket_size=4, n_hashes=2, fixed_rotations=True)
    else:
        mod = rnn.LocalSelfAttention(16, 2, chunk_length=4, attention_dropout=0.4)
        plain = rnn.LocalSelfAttention(16, 2, chunk_length=4)
    plain.load_state_dict(mod.state_dict())
    x = torch.randn(2, 13, 16)
    mod.eval(), plain.eval()
    assert torch.equal(mod(x), plain(x))
    mod.train(), plain.train()
    torch.manual_seed(1)
    a = mod(x)
    torch.manual_seed(1)
    b = mod(x)
    assert torch.equal(a, b)  # the seed comes from torch's default generator
    assert not torch.allclose(a, plain(x))
    assert "attention_dropout=0.4" in repr(mod)
    a.sum().backward()


@pytest.mark.parametrize("kind", ["lsh", "local"])
def test_compile_fullgraph_module_with_attention_dropout(kind):
    torch.manual_seed(0)
    if kind == "lsh":
        mod = rnn.LSHSelfAttention(16, 2, bucket_size=4, n_hashes=2, attention_dropout=0.3,
                                   fixed_rotations=True)
    else:
        mod = rnn.LocalSelfAttention(16, 2, chunk_length=4, attention_dropout=0.3)
    mod.train()
    x = torch.randn(2, 13, 16, requires_grad=True)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    eager = mod(x)
    (ge,) = torch.autograd.grad(eager.sum(), x)
    torch.manual_seed(3)
    comp = compiled(x)
    (gc,) = torch.autograd.grad(comp.sum(), x)
    torch.testing.assert_close(comp, eager)
    torch.testing.assert_close(gc, ge)


# ------------------------------------------------------------------------ CUDA (FFMA kernels)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_cuda_matches_cpu(dtype):
    """Same seed, same mask on the GPU (the FFMA kernels; fp16 with D = Dv = 64 would take the
    tensor-core kernels without dropout, and falls back to the FFMA ones with it)."""
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.float16 else dict(rtol=1e-4, atol=1e-5)
    (qk, v), mask, g = _inputs(150, D=64, Dv=64, dtype=dtype, padding=True)
    rot = torch.randn(1, 64, 3, 4, generator=g)
    results = []
    for dev in ("cpu", "cuda"):
        a, b = (t.detach().to(dev).requires_grad_() for t in (qk, v))
        m = mask.to(dev)
        out, lse = _lsh_op(a, b, rot.to(dev), m, 16, True, 1, 1, 0.3, SEED)
        results.append([out, lse, *_grads(out, lse, (a, b), torch.Generator().manual_seed(2))])
    for x, y in zip(*results):
        torch.testing.assert_close(y.cpu().double(), x.double(), **tol)
    (q, k, v), mask, _ = _inputs(150, D=32, Dv=48, dtype=dtype, padding=True, k=True)
    results = []
    for dev in ("cpu", "cuda"):
        a, b, c = (t.detach().to(dev).requires_grad_() for t in (q, k, v))
        out, lse = _local_op(a, b, c, mask.to(dev), 16, False, 2, 1, 0.3, SEED)
        results.append([out, lse,
                        *_grads(out, lse, (a, b, c), torch.Generator().manual_seed(2))])
    for x, y in zip(*results):
        torch.testing.assert_close(y.cpu().double(), x.double(), **tol)

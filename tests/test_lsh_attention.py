"""Tests of the LSH attention operators against reformer_ext/reference.py.

Covers rx.lsh_attention / rx.lsh_buckets and the raw torch.ops.reformer.* operators:
forward and backward agreement with the reference (float64 tight, float32 ~1e-4,
bf16/fp16 relative to PyTorch's own low-precision error), gradcheck, fake/meta shapes,
determinism, default rotations and error messages. CUDA tests compare the GPU against the
CPU for the same inputs and skip when no GPU is present.

The cases, their inputs (bucket ties separated) and the comparisons are in tests/_helpers.py;
opcheck is in tests/test_opcheck.py.
"""

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import reformer_ext as rx

from _helpers import (BF16, F16, F32, F64, LSH_CASES, LSH_DET_CASE, assert_lsh_bitwise,
                      assert_lsh_close, assert_lsh_lowp, cuda, lsh_attention_reference,
                      lsh_buckets_reference, lsh_case, lsh_case_id, lsh_cotangents, lsh_inputs,
                      lsh_kwargs, lsh_ref_kwargs, lsh_seed, ops, run_lsh, run_lsh_reference)


# --------------------------------------------------------- agreement with the reference

@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("c", LSH_CASES, ids=lsh_case_id)
def test_forward_backward_match_reference(c, dtype):
    seed = lsh_seed(c)
    qk, v, rot, mask = lsh_inputs(c, dtype, seed)
    go, gl = lsh_cotangents(c, seed, dtype)
    ours = run_lsh(c, qk, v, rot, mask, go, gl)
    assert ours[0].dtype == dtype and ours[1].dtype == dtype
    ref = run_lsh_reference(c, qk, v, rot, mask, go, gl, F64)
    if dtype == F64:
        assert_lsh_close(ours, ref, rtol=1e-10, atol=1e-10)
    else:
        assert_lsh_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_larger_float32_case():
    c = lsh_case(B=2, H=2, L=300, D=16, Dv=16, m=16, R=4, half=10, causal=True, mask="suffix")
    qk, v, rot, mask = lsh_inputs(c, F32, 1)
    go, gl = lsh_cotangents(c, 1, F32)
    assert_lsh_close(run_lsh(c, qk, v, rot, mask, go, gl),
                     run_lsh_reference(c, qk, v, rot, mask, go, gl, F64), rtol=1e-4, atol=1e-4)


def test_float32_queries_that_only_see_themselves():
    # A query whose every valid logit is the -1e5 self logit has lse ~ -1e5, where a float32
    # lse is only exact to ~4e-3. Combining rounds (or recomputing P in backward) as
    # exp(lse_r - lse) then errs by ~0.4%; the weights must be normalised another way.
    c = lsh_case(B=1, H=2, L=40, D=8, m=2, R=4, half=4, causal=True, before=0, after=0)
    qk, v, rot, mask = lsh_inputs(c, F32, 2)
    go, gl = lsh_cotangents(c, 2, F32)
    ref = run_lsh_reference(c, qk, v, rot, mask, go, gl, F64)
    assert (ref[1] < -1e4).sum() >= 4, "the case must contain self-only queries"
    assert_lsh_close(run_lsh(c, qk, v, rot, mask, go, gl), ref, rtol=1e-4, atol=1e-4)


def test_gradient_through_lse_only_and_without_lse():
    c = lsh_case(L=21, R=4, causal=True, mask="random")
    qk, v, rot, mask = lsh_inputs(c, F64, 3)
    go, gl = lsh_cotangents(c, 3, F64)
    kw = lsh_kwargs(c, rot, mask)
    # Only lse receives a gradient.
    qk1, v1 = qk.clone().requires_grad_(), v.clone().requires_grad_()
    _, lse = rx.lsh_attention(qk1, v1, return_lse=True, **kw)
    ours = torch.autograd.grad((lse * gl).sum(), (qk1, v1), allow_unused=True)
    qk2, v2 = qk.clone().requires_grad_(), v.clone().requires_grad_()
    _, lse_ref = lsh_attention_reference(qk2, v2, rot, **lsh_ref_kwargs(c, mask))
    (ref,) = torch.autograd.grad((lse_ref * gl).sum(), (qk2,))  # lse does not depend on v
    torch.testing.assert_close(ours[0], ref, rtol=1e-10, atol=1e-10)
    assert ours[1] is None or (ours[1] == 0).all()
    # return_lse=False returns a tensor, and its backward has no lse cotangent.
    qk3, v3 = qk.clone().requires_grad_(), v.clone().requires_grad_()
    out = rx.lsh_attention(qk3, v3, **kw)
    assert isinstance(out, torch.Tensor)
    ours = torch.autograd.grad((out * go).sum(), (qk3, v3))
    qk4, v4 = qk.clone().requires_grad_(), v.clone().requires_grad_()
    out_ref, _ = lsh_attention_reference(qk4, v4, rot, **lsh_ref_kwargs(c, mask))
    ref = torch.autograd.grad((out_ref * go).sum(), (qk4, v4))
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_padding_rows_output_zero_and_get_zero_gradient():
    c = lsh_case(L=17, mask="row", causal=True, R=4)
    qk, v, rot, mask = lsh_inputs(c, F32, 4)
    go, gl = lsh_cotangents(c, 4, F32)
    out, lse, gq, gv = run_lsh(c, qk, v, rot, mask, go, gl)
    sel = mask[:, None, :].expand(c["B"], c["H"], c["L"])
    for t in (out, lse, gq, gv):
        assert torch.isfinite(t).all()
        assert (t[sel] == 0).all()


LOWP_CASES = [
    lsh_case(B=2, H=2, L=61, D=16, Dv=16, m=8, R=4, half=4, causal=True, mask="random"),
    lsh_case(B=1, H=2, L=45, D=16, Dv=8, m=4, R=2, half=6, Hr=1, before=2, after=1),
]


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
@pytest.mark.parametrize("c", LOWP_CASES, ids=lsh_case_id)
def test_low_precision_against_pytorch_error(c, dtype):
    seed = lsh_seed(c)
    qk, v, rot, mask = lsh_inputs(c, dtype, seed)
    go, gl = lsh_cotangents(c, seed, dtype)
    ours = run_lsh(c, qk, v, rot, mask, go, gl)
    assert ours[0].dtype == dtype and ours[1].dtype == F32
    assert ours[2].dtype == dtype and ours[3].dtype == dtype
    ref64 = run_lsh_reference(c, qk, v, rot, mask, go, gl, F64)
    ref_lp = [t.to(dtype) if i != 1 else t for i, t in
              enumerate(run_lsh_reference(c, qk, v, rot, mask, go, gl, F32))]
    assert_lsh_lowp(ours, ref64, ref_lp, dtype)


# ------------------------------------------------------------------- raw operators


def _expected_sorted_positions(qk, rot, mask, m):
    """Positions in [0, L') sorted by (round, bucket, position), as (B, H, R*L')."""
    B, H, L, _ = qk.shape
    Lp = -(-L // m) * m
    b = lsh_buckets_reference(qk, rot, mask)
    nb = 2 * rot.shape[-1]
    b = torch.nn.functional.pad(b, (0, Lp - L), value=nb)  # the tail is padding
    order = torch.argsort(b * Lp + torch.arange(Lp), dim=-1)
    return order.reshape(B, H, -1)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("c", [
    lsh_case(L=19, R=2, causal=True, mask="random"),
    lsh_case(L=8, R=4, Hr=1, before=0, after=0),
    lsh_case(L=30, m=8, R=3, half=2, mask="row", before=2, after=1, scale=0.7),
], ids=lsh_case_id)
def test_ops_match_reference(c, dtype):
    seed = lsh_seed(c)
    qk, v, rot, mask = lsh_inputs(c, dtype, seed)
    go, gl = lsh_cotangents(c, seed, dtype)
    args = (mask, c["m"], c["causal"], c["before"], c["after"], c["scale"])
    out, lse, sp, st = ops.lsh_attention(qk, v, rot, *args)
    Lp = -(-c["L"] // c["m"]) * c["m"]
    assert sp.dtype == torch.int32 and sp.shape == (c["B"], c["H"], c["R"] * Lp)
    # Accept positions either within the round (0..L'-1) or over all items (r*L' + i).
    assert torch.equal(sp.long() % Lp, _expected_sorted_positions(qk, rot, mask, c["m"]))
    ref = run_lsh_reference(c, qk, v, rot, mask, go, gl, F64)
    tol = dict(rtol=1e-10, atol=1e-10)
    if dtype == F32:
        tol = dict(rtol=1e-4, atol=1e-4)
    assert_lsh_close([out, lse], ref[:2], **tol)
    gq, gv = ops.lsh_attention_backward(go, gl, qk, v, out, st, sp, *args)
    assert_lsh_close([out, lse, gq, gv], ref, **tol)
    # grad_lse = None means a zero lse cotangent.
    gq0, gv0 = ops.lsh_attention_backward(go, None, qk, v, out, st, sp, *args)
    ref0 = run_lsh_reference(c, qk, v, rot, mask, go, torch.zeros_like(gl), F64)
    assert_lsh_close([out, lse, gq0, gv0], [ref[0], ref[1], ref0[2], ref0[3]], **tol)


@pytest.mark.parametrize("dtype", [F64, F32, BF16], ids=["f64", "f32", "bf16"])
@pytest.mark.parametrize("Hr", [1, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_lsh_buckets_equal_reference(dtype, Hr, masked):
    c = lsh_case(B=2, H=3, Hr=Hr, L=50, D=16, R=4, half=5, mask="row" if masked else None)
    qk, _, rot, mask = lsh_inputs(c, dtype, lsh_seed(c, str(dtype)))
    expect = lsh_buckets_reference(qk, rot, mask)
    for got in (rx.lsh_buckets(qk, rot, mask), ops.lsh_buckets(qk, rot, mask),
                rx.lsh_buckets(qk.transpose(1, 2).contiguous().transpose(1, 2), rot, mask)):
        assert got.dtype == torch.int64 and got.shape == (2, 3, 4, 50)
        assert torch.equal(got, expect)


# --------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("causal,mask,return_lse,Hr,before,after", [
    (False, None, False, 2, 1, 0),
    (True, None, True, 2, 1, 0),
    (False, "random", True, 1, 0, 0),
    (True, "row", True, 2, 2, 1),
    (False, None, True, 1, 1, 1),
])
def test_gradcheck(causal, mask, return_lse, Hr, before, after):
    c = lsh_case(B=2, H=2, L=9, D=4, Dv=3, m=3, R=2, half=2, Hr=Hr, causal=causal, mask=mask,
                 before=before, after=after)
    # A wide margin: the 1e-6 perturbations of gradcheck must not move a projection across a tie.
    qk, v, rot, mask = lsh_inputs(c, F64, lsh_seed(c, str(return_lse)), margin=1e-3)
    kw = lsh_kwargs(c, rot, mask)

    def f(qk, v):
        return rx.lsh_attention(qk, v, return_lse=return_lse, **kw)

    assert torch.autograd.gradcheck(f, (qk.requires_grad_(), v.requires_grad_()))


# ---------------------------------------------------------------------- fake, meta

def _check_shapes(B, H, L, D, Dv, R, m, dtype, out, lse, sp, gq, gv, buckets):
    Lp = -(-L // m) * m
    assert out.shape == (B, H, L, Dv) and out.dtype == dtype
    assert lse.shape == (B, H, L) and lse.dtype == (F64 if dtype == F64 else F32)
    assert sp.shape == (B, H, R * Lp) and sp.dtype == torch.int32
    assert gq.shape == (B, H, L, D) and gq.dtype == dtype
    assert gv.shape == (B, H, L, Dv) and gv.dtype == dtype
    assert buckets.shape == (B, H, R, L) and buckets.dtype == torch.int64


@pytest.mark.parametrize("dtype", [F64, F32, BF16], ids=["f64", "f32", "bf16"])
def test_fake_tensor_shapes(dtype):
    B, H, L, D, Dv, R, half, m = 2, 3, 21, 8, 6, 4, 3, 4
    with FakeTensorMode():
        qk = torch.randn(B, H, L, D, dtype=dtype)
        v = torch.randn(B, H, L, Dv, dtype=dtype)
        rot = torch.randn(1, D, R, half)
        mask = torch.zeros(B, L, dtype=torch.bool)
        out, lse, sp, st = ops.lsh_attention(qk, v, rot, mask, m, True, 1, 0, 1.0)
        gq, gv = ops.lsh_attention_backward(out, lse, qk, v, out, st, sp, mask, m, True, 1, 0,
                                            1.0)
        buckets = ops.lsh_buckets(qk, rot, mask)
        _check_shapes(B, H, L, D, Dv, R, m, dtype, out, lse, sp, gq, gv, buckets)
        o2, l2 = rx.lsh_attention(qk, v, n_hashes=R, bucket_size=m, n_buckets=2 * half,
                                  rotations=rot, key_padding_mask=mask, return_lse=True)
        assert o2.shape == out.shape and o2.dtype == dtype and l2.dtype == lse.dtype


def test_meta_shapes():
    B, H, L, D, Dv, R, half, m = 1, 2, 13, 8, 16, 2, 2, 8
    qk = torch.empty(B, H, L, D, device="meta")
    v = torch.empty(B, H, L, Dv, device="meta")
    rot = torch.empty(H, D, R, half, device="meta")
    out, lse, sp, st = ops.lsh_attention(qk, v, rot, None, m, False, 1, 0, 1.0)
    gq, gv = ops.lsh_attention_backward(out, None, qk, v, out, st, sp, None, m, False, 1, 0, 1.0)
    buckets = ops.lsh_buckets(qk, rot, None)
    _check_shapes(B, H, L, D, Dv, R, m, F32, out, lse, sp, gq, gv, buckets)
    assert out.device.type == "meta"


def _assert_compiled_matches_eager(qk, v, kw):
    """rx.lsh_attention(**kw) under torch.compile(fullgraph=True): output and gradients equal
    to eager mode."""
    def f(qk, v):
        out, lse = rx.lsh_attention(qk, v, return_lse=True, **kw)
        return out.sum() + lse.sum()

    qk1, v1 = qk.clone().requires_grad_(), v.clone().requires_grad_()
    eager = f(qk1, v1)
    eager_grads = torch.autograd.grad(eager, (qk1, v1))
    qk2, v2 = qk.clone().requires_grad_(), v.clone().requires_grad_()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(qk2, v2)
    compiled_grads = torch.autograd.grad(compiled, (qk2, v2))
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b)


def test_torch_compile_fullgraph():
    c = lsh_case(L=19, R=2, causal=True, mask="random")
    qk, v, rot, mask = lsh_inputs(c, F32, 6)
    _assert_compiled_matches_eager(qk, v, lsh_kwargs(c, rot, mask))


# -------------------------------------------------------------------- determinism

def _det_run(qk, v, rot, mask, go, gl, device="cpu"):
    return run_lsh(LSH_DET_CASE, qk, v, rot, mask, go, gl, device)


def test_deterministic_across_runs_and_threads():
    qk, v, rot, mask = lsh_inputs(LSH_DET_CASE, F32, 7)
    go, gl = lsh_cotangents(LSH_DET_CASE, 7, F32)
    first = _det_run(qk, v, rot, mask, go, gl)
    assert_lsh_bitwise(first, _det_run(qk, v, rot, mask, go, gl))
    n_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _det_run(qk, v, rot, mask, go, gl)
        torch.set_num_threads(2)
        two = _det_run(qk, v, rot, mask, go, gl)
    finally:
        torch.set_num_threads(n_threads)
    assert_lsh_bitwise(first, one)
    assert_lsh_bitwise(one, two)


# ------------------------------------------------------------- default rotations


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_default_rotations_from_generator(dtype):
    B, H, L, D, R, m = 2, 2, 23, 8, 3, 4
    g = torch.Generator().manual_seed(11)
    qk = torch.randn(B, H, L, D, generator=g, dtype=dtype)
    v = torch.randn(B, H, L, 5, generator=g, dtype=dtype)
    kw = dict(n_hashes=R, bucket_size=m, causal=True, return_lse=True)
    a = rx.lsh_attention(qk, v, generator=torch.Generator().manual_seed(3), **kw)
    b = rx.lsh_attention(qk, v, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # The contract: shape (H, D, n_hashes, n_buckets // 2) drawn with torch.randn from the
    # generator, float32 (float64 for float64 inputs), n_buckets = max(2, 2 * ceil(L / m)).
    nb = max(2, 2 * (-(-L // m)))
    rot = torch.randn(H, D, R, nb // 2, generator=torch.Generator().manual_seed(3), dtype=dtype)
    explicit = rx.lsh_attention(qk, v, rotations=rot, n_buckets=nb, **kw)
    assert torch.equal(a[0], explicit[0]) and torch.equal(a[1], explicit[1])
    other = rx.lsh_attention(qk, v, generator=torch.Generator().manual_seed(4), **kw)
    assert not torch.equal(a[0], other[0])
    # Without a generator the global RNG is used.
    torch.manual_seed(5)
    c = rx.lsh_attention(qk, v, **kw)
    torch.manual_seed(5)
    d = rx.lsh_attention(qk, v, **kw)
    assert torch.equal(c[0], d[0])


# ------------------------------------------------------------------------------ CUDA

# The CUDA kernels against this file's CPU cases live in tests/test_cuda.py (CUDA_CASES there).


@cuda
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_cuda_buckets_equal_cpu(dtype):
    c = lsh_case(B=2, H=4, Hr=1, L=513, D=64, R=4, half=16, mask="random")
    qk, _, rot, mask = lsh_inputs(c, dtype, 8)
    got = rx.lsh_buckets(qk.cuda(), rot.cuda(), mask.cuda())
    assert got.device.type == "cuda"
    assert torch.equal(got.cpu(), lsh_buckets_reference(qk, rot, mask))


@cuda
def test_cuda_deterministic():
    qk, v, rot, mask = lsh_inputs(LSH_DET_CASE, BF16, 9)
    go, gl = lsh_cotangents(LSH_DET_CASE, 9, BF16)
    assert_lsh_bitwise(_det_run(qk, v, rot, mask, go, gl, "cuda"),
                       _det_run(qk, v, rot, mask, go, gl, "cuda"))


# ------------------------------------------------- factorised bucket counts (list n_buckets)
# docs/semantics.md §1 step 1: n_buckets as a list of even factors (HF's / trax's num_buckets
# list). The foundation matrix (LSH_CASES) holds factorised cases for the attention itself.

FACTOR_SETS = [(6,), (2, 4), (4, 6), (2, 4, 6), (8, 2, 4)]


@pytest.mark.parametrize("dtype", [F64, F32, BF16, F16], ids=["f64", "f32", "bf16", "f16"])
@pytest.mark.parametrize("factors", FACTOR_SETS, ids=lambda f: "x".join(map(str, f)))
@pytest.mark.parametrize("Hr,masked", [(1, False), (3, True)])
def test_factorised_lsh_buckets_equal_reference(dtype, factors, Hr, masked):
    c = lsh_case(B=2, H=3, Hr=Hr, L=41, D=16, R=3, factors=factors,
                 mask="row" if masked else None)
    qk, _, rot, mask = lsh_inputs(c, dtype, lsh_seed(c, str(dtype)))
    expect = lsh_buckets_reference(qk, rot, mask, bucket_factors=factors)
    got = rx.lsh_buckets(qk, rot, mask, bucket_factors=list(factors))
    assert got.dtype == torch.int64 and got.shape == (2, 3, 3, 41)
    assert torch.equal(got, expect)
    assert torch.equal(ops.lsh_buckets(qk, rot, mask, list(factors)), expect)
    n_buckets = math.prod(factors)
    assert int(got.max()) <= n_buckets and int(got.min()) >= 0
    if masked:
        assert bool((got[1] == n_buckets).all())  # batch row 1 is all padding


def test_factorised_buckets_spread_over_every_digit():
    # Every factor's digit varies: the mixed-radix combination covers the whole range.
    factors = [4, 6, 2]
    g = torch.Generator().manual_seed(3)
    qk = torch.randn(1, 1, 4000, 8, generator=g)
    rot = torch.randn(1, 8, 1, sum(factors) // 2, generator=g)
    got = rx.lsh_buckets(qk, rot, bucket_factors=factors)
    assert set(got.unique().tolist()) == set(range(math.prod(factors)))


@pytest.mark.parametrize("dtype", [F64, F32, BF16], ids=["f64", "f32", "bf16"])
def test_single_factor_is_the_int_bitwise(dtype):
    c = lsh_case(B=2, H=2, Hr=1, L=57, D=8, R=2, half=6, causal=True, mask="random")
    qk, v, rot, mask = lsh_inputs(c, dtype, lsh_seed(c, "single" + str(dtype)))
    assert torch.equal(rx.lsh_buckets(qk, rot, mask, bucket_factors=[12]),
                       rx.lsh_buckets(qk, rot, mask))
    args = (qk, v, rot, mask, 4, True, 1, 0, 1.0)
    for a, b in zip(ops.lsh_attention(*args, [12]), ops.lsh_attention(*args)):
        assert torch.equal(a, b)
    kw = lsh_kwargs(c, rot, mask)
    assert torch.equal(rx.lsh_attention(qk, v, **{**kw, "n_buckets": [12]}),
                       rx.lsh_attention(qk, v, **kw))


def test_factorised_many_buckets_use_the_comparison_sort():
    # prod(factors) far above L' (the CPU sort switches from counting to comparison sort).
    c = lsh_case(B=1, H=2, Hr=1, L=45, D=8, m=5, R=2, factors=(4096, 2048), mask="random")
    qk, v, rot, mask = lsh_inputs(c, F64, lsh_seed(c))
    go, gl = lsh_cotangents(c, 1, F64)
    ours = run_lsh(c, qk, v, rot, mask, go, gl)
    assert_lsh_close(ours, run_lsh_reference(c, qk, v, rot, mask, go, gl, F64), 1e-10, 1e-10)
    _, _, sp, _ = ops.lsh_attention(qk, v, rot, mask, 5, False, 1, 0, 1.0, [4096, 2048])
    buckets = lsh_buckets_reference(qk, rot, mask, bucket_factors=(4096, 2048))
    keys = torch.gather(buckets, 3, sp.view(1, 2, 2, 45).long())  # L' = L: no tail
    assert bool((keys[..., 1:] >= keys[..., :-1]).all())


def test_factorised_buckets_follow_huggingface():
    # HF's ReformerAttention._hash_vectors with num_buckets as a list, on the same rotations
    # (HF draws them with torch.randn after torch.manual_seed(hash_seed)).
    pytest.importorskip("transformers")
    from transformers import ReformerConfig
    from transformers.models.reformer.modeling_reformer import LSHSelfAttention as HFLSH

    factors, seed, B, H, L, D, R = [4, 6, 8], 1234, 2, 3, 64, 16, 3
    config = ReformerConfig(num_attention_heads=H, attention_head_size=D, hidden_size=H * D,
                            num_buckets=factors, num_hashes=R, hash_seed=seed,
                            lsh_attn_chunk_length=16)
    hf = HFLSH(config)
    g = torch.Generator().manual_seed(5)
    qk = torch.randn(B, H, L, D, generator=g)
    hf_buckets = hf._hash_vectors(qk, R, None).view(B, H, R, L)
    n_buckets = math.prod(factors)
    hf_buckets = hf_buckets - (torch.arange(R) * n_buckets).view(1, 1, R, 1)
    torch.manual_seed(seed)
    rot = torch.randn(H, D, R, sum(factors) // 2)
    assert torch.equal(rx.lsh_buckets(qk, rot, bucket_factors=factors), hf_buckets)
    assert torch.equal(lsh_buckets_reference(qk, rot, bucket_factors=factors), hf_buckets)


@pytest.mark.parametrize("factors,causal,mask", [((2, 4), False, None),
                                                 ((4, 2, 2), True, "random")])
def test_factorised_gradcheck(factors, causal, mask):
    c = lsh_case(B=2, H=2, L=9, D=4, Dv=3, m=3, R=2, Hr=1, factors=factors, causal=causal,
                 mask=mask)
    qk, v, rot, mask = lsh_inputs(c, F64, lsh_seed(c), margin=1e-3)
    kw = lsh_kwargs(c, rot, mask)
    assert kw["n_buckets"] == list(factors)

    def f(qk, v):
        return rx.lsh_attention(qk, v, return_lse=True, **kw)

    assert torch.autograd.gradcheck(f, (qk.requires_grad_(), v.requires_grad_()))


def test_factorised_random_rotations_and_default_draw():
    qk = torch.randn(2, 3, 20, 8)
    rot = rx.random_rotations(qk, 2, [32, 64])
    assert rot.shape == (3, 8, 2, 48) and rot.dtype == F32
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    v = torch.randn(2, 3, 20, 8)
    a = rx.lsh_attention(qk, v, n_buckets=[4, 6], bucket_size=4, generator=g1)
    rot = rx.random_rotations(qk, 4, [4, 6], generator=g2)
    b = rx.lsh_attention(qk, v, n_buckets=[4, 6], bucket_size=4, rotations=rot)
    assert torch.equal(a, b)


def test_factorised_fake_shapes_and_compile():
    c = lsh_case(L=19, R=2, causal=True, mask="random", factors=(2, 4))
    qk, v, rot, mask = lsh_inputs(c, F32, 6)
    with FakeTensorMode() as mode:
        fq, fv, fr = (mode.from_tensor(t) for t in (qk, v, rot))
        fm = mode.from_tensor(mask)
        out, lse, sp, st = ops.lsh_attention(fq, fv, fr, fm, 4, True, 1, 0, 1.0, [2, 4])
        assert out.shape == v.shape and sp.shape == (2, 2, 2 * 20)
        assert ops.lsh_buckets(fq, fr, fm, [2, 4]).shape == (2, 2, 2, 19)
        with pytest.raises(ValueError, match="bucket_factors"):
            ops.lsh_buckets(fq, fr, fm, [2, 6])
    _assert_compiled_matches_eager(qk, v, lsh_kwargs(c, rot, mask))

"""CUDA kernels of the reformer operators against the CPU kernel and reference.py.

Every test needs a CUDA device and is skipped without one. The LSH attention cases are the
foundation matrix of tests/test_lsh_attention.py (LSH_CASES in tests/_helpers.py), run on the GPU
in float32, bfloat16 and float16, plus float64 against the float64 reference; then shapes that
exercise the kernels' tiling (several CTAs per chunk, head dims 32/64/128, windows of many
chunks), gradcheck in float64, bitwise determinism, the head-dim error, and the chunked
feed-forward on CUDA against the CPU. opcheck on CUDA tensors: tests/test_opcheck.py.
"""

import pytest
import torch

import reformer_ext as rx

from _helpers import (BF16, F16, F32, F64, LSH_CASES, LSH_DET_CASE, assert_lsh_bitwise,
                      assert_lsh_close, assert_lsh_lowp, lsh_buckets_reference, lsh_case,
                      lsh_case_id, lsh_cotangents, lsh_inputs, lsh_kwargs, lsh_seed, ops, run_lsh,
                      run_lsh_reference)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _compare_to_cpu_and_reference(c, dtype, seed=None):
    seed = lsh_seed(c) if seed is None else seed
    qk, v, rot, mask = lsh_inputs(c, dtype, seed)
    go, gl = lsh_cotangents(c, seed, dtype)
    on_gpu = run_lsh(c, qk, v, rot, mask, go, gl, device="cuda")
    on_cpu = run_lsh(c, qk, v, rot, mask, go, gl)
    for a, b in zip(on_gpu, on_cpu):
        assert a.dtype == b.dtype and a.shape == b.shape
    ref64 = run_lsh_reference(c, qk, v, rot, mask, go, gl, F64)
    if dtype == F64:
        assert_lsh_close(on_gpu, ref64, rtol=1e-10, atol=1e-10)
    elif dtype == F32:
        assert_lsh_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-5)
        assert_lsh_close(on_gpu, ref64, rtol=1e-4, atol=1e-4)
    else:
        ref_lp = [t.to(dtype) if i != 1 else t
                  for i, t in enumerate(run_lsh_reference(c, qk, v, rot, mask, go, gl, F32))]
        assert_lsh_lowp(on_gpu, ref64, ref_lp, dtype)


@pytest.mark.parametrize("dtype", [F64, F32, BF16, F16], ids=["f64", "f32", "bf16", "f16"])
@pytest.mark.parametrize("c", LSH_CASES, ids=lsh_case_id)
def test_foundation_matrix_on_cuda(c, dtype):
    _compare_to_cpu_and_reference(c, dtype)


# Mid-sized shapes: several CTAs per chunk, every head-dim bucket, D != Dv, strided inputs; the
# sorted positions (hash + CUB sort) must equal the CPU's exactly.
CUDA_CASES = [
    lsh_case(B=2, H=2, L=300, D=32, Dv=32, m=16, R=4, half=8, causal=True, mask="row"),
    lsh_case(B=1, H=2, Hr=1, L=1000, D=64, Dv=64, m=64, R=2, half=8),
    lsh_case(B=1, H=2, L=77, D=128, Dv=64, m=32, R=8, half=2, before=2, after=1, noncontig=True),
    lsh_case(B=2, H=2, L=257, D=64, Dv=64, m=32, R=4, half=4, mask="random", before=0, after=0),
    lsh_case(B=2, H=2, L=5, D=16, Dv=16, m=8, R=2, half=1, causal=True),
]


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("c", CUDA_CASES, ids=lsh_case_id)
def test_cuda_cases_match_cpu(c, dtype):
    _compare_to_cpu_and_reference(c, dtype)
    qk, v, rot, mask = lsh_inputs(c, dtype, lsh_seed(c))
    args = (c["m"], c["causal"], c["before"], c["after"], c["scale"])
    sp_gpu = ops.lsh_attention(qk.cuda(), v.cuda(), rot.cuda(),
                               None if mask is None else mask.cuda(), *args)[2]
    sp_cpu = ops.lsh_attention(qk, v, rot, mask, *args)[2]
    assert torch.equal(sp_gpu.cpu(), sp_cpu)


# Shapes the small matrix does not reach: chunks longer than one CTA's 16 rows (several CTAs per
# chunk, key tiles that straddle chunk boundaries), every head-dim bucket, D != Dv, long windows.
TILING_CASES = [
    lsh_case(B=1, H=2, L=200, D=32, Dv=32, m=48, R=2, half=2, causal=True, mask="suffix"),
    lsh_case(B=1, H=2, Hr=1, L=300, D=64, Dv=64, m=64, R=4, half=3),
    lsh_case(B=1, H=1, Hr=1, L=130, D=128, Dv=128, m=20, R=2, half=4, before=3, after=2,
             causal=True),
    lsh_case(B=2, H=1, Hr=1, L=90, D=128, Dv=40, m=17, R=3, half=2, mask="random"),
    lsh_case(B=1, H=2, L=64, D=33, Dv=1, m=8, R=2, half=2, before=5, after=5),
]


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("c", TILING_CASES, ids=lsh_case_id)
def test_tiling_shapes(c, dtype):
    _compare_to_cpu_and_reference(c, dtype)


@pytest.mark.parametrize("causal,mask", [(False, None), (True, "random"), (True, "row")])
def test_gradcheck_float64(causal, mask):
    c = lsh_case(B=1, H=2, L=9, D=4, Dv=3, m=3, R=2, half=2, causal=causal, mask=mask, after=1)
    qk, v, rot, m = lsh_inputs(c, F64, lsh_seed(c, "cuda"), margin=1e-3)
    kw = lsh_kwargs(c, rot.cuda(), None if m is None else m.cuda())

    def f(qk, v):
        return rx.lsh_attention(qk, v, return_lse=True, **kw)

    assert torch.autograd.gradcheck(f, (qk.cuda().requires_grad_(), v.cuda().requires_grad_()))


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=["f32", "bf16", "f16"])
def test_deterministic(dtype):
    qk, v, rot, mask = lsh_inputs(LSH_DET_CASE, dtype, 21)
    go, gl = lsh_cotangents(LSH_DET_CASE, 21, dtype)
    first = run_lsh(LSH_DET_CASE, qk, v, rot, mask, go, gl, "cuda")
    for _ in range(2):
        assert_lsh_bitwise(first, run_lsh(LSH_DET_CASE, qk, v, rot, mask, go, gl, "cuda"))


def test_sorted_positions_and_stats_equal_cpu():
    c = lsh_case(B=2, H=3, Hr=1, L=211, D=16, Dv=16, m=8, R=4, half=8, mask="random")
    qk, v, rot, mask = lsh_inputs(c, F32, 22)
    args = (c["m"], c["causal"], c["before"], c["after"], c["scale"])
    _, _, sp_cpu, st_cpu = ops.lsh_attention(qk, v, rot, mask, *args)
    _, _, sp_gpu, st_gpu = ops.lsh_attention(qk.cuda(), v.cuda(), rot.cuda(), mask.cuda(), *args)
    assert sp_gpu.dtype == torch.int32 and torch.equal(sp_gpu.cpu(), sp_cpu)
    torch.testing.assert_close(st_gpu.cpu(), st_cpu, rtol=1e-5, atol=1e-5)


def test_head_dim_above_128_is_a_clear_error():
    qk = torch.randn(1, 1, 8, 160, device="cuda")
    v = torch.randn(1, 1, 8, 16, device="cuda")
    with pytest.raises(ValueError, match="head dims up to 128"):
        rx.lsh_attention(qk, v, n_hashes=1, bucket_size=4, n_buckets=2)


def test_other_cuda_stream_and_device_guard():
    c = lsh_case(L=40, m=8, R=2, half=4, causal=True)
    qk, v, rot, mask = lsh_inputs(c, F32, 23)
    expected = rx.lsh_attention(qk.cuda(), v.cuda(), **lsh_kwargs(c, rot.cuda(), None))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = rx.lsh_attention(qk.cuda(), v.cuda(), **lsh_kwargs(c, rot.cuda(), None))
    stream.synchronize()
    assert torch.equal(got, expected)


# ------------------------------------------------------------------ chunked feed-forward


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "silu"])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_chunked_ffn_cuda_matches_cpu(activation, dtype, dropout_p):
    g = torch.Generator().manual_seed(31)
    x = torch.randn(3, 37, 24, generator=g)
    w1, b1 = torch.randn(64, 24, generator=g) / 5, torch.randn(64, generator=g)
    w2, b2 = torch.randn(24, 64, generator=g) / 8, torch.randn(24, generator=g)
    grad = torch.randn(3, 37, 24, generator=g)

    def run(device):
        leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in (x, w1, b1, w2, b2)]
        y = ops.chunked_ffn(*leaves, 16, activation, dropout_p, torch.tensor(1234))
        grads = torch.autograd.grad((y * grad.to(device=device, dtype=dtype)).sum(), leaves)
        return [t.detach().float().cpu() for t in (y, *grads)]

    tol = dict(rtol=1e-4, atol=1e-4) if dtype == F32 else dict(rtol=3e-2, atol=3e-2)
    for name, a, b in zip(("y", "x", "w1", "b1", "w2", "b2"), run("cuda"), run("cpu")):
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


# ------------------------------------------------------------------- tensor-core kernels
# fp16/bf16 with D == Dv in {32, 64, 128} run on tensor cores (kernels/lsh_attention_mma_*.cuh);
# REFORMER_EXT_TENSOR_CORES=0 selects the FFMA kernels instead. Shapes: every head dim, bucket
# sizes that are not multiples of 16 or span two CTAs, partial key tiles, windows of many chunks,
# one chunk per round, all-padding batch rows, strided inputs.
TENSOR_CORE_CASES = [
    lsh_case(B=1, H=2, L=300, D=32, Dv=32, m=64, R=4, half=4, causal=True, mask="random"),
    lsh_case(B=2, H=2, Hr=1, L=200, D=64, Dv=64, m=48, R=2, half=3, noncontig=True),
    lsh_case(B=1, H=2, L=257, D=128, Dv=128, m=128, R=2, half=2, before=1, after=1, causal=True),
    lsh_case(B=1, H=1, L=90, D=64, Dv=64, m=20, R=3, half=2, before=3, after=2, mask="suffix"),
    lsh_case(B=1, H=2, L=5, D=32, Dv=32, m=8, R=2, half=1, causal=True),
    lsh_case(B=2, H=2, L=130, D=64, Dv=64, m=16, R=2, half=4, mask="row"),
]


def _kernel_names(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = {e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA}
    if not names:
        pytest.skip("the profiler recorded no CUDA kernels")
    return names


def _uses_tensor_cores(c, dtype, qk=None):
    qk_, v, rot, mask = (None if t is None else t.cuda() for t in lsh_inputs(c, dtype, 3))
    qk = qk_ if qk is None else qk
    names = _kernel_names(lambda: rx.lsh_attention(qk, v, **lsh_kwargs(c, rot, mask)))
    return any("mma_kernel" in n for n in names)


def test_tensor_cores_are_used_where_they_apply(monkeypatch):
    c = TENSOR_CORE_CASES[0]
    assert _uses_tensor_cores(c, BF16) and _uses_tensor_cores(c, F16)
    assert not _uses_tensor_cores(c, F32)
    assert not _uses_tensor_cores(lsh_case(L=40, D=48, Dv=48, m=8), BF16)  # not 32/64/128
    assert not _uses_tensor_cores(lsh_case(L=40, D=64, Dv=32, m=8), BF16)  # D != Dv
    # rows not 16-byte aligned: the FFMA kernels take the call
    B, H, L, D = 1, 2, 300, 32
    unaligned = torch.randn(B * H * L * D + 1, device="cuda", dtype=BF16)[1:].view(B, H, L, D)
    assert not _uses_tensor_cores(c, BF16, qk=unaligned)
    monkeypatch.setenv("REFORMER_EXT_TENSOR_CORES", "0")
    assert not _uses_tensor_cores(c, BF16)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
@pytest.mark.parametrize("c", TENSOR_CORE_CASES, ids=lsh_case_id)
def test_tensor_cores_match_cpu_and_reference(c, dtype):
    _compare_to_cpu_and_reference(c, dtype)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
@pytest.mark.parametrize("c", TENSOR_CORE_CASES[:3], ids=lsh_case_id)
def test_tensor_cores_agree_with_ffma_kernels(c, dtype, monkeypatch):
    seed = lsh_seed(c)
    qk, v, rot, mask = lsh_inputs(c, dtype, seed)
    go, gl = lsh_cotangents(c, seed, dtype)
    tensor_cores = run_lsh(c, qk, v, rot, mask, go, gl, device="cuda")
    monkeypatch.setenv("REFORMER_EXT_TENSOR_CORES", "0")
    ffma = run_lsh(c, qk, v, rot, mask, go, gl, device="cuda")
    ref64 = run_lsh_reference(c, qk, v, rot, mask, go, gl, F64)
    ref_lp = [t.to(dtype) if i != 1 else t
              for i, t in enumerate(run_lsh_reference(c, qk, v, rot, mask, go, gl, F32))]
    assert_lsh_lowp(tensor_cores, ref64, ref_lp, dtype)
    assert_lsh_lowp(ffma, ref64, ref_lp, dtype)
    # the same sorted items and masks: the two differ only by rounding (P and dS in dtype)
    eps = torch.finfo(dtype).eps
    for name, a, b in zip(("out", "lse", "grad_qk", "grad_v"), tensor_cores, ffma):
        mag = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a.double(), b.double(), rtol=0, atol=8 * eps * mag,
                                   msg=lambda m: f"{name}: {m}")


def test_tensor_cores_deterministic():
    c = TENSOR_CORE_CASES[0]
    qk, v, rot, mask = lsh_inputs(c, BF16, 31)
    go, gl = lsh_cotangents(c, 31, BF16)
    first = run_lsh(c, qk, v, rot, mask, go, gl, "cuda")
    for _ in range(2):
        assert_lsh_bitwise(first, run_lsh(c, qk, v, rot, mask, go, gl, "cuda"))


# The hash on tensor cores (kernels/lsh_hash_mma.cuh): rotations split into three fp16/bf16
# pieces, so buckets equal the CPU's (inputs keep the two largest projections apart by 1e-4).
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("Hr,half", [(1, 37), (3, 64), (3, 130)])
def test_tensor_core_hash_equals_cpu(dtype, D, Hr, half, monkeypatch):
    c = lsh_case(B=2, H=3, Hr=Hr, L=300, D=D, Dv=D, R=3, half=half, mask="random")
    qk, _, rot, mask = lsh_inputs(c, dtype, D + half)
    expected = lsh_buckets_reference(qk, rot, mask)
    got = rx.lsh_buckets(qk.cuda(), rot.cuda(), mask.cuda())
    assert torch.equal(got.cpu(), expected)
    names = _kernel_names(lambda: rx.lsh_buckets(qk.cuda(), rot.cuda(), mask.cuda()))
    assert any("lsh_hash_mma_kernel" in n for n in names)
    monkeypatch.setenv("REFORMER_EXT_TENSOR_CORES", "0")
    assert torch.equal(rx.lsh_buckets(qk.cuda(), rot.cuda(), mask.cuda()).cpu(), expected)


def test_tensor_core_hash_ignores_the_rotation_scale():
    """The pieces are taken after scaling the rotations to max |rot| <= 1 (fp16 range)."""
    c = lsh_case(B=1, H=2, Hr=2, L=200, D=64, Dv=64, R=2, half=16)
    qk, _, rot, _ = lsh_inputs(c, F16, 41)
    for factor in (1e-20, 1.0, 1e6):
        got = rx.lsh_buckets(qk.cuda(), (rot * factor).cuda())
        assert torch.equal(got.cpu(), lsh_buckets_reference(qk, rot))

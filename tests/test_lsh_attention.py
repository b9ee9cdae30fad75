"""Tests of the LSH attention operators against reformer_ext/reference.py.

Covers rx.lsh_attention / rx.lsh_buckets and the raw torch.ops.reformer.* operators:
forward and backward agreement with the reference (float64 tight, float32 ~1e-4,
bf16/fp16 relative to PyTorch's own low-precision error), gradcheck, opcheck, fake/meta
shapes, determinism, default rotations and error messages. CUDA tests compare the GPU
against the CPU for the same inputs and skip when no GPU is present.

Buckets are piecewise constant in qk: a projection within rounding distance of a tie could
hash differently in float32 and float64 (or on CPU and GPU). The input helper resamples the
few qk rows whose top two projections are closer than a margin, so every implementation
sees the same buckets and the comparisons test the attention, not the tie-breaking.
"""

import zlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import reformer_ext as rx
from reformer_ext.reference import lsh_attention_reference, lsh_buckets_reference

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
ops = torch.ops.reformer
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ------------------------------------------------------------------------ helpers


def _case(**kw):
    c = dict(B=2, H=2, L=19, D=8, Dv=8, m=4, R=2, half=3, Hr=2, causal=False, mask=None,
             before=1, after=0, scale=1.0, noncontig=False)
    c.update(kw)
    return c


def _case_id(c):
    d = _case()
    return "-".join(f"{k}{v}" for k, v in c.items() if v != d[k]) or "default"


def _seed(c, extra=""):
    return zlib.crc32((_case_id(c) + extra).encode())


def _separate_ties(qk, rot, g, margin):
    """Resample the qk rows whose two largest entries of [p, -p] are closer than margin."""
    B, H, L, D = qk.shape
    for _ in range(200):
        r = rot.double().expand(H, -1, -1, -1)
        p = torch.einsum("bhld,hdrk->bhrlk", qk.double(), r)
        top = torch.cat([p, -p], -1).topk(2, dim=-1).values
        bad = (top[..., 0] - top[..., 1] < margin).any(dim=2)  # (B, H, L)
        if not bad.any():
            return qk
        qk[bad] = torch.randn(int(bad.sum()), D, generator=g).to(qk.dtype)
    raise AssertionError("could not separate bucket ties")


def _make_mask(kind, B, L, g):
    if kind is None:
        return None
    if kind == "random":
        return torch.rand(B, L, generator=g) < 0.25
    if kind == "row":  # batch row 1 is all padding, row 0 random
        mask = torch.rand(B, L, generator=g) < 0.25
        mask[1:] = True
        return mask
    if kind == "suffix":  # right padding of different lengths
        lengths = torch.randint(0, L + 1, (B,), generator=g)
        return torch.arange(L)[None, :] >= lengths[:, None]
    raise ValueError(kind)


def _inputs(c, dtype, seed, margin=1e-4):
    """qk, v, rotations, key_padding_mask for case c; qk/v in dtype, rotations float32 values."""
    g = torch.Generator().manual_seed(seed)
    rot = torch.randn(c["Hr"], c["D"], c["R"], c["half"], generator=g)
    qk = torch.randn(c["B"], c["H"], c["L"], c["D"], generator=g).to(dtype)
    qk = _separate_ties(qk, rot, g, margin)
    v = torch.randn(c["B"], c["H"], c["L"], c["Dv"], generator=g).to(dtype)
    mask = _make_mask(c["mask"], c["B"], c["L"], g)
    if dtype == F64:
        rot = rot.double()
    return qk, v, rot, mask


def _kwargs(c, rot, mask):
    return dict(n_hashes=c["R"], bucket_size=c["m"], n_buckets=2 * c["half"], causal=c["causal"],
                key_padding_mask=mask, rotations=rot, n_chunks_before=c["before"],
                n_chunks_after=c["after"], scale=c["scale"])


def _ref_kwargs(c, mask):
    return dict(bucket_size=c["m"], causal=c["causal"], key_padding_mask=mask,
                n_chunks_before=c["before"], n_chunks_after=c["after"], scale=c["scale"])


def _cotangents(c, seed, dtype):
    g = torch.Generator().manual_seed(seed + 1)
    go = torch.randn(c["B"], c["H"], c["L"], c["Dv"], generator=g).to(dtype)
    gl = torch.randn(c["B"], c["H"], c["L"], generator=g).to(F64 if dtype == F64 else F32)
    return go, gl


def _strided(x, noncontig):
    """A leaf holding x's values and the (possibly non-contiguous) view to pass in."""
    if not noncontig:
        leaf = x.detach().clone().requires_grad_()
        return leaf, leaf, lambda t: t
    # (B, L, H, D) storage seen as (B, H, L, D): a transposed, non-contiguous view.
    leaf = x.detach().transpose(1, 2).contiguous().requires_grad_()
    return leaf, leaf.transpose(1, 2), lambda t: t.transpose(1, 2)


def _run_ours(c, qk, v, rot, mask, go, gl, device="cpu"):
    qk_leaf, qk_in, back_qk = _strided(qk.to(device), c["noncontig"])
    v_leaf, v_in, back_v = _strided(v.to(device), c["noncontig"])
    if c["noncontig"]:
        rot = rot.transpose(0, 1).contiguous().transpose(0, 1)
    rot = rot.to(device)
    mask = None if mask is None else mask.to(device)
    out, lse = rx.lsh_attention(qk_in, v_in, return_lse=True, **_kwargs(c, rot, mask))
    loss = (out * go.to(device)).sum() + (lse * gl.to(device)).sum()
    gq, gv = torch.autograd.grad(loss, (qk_leaf, v_leaf))
    return [t.detach().cpu() for t in (out, lse, back_qk(gq), back_v(gv))]


def _run_ref(c, qk, v, rot, mask, go, gl, compute_dtype):
    qk = qk.detach().to(compute_dtype).requires_grad_()
    v = v.detach().to(compute_dtype).requires_grad_()
    out, lse = lsh_attention_reference(qk, v, rot.to(compute_dtype), **_ref_kwargs(c, mask))
    loss = (out * go.to(compute_dtype)).sum() + (lse * gl.to(compute_dtype)).sum()
    gq, gv = torch.autograd.grad(loss, (qk, v))
    return [out.detach(), lse.detach(), gq, gv]


NAMES = ("out", "lse", "grad_qk", "grad_v")

def _assert_close(ours, ref, rtol, atol):
    """Every tensor close to the reference, atol scaled by the reference's magnitude."""
    for name, a, b in zip(NAMES, ours, ref):
        assert a.shape == b.shape, name
        a, b = a.double(), b.double()
        # atol relative to the size of the reference tensor, so large gradients are fair.
        scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _max_err(a, b):
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _assert_lowp(ours, ref64, ref_lp, dtype, factor_out=3.0, factor_grad=5.0):
    """Our low-precision error vs float64 may be a few times that of PyTorch's own
    (the reference computed in float32 on the same rounded inputs, then rounded)."""
    eps = torch.finfo(dtype).eps
    for name, a, b, r in zip(NAMES, ours, ref64, ref_lp):
        mag = max(1.0, float(b.abs().max())) if b.numel() else 1.0
        if name == "lse":
            # lse is float32 for every input dtype; logits may carry a rounding of the keys.
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=2 * eps * mag,
                                       msg=lambda m: f"lse: {m}")
            continue
        factor = factor_out if name == "out" else factor_grad
        err, err_ref = _max_err(a, b), _max_err(r, b)
        bound = factor * err_ref + 0.5 * eps * mag
        assert err <= bound, (f"{name}: error {err:.3g} vs float64 exceeds {factor} x "
                              f"PyTorch's {err_ref:.3g} (+ floor): bound {bound:.3g}")


# --------------------------------------------------------- agreement with the reference

CASES = []
for _L in (1, 3, 4, 5, 23):  # 1, m-1, m, m+1, a prime > 4m
    for _causal in (False, True):
        CASES.append(_case(L=_L, causal=_causal))
for _R in (1, 2, 4, 8):
    for _ba in ((1, 0), (0, 0), (2, 1)):
        for _causal in (False, True):
            CASES.append(_case(R=_R, before=_ba[0], after=_ba[1], causal=_causal))
for _mask in ("random", "row", "suffix"):
    for _causal in (False, True):
        for _Hr in (1, 2):
            CASES.append(_case(mask=_mask, causal=_causal, Hr=_Hr, L=17))
CASES += [
    _case(L=37, D=8, Dv=16, m=8, R=4, half=4, causal=True),
    _case(L=37, D=16, Dv=4, m=8, R=2, half=2, mask="random"),
    _case(noncontig=True, mask="random", causal=True, Hr=1),
    _case(noncontig=True, R=4, before=2, after=1),
    _case(scale=0.5, D=16, causal=True, mask="suffix"),
    _case(L=7, m=1, R=2, causal=True),  # chunks of one item
    _case(L=5, m=8, R=3, before=1, after=1),  # one chunk per round: neighbours wrap across rounds
    _case(L=13, half=1, R=4, causal=True),  # n_buckets = 2
    _case(B=1, H=3, Hr=1, L=29, m=4, R=4, half=4, mask="random", causal=True, before=2, after=1),
]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("c", CASES, ids=_case_id)
def test_forward_backward_match_reference(c, dtype):
    seed = _seed(c)
    qk, v, rot, mask = _inputs(c, dtype, seed)
    go, gl = _cotangents(c, seed, dtype)
    ours = _run_ours(c, qk, v, rot, mask, go, gl)
    assert ours[0].dtype == dtype and ours[1].dtype == dtype
    ref = _run_ref(c, qk, v, rot, mask, go, gl, F64)
    if dtype == F64:
        _assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    else:
        _assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_larger_float32_case():
    c = _case(B=2, H=2, L=300, D=16, Dv=16, m=16, R=4, half=10, causal=True, mask="suffix")
    qk, v, rot, mask = _inputs(c, F32, 1)
    go, gl = _cotangents(c, 1, F32)
    _assert_close(_run_ours(c, qk, v, rot, mask, go, gl),
                  _run_ref(c, qk, v, rot, mask, go, gl, F64), rtol=1e-4, atol=1e-4)


def test_float32_queries_that_only_see_themselves():
    # A query whose every valid logit is the -1e5 self logit has lse ~ -1e5, where a float32
    # lse is only exact to ~4e-3. Combining rounds (or recomputing P in backward) as
    # exp(lse_r - lse) then errs by ~0.4%; the weights must be normalised another way.
    c = _case(B=1, H=2, L=40, D=8, m=2, R=4, half=4, causal=True, before=0, after=0)
    qk, v, rot, mask = _inputs(c, F32, 2)
    go, gl = _cotangents(c, 2, F32)
    ref = _run_ref(c, qk, v, rot, mask, go, gl, F64)
    assert (ref[1] < -1e4).sum() >= 4, "the case must contain self-only queries"
    _assert_close(_run_ours(c, qk, v, rot, mask, go, gl), ref, rtol=1e-4, atol=1e-4)


def test_gradient_through_lse_only_and_without_lse():
    c = _case(L=21, R=4, causal=True, mask="random")
    qk, v, rot, mask = _inputs(c, F64, 3)
    go, gl = _cotangents(c, 3, F64)
    kw = _kwargs(c, rot, mask)
    # Only lse receives a gradient.
    qk1, v1 = qk.clone().requires_grad_(), v.clone().requires_grad_()
    _, lse = rx.lsh_attention(qk1, v1, return_lse=True, **kw)
    ours = torch.autograd.grad((lse * gl).sum(), (qk1, v1), allow_unused=True)
    qk2, v2 = qk.clone().requires_grad_(), v.clone().requires_grad_()
    _, lse_ref = lsh_attention_reference(qk2, v2, rot, **_ref_kwargs(c, mask))
    (ref,) = torch.autograd.grad((lse_ref * gl).sum(), (qk2,))  # lse does not depend on v
    torch.testing.assert_close(ours[0], ref, rtol=1e-10, atol=1e-10)
    assert ours[1] is None or (ours[1] == 0).all()
    # return_lse=False returns a tensor, and its backward has no lse cotangent.
    qk3, v3 = qk.clone().requires_grad_(), v.clone().requires_grad_()
    out = rx.lsh_attention(qk3, v3, **kw)
    assert isinstance(out, torch.Tensor)
    ours = torch.autograd.grad((out * go).sum(), (qk3, v3))
    qk4, v4 = qk.clone().requires_grad_(), v.clone().requires_grad_()
    out_ref, _ = lsh_attention_reference(qk4, v4, rot, **_ref_kwargs(c, mask))
    ref = torch.autograd.grad((out_ref * go).sum(), (qk4, v4))
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_padding_rows_output_zero_and_get_zero_gradient():
    c = _case(L=17, mask="row", causal=True, R=4)
    qk, v, rot, mask = _inputs(c, F32, 4)
    go, gl = _cotangents(c, 4, F32)
    out, lse, gq, gv = _run_ours(c, qk, v, rot, mask, go, gl)
    sel = mask[:, None, :].expand(c["B"], c["H"], c["L"])
    for t in (out, lse, gq, gv):
        assert torch.isfinite(t).all()
        assert (t[sel] == 0).all()


LOWP_CASES = [
    _case(B=2, H=2, L=61, D=16, Dv=16, m=8, R=4, half=4, causal=True, mask="random"),
    _case(B=1, H=2, L=45, D=16, Dv=8, m=4, R=2, half=6, Hr=1, before=2, after=1),
]


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
@pytest.mark.parametrize("c", LOWP_CASES, ids=_case_id)
def test_low_precision_against_pytorch_error(c, dtype):
    seed = _seed(c)
    qk, v, rot, mask = _inputs(c, dtype, seed)
    go, gl = _cotangents(c, seed, dtype)
    ours = _run_ours(c, qk, v, rot, mask, go, gl)
    assert ours[0].dtype == dtype and ours[1].dtype == F32
    assert ours[2].dtype == dtype and ours[3].dtype == dtype
    ref64 = _run_ref(c, qk, v, rot, mask, go, gl, F64)
    ref_lp = [t.to(dtype) if i != 1 else t for i, t in
              enumerate(_run_ref(c, qk, v, rot, mask, go, gl, F32))]
    _assert_lowp(ours, ref64, ref_lp, dtype)


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
    _case(L=19, R=2, causal=True, mask="random"),
    _case(L=8, R=4, Hr=1, before=0, after=0),
    _case(L=30, m=8, R=3, half=2, mask="row", before=2, after=1, scale=0.7),
], ids=_case_id)
def test_ops_match_reference(c, dtype):
    seed = _seed(c)
    qk, v, rot, mask = _inputs(c, dtype, seed)
    go, gl = _cotangents(c, seed, dtype)
    args = (mask, c["m"], c["causal"], c["before"], c["after"], c["scale"])
    out, lse, sp, st = ops.lsh_attention(qk, v, rot, *args)
    Lp = -(-c["L"] // c["m"]) * c["m"]
    assert sp.dtype == torch.int32 and sp.shape == (c["B"], c["H"], c["R"] * Lp)
    # Accept positions either within the round (0..L'-1) or over all items (r*L' + i).
    assert torch.equal(sp.long() % Lp, _expected_sorted_positions(qk, rot, mask, c["m"]))
    ref = _run_ref(c, qk, v, rot, mask, go, gl, F64)
    tol = dict(rtol=1e-10, atol=1e-10)
    if dtype == F32:
        tol = dict(rtol=1e-4, atol=1e-4)
    _assert_close([out, lse], ref[:2], **tol)
    gq, gv = ops.lsh_attention_backward(go, gl, qk, v, out, st, sp, *args)
    _assert_close([out, lse, gq, gv], ref, **tol)
    # grad_lse = None means a zero lse cotangent.
    gq0, gv0 = ops.lsh_attention_backward(go, None, qk, v, out, st, sp, *args)
    ref0 = _run_ref(c, qk, v, rot, mask, go, torch.zeros_like(gl), F64)
    _assert_close([out, lse, gq0, gv0], [ref[0], ref[1], ref0[2], ref0[3]], **tol)


@pytest.mark.parametrize("dtype", [F64, F32, BF16], ids=["f64", "f32", "bf16"])
@pytest.mark.parametrize("Hr", [1, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_lsh_buckets_equal_reference(dtype, Hr, masked):
    c = _case(B=2, H=3, Hr=Hr, L=50, D=16, R=4, half=5, mask="row" if masked else None)
    qk, _, rot, mask = _inputs(c, dtype, _seed(c, str(dtype)))
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
    c = _case(B=2, H=2, L=9, D=4, Dv=3, m=3, R=2, half=2, Hr=Hr, causal=causal, mask=mask,
              before=before, after=after)
    # A wide margin: the 1e-6 perturbations of gradcheck must not move a projection across a tie.
    qk, v, rot, mask = _inputs(c, F64, _seed(c, str(return_lse)), margin=1e-3)
    kw = _kwargs(c, rot, mask)

    def f(qk, v):
        return rx.lsh_attention(qk, v, return_lse=return_lse, **kw)

    assert torch.autograd.gradcheck(f, (qk.requires_grad_(), v.requires_grad_()))


# ------------------------------------------------------------- opcheck, fake, meta

OPCHECK_CASES = [
    _case(L=10, R=2, causal=True),
    _case(L=7, R=3, Hr=1, mask="random", before=0, after=0),
    _case(L=12, D=8, Dv=5, R=2, m=4, mask="row", before=2, after=1, scale=0.5),
]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("c", OPCHECK_CASES, ids=_case_id)
def test_opcheck(c, dtype):
    qk, v, rot, mask = _inputs(c, dtype, _seed(c))
    go, gl = _cotangents(c, 5, dtype)
    args = (mask, c["m"], c["causal"], c["before"], c["after"], c["scale"])
    torch.library.opcheck(ops.lsh_buckets.default, (qk, rot, mask))
    torch.library.opcheck(ops.lsh_attention.default,
                          (qk.clone().requires_grad_(), v.clone().requires_grad_(), rot, *args))
    torch.library.opcheck(ops.lsh_attention.default, (qk, v, rot, *args))
    out, lse, sp, st = ops.lsh_attention(qk, v, rot, *args)
    torch.library.opcheck(ops.lsh_attention_backward.default,
                          (go, gl, qk, v, out, st, sp, *args))
    torch.library.opcheck(ops.lsh_attention_backward.default,
                          (go, None, qk, v, out, st, sp, *args))


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


def test_torch_compile_fullgraph():
    c = _case(L=19, R=2, causal=True, mask="random")
    qk, v, rot, mask = _inputs(c, F32, 6)
    kw = _kwargs(c, rot, mask)

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


# -------------------------------------------------------------------- determinism

DET_CASE = _case(B=2, H=3, Hr=1, L=203, D=16, Dv=16, m=8, R=4, half=8, causal=True,
                 mask="random", before=1, after=1)


def _det_run(qk, v, rot, mask, go, gl, device="cpu"):
    return _run_ours(DET_CASE, qk, v, rot, mask, go, gl, device)


def _assert_bitwise(a, b):
    for name, x, y in zip(NAMES, a, b):
        assert torch.equal(x, y), f"{name} differs between runs"


def test_deterministic_across_runs_and_threads():
    qk, v, rot, mask = _inputs(DET_CASE, F32, 7)
    go, gl = _cotangents(DET_CASE, 7, F32)
    first = _det_run(qk, v, rot, mask, go, gl)
    _assert_bitwise(first, _det_run(qk, v, rot, mask, go, gl))
    n_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _det_run(qk, v, rot, mask, go, gl)
        torch.set_num_threads(2)
        two = _det_run(qk, v, rot, mask, go, gl)
    finally:
        torch.set_num_threads(n_threads)
    _assert_bitwise(first, one)
    _assert_bitwise(one, two)


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


# ---------------------------------------------------------------------------- errors

_B, _H, _L, _D, _R, _HALF = 2, 2, 10, 8, 2, 2


def _err_base():
    g = torch.Generator().manual_seed(0)
    qk = torch.randn(_B, _H, _L, _D, generator=g)
    v = torch.randn(_B, _H, _L, _D, generator=g)
    rot = torch.randn(_H, _D, _R, _HALF, generator=g)
    mask = torch.zeros(_B, _L, dtype=torch.bool)
    return qk, v, rot, mask


def _bad(name):
    """(overrides, regex naming the argument) for each kind of bad input."""
    qk, v, rot, mask = _err_base()
    table = {
        "qk_ndim": (dict(qk=qk[0]), "qk"),
        "qk_int": (dict(qk=qk.long(), v=v.long()), "qk"),
        "v_length": (dict(v=v[:, :, :-1]), r"\bv\b"),
        "v_batch": (dict(v=v[:1]), r"\bv\b"),
        "v_ndim": (dict(v=v[0]), r"\bv\b"),
        "v_dtype": (dict(v=v.double()), r"qk|\bv\b"),
        "rot_D": (dict(rotations=rot[:, :-1]), "rotations"),
        "rot_Hr": (dict(rotations=torch.randn(3, _D, _R, _HALF)), "rotations"),
        "rot_ndim": (dict(rotations=rot[0]), "rotations"),
        "bucket_size": (dict(bucket_size=0), "bucket_size"),
        "mask_shape": (dict(key_padding_mask=torch.zeros(_B, _L + 1, dtype=torch.bool)),
                       "key_padding_mask"),
        "mask_dtype": (dict(key_padding_mask=torch.zeros(_B, _L)), "key_padding_mask"),
        "before": (dict(n_chunks_before=-1), "n_chunks_before"),
        "after": (dict(n_chunks_after=-1), "n_chunks_after"),
        # Only meaningful through rx.lsh_attention (the operator takes them from rotations).
        "n_buckets_odd": (dict(rotations=None, n_buckets=3), "n_buckets"),
        "n_buckets_small": (dict(rotations=None, n_buckets=0), "n_buckets"),
        "n_hashes": (dict(rotations=None, n_hashes=0), "n_hashes"),
        # Only through the operator: rotations with no buckets or no rounds.
        "rot_no_buckets": (dict(rotations=rot[..., :0]), "rotations"),
        "rot_no_rounds": (dict(rotations=rot[:, :, :0]), "rotations"),
    }
    return table[name]


COMMON_ERRORS = ["qk_ndim", "qk_int", "v_length", "v_batch", "v_ndim", "v_dtype", "rot_D",
                 "rot_Hr", "rot_ndim", "bucket_size", "mask_shape", "mask_dtype", "before",
                 "after"]


@pytest.mark.parametrize("name", COMMON_ERRORS + ["n_buckets_odd", "n_buckets_small",
                                                  "n_hashes"])
def test_errors_functional(name):
    qk, v, rot, mask = _err_base()
    kw = dict(qk=qk, v=v, n_hashes=_R, bucket_size=4, n_buckets=2 * _HALF, rotations=rot,
              key_padding_mask=mask, n_chunks_before=1, n_chunks_after=0)
    over, match = _bad(name)
    kw.update(over)
    qk, v = kw.pop("qk"), kw.pop("v")
    with pytest.raises((ValueError, RuntimeError), match=match):
        rx.lsh_attention(qk, v, **kw)


@pytest.mark.parametrize("name", COMMON_ERRORS + ["rot_no_buckets", "rot_no_rounds"])
def test_errors_operator(name):
    qk, v, rot, mask = _err_base()
    kw = dict(qk=qk, v=v, rotations=rot, key_padding_mask=mask, bucket_size=4,
              n_chunks_before=1, n_chunks_after=0)
    over, match = _bad(name)
    kw.update(over)
    with pytest.raises((ValueError, RuntimeError), match=match):
        ops.lsh_attention(kw["qk"], kw["v"], kw["rotations"], kw["key_padding_mask"],
                          kw["bucket_size"], False, kw["n_chunks_before"], kw["n_chunks_after"],
                          1.0)


@pytest.mark.parametrize("name", ["qk_ndim", "rot_D", "rot_Hr", "rot_ndim", "mask_shape",
                                  "mask_dtype"])
@pytest.mark.parametrize("entry", ["functional", "operator"])
def test_errors_buckets(name, entry):
    qk, _, rot, mask = _err_base()
    kw = dict(qk=qk, rotations=rot, key_padding_mask=mask)
    over, match = _bad(name)
    kw.update(over)
    fn = rx.lsh_buckets if entry == "functional" else ops.lsh_buckets
    with pytest.raises((ValueError, RuntimeError), match=match):
        fn(kw["qk"], kw["rotations"], kw["key_padding_mask"])


# ------------------------------------------------------------------------------ CUDA

# The CUDA kernels against this file's CPU cases live in tests/test_cuda.py (CUDA_CASES there).


@cuda
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_cuda_buckets_equal_cpu(dtype):
    c = _case(B=2, H=4, Hr=1, L=513, D=64, R=4, half=16, mask="random")
    qk, _, rot, mask = _inputs(c, dtype, 8)
    got = rx.lsh_buckets(qk.cuda(), rot.cuda(), mask.cuda())
    assert got.device.type == "cuda"
    assert torch.equal(got.cpu(), lsh_buckets_reference(qk, rot, mask))


@cuda
def test_cuda_deterministic():
    qk, v, rot, mask = _inputs(DET_CASE, BF16, 9)
    go, gl = _cotangents(DET_CASE, 9, BF16)
    _assert_bitwise(_det_run(qk, v, rot, mask, go, gl, "cuda"),
                    _det_run(qk, v, rot, mask, go, gl, "cuda"))


@cuda
def test_cuda_opcheck_and_fake():
    c = OPCHECK_CASES[2]
    qk, v, rot, mask = (None if t is None else t.cuda() for t in _inputs(c, F32, 10))
    args = (mask, c["m"], c["causal"], c["before"], c["after"], c["scale"])
    torch.library.opcheck(ops.lsh_buckets.default, (qk, rot, mask))
    torch.library.opcheck(ops.lsh_attention.default,
                          (qk.clone().requires_grad_(), v.clone().requires_grad_(), rot, *args))
    out, lse, sp, st = ops.lsh_attention(qk, v, rot, *args)
    torch.library.opcheck(ops.lsh_attention_backward.default,
                          (out, lse, qk, v, out, st, sp, *args))


@cuda
def test_cuda_device_mismatch_is_an_error():
    qk, v, rot, mask = _err_base()
    with pytest.raises((ValueError, RuntimeError), match=r"\bv\b|device"):
        rx.lsh_attention(qk.cuda(), v, n_hashes=_R, bucket_size=4, n_buckets=2 * _HALF,
                         rotations=rot.cuda())
    with pytest.raises((ValueError, RuntimeError), match="key_padding_mask|device"):
        rx.lsh_attention(qk.cuda(), v.cuda(), n_hashes=_R, bucket_size=4, n_buckets=2 * _HALF,
                         rotations=rot.cuda(), key_padding_mask=mask)

"""Reliability of the LSH attention operators: numerical safety, determinism, scale and
resource hygiene.

- Numerical safety: float16/bfloat16 inputs of large magnitude give no inf/NaN where the
  float32 computation is finite; rows with no valid key give 0, not NaN; a NaN or inf in one
  batch element does not leak into the others (outputs or gradients).
- Determinism: bitwise-equal outputs and gradients across runs and thread counts.
- Scale: a sequence of 2^22 hash items checked against a closed-form answer; the index-overflow
  case (B*H*n_hashes*L' > 2^31 items) needs ~31 GiB and ~30 min on 2 cores and only runs when
  RX_HUGE_TESTS=1 and the memory is there.
- Resource hygiene: 1,000 forward+backward calls with stable resident memory; 4 Python threads
  at once give the results of sequential calls.
- Checkpoints (state_dict round trips of LSHSelfAttention, rotation_seed included, and of
  every other module): tests/test_checkpoints.py. The chunked feed-forward's reliability:
  tests/test_chunked_ffn_reliability.py.
"""

import math
import os

import pytest
import torch

import reformer_ext as rx

from _helpers import assert_memory_flat_over_1000_calls, lsh_attention_reference, run_in_threads

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16


def _inputs(B, H, L, D, Dv, R, half, seed, dtype=F32, Hr=None):
    g = torch.Generator().manual_seed(seed)
    qk = torch.randn(B, H, L, D, generator=g)
    v = torch.randn(B, H, L, Dv, generator=g)
    rot = torch.randn(Hr or H, D, R, half, generator=g)
    go = torch.randn(B, H, L, Dv, generator=g)
    gl = torch.randn(B, H, L, generator=g)
    acc = F64 if dtype == F64 else F32
    return qk.to(dtype), v.to(dtype), rot.to(acc), go.to(dtype), gl.to(acc)


def _forward_backward(qk, v, rot, go, gl, **kw):
    """out, lse, grad_qk, grad_v of rx.lsh_attention, all detached."""
    qk = qk.detach().clone().requires_grad_()
    v = v.detach().clone().requires_grad_()
    out, lse = rx.lsh_attention(qk, v, rotations=rot, return_lse=True, **kw)
    gq, gv = torch.autograd.grad((out, lse), (qk, v), (go, gl))
    return [out.detach(), lse.detach(), gq, gv]


def _reference_fb(qk, v, rot, go, gl, dtype, **kw):
    """The same through the reference, computed in `dtype` from the same (rounded) inputs."""
    qk = qk.detach().to(dtype).requires_grad_()
    v = v.detach().to(dtype).requires_grad_()
    out, lse = lsh_attention_reference(qk, v, rot.to(dtype), **kw)
    gq, gv = torch.autograd.grad((out, lse), (qk, v), (go.to(dtype), gl.to(lse.dtype)))
    return [out.detach(), lse.detach(), gq, gv]


NAMES = ("out", "lse", "grad_qk", "grad_v")


# ----------------------------------------------------------------------- numerical safety

LARGE = [
    # (dtype, qk scale, v scale): the originally reported qk*100, v*1e3 in float16; values near the top of
    # float16's range; and bfloat16 far beyond float16's range.
    (F16, 100.0, 1e3),
    (F16, 1e3, 6e4),
    (BF16, 1e4, 1e30),
    (BF16, 1e20, 1e35),
]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype,qk_scale,v_scale", LARGE,
                         ids=[f"{d}-qk{q:g}-v{s:g}".replace("torch.", "") for d, q, s in LARGE])
def test_low_precision_large_magnitudes_stay_finite(dtype, qk_scale, v_scale, causal):
    B, H, L, D = 2, 2, 100, 32
    qk, v, rot, go, gl = _inputs(B, H, L, D, D, 4, 4, seed=21)
    finfo = torch.finfo(dtype)
    qk = (qk * qk_scale).clamp(-finfo.max, finfo.max).to(dtype)
    v = (v * v_scale).clamp(-finfo.max, finfo.max).to(dtype)
    go = go.to(dtype)
    g = torch.Generator().manual_seed(22)
    mask = torch.rand(B, L, generator=g) < 0.3
    kw = dict(bucket_size=8, causal=causal, key_padding_mask=mask)
    assert torch.isfinite(qk).all() and torch.isfinite(v).all()
    ours = _forward_backward(qk, v, rot, go, gl, **kw)
    ref = _reference_fb(qk, v, rot, go, gl, F32, **kw)
    for name, a, r in zip(NAMES, ours, ref):
        r_in_dtype = r.to(a.dtype)
        bad = ~torch.isfinite(a) & torch.isfinite(r_in_dtype)
        assert not bad.any(), (f"{name}: {int(bad.sum())} non-finite values where the float32 "
                               f"reference is finite")
    # Where everything is finite the output is also right, to the precision of the dtype.
    out, ref_out = ours[0].float(), ref[0]
    ok = torch.isfinite(ref_out)
    mag = float(ref_out[ok].abs().max())
    assert float((out[ok] - ref_out[ok]).abs().max()) <= 8 * finfo.eps * mag


@pytest.mark.parametrize("dtype", [F64, F32, F16, BF16], ids=["f64", "f32", "f16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_rows_without_a_valid_key_give_zero(dtype, causal):
    """Batch rows that are all padding: out 0, lse 0, gradients 0 (never NaN)."""
    B, H, L = 3, 2, 21
    qk, v, rot, go, gl = _inputs(B, H, L, 8, 4, 3, 2, seed=31, dtype=dtype)
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[0] = True
    mask[2, 5:] = True
    ours = _forward_backward(qk, v, rot, go, gl, bucket_size=4, causal=causal,
                             key_padding_mask=mask, n_chunks_after=1)
    for name, t in zip(NAMES, ours):
        assert torch.isfinite(t).all(), name
        assert (t[0] == 0).all(), f"{name} of the all-padding row is not 0"
        assert (t[2, :, 5:] == 0).all(), f"{name} of padding positions is not 0"
    # Everything padding.
    ours = _forward_backward(qk, v, rot, go, gl, bucket_size=4, causal=causal,
                             key_padding_mask=torch.ones(B, L, dtype=torch.bool))
    for name, t in zip(NAMES, ours):
        assert (t == 0).all(), name


@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=["f32", "f16", "bf16"])
def test_queries_that_only_see_themselves_return_their_value(dtype):
    """Valid tokens whose windows hold nothing else valid fall back to themselves: out = v_i,
    finite lse near -1e5, finite gradients (no 0/0 from an empty softmax)."""
    B, H, L = 2, 2, 24
    qk, v, rot, go, gl = _inputs(B, H, L, 8, 4, 4, 2, seed=41, dtype=dtype)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[:, ::7] = False  # isolated valid tokens: 0, 7, 14, 21
    ours = _forward_backward(qk, v, rot, go, gl, bucket_size=1, key_padding_mask=mask,
                             n_chunks_before=0)
    for name, t in zip(NAMES, ours):
        assert torch.isfinite(t).all(), name
    valid = ~mask
    torch.testing.assert_close(ours[0][:, :, valid[0]], v[:, :, valid[0]])
    assert (ours[1][:, :, valid[0]] < -9e4).all()


@pytest.mark.parametrize("dtype", [F64, F32, BF16], ids=["f64", "f32", "bf16"])
@pytest.mark.parametrize("poison", ["qk_nan", "qk_inf", "v_nan", "v_inf", "grad_nan"])
def test_non_finite_values_do_not_leak_across_batch(dtype, poison):
    B, H, L = 3, 2, 37
    qk, v, rot, go, gl = _inputs(B, H, L, 8, 8, 4, 3, seed=51, dtype=dtype)
    kw = dict(bucket_size=4, causal=True, n_chunks_before=1, n_chunks_after=1)
    clean = _forward_backward(qk, v, rot, go, gl, **kw)
    value = float("nan") if poison.endswith("nan") else float("inf")
    qk2, v2, go2 = qk.clone(), v.clone(), go.clone()
    {"qk": qk2, "v": v2, "grad": go2}[poison.split("_")[0]][1, 1, 5, 0] = value
    dirty = _forward_backward(qk2, v2, rot, go2, gl, **kw)
    for name, a, b in zip(NAMES, clean, dirty):
        for other in (0, 2):
            assert torch.equal(a[other], b[other]), f"{name} of batch {other} changed"
    # The poison was really there: it reaches its own batch element.
    assert not all(torch.isfinite(t[1]).all() for t in dirty)


# ------------------------------------------------------------------------------ determinism

DET = [
    dict(B=2, H=3, L=203, D=16, Dv=16, R=4, half=8, m=8, causal=True, before=1, after=1,
         Hr=1, dtype=F32),
    dict(B=1, H=2, L=130, D=8, Dv=4, R=8, half=2, m=4, causal=False, before=2, after=0,
         Hr=2, dtype=F64),
    dict(B=2, H=2, L=77, D=16, Dv=8, R=3, half=4, m=16, causal=True, before=0, after=2,
         Hr=2, dtype=BF16),
    dict(B=2, H=2, L=77, D=16, Dv=8, R=2, half=4, m=8, causal=False, before=1, after=0,
         Hr=1, dtype=F16),
]


def _det_run(c):
    qk, v, rot, go, gl = _inputs(c["B"], c["H"], c["L"], c["D"], c["Dv"], c["R"], c["half"],
                                 seed=61, dtype=c["dtype"], Hr=c["Hr"])
    g = torch.Generator().manual_seed(62)
    mask = torch.rand(c["B"], c["L"], generator=g) < 0.2
    return _forward_backward(qk, v, rot, go, gl, bucket_size=c["m"], causal=c["causal"],
                             key_padding_mask=mask, n_chunks_before=c["before"],
                             n_chunks_after=c["after"])


def _assert_bitwise(a, b, what):
    for name, x, y in zip(NAMES, a, b):
        assert torch.equal(x, y), f"{name} differs {what}"


@pytest.mark.parametrize("c", DET, ids=lambda c: f"{c['dtype']}-L{c['L']}-R{c['R']}")
def test_bitwise_deterministic_across_runs_and_thread_counts(c):
    first = _det_run(c)
    _assert_bitwise(first, _det_run(c), "between two runs")
    n_threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            _assert_bitwise(first, _det_run(c), f"with {n} thread(s) vs {n_threads}")
    finally:
        torch.set_num_threads(n_threads)
    assert torch.get_num_threads() == n_threads


# ------------------------------------------------------------------------------------ scale


def _closed_form(signs, v, R, m, scale, positions):
    """out and lse at `positions` for the sign-pattern input of test_scale (float64).

    qk_i = s_i in {+1, -1} (D=1), one rotation per round: +1 in even rounds, -1 in odd ones
    (n_buckets=2). So bucket_r(i) = 0 iff s_i * (-1)^r >= 0: even rounds list the positives then
    the negatives, odd rounds the negatives then the positives, each in position order, then the
    tail padding L..L'-1. Keys are s_j * g with g = (1 + 1e-6)^-1/2, so a logit is
    scale * s_i * s_j * g. Windows are the previous chunk and the own chunk (cyclic over all
    R*L' items), self logits are -1e5 and padding keys drop out.
    """
    L = signs.numel()
    Lp = -(-L // m) * m
    n_chunks = R * Lp // m
    pos_idx = torch.nonzero(signs > 0).flatten()
    neg_idx = torch.nonzero(signs < 0).flatten()
    tail = torch.arange(L, Lp)
    orders = [torch.cat([pos_idx, neg_idx, tail]), torch.cat([neg_idx, pos_idx, tail])]
    inverse = []
    for order in orders:
        inv = torch.empty(Lp, dtype=torch.long)
        inv[order] = torch.arange(Lp)
        inverse.append(inv)
    g = (1 + 1e-6) ** -0.5
    s = torch.cat([signs.double(), torch.zeros(Lp - L, dtype=F64)])
    vals = torch.cat([v.double(), torch.zeros(Lp - L, dtype=F64)])
    P = positions.numel()
    lse_r, out_r = [], []
    for r in range(R):
        t = r * Lp + inverse[r % 2][positions]  # the item of each position in round r
        c = t // m
        chunks = torch.stack([(c - 1) % n_chunks, c], 1)  # (P, 2)
        if n_chunks == 1:
            chunks = chunks[:, 1:]
        items = (chunks[..., None] * m + torch.arange(m)).reshape(P, -1)  # (P, W*m)
        odd_round = (items // Lp) % 2 == 1
        keys = torch.where(odd_round, orders[1][items % Lp], orders[0][items % Lp])
        logits = scale * s[positions][:, None] * s[keys] * g
        logits = torch.where(keys == positions[:, None], torch.full_like(logits, -1e5), logits)
        logits = torch.where(keys >= L, torch.full_like(logits, -math.inf), logits)
        lse_r.append(torch.logsumexp(logits, 1))
        out_r.append((torch.softmax(logits, 1) * vals[keys]).sum(1))
    lse_r, out_r = torch.stack(lse_r, 1), torch.stack(out_r, 1)
    return (torch.softmax(lse_r, 1) * out_r).sum(1), torch.logsumexp(lse_r, 1)


def _run_scale(L, R, m, n_samples, backward):
    g = torch.Generator().manual_seed(71)
    signs = torch.where(torch.rand(L, generator=g) < 0.4, 1.0, -1.0)
    v = torch.randn(L, generator=g)
    rot = torch.tensor([1.0 if r % 2 == 0 else -1.0 for r in range(R)]).view(1, 1, R, 1)
    qk = signs.view(1, 1, L, 1).requires_grad_(backward)
    vv = v.view(1, 1, L, 1).requires_grad_(backward)
    out, lse = rx.lsh_attention(qk, vv, rotations=rot, bucket_size=m, scale=0.5,
                                return_lse=True)
    # Check the ends of the sequence, both sides of the sign boundary of each round's order
    # and random positions in between.
    pos_idx = torch.nonzero(signs > 0).flatten()
    neg_idx = torch.nonzero(signs < 0).flatten()
    sample = torch.cat([torch.arange(4 * m), torch.arange(L - 4 * m, L), pos_idx[-2 * m:],
                        neg_idx[:2 * m], neg_idx[-2 * m:], pos_idx[:2 * m],
                        torch.randint(0, L, (n_samples,), generator=g)])
    sample = sample[(sample >= 0) & (sample < L)].unique()
    want_out, want_lse = _closed_form(signs, v, R, m, 0.5, sample)
    got_out = out.detach().view(L)[sample].double()
    got_lse = lse.detach().view(L)[sample].double()
    torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_lse, want_lse, rtol=1e-6, atol=1e-5)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    if backward:
        # Σ_j dL/dv_j with dL/dout = 1 is Σ_i Σ_j w_ij = L (every query's weights sum to 1).
        gq, gv = torch.autograd.grad(out.sum(), (qk, vv))
        assert torch.isfinite(gq).all() and torch.isfinite(gv).all()
        assert abs(float(gv.double().sum()) - L) <= 1e-4 * L


def test_scale_closed_form_2_pow_22_items():
    """R*L' = 8 * (2^19 + 8) hash items, B=H=D=Dv=1: the largest case that fits this test's
    time budget; every index of the sort, the cyclic windows across rounds and the round merge
    is checked against the closed form at ~2,000 positions."""
    _run_scale(L=2**19 + 5, R=8, m=4, n_samples=2000, backward=True)


def _mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


HUGE_L, HUGE_R, HUGE_M = 2**28 + 8, 8, 8
# int32 buckets and int32 sorted positions (R*L' each), float32 qk, v, out, lse, key scales
# and (max, log-sum) stats, padding flags, and this test's own int64 permutations.
HUGE_BYTES = 8 * HUGE_R * HUGE_L + 4 * 7 * HUGE_L + HUGE_L + 8 * 4 * HUGE_L


@pytest.mark.skipif(os.environ.get("RX_HUGE_TESTS") != "1" or
                    _mem_available() < 1.1 * HUGE_BYTES,
                    reason=f"index overflow case: B*H*n_hashes*L' = {HUGE_R * HUGE_L} > 2^31 "
                           f"items needs ~{HUGE_BYTES / 2**30:.0f} GiB of RAM and ~30 min on 2 "
                           "cores; set RX_HUGE_TESTS=1 on a machine with the memory")
def test_index_overflow_more_than_2_pow_31_items():
    _run_scale(L=HUGE_L, R=HUGE_R, m=HUGE_M, n_samples=4000, backward=False)


# --------------------------------------------------------------------------- resource hygiene


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_one_thousand_iterations_keep_memory_flat():
    """1,000 forward+backward calls (each allocating ~0.1 MB of tensors) leave resident memory
    where it was after 100 calls: a leak of even one input-sized tensor per call would add
    ~15 MB."""
    B, H, L, D = 2, 2, 64, 16
    qk, v, rot, go, gl = _inputs(B, H, L, D, D, 2, 4, seed=81)
    mask = torch.rand(B, L, generator=torch.Generator().manual_seed(82)) < 0.2
    qk.requires_grad_()
    v.requires_grad_()

    def step():
        out, lse = rx.lsh_attention(qk, v, rotations=rot, bucket_size=8, causal=True,
                                    key_padding_mask=mask, return_lse=True)
        torch.autograd.grad((out, lse), (qk, v), (go, gl))

    assert_memory_flat_over_1000_calls(step)


def test_concurrent_python_threads_match_sequential_calls():
    """4 Python threads calling forward+backward at once (each with its own inputs and options)
    give bitwise the results of the same calls made one after another."""
    configs = []
    for k in range(4):
        qk, v, rot, go, gl = _inputs(2, 2, 50 + 7 * k, 8, 8, 2 + k, 2 + k, seed=91 + k,
                                     dtype=(F32, F64, BF16, F32)[k])
        mask = torch.rand(2, 50 + 7 * k, generator=torch.Generator().manual_seed(k)) < 0.2
        kw = dict(bucket_size=4 + k, causal=bool(k % 2), key_padding_mask=mask,
                  n_chunks_after=k % 2)
        configs.append((qk, v, rot, go, gl, kw))
    expected = [_forward_backward(*c[:5], **c[5]) for c in configs]
    results = run_in_threads([lambda c=c: _forward_backward(*c[:5], **c[5]) for c in configs])
    for k in range(len(configs)):
        for rep in range(3):
            _assert_bitwise(expected[k], results[k][rep], f"in thread {k}, call {rep}")

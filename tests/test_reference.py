"""Tests of reformer_ext/reference.py against facts that need no compiled extension.

The reference is the oracle for the C++/CUDA kernels, so it is checked here against
(a) hand-computed buckets, (b) dense softmax attention in the cases where LSH attention
must reduce to it, (c) a second, loop-by-loop implementation of docs/semantics.md §1 that
builds the multiset S_i of step 6 literally, and (d) invariances that follow from
docs/semantics.md.
"""

import math

import pytest
import torch

from _helpers import lsh_attention_reference, lsh_buckets_reference

F64 = torch.float64


def _rand(*shape, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def _keys(qk):
    D = qk.shape[-1]
    return qk * torch.rsqrt(qk.pow(2).mean(-1, keepdim=True) + 1e-6) / math.sqrt(D)


def _dense(qk, v, *, causal=False, pad=None, scale=1.0):
    """Dense softmax attention with the masks of docs/semantics.md §1 (pad: (B, L) bool,
    True = padding)."""
    B, H, L, _ = qk.shape
    s = scale * qk @ _keys(qk).transpose(-1, -2)
    i = torch.arange(L)[:, None]
    j = torch.arange(L)[None, :]
    hard = torch.zeros(B, 1, L, L, dtype=torch.bool)
    if pad is not None:
        hard = hard | pad[:, None, None, :]
    if causal:
        hard = hard | (j > i)
    s = torch.where(i == j, torch.full_like(s, -1e5), s)
    s = torch.where(hard, torch.full_like(s, -1e9), s)
    lse = torch.logsumexp(s, -1)
    out = torch.softmax(s, -1) @ v
    if pad is not None:
        out = out.masked_fill(pad[:, None, :, None], 0)
        lse = lse.masked_fill(pad[:, None, :], 0)
    return out, lse


def _naive(qk, v, rot, *, bucket_size, causal=False, key_padding_mask=None,
           n_chunks_before=1, n_chunks_after=0, scale=1.0):
    """docs/semantics.md §1 step by step with Python loops, in float64. Tiny inputs only."""
    B, H, L, D = qk.shape
    Dv = v.shape[-1]
    m = bucket_size
    R, half = rot.shape[2], rot.shape[3]
    nb = 2 * half
    Lp = -(-L // m) * m
    out = torch.zeros(B, H, L, Dv, dtype=F64)
    lse = torch.zeros(B, H, L, dtype=F64)
    for b in range(B):
        pad = [i >= L or (key_padding_mask is not None and bool(key_padding_mask[b, i]))
               for i in range(Lp)]
        for h in range(H):
            x = torch.nn.functional.pad(qk[b, h].double(), (0, 0, 0, Lp - L))
            vv = torch.nn.functional.pad(v[b, h].double(), (0, 0, 0, Lp - L))
            rh = rot[0 if rot.shape[0] == 1 else h].double()
            keys = _keys(x)

            def bucket(r, i):
                if pad[i]:
                    return nb
                p = [float(x[i] @ rh[:, r, k]) for k in range(half)]
                vals = p + [-t for t in p]
                return max(range(nb), key=lambda k: vals[k])  # first maximum wins

            items = sorted((r, bucket(r, i), i) for r in range(R) for i in range(Lp))
            n_c = len(items) // m
            S = {i: [] for i in range(L)}  # query position -> list of (key position, logit)
            for t, (_, _, i) in enumerate(items):
                if i >= L:
                    continue
                c = t // m
                chunks = {(c + d) % n_c for d in range(-n_chunks_before, n_chunks_after + 1)}
                for cc in sorted(chunks):
                    for (_, _, j) in items[cc * m:(cc + 1) * m]:
                        if pad[j] or (causal and j > i):
                            s = -1e9
                        elif j == i:
                            s = -1e5
                        else:
                            s = scale * float(x[i] @ keys[j])
                        S[i].append((j, s))
            for i in range(L):
                if pad[i]:
                    continue
                logits = torch.tensor([s for _, s in S[i]], dtype=F64)
                l_i = torch.logsumexp(logits, 0)
                w = torch.exp(logits - l_i)
                vj = torch.stack([vv[j] for j, _ in S[i]])
                out[b, h, i] = (w[:, None] * vj).sum(0)
                lse[b, h, i] = l_i
    return out, lse


# ---------------------------------------------------------------------------- buckets


def test_buckets_hand_example():
    # Identity rotation: p = x, so the bucket is the argmax of [x0, x1, -x0, -x1].
    rot = torch.eye(2, dtype=F64).reshape(1, 2, 1, 2)
    qk = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0],
                       [0.5, 0.5],  # tie between buckets 0 and 1: lowest index wins
                       [-2.0, 1.0]], dtype=F64).reshape(1, 1, 6, 2)
    b = lsh_buckets_reference(qk, rot)
    assert b.dtype == torch.int64 and b.shape == (1, 1, 1, 6)
    assert b.flatten().tolist() == [0, 1, 2, 3, 0, 2]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("Hr", [1, 3])
def test_buckets_equal_argmax_of_projections(dtype, Hr):
    B, H, L, D, R, half = 2, 3, 11, 8, 4, 5
    qk = _rand(B, H, L, D, seed=1).to(dtype)
    rot = _rand(Hr, D, R, half, seed=2)
    b = lsh_buckets_reference(qk, rot)
    assert b.shape == (B, H, R, L)
    for h in range(H):
        rh = rot[0 if Hr == 1 else h]
        for r in range(R):
            p = qk[:, h].double() @ rh[:, r, :]  # (B, L, half)
            expect = torch.argmax(torch.cat([p, -p], -1), -1)
            assert torch.equal(b[:, h, r], expect)
    assert int(b.min()) >= 0 and int(b.max()) < 2 * half


def test_buckets_padding_gets_extra_bucket():
    B, H, L, D, R, half = 2, 2, 9, 4, 3, 4
    qk = _rand(B, H, L, D, seed=3)
    rot = _rand(H, D, R, half, seed=4)
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[0, [2, 5]] = True
    mask[1, :] = True
    b = lsh_buckets_reference(qk, rot, mask)
    nb = 2 * half
    assert (b[0][:, :, [2, 5]] == nb).all()
    assert (b[1] == nb).all()
    unmasked = lsh_buckets_reference(qk, rot)
    keep = ~mask[:, None, None, :].expand_as(b)
    assert torch.equal(b[keep], unmasked[keep])
    assert (unmasked < nb).all()


def test_shared_rotations_broadcast_to_heads():
    B, H, L, D, R, half = 2, 3, 13, 8, 2, 3
    qk, v = _rand(B, H, L, D, seed=5), _rand(B, H, L, 6, seed=6)
    rot1 = _rand(1, D, R, half, seed=7)
    rotH = rot1.expand(H, -1, -1, -1).contiguous()
    assert torch.equal(lsh_buckets_reference(qk, rot1), lsh_buckets_reference(qk, rotH))
    a = lsh_attention_reference(qk, v, rot1, bucket_size=4, causal=True)
    b = lsh_attention_reference(qk, v, rotH, bucket_size=4, causal=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ------------------------------------------------------------------- dense limits


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_one_chunk_one_round_equals_dense(causal, masked, scale):
    # R = 1 and L = m: one chunk holds everything, so LSH attention is dense attention.
    B, H, L, D = 2, 2, 8, 5
    qk, v = _rand(B, H, L, D, seed=8), _rand(B, H, L, 3, seed=9)
    rot = _rand(H, D, 1, 3, seed=10)
    pad = None
    if masked:
        pad = torch.zeros(B, L, dtype=torch.bool)
        pad[0, [1, 6]] = True
    out, lse = lsh_attention_reference(qk, v, rot, bucket_size=L, causal=causal,
                                       key_padding_mask=pad, scale=scale)
    ref_out, ref_lse = _dense(qk, v, causal=causal, pad=pad, scale=scale)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("R", [1, 2, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_window_covering_all_chunks_equals_dense(R, causal):
    # When the window spans every chunk, each round's window holds every (round, key) item:
    # key j appears R times per window and there are R windows, so S_i holds each key R^2
    # times: the output is dense attention and lse = dense lse + log(R^2).
    # L = 10 with m = 4 also exercises the internal tail padding (L' = 12).
    B, H, L, D, m = 1, 2, 10, 6, 4
    n_c = R * 12 // m
    qk, v = _rand(B, H, L, D, seed=11), _rand(B, H, L, 4, seed=12)
    rot = _rand(1, D, R, 2, seed=13)
    out, lse = lsh_attention_reference(qk, v, rot, bucket_size=m, causal=causal,
                                       n_chunks_before=n_c, n_chunks_after=1)
    ref_out, ref_lse = _dense(qk, v, causal=causal)
    torch.testing.assert_close(out, ref_out, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(lse, ref_lse + 2 * math.log(R), rtol=1e-11, atol=1e-11)


def test_coinciding_window_chunks_count_once():
    # n_c = 2 with before = after = 1: chunks c-1 and c+1 are the same chunk. It is attended
    # once, so the result is plain dense attention (no extra log 2 in lse).
    B, H, L, D = 1, 1, 8, 4
    qk, v = _rand(B, H, L, D, seed=14), _rand(B, H, L, D, seed=15)
    rot = _rand(1, D, 1, 2, seed=16)
    out, lse = lsh_attention_reference(qk, v, rot, bucket_size=4, n_chunks_before=1,
                                       n_chunks_after=1)
    ref_out, ref_lse = _dense(qk, v)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12)


def test_scale_zero_gives_mean_of_other_values():
    # scale = 0: every valid logit is 0, the self logit -1e5, so out_i = mean_{j != i} v_j.
    L = 5
    qk, v = _rand(1, 1, L, 3, seed=17), _rand(1, 1, L, 2, seed=18)
    rot = _rand(1, 3, 1, 1, seed=19)
    out, lse = lsh_attention_reference(qk, v, rot, bucket_size=L, scale=0.0)
    expect = (v.sum(2, keepdim=True) - v) / (L - 1)
    torch.testing.assert_close(out, expect, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, torch.full_like(lse, math.log(L - 1)), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------- the definition, literally

NAIVE_CASES = [
    # L, m, R, half, causal, masked, before, after
    (7, 3, 2, 2, False, False, 1, 0),
    (7, 3, 2, 2, True, False, 1, 0),
    (9, 2, 3, 3, True, True, 1, 0),
    (9, 4, 2, 1, False, True, 0, 0),
    (5, 4, 2, 2, False, False, 1, 1),  # n_c = 4 with wrap-around across rounds
    (4, 4, 2, 2, True, False, 2, 1),  # n_c = 2: offsets -2, 0 and -1, 1 coincide
    (11, 3, 1, 3, True, True, 2, 1),
    (1, 1, 3, 2, False, False, 1, 0),  # L = 1: a token with only itself to attend to
    (6, 5, 4, 2, True, True, 1, 0),
]


@pytest.mark.parametrize("L,m,R,half,causal,masked,before,after", NAIVE_CASES)
@pytest.mark.parametrize("Hr", [1, 2])
def test_matches_loop_implementation(L, m, R, half, causal, masked, before, after, Hr):
    B, H, D, Dv = 2, 2, 4, 3
    seed = L * 100 + m * 10 + R
    qk, v = _rand(B, H, L, D, seed=seed), _rand(B, H, L, Dv, seed=seed + 1)
    rot = _rand(Hr, D, R, half, seed=seed + 2)
    pad = None
    if masked:
        pad = torch.rand(B, L, generator=torch.Generator().manual_seed(seed)) < 0.3
        pad[1, :] = True  # a batch row that is all padding
    kw = dict(bucket_size=m, causal=causal, key_padding_mask=pad, n_chunks_before=before,
              n_chunks_after=after, scale=0.9)
    out, lse = lsh_attention_reference(qk, v, rot, **kw)
    ref_out, ref_lse = _naive(qk, v, rot, **kw)
    # A query whose only valid key is itself has lse ~ -1e5, so the round weights
    # exp(lse_r - lse) carry ~1e5 * 2^-52 of rounding: hence 1e-10, not 1e-14.
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12)


def test_rounds_combine_by_lse():
    # With no neighbouring chunks a window never crosses a round boundary, so R rounds
    # are R independent one-round attentions combined with weights softmax_r(lse_r).
    B, H, L, D, R, m = 2, 2, 12, 6, 3, 4
    qk, v = _rand(B, H, L, D, seed=20), _rand(B, H, L, 5, seed=21)
    rot = _rand(H, D, R, 3, seed=22)
    kw = dict(bucket_size=m, causal=True, n_chunks_before=0, n_chunks_after=0)
    out, lse = lsh_attention_reference(qk, v, rot, **kw)
    per = [lsh_attention_reference(qk, v, rot[:, :, r:r + 1], **kw) for r in range(R)]
    lse_r = torch.stack([p[1] for p in per])
    out_r = torch.stack([p[0] for p in per])
    expect_lse = torch.logsumexp(lse_r, 0)
    expect_out = (torch.exp(lse_r - expect_lse)[..., None] * out_r).sum(0)
    torch.testing.assert_close(lse, expect_lse, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, expect_out, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ padding, causal


def test_padding_queries_output_zero_and_get_no_gradient():
    B, H, L, D = 2, 2, 10, 4
    qk = _rand(B, H, L, D, seed=23).requires_grad_()
    v = _rand(B, H, L, 3, seed=24).requires_grad_()
    rot = _rand(1, D, 2, 2, seed=25)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[0, [0, 4, 9]] = True
    pad[1, :] = True
    out, lse = lsh_attention_reference(qk, v, rot, bucket_size=3, key_padding_mask=pad)
    assert (out[pad[:, None, :].expand(B, H, L)] == 0).all()
    assert (lse[pad[:, None, :].expand(B, H, L)] == 0).all()
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    g_out, g_lse = _rand(*out.shape, seed=26), _rand(*lse.shape, seed=27)
    gq, gv = torch.autograd.grad((out * g_out).sum() + (lse * g_lse).sum(), (qk, v))
    sel = pad[:, None, :].expand(B, H, L)
    assert (gq[sel] == 0).all() and (gv[sel] == 0).all()
    assert (gq[~sel] != 0).any() and (gv[~sel] != 0).any()


def test_padding_contents_do_not_matter():
    B, H, L, D = 2, 2, 11, 4
    qk, v = _rand(B, H, L, D, seed=28), _rand(B, H, L, 3, seed=29)
    rot = _rand(H, D, 2, 3, seed=30)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[0, [1, 7]] = True
    pad[1, 8:] = True
    qk2, v2 = qk.clone(), v.clone()
    qk2[pad[:, None, :].expand(B, H, L)] = 1e3
    v2[pad[:, None, :].expand(B, H, L)] = -7.0
    kw = dict(bucket_size=4, causal=True, key_padding_mask=pad)
    a = lsh_attention_reference(qk, v, rot, **kw)
    b = lsh_attention_reference(qk2, v2, rot, **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_all_padding_row_does_not_affect_other_rows():
    B, H, L, D = 2, 2, 9, 4
    qk, v = _rand(B, H, L, D, seed=31), _rand(B, H, L, 3, seed=32)
    rot = _rand(1, D, 2, 2, seed=33)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1] = True
    out, lse = lsh_attention_reference(qk, v, rot, bucket_size=4, key_padding_mask=pad)
    assert (out[1] == 0).all() and (lse[1] == 0).all()
    out0, lse0 = lsh_attention_reference(qk[:1], v[:1], rot, bucket_size=4)
    assert torch.equal(out[:1], out0) and torch.equal(lse[:1], lse0)


def test_tail_padding_equals_explicit_padding():
    # L = 7, m = 4 pads internally to L' = 8; the same as L = 8 with position 7 masked.
    B, H, D = 2, 2, 4
    qk, v = _rand(B, H, 8, D, seed=34), _rand(B, H, 8, 3, seed=35)
    rot = _rand(H, D, 3, 2, seed=36)
    pad = torch.zeros(B, 8, dtype=torch.bool)
    pad[:, 7] = True
    a = lsh_attention_reference(qk[:, :, :7], v[:, :, :7], rot, bucket_size=4, causal=True)
    b = lsh_attention_reference(qk, v, rot, bucket_size=4, causal=True, key_padding_mask=pad)
    assert torch.equal(a[0], b[0][:, :, :7]) and torch.equal(a[1], b[1][:, :, :7])


def test_causal_future_values_do_not_leak():
    B, H, L, D = 1, 2, 13, 4
    qk, v = _rand(B, H, L, D, seed=37), _rand(B, H, L, 3, seed=38)
    rot = _rand(H, D, 2, 2, seed=39)
    kw = dict(bucket_size=3, causal=True, n_chunks_before=1, n_chunks_after=1)
    out, lse = lsh_attention_reference(qk, v, rot, **kw)
    v2 = v.clone()
    v2[:, :, 6:] = 100.0
    out2, lse2 = lsh_attention_reference(qk, v2, rot, **kw)
    assert torch.equal(out[:, :, :6], out2[:, :, :6]) and torch.equal(lse, lse2)
    assert not torch.equal(out[:, :, 6:], out2[:, :, 6:])


def test_causal_first_token_attends_only_itself():
    B, H, L, D = 1, 2, 9, 4
    qk, v = _rand(B, H, L, D, seed=40), _rand(B, H, L, 3, seed=41)
    rot = _rand(1, D, 4, 2, seed=42)
    out, _ = lsh_attention_reference(qk, v, rot, bucket_size=2, causal=True)
    # All its logits are -1e5 (itself, once per round) or -1e9: lse ~ -1e5 costs ~1e-11.
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0], rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ other invariances


def test_batch_and_heads_are_independent():
    B, H, L, D = 2, 3, 10, 4
    qk, v = _rand(B, H, L, D, seed=43), _rand(B, H, L, 5, seed=44)
    rot = _rand(H, D, 2, 3, seed=45)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, 3] = True
    kw = dict(bucket_size=3, causal=True, n_chunks_before=2, n_chunks_after=1)
    out, lse = lsh_attention_reference(qk, v, rot, key_padding_mask=pad, **kw)
    for b in range(B):
        for h in range(H):
            o, l_ = lsh_attention_reference(qk[b:b + 1, h:h + 1], v[b:b + 1, h:h + 1],
                                            rot[h:h + 1], key_padding_mask=pad[b:b + 1], **kw)
            torch.testing.assert_close(o[0, 0], out[b, h], rtol=1e-13, atol=1e-13)
            torch.testing.assert_close(l_[0, 0], lse[b, h], rtol=1e-13, atol=1e-13)


def test_linear_in_values():
    B, H, L, D = 1, 2, 10, 4
    qk, v, w = _rand(B, H, L, D, seed=46), _rand(B, H, L, 3, seed=47), _rand(B, H, L, 3, seed=48)
    rot = _rand(1, D, 3, 2, seed=49)
    kw = dict(bucket_size=4, causal=True)
    ov, lv = lsh_attention_reference(qk, v, rot, **kw)
    ow, lw = lsh_attention_reference(qk, w, rot, **kw)
    o, l_ = lsh_attention_reference(qk, 2 * v - 3 * w, rot, **kw)
    torch.testing.assert_close(o, 2 * ov - 3 * ow, rtol=1e-12, atol=1e-12)
    assert torch.equal(l_, lv) and torch.equal(l_, lw)


def test_head_dims_may_differ():
    qk, v = _rand(2, 2, 9, 6, seed=50), _rand(2, 2, 9, 11, seed=51)
    out, lse = lsh_attention_reference(qk, v, _rand(2, 6, 2, 2, seed=52), bucket_size=4)
    assert out.shape == (2, 2, 9, 11) and lse.shape == (2, 2, 9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    qk, v = _rand(1, 2, 10, 8, seed=53), _rand(1, 2, 10, 4, seed=54)
    rot = _rand(1, 8, 2, 3, seed=55)
    out, lse = lsh_attention_reference(qk.to(dtype), v.to(dtype), rot, bucket_size=4)
    assert out.dtype == dtype and lse.dtype == torch.float32
    # Low precision inputs are computed in float32 and only the output is rounded.
    o32, l32 = lsh_attention_reference(qk.to(dtype).float(), v.to(dtype).float(), rot,
                                       bucket_size=4)
    assert torch.equal(out, o32.to(dtype)) and torch.equal(lse, l32)
    o64, l64 = lsh_attention_reference(qk, v, rot, bucket_size=4)
    assert o64.dtype == F64 and l64.dtype == F64


def test_gradcheck():
    B, H, L, D = 1, 2, 7, 4
    qk = _rand(B, H, L, D, seed=56).requires_grad_()
    v = _rand(B, H, L, 3, seed=57).requires_grad_()
    rot = _rand(1, D, 2, 2, seed=58)
    pad = torch.tensor([[False, False, True, False, False, False, False]])

    def f(qk, v):
        return lsh_attention_reference(qk, v, rot, bucket_size=3, causal=True,
                                       key_padding_mask=pad)

    assert torch.autograd.gradcheck(f, (qk, v))

"""Plain-PyTorch references of the Reformer LSH attention (docs/semantics.md §1), of the
reversible Reformer stack (docs/semantics.md §3) and of local attention (§9).

This is the oracle the C++/CUDA kernels are tested against. It is written to be
read, not to be fast: it follows the paper step by step (hash, sort, chunk,
attend within a window of chunks, per-round softmax, combine the rounds by their
log-sum-exp) and leaves every gradient to autograd.

Batch and heads are handled by broadcasting; the chunk windows are built as a
small index table, so a (B=1, H=2, L=300, D=16, R=4, m=16) call takes a few
milliseconds.
"""

import math

import torch

__all__ = ["local_attention_reference", "lsh_buckets_reference", "lsh_attention_reference",
           "reformer_stack_reference"]

# Mask constants of docs/semantics.md §1 step 5, used by replacement in the accumulator dtype.
MASK_VALUE = -1e9  # padding key, or causal j > i
SELF_MASK_VALUE = -1e5  # j == i: a token attends to itself only as a last resort
KEY_NORM_EPS = 1e-6


def _compute_dtype(dtype):
    # float64 inputs stay float64 (for gradcheck); everything else accumulates in float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _padding(key_padding_mask, B, L, L_pad, device):
    """(B, L_pad) bool: True for user padding and for the internal tail L..L_pad-1."""
    pad = torch.ones(B, L_pad, dtype=torch.bool, device=device)
    if key_padding_mask is None:
        pad[:, :L] = False
    else:
        pad[:, :L] = key_padding_mask.to(device=device, dtype=torch.bool)
    return pad


def _hash(x, rotations, pad, bucket_factors=None):
    """Buckets of docs/semantics.md §1 step 1.

    x: (B, H, Lx, D) in the compute dtype, rotations: (Hr, D, R, nb/2) with Hr in {1, H},
    pad: (B, Lx) bool. bucket_factors: None (one factor nb = 2 * rotations.shape[-1]) or the
    even factors f_j of a factorised count: column slices of f_j/2 give digits b_j, the bucket is
    b_1 + f_1 b_2 + f_1 f_2 b_3 + ..., nb = prod f_j. Returns int64 (B, H, R, Lx); padding
    positions get bucket nb.
    """
    rot = rotations.to(x.dtype)
    factors = list(bucket_factors) if bucket_factors else [2 * rot.shape[-1]]
    assert sum(factors) == 2 * rot.shape[-1], (factors, rot.shape)
    # p[b, h, r, l, k] = x[b, h, l, :] . rot[h, :, r, k]; Hr == 1 broadcasts over heads.
    p = torch.einsum("bhld,hdrk->bhrlk", x, rot.expand(x.shape[1], -1, -1, -1))
    buckets = torch.zeros(p.shape[:-1], dtype=torch.long, device=x.device)
    radix, offset = 1, 0
    for f in factors:
        pj = p[..., offset:offset + f // 2]
        # argmax over [p, -p]: torch.argmax returns the first maximum, i.e. ties go to the
        # lowest index.
        buckets = buckets + radix * torch.argmax(torch.cat([pj, -pj], dim=-1), dim=-1)
        radix, offset = radix * f, offset + f // 2
    return buckets.masked_fill(pad[:, None, None, :], radix)


def lsh_buckets_reference(qk, rotations, key_padding_mask=None, bucket_factors=None):
    """int64 (B, H, R, L) buckets of every position in every hash round (padding -> nb)."""
    B, H, L, _ = qk.shape
    x = qk.detach().to(_compute_dtype(qk.dtype))
    return _hash(x, rotations.detach(), _padding(key_padding_mask, B, L, L, qk.device),
                 bucket_factors)


def _window_chunks(n_chunks, before, after, device, return_slots=False):
    """(n_c, W) table: row c lists the distinct chunks c-before .. c+after, taken modulo n_c.

    When there are few chunks, two offsets can name the same chunk (e.g. c-1 == c+1 with
    n_c = 2); it is attended once, not twice. With return_slots, also the (n_c, W) window slots
    of the attention dropout: offset + before for the first offset naming each chunk.
    """
    rows, slots = [], []
    for c in range(n_chunks):
        first = {}
        for d in range(-before, after + 1):
            first.setdefault((c + d) % n_chunks, d + before)
        row = sorted(first)
        rows.append(row)
        slots.append([first[w] for w in row])
    # The number of distinct chunks is min(before + after + 1, n_c) for every c.
    table = torch.tensor(rows, dtype=torch.long, device=device)
    if return_slots:
        return table, torch.tensor(slots, dtype=torch.long, device=device)
    return table


def _sorted_positions(buckets):
    """Positions sorted by (round, bucket, position): (B, H, R, L') int64.

    The key bucket * L' + position is unique, so any sort of it is the stable sort by bucket
    that keeps the original order inside a bucket.
    """
    L_pad = buckets.shape[-1]
    pos = torch.arange(L_pad, device=buckets.device)
    return torch.argsort(buckets * L_pad + pos, dim=-1)


def lsh_attention_reference(
    qk,
    v,
    rotations,
    *,
    bucket_size,
    causal=False,
    key_padding_mask=None,
    n_chunks_before=1,
    n_chunks_after=0,
    scale=1.0,
    bucket_factors=None,
    dropout_p=0.0,
    dropout_seed=None,
):
    """LSH self-attention of docs/semantics.md §1. Returns (out, lse).

    dropout_p > 0 drops per-round attention weights with the seeded mask of
    reformer_ext.ops.seeded_random.attention_dropout_keep_mask (seed dropout_seed: an int or a
    0-dim int64 tensor), scaling kept ones by 1 / (1 - dropout_p); lse is unchanged.

    qk: (B, H, L, D), v: (B, H, L, Dv), rotations: (Hr, D, R, nb/2), key_padding_mask: (B, L)
    bool with True = padding. bucket_factors: None, or the factors of a factorised bucket
    count (see _hash). out: (B, H, L, Dv) in the input dtype; lse: (B, H, L) in float32
    (float64 for float64 inputs). Padding query positions get out = 0 and lse = 0.
    """
    B, H, L, D = qk.shape
    Dv = v.shape[-1]
    m = bucket_size
    R = rotations.shape[2]
    cdt = _compute_dtype(qk.dtype)
    dev = qk.device

    # Pad the sequence to L' = next multiple of m; the tail is padding (zeros, never attended).
    L_pad = -(-L // m) * m
    x = torch.nn.functional.pad(qk.to(cdt), (0, 0, 0, L_pad - L))
    val = torch.nn.functional.pad(v.to(cdt), (0, 0, 0, L_pad - L))
    pad = _padding(key_padding_mask, B, L, L_pad, dev)  # (B, L')

    # Steps 1-2: hash and sort. The buckets are piecewise constant in qk: no gradient.
    buckets = _hash(x.detach(), rotations.detach(), pad, bucket_factors)  # (B, H, R, L')
    order = _sorted_positions(buckets)  # (B, H, R, L')

    # Step 3: the R*L' sorted items, rounds one after another, cut into n_c chunks of m.
    n_items = R * L_pad
    n_chunks = n_items // m
    item_pos = order.reshape(B, H, n_items)  # original position of every sorted item
    win, win_slots = _window_chunks(n_chunks, n_chunks_before, n_chunks_after, dev,
                                    return_slots=True)  # (n_c, W)
    chunk_pos = item_pos.reshape(B, H, n_chunks, m)
    q_pos = chunk_pos  # (B, H, n_c, m)
    k_pos = chunk_pos[:, :, win, :].reshape(B, H, n_chunks, -1)  # (B, H, n_c, W*m)

    def gather(t, idx):
        # t: (B, H, L', E), idx: (B, H, ...) positions -> (B, H, ..., E)
        flat = idx.reshape(B, H, -1, 1).expand(-1, -1, -1, t.shape[-1])
        return torch.gather(t, 2, flat).reshape(*idx.shape, t.shape[-1])

    # Step 4: keys are the queries normalised to unit length (up to the epsilon).
    k_all = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + KEY_NORM_EPS) / math.sqrt(D)
    q = gather(x, q_pos)  # (B, H, n_c, m, D)
    k = gather(k_all, k_pos)  # (B, H, n_c, W*m, D)
    vk = gather(val, k_pos)  # (B, H, n_c, W*m, Dv)
    s = scale * torch.einsum("bhcid,bhcjd->bhcij", q, k)

    # Step 5: masks on original positions, by replacement (not addition).
    i_pos = q_pos[..., :, None]
    j_pos = k_pos[..., None, :]
    j_pad = torch.gather(pad[:, None, :].expand(B, H, L_pad), 2, k_pos.reshape(B, H, -1))
    j_pad = j_pad.reshape(B, H, n_chunks, 1, -1)
    hard = j_pad | (j_pos > i_pos) if causal else j_pad.expand_as(s)
    s = torch.where(j_pos == i_pos, torch.full_like(s, SELF_MASK_VALUE), s)
    s = torch.where(hard, torch.full_like(s, MASK_VALUE), s)

    # Per-round softmax of every item over its window.
    lse_item = torch.logsumexp(s, dim=-1)  # (B, H, n_c, m)
    probs = torch.softmax(s, dim=-1)
    if dropout_p > 0:
        # The value average uses the dropped weights; lse_item (the merge weights) does not.
        from .ops.seeded_random import attention_dropout_keep_mask
        bh = torch.arange(B * H, device=dev).view(B, H, 1, 1, 1)
        rnd = (torch.arange(n_chunks, device=dev) // (L_pad // m)).view(1, 1, n_chunks, 1, 1)
        slot = win_slots.repeat_interleave(m, dim=1).view(1, 1, n_chunks, 1, -1)
        keep = attention_dropout_keep_mask(
            dropout_p, dropout_seed, bh, rnd, q_pos[..., :, None], slot, k_pos[..., None, :],
            n_hashes=R, length=L, window_slots=n_chunks_before + n_chunks_after + 1)
        probs = torch.where(keep, probs / (1.0 - dropout_p), torch.zeros_like(probs))
    out_item = torch.einsum("bhcij,bhcjd->bhcid", probs, vk)

    # Back to original positions: item t of round r sits at position order[..., r, t].
    lse_item = lse_item.reshape(B, H, R, L_pad)
    out_item = out_item.reshape(B, H, R, L_pad, Dv)
    unsort = torch.argsort(order, dim=-1)  # inverse permutation per round
    lse_r = torch.gather(lse_item, 3, unsort)  # (B, H, R, L')
    out_r = torch.gather(out_item, 3, unsort[..., None].expand(-1, -1, -1, -1, Dv))

    # Step 6: combine the rounds with weights softmax_r(lse_r) (paper eq. 14). This equals
    # exp(lse_r - lse), but torch.softmax normalises exactly: a query that can only attend to
    # itself has lse ~ -1e5, where a float32 lse is only good to ~4e-3 absolute.
    lse = torch.logsumexp(lse_r, dim=2)  # (B, H, L')
    out = (torch.softmax(lse_r, dim=2)[..., None] * out_r).sum(dim=2)

    # Step 7: padding queries output 0 (and, through torch.where, receive no gradient).
    q_pad = pad[:, None, :, None]
    out = torch.where(q_pad, torch.zeros_like(out), out)
    lse = torch.where(q_pad[..., 0], torch.zeros_like(lse), lse)
    return out[:, :, :L].to(v.dtype), lse[:, :, :L]


_ACTIVATIONS = {
    "gelu": lambda h: torch.nn.functional.gelu(h),
    "gelu_tanh": lambda h: torch.nn.functional.gelu(h, approximate="tanh"),
    "relu": torch.relu,
    "silu": torch.nn.functional.silu,
}


def reformer_stack_reference(x1, x2, weights, rotations, seeds, *, n_heads,
                             key_padding_mask=None, bucket_size=64, causal=False,
                             n_chunks_before=1, n_chunks_after=0, activation="gelu",
                             dropout_p=0.0, layer_norm_eps=1e-5, bucket_factors=None,
                             local_layers=(), local_chunk_length=64, local_chunks_before=1,
                             local_chunks_after=0, lsh_attention_dropout_p=0.0,
                             local_attention_dropout_p=0.0):
    """The reversible stack of docs/semantics.md §3 run forward with ordinary autograd (everything
    stored): 12 weights per layer in the order of
    reformer_ext.ops.reformer_stack.LAYER_WEIGHT_NAMES, one rotation tensor per layer, seeds
    (depth, 3) = the dropout seeds of the attention output, the FFN hidden activation and the
    FFN output. bucket_factors: shared by every LSH layer (see _hash). The layers in
    local_layers use local attention (§9, scale 1/sqrt(d_head)): their qk weight is the query
    weight stacked on the key weight, their rotations are ignored. lsh_attention_dropout_p /
    local_attention_dropout_p: attention-probability dropout of the LSH / local layers, seeded
    with seeds' fourth column when it has one, else with derived_seed(attention-output seed,
    ATTENTION_PROBS_SALT). Returns (y1, y2)."""
    import torch.nn.functional as F

    # the seeded mask rule of csrc/seeded_dropout.h (the C++ side computes it independently)
    from .ops.seeded_random import seeded_dropout as _seeded_dropout
    from .ops.seeded_random import ATTENTION_PROBS_SALT, derived_seed

    B, L, d = x1.shape
    act = _ACTIVATIONS[activation]
    for layer, rot in enumerate(rotations):
        (n1w, n1b, w_qk, w_v, w_out, b_out, n2w, n2b, w1, b1, w2, b2) = \
            weights[12 * layer:12 * layer + 12]
        s_attn, s_hidden, s_out, *s_probs = seeds[layer].tolist()
        attention_seed = (torch.tensor(s_probs[0]) if s_probs
                          else derived_seed(s_attn, ATTENTION_PROBS_SALT))
        # F: attention branch
        h = F.layer_norm(x2, (d,), n1w, n1b, layer_norm_eps)
        heads = lambda t: t.view(B, L, n_heads, -1).transpose(1, 2)  # noqa: E731
        if layer in local_layers:
            q, k = (h @ w_qk.t()).chunk(2, dim=-1)
            out, _ = local_attention_reference(
                heads(q), heads(k), heads(h @ w_v.t()), chunk_length=local_chunk_length,
                causal=causal, key_padding_mask=key_padding_mask,
                n_chunks_before=local_chunks_before, n_chunks_after=local_chunks_after,
                dropout_p=local_attention_dropout_p, dropout_seed=attention_seed)
        else:
            out, _ = lsh_attention_reference(
                heads(h @ w_qk.t()), heads(h @ w_v.t()), rot, bucket_size=bucket_size,
                causal=causal, key_padding_mask=key_padding_mask,
                n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
                bucket_factors=bucket_factors, dropout_p=lsh_attention_dropout_p,
                dropout_seed=attention_seed)
        a = out.transpose(1, 2).reshape(B, L, -1) @ w_out.t() + b_out
        x1 = x1 + _seeded_dropout(a, dropout_p, s_attn)
        # G: feed-forward branch (hidden dropout over the (B·L, d_ff) activation)
        h = F.layer_norm(x1, (d,), n2w, n2b, layer_norm_eps)
        hidden = _seeded_dropout(act(h @ w1.t() + b1), dropout_p, s_hidden)
        x2 = x2 + _seeded_dropout(hidden @ w2.t() + b2, dropout_p, s_out)
    return x1, x2


def local_attention_reference(q, k, v, *, chunk_length=64, causal=False, n_chunks_before=1,
                              n_chunks_after=0, scale=None, key_padding_mask=None,
                              dropout_p=0.0, dropout_seed=None):
    """Local attention of docs/semantics.md §9, written out: pad to L' = ceil(L / m) * m, list
    for every chunk c the key chunks c + o for o = -before..+after modulo the number of chunks
    (a chunk once per offset reaching it; with a single chunk, that chunk once), replace masked
    logits by -1e9, softmax over the window. Returns (out, lse); padding queries (and the tail)
    give out 0 and lse 0. Gradients by autograd; exact in float64. dropout_p > 0: the weights of
    the value average are dropped with the seeded mask of
    reformer_ext.ops.seeded_random.attention_dropout_keep_mask (one round, window slot
    o + before; 0 with a single chunk), kept ones scaled by 1 / (1 - dropout_p)."""
    B, H, L, D = q.shape
    Dv = v.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    m = chunk_length
    L_pad = (L + m - 1) // m * m
    n_chunks = L_pad // m
    dtype = _compute_dtype(q.dtype)
    device = q.device

    def padded(x):
        x = x.to(dtype)
        return torch.cat([x, x.new_zeros(B, H, L_pad - L, x.shape[-1])], dim=2)

    qp, kp, vp = padded(q), padded(k), padded(v)
    pad = _padding(key_padding_mask, B, L, L_pad, device)  # (B, L')
    if n_chunks == 1:
        offsets = [0]  # a single chunk: plain full attention (HF does the same for L <= m)
    else:
        offsets = list(range(-n_chunks_before, n_chunks_after + 1))
    chunk = torch.arange(n_chunks, device=device)
    # (n_chunks, W): key positions of each query chunk's window, chunk after chunk in offset order
    window = torch.cat([((chunk + o) % n_chunks)[:, None] * m + torch.arange(m, device=device)
                        for o in offsets], dim=1)
    qc = qp.view(B, H, n_chunks, m, D)
    kw = kp[:, :, window]  # (B, H, n_chunks, W, D)
    vw = vp[:, :, window]
    logits = scale * torch.einsum("bhcid,bhcjd->bhcij", qc, kw)
    qpos = torch.arange(L_pad, device=device).view(n_chunks, m)
    masked = pad[:, None, window][:, :, :, None, :].expand(logits.shape)
    if causal:
        masked = masked | (window[:, None, :] > qpos[:, :, None])
    logits = torch.where(masked, torch.full_like(logits, MASK_VALUE), logits)
    lse = torch.logsumexp(logits, dim=-1)
    probs = torch.exp(logits - lse[..., None])
    if dropout_p > 0:
        from .ops.seeded_random import attention_dropout_keep_mask
        slot = torch.tensor([o + n_chunks_before if n_chunks > 1 else 0 for o in offsets],
                            device=device).repeat_interleave(m)  # (W,)
        bh = torch.arange(B * H, device=device).view(B, H, 1, 1, 1)
        keep = attention_dropout_keep_mask(
            dropout_p, dropout_seed, bh, 0, qpos[:, :, None], slot, window[:, None, :],
            n_hashes=1, length=L, window_slots=n_chunks_before + n_chunks_after + 1)
        probs = torch.where(keep, probs / (1.0 - dropout_p), torch.zeros_like(probs))
    out = torch.einsum("bhcij,bhcjd->bhcid", probs, vw)
    out = out.reshape(B, H, L_pad, Dv)[:, :, :L]
    lse = lse.reshape(B, H, L_pad)[:, :, :L]
    query_pad = pad[:, None, :L]
    out = torch.where(query_pad[..., None], torch.zeros_like(out), out)
    lse = torch.where(query_pad, torch.zeros_like(lse), lse)
    return out.to(q.dtype), lse

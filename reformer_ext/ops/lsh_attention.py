"""The LSH attention operator family (docs/semantics.md §1): ``reformer::lsh_buckets``,
``reformer::lsh_attention`` and its backward. The functional API (``lsh_attention``,
``lsh_buckets``, ``random_rotations``) and the Python-side registrations that make the operators
work with autograd, fake tensors, autocast and torch.compile."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from ._autocast import register_low_precision_autocast
from ._checks import (check_bool, check_int, check_probability, check_real, check_tensor,
                      check_traced)
from .chunked_ffn import _fake_check_dropout_seed
from .seeded_random import draw_dropout_seed, seed_tensor

__all__ = ["accumulation_dtype", "bucket_factors_of", "default_n_buckets", "lsh_attention",
           "lsh_buckets", "random_rotations"]

#: Most factors a factorised bucket count may have (kMaxBucketFactors in kernels/lsh_common.h).
MAX_BUCKET_FACTORS = 8

# ---------------------------------------------------------------------------------------------
# Fake (meta) kernels: output shapes never depend on data, only on input shapes. They repeat the
# C++ kernels' shape and device checks (csrc/lsh_attention_common.cpp) with torch._check_value,
# which also works on symbolic sizes, so tracing rejects what eager mode would.


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in (and lse / rotations come in): float64 for float64
    inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _padded_length(length, bucket_size):
    return (length + bucket_size - 1) // bucket_size * bucket_size


def _check_tensor_arg(t, name: str, qk, shape=None, dtype=None) -> None:
    check_traced(isinstance(t, Tensor), f"{name} must be a tensor, got {type(t).__name__}")
    check_traced(t.device == qk.device, f"{name} must be on the same device as qk ({qk.device}), "
                                  f"got {t.device}")
    if shape is not None:
        check_traced(t.dim() == len(shape) and all(a == b for a, b in zip(t.shape, shape)),
               f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if dtype is not None:
        check_traced(t.dtype == dtype, f"{name} must have dtype {dtype}, got {t.dtype}")


def _fake_check_hash_args(qk, rotations, key_padding_mask):
    check_traced(isinstance(qk, Tensor) and qk.dim() == 4,
           "qk must have shape (batch, heads, length, dim)")
    batch, heads, length, dim = qk.shape
    _check_tensor_arg(rotations, "rotations", qk)
    check_traced(rotations.dim() == 4 and (rotations.shape[0] == 1 or rotations.shape[0] == heads)
           and rotations.shape[1] == dim and rotations.shape[2] >= 1 and rotations.shape[3] >= 1,
           f"rotations must have shape (1 or {heads}, {dim}, n_hashes, n_buckets // 2), got "
           f"{tuple(rotations.shape)}")
    if key_padding_mask is not None:
        _check_tensor_arg(key_padding_mask, "key_padding_mask", qk, (batch, length), torch.bool)


def check_bucket_factors(bucket_factors, rotation_cols, what="rotations"):
    """The checks of check_bucket_factors in csrc/lsh_attention_common.cpp, for the fake kernels
    (these and the stack's): empty, or even factors >= 2 (at most MAX_BUCKET_FACTORS) with
    sum / 2 == rotation_cols (``what``.shape[3]) and prod < 2^31."""
    factors = list(bucket_factors)
    if not factors:
        return
    check_traced(len(factors) <= MAX_BUCKET_FACTORS,
                 f"bucket_factors must hold at most {MAX_BUCKET_FACTORS} factors, got "
                 f"{len(factors)}: {factors}")
    prod = 1
    for f in factors:
        check_traced(f >= 2 and f % 2 == 0 and f < 2**31 - 1,
                     "bucket_factors must hold even factors >= 2 (buckets come from argmax over "
                     f"[p, -p]), got {factors}")
        prod *= f
        check_traced(prod < 2**31 - 1,
                     f"bucket_factors must multiply to n_buckets < 2^31, got {factors}")
    check_traced(sum(factors) // 2 == rotation_cols,
                 f"bucket_factors must sum to 2 * {rotation_cols} (twice {what}.shape[3], the "
                 f"rotation columns per round), got {factors} (sum {sum(factors)})")


def _fake_check_window(bucket_size, n_chunks_before, n_chunks_after):
    check_traced(bucket_size >= 1, f"bucket_size must be >= 1, got {bucket_size}")
    check_traced(n_chunks_before >= 0 and n_chunks_after >= 0,
           "n_chunks_before and n_chunks_after must be >= 0")


@torch.library.register_fake("reformer::lsh_buckets")
def _lsh_buckets_fake(qk, rotations, key_padding_mask=None, bucket_factors=()):
    _fake_check_hash_args(qk, rotations, key_padding_mask)
    check_bucket_factors(bucket_factors, rotations.shape[3])
    batch, heads, length, _ = qk.shape
    return qk.new_empty((batch, heads, rotations.shape[2], length), dtype=torch.int64)


@torch.library.register_fake("reformer::lsh_attention")
def _lsh_attention_fake(qk, v, rotations, key_padding_mask, bucket_size, causal,
                        n_chunks_before, n_chunks_after, scale, bucket_factors=(),
                        dropout_p=0.0, dropout_seed=None):
    _fake_check_hash_args(qk, rotations, key_padding_mask)
    check_bucket_factors(bucket_factors, rotations.shape[3])
    _fake_check_window(bucket_size, n_chunks_before, n_chunks_after)
    _fake_check_dropout_seed(dropout_seed, dropout_p, qk)
    batch, heads, length, _ = qk.shape
    _check_tensor_arg(v, "v", qk, (batch, heads, length, v.shape[-1]), qk.dtype)
    items = rotations.shape[2] * _padded_length(length, bucket_size)
    acc = accumulation_dtype(qk.dtype)
    out = v.new_empty(v.shape)
    lse = qk.new_empty((batch, heads, length), dtype=acc)
    sorted_positions = qk.new_empty((batch, heads, items), dtype=torch.int32)
    softmax_stats = qk.new_empty((batch, heads, length, 2), dtype=acc)
    return out, lse, sorted_positions, softmax_stats


@torch.library.register_fake("reformer::lsh_attention_backward")
def _lsh_attention_backward_fake(grad_out, grad_lse, qk, v, out, softmax_stats, sorted_positions,
                                 key_padding_mask, bucket_size, causal, n_chunks_before,
                                 n_chunks_after, scale, dropout_p=0.0, dropout_seed=None):
    check_traced(isinstance(qk, Tensor) and qk.dim() == 4,
           "qk must have shape (batch, heads, length, dim)")
    _fake_check_window(bucket_size, n_chunks_before, n_chunks_after)
    _fake_check_dropout_seed(dropout_seed, dropout_p, qk)
    batch, heads, length, _ = qk.shape
    acc = accumulation_dtype(qk.dtype)
    _check_tensor_arg(v, "v", qk, (batch, heads, length, v.shape[-1]), qk.dtype)
    _check_tensor_arg(grad_out, "grad_out", qk, v.shape, qk.dtype)
    _check_tensor_arg(out, "out", qk, v.shape, qk.dtype)
    if grad_lse is not None:
        _check_tensor_arg(grad_lse, "grad_lse", qk, (batch, heads, length), acc)
    _check_tensor_arg(softmax_stats, "softmax_stats", qk, (batch, heads, length, 2), acc)
    _check_tensor_arg(sorted_positions, "sorted_positions", qk, None, torch.int32)
    check_traced(sorted_positions.dim() == 3 and sorted_positions.shape[0] == batch
           and sorted_positions.shape[1] == heads
           and sorted_positions.shape[2] % _padded_length(length, bucket_size) == 0,
           f"sorted_positions must have shape (batch, heads, n_hashes * padded length), got "
           f"{tuple(sorted_positions.shape)}")
    if key_padding_mask is not None:
        _check_tensor_arg(key_padding_mask, "key_padding_mask", qk, (batch, length), torch.bool)
    return qk.new_empty(qk.shape), v.new_empty(v.shape)


# ---------------------------------------------------------------------------------------------
# Autograd: the backward recomputes logits chunk by chunk from what the forward returned.


def _lsh_attention_setup_context(ctx, inputs, output):
    # bucket_factors are not needed: the backward reuses sorted_positions. The dropout rate and
    # seed (trailing, optional) go to the backward, which regenerates the mask.
    qk, v, _rotations, key_padding_mask, bucket_size, causal, before, after, scale = inputs[:9]
    dropout_p = inputs[10] if len(inputs) > 10 else 0.0
    dropout_seed = inputs[11] if len(inputs) > 11 else None
    out, _lse, sorted_positions, softmax_stats = output
    ctx.save_for_backward(qk, v, out, softmax_stats, sorted_positions, key_padding_mask,
                          dropout_seed)
    ctx.options = (bucket_size, causal, before, after, scale, dropout_p)
    ctx.n_inputs = len(inputs)
    ctx.mark_non_differentiable(sorted_positions, softmax_stats)


def _lsh_attention_backward(ctx, grad_out, grad_lse, _grad_sorted_positions, _grad_stats):
    (qk, v, out, softmax_stats, sorted_positions, key_padding_mask,
     dropout_seed) = ctx.saved_tensors
    grad_qk, grad_v = torch.ops.reformer.lsh_attention_backward(
        grad_out, grad_lse, qk, v, out, softmax_stats, sorted_positions, key_padding_mask,
        *ctx.options, dropout_seed
    )
    return (grad_qk, grad_v) + (None,) * (ctx.n_inputs - 2)


torch.library.register_autograd(
    "reformer::lsh_attention", _lsh_attention_backward, setup_context=_lsh_attention_setup_context
)

# Autocast (reformer_ext/ops/_autocast.py): qk and v run in the region's low-precision dtype.
register_low_precision_autocast("reformer::lsh_attention", cast=("qk", "v"))
register_low_precision_autocast("reformer::lsh_buckets", cast=("qk",))


# ---------------------------------------------------------------------------------------------
# Functional API


def default_n_buckets(length: int, bucket_size: int) -> int:
    """The number of buckets per round when none is given: about two chunks per bucket pair."""
    return max(2, 2 * math.ceil(length / bucket_size))


def random_rotations(qk: Tensor, n_hashes: int, n_buckets,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """Draws per-head rotations (H, D, n_hashes, n_buckets // 2) from N(0, 1). ``n_buckets`` an
    even int, or a list of even factors (factorised buckets, as HF's ``num_buckets`` list):
    then the last dimension is sum(factors) // 2."""
    check_tensor(qk, "qk")
    if qk.dim() != 4:
        raise ValueError(f"qk must have shape (batch, heads, length, dim), got {tuple(qk.shape)}")
    n_hashes = check_int(n_hashes, "n_hashes", 1)
    shape = (qk.shape[1], qk.shape[3], n_hashes, rotation_columns(n_buckets))
    return torch.randn(shape, generator=generator, device=qk.device,
                       dtype=accumulation_dtype(qk.dtype))


def check_n_buckets(n_buckets):
    """An even int >= 2, or a non-empty list of even factors >= 2 (returned as a list)."""
    if isinstance(n_buckets, (list, tuple)):
        factors = [check_int(f, "n_buckets", 2) for f in n_buckets]
        if not factors or len(factors) > MAX_BUCKET_FACTORS:
            raise ValueError(f"n_buckets given as a list must hold 1 to {MAX_BUCKET_FACTORS} "
                             f"factors, got {list(n_buckets)}")
        if any(f % 2 for f in factors):
            raise ValueError(f"n_buckets must hold even factors (buckets come from argmax over "
                             f"[p, -p]), got {factors}")
        if math.prod(factors) >= 2**31 - 1:
            raise ValueError(f"n_buckets' factors must multiply to < 2^31, got {factors}")
        return factors
    n_buckets = check_int(n_buckets, "n_buckets", 2)
    if n_buckets % 2:
        raise ValueError(f"n_buckets must be even (buckets come from argmax over [p, -p]), "
                         f"got {n_buckets}")
    return n_buckets


def rotation_columns(n_buckets) -> int:
    """Rotation columns per round for ``n_buckets`` (an even int or a list of even factors):
    n_buckets // 2, or sum(factors) // 2."""
    n_buckets = check_n_buckets(n_buckets)
    return sum(n_buckets) // 2 if isinstance(n_buckets, list) else n_buckets // 2


def bucket_factors_of(n_buckets) -> List[int]:
    """The operators' ``bucket_factors`` argument for ``n_buckets``: [] for an int or None (one
    factor, read off the rotations), the factors for a list."""
    if n_buckets is None:
        return []
    n_buckets = check_n_buckets(n_buckets)
    return n_buckets if isinstance(n_buckets, list) else []


def lsh_attention(qk: Tensor, v: Tensor, *, n_hashes: int = 4, bucket_size: int = 64,
                  n_buckets=None, causal: bool = False,
                  key_padding_mask: Optional[Tensor] = None, rotations: Optional[Tensor] = None,
                  generator: Optional[torch.Generator] = None, n_chunks_before: int = 1,
                  n_chunks_after: int = 0, scale: float = 1.0, return_lse: bool = False,
                  dropout: float = 0.0, dropout_seed=None):
    """LSH self-attention with shared query/keys (docs/semantics.md §1).

    qk: (B, H, L, D) shared queries/keys; v: (B, H, L, Dv). key_padding_mask: (B, L) bool,
    True marks padding. rotations: (1 or H, D, n_hashes, n_buckets // 2); when given they define
    n_hashes and n_buckets (an explicit n_buckets must agree). When None they are drawn from
    N(0, 1) with `generator`, with n_buckets defaulting to max(2, 2 * ceil(L / bucket_size)).
    n_buckets as a list of even factors (e.g. [32, 64], HF's ``num_buckets`` list) factorises
    the bucket count: rotations of sum(factors) // 2 columns per round, prod(factors) buckets
    (docs/semantics.md §1 step 1). Factorised rotations need the factors: pass them as
    n_buckets with the rotations.

    dropout: probability in [0, 1) of dropping each attention weight (a query's weight on one
    key listing in one round) after the softmax, kept weights scaled by 1 / (1 - dropout); applied
    whenever dropout > 0 (pass 0.0 for evaluation). lse stays that of the undropped weights. The
    mask is a pure function of ``dropout_seed`` (an int, taken modulo 2^64, or a one-element
    int64 CPU tensor) and of the element (docs/semantics.md §1 "Dropout"); with dropout > 0 and
    no seed, one is drawn from torch's default CPU generator.

    Returns out (B, H, L, Dv), or (out, lse) with lse (B, H, L) in float32 (float64 for float64
    inputs) when return_lse. Padding query positions give out 0 and lse 0.
    """
    check_tensor(qk, "qk")
    check_tensor(v, "v")
    dropout = check_probability(dropout, "dropout")
    seed = None
    if dropout > 0.0:
        seed = draw_dropout_seed() if dropout_seed is None else seed_tensor(dropout_seed)
    n_hashes = check_int(n_hashes, "n_hashes", 1)
    bucket_size = check_int(bucket_size, "bucket_size", 1)
    n_chunks_before = check_int(n_chunks_before, "n_chunks_before", 0)
    n_chunks_after = check_int(n_chunks_after, "n_chunks_after", 0)
    causal = check_bool(causal, "causal")
    return_lse = check_bool(return_lse, "return_lse")
    scale = check_real(scale, "scale")
    if key_padding_mask is not None:
        check_tensor(key_padding_mask, "key_padding_mask")
    if rotations is None:
        if qk.dim() != 4:
            raise ValueError(f"qk must have shape (batch, heads, length, dim), got shape "
                             f"{tuple(qk.shape)}")
        if n_buckets is None:
            n_buckets = default_n_buckets(qk.shape[2], bucket_size)
        rotations = random_rotations(qk, n_hashes, n_buckets, generator)
    else:
        check_tensor(rotations, "rotations")
        if n_buckets is not None and rotations.dim() == 4:
            n_buckets = check_n_buckets(n_buckets)
            if rotation_columns(n_buckets) != rotations.shape[3]:
                raise ValueError(f"n_buckets ({n_buckets}) does not match rotations of shape "
                                 f"{tuple(rotations.shape)} (n_buckets // 2, or sum of the "
                                 "factors // 2, in dimension 3)")
    out, lse, _, _ = torch.ops.reformer.lsh_attention(
        qk, v, rotations, key_padding_mask, bucket_size, causal, n_chunks_before,
        n_chunks_after, scale, bucket_factors_of(n_buckets), dropout, seed
    )
    return (out, lse) if return_lse else out


def lsh_buckets(qk: Tensor, rotations: Tensor, key_padding_mask: Optional[Tensor] = None, *,
                bucket_factors: Optional[Sequence[int]] = None) -> Tensor:
    """Buckets (B, H, n_hashes, L) int64 of docs/semantics.md §1 step 1; padding positions get
    n_buckets. ``bucket_factors``: None for n_buckets = 2 * rotations.shape[3]; for factorised
    rotations (nothing is inferred from their shape) the even factors, summing to
    2 * rotations.shape[3], with n_buckets = prod(factors)."""
    check_tensor(qk, "qk")
    check_tensor(rotations, "rotations")
    factors = [] if bucket_factors is None else _check_bucket_factors_arg(bucket_factors)
    return torch.ops.reformer.lsh_buckets(qk, rotations, key_padding_mask, factors)


def _check_bucket_factors_arg(bucket_factors) -> List[int]:
    if not isinstance(bucket_factors, (list, tuple)):
        raise TypeError(f"bucket_factors must be None or a list of even ints, got "
                         f"{type(bucket_factors).__name__}")
    return [check_int(f, "bucket_factors", 2) for f in bucket_factors]

"""The LSH attention operator family (docs/semantics.md §1): ``reformer::lsh_buckets``,
``reformer::lsh_attention`` and its backward. The functional API (``lsh_attention``,
``lsh_buckets``, ``random_rotations``) and the Python-side registrations that make the operators
work with autograd, fake tensors, autocast and torch.compile."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._autocast import register_low_precision_autocast
from ._checks import check_bool, check_int, check_real, check_tensor, check_traced

__all__ = ["accumulation_dtype", "default_n_buckets", "lsh_attention", "lsh_buckets",
           "random_rotations"]

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


def _fake_check_window(bucket_size, n_chunks_before, n_chunks_after):
    check_traced(bucket_size >= 1, f"bucket_size must be >= 1, got {bucket_size}")
    check_traced(n_chunks_before >= 0 and n_chunks_after >= 0,
           "n_chunks_before and n_chunks_after must be >= 0")


@torch.library.register_fake("reformer::lsh_buckets")
def _lsh_buckets_fake(qk, rotations, key_padding_mask=None):
    _fake_check_hash_args(qk, rotations, key_padding_mask)
    batch, heads, length, _ = qk.shape
    return qk.new_empty((batch, heads, rotations.shape[2], length), dtype=torch.int64)


@torch.library.register_fake("reformer::lsh_attention")
def _lsh_attention_fake(qk, v, rotations, key_padding_mask, bucket_size, causal,
                        n_chunks_before, n_chunks_after, scale):
    _fake_check_hash_args(qk, rotations, key_padding_mask)
    _fake_check_window(bucket_size, n_chunks_before, n_chunks_after)
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
                                 n_chunks_after, scale):
    check_traced(isinstance(qk, Tensor) and qk.dim() == 4,
           "qk must have shape (batch, heads, length, dim)")
    _fake_check_window(bucket_size, n_chunks_before, n_chunks_after)
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
    qk, v, _rotations, key_padding_mask, bucket_size, causal, before, after, scale = inputs
    out, _lse, sorted_positions, softmax_stats = output
    ctx.save_for_backward(qk, v, out, softmax_stats, sorted_positions, key_padding_mask)
    ctx.options = (bucket_size, causal, before, after, scale)
    ctx.mark_non_differentiable(sorted_positions, softmax_stats)


def _lsh_attention_backward(ctx, grad_out, grad_lse, _grad_sorted_positions, _grad_stats):
    qk, v, out, softmax_stats, sorted_positions, key_padding_mask = ctx.saved_tensors
    grad_qk, grad_v = torch.ops.reformer.lsh_attention_backward(
        grad_out, grad_lse, qk, v, out, softmax_stats, sorted_positions, key_padding_mask,
        *ctx.options
    )
    return grad_qk, grad_v, None, None, None, None, None, None, None


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


def random_rotations(qk: Tensor, n_hashes: int, n_buckets: int,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """Draws per-head rotations (H, D, n_hashes, n_buckets // 2) from N(0, 1)."""
    check_tensor(qk, "qk")
    if qk.dim() != 4:
        raise ValueError(f"qk must have shape (batch, heads, length, dim), got {tuple(qk.shape)}")
    n_hashes = check_int(n_hashes, "n_hashes", 1)
    n_buckets = _check_n_buckets(n_buckets)
    shape = (qk.shape[1], qk.shape[3], n_hashes, n_buckets // 2)
    return torch.randn(shape, generator=generator, device=qk.device,
                       dtype=accumulation_dtype(qk.dtype))


def _check_n_buckets(n_buckets) -> int:
    if isinstance(n_buckets, (list, tuple)):
        raise ValueError("n_buckets given as a list of factors (factorised buckets) is not "
                         f"supported yet, got {n_buckets}; pass one even int")
    n_buckets = check_int(n_buckets, "n_buckets", 2)
    if n_buckets % 2:
        raise ValueError(f"n_buckets must be even (buckets come from argmax over [p, -p]), "
                         f"got {n_buckets}")
    return n_buckets


def lsh_attention(qk: Tensor, v: Tensor, *, n_hashes: int = 4, bucket_size: int = 64,
                  n_buckets=None, causal: bool = False,
                  key_padding_mask: Optional[Tensor] = None, rotations: Optional[Tensor] = None,
                  generator: Optional[torch.Generator] = None, n_chunks_before: int = 1,
                  n_chunks_after: int = 0, scale: float = 1.0, return_lse: bool = False):
    """LSH self-attention with shared query/keys (docs/semantics.md §1).

    qk: (B, H, L, D) shared queries/keys; v: (B, H, L, Dv). key_padding_mask: (B, L) bool,
    True marks padding. rotations: (1 or H, D, n_hashes, n_buckets // 2); when given they define
    n_hashes and n_buckets (an explicit n_buckets must agree). When None they are drawn from
    N(0, 1) with `generator`, with n_buckets defaulting to max(2, 2 * ceil(L / bucket_size)).

    Returns out (B, H, L, Dv), or (out, lse) with lse (B, H, L) in float32 (float64 for float64
    inputs) when return_lse. Padding query positions give out 0 and lse 0.
    """
    check_tensor(qk, "qk")
    check_tensor(v, "v")
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
            n_buckets = _check_n_buckets(n_buckets)
            if n_buckets != 2 * rotations.shape[3]:
                raise ValueError(f"n_buckets ({n_buckets}) does not match rotations of shape "
                                 f"{tuple(rotations.shape)} (n_buckets // 2 in dimension 3)")
    out, lse, _, _ = torch.ops.reformer.lsh_attention(
        qk, v, rotations, key_padding_mask, bucket_size, causal, n_chunks_before,
        n_chunks_after, scale
    )
    return (out, lse) if return_lse else out


def lsh_buckets(qk: Tensor, rotations: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
    """Buckets (B, H, n_hashes, L) int64 of docs/semantics.md §1 step 1; padding positions get
    n_buckets."""
    check_tensor(qk, "qk")
    check_tensor(rotations, "rotations")
    return torch.ops.reformer.lsh_buckets(qk, rotations, key_padding_mask)

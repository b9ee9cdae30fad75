"""The local attention operator family (docs/semantics.md §9): ``reformer::local_attention`` and
its backward. The functional API (``local_attention``) and the Python-side registrations that
make the operators work with autograd, fake tensors, autocast and torch.compile."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._autocast import register_low_precision_autocast
from ._checks import (check_bool, check_int, check_probability, check_real, check_tensor,
                      check_traced)
from .chunked_ffn import _fake_check_dropout_seed
from .lsh_attention import accumulation_dtype
from .seeded_random import draw_dropout_seed, seed_tensor

__all__ = ["local_attention"]

#: Largest window in chunks (kMaxWindowChunks in kernels/lsh_common.h).
MAX_WINDOW_CHUNKS = 64

# ---------------------------------------------------------------------------------------------
# Fake (meta) kernels: the C++ checks of csrc/local_attention_common.cpp that concern shapes,
# dtypes and devices, with check_traced so that symbolic sizes work.


def _check_tensor_arg(t, name: str, q, shape=None, dtype=None) -> None:
    check_traced(isinstance(t, Tensor), f"{name} must be a tensor, got {type(t).__name__}")
    check_traced(t.device == q.device,
                 f"{name} must be on the same device as q ({q.device}), got {t.device}")
    if shape is not None:
        check_traced(t.dim() == len(shape) and all(a == b for a, b in zip(t.shape, shape)),
                     f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if dtype is not None:
        check_traced(t.dtype == dtype, f"{name} must have dtype {dtype}, got {t.dtype}")


def _fake_check_args(q, k, v, key_padding_mask, chunk_length, n_chunks_before, n_chunks_after):
    check_traced(isinstance(q, Tensor) and q.dim() == 4,
                 "q must have shape (batch, heads, length, dim)")
    batch, heads, length, _ = q.shape
    _check_tensor_arg(k, "k", q, q.shape, q.dtype)
    _check_tensor_arg(v, "v", q, None, q.dtype)
    check_traced(v.dim() == 4 and v.shape[0] == batch and v.shape[1] == heads
                 and v.shape[2] == length,
                 f"v must have shape (batch, heads, length, value_dim) with (batch, heads, "
                 f"length) = ({batch}, {heads}, {length}) as in q, got {tuple(v.shape)}")
    check_traced(chunk_length >= 1, f"chunk_length must be >= 1, got {chunk_length}")
    check_traced(0 <= n_chunks_before < MAX_WINDOW_CHUNKS and 0 <= n_chunks_after < MAX_WINDOW_CHUNKS
                 and n_chunks_before + n_chunks_after + 1 <= MAX_WINDOW_CHUNKS,
                 f"n_chunks_before and n_chunks_after must be in [0, {MAX_WINDOW_CHUNKS}) with "
                 f"n_chunks_before + n_chunks_after + 1 <= {MAX_WINDOW_CHUNKS}, got "
                 f"{n_chunks_before} and {n_chunks_after}")
    if key_padding_mask is not None:
        _check_tensor_arg(key_padding_mask, "key_padding_mask", q, (batch, length), torch.bool)


@torch.library.register_fake("reformer::local_attention")
def _local_attention_fake(q, k, v, key_padding_mask, chunk_length, causal, n_chunks_before,
                          n_chunks_after, scale, dropout_p=0.0, dropout_seed=None):
    _fake_check_args(q, k, v, key_padding_mask, chunk_length, n_chunks_before, n_chunks_after)
    _fake_check_dropout_seed(dropout_seed, dropout_p, q)
    batch, heads, length, _ = q.shape
    acc = accumulation_dtype(q.dtype)
    out = v.new_empty(v.shape)
    lse = q.new_empty((batch, heads, length), dtype=acc)
    softmax_stats = q.new_empty((batch, heads, length, 2), dtype=acc)
    return out, lse, softmax_stats


@torch.library.register_fake("reformer::local_attention_backward")
def _local_attention_backward_fake(grad_out, grad_lse, q, k, v, out, softmax_stats,
                                   key_padding_mask, chunk_length, causal, n_chunks_before,
                                   n_chunks_after, scale, dropout_p=0.0, dropout_seed=None):
    _fake_check_args(q, k, v, key_padding_mask, chunk_length, n_chunks_before, n_chunks_after)
    _fake_check_dropout_seed(dropout_seed, dropout_p, q)
    batch, heads, length, _ = q.shape
    acc = accumulation_dtype(q.dtype)
    _check_tensor_arg(grad_out, "grad_out", q, v.shape, q.dtype)
    _check_tensor_arg(out, "out", q, v.shape, q.dtype)
    if grad_lse is not None:
        _check_tensor_arg(grad_lse, "grad_lse", q, (batch, heads, length), acc)
    _check_tensor_arg(softmax_stats, "softmax_stats", q, (batch, heads, length, 2), acc)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


# ---------------------------------------------------------------------------------------------
# Autograd: the backward recomputes the logits chunk by chunk from what the forward returned.


def _local_attention_setup_context(ctx, inputs, output):
    q, k, v, key_padding_mask, chunk_length, causal, before, after, scale = inputs[:9]
    dropout_p = inputs[9] if len(inputs) > 9 else 0.0
    dropout_seed = inputs[10] if len(inputs) > 10 else None
    out, _lse, softmax_stats = output
    ctx.save_for_backward(q, k, v, out, softmax_stats, key_padding_mask, dropout_seed)
    ctx.options = (chunk_length, causal, before, after, scale, dropout_p)
    ctx.n_inputs = len(inputs)
    ctx.mark_non_differentiable(softmax_stats)


def _local_attention_backward(ctx, grad_out, grad_lse, _grad_stats):
    q, k, v, out, softmax_stats, key_padding_mask, dropout_seed = ctx.saved_tensors
    grad_q, grad_k, grad_v = torch.ops.reformer.local_attention_backward(
        grad_out, grad_lse, q, k, v, out, softmax_stats, key_padding_mask, *ctx.options,
        dropout_seed
    )
    return (grad_q, grad_k, grad_v) + (None,) * (ctx.n_inputs - 3)


torch.library.register_autograd(
    "reformer::local_attention", _local_attention_backward,
    setup_context=_local_attention_setup_context
)

# Autocast (reformer_ext/ops/_autocast.py): q, k and v run in the region's low-precision dtype.
register_low_precision_autocast("reformer::local_attention", cast=("q", "k", "v"))


# ---------------------------------------------------------------------------------------------
# Functional API


def local_attention(q: Tensor, k: Tensor, v: Tensor, *, chunk_length: int = 64,
                    causal: bool = False, n_chunks_before: int = 1, n_chunks_after: int = 0,
                    scale: Optional[float] = None, key_padding_mask: Optional[Tensor] = None,
                    return_lse: bool = False, dropout: float = 0.0, dropout_seed=None):
    """Local (chunked sliding-window) self-attention, HF Reformer's LocalSelfAttention
    (docs/semantics.md §9).

    q, k: (B, H, L, D); v: (B, H, L, Dv). The sequence is padded to a multiple of
    ``chunk_length``; chunk c attends to chunks c - n_chunks_before .. c + n_chunks_after,
    cyclically (a chunk reached by several offsets counts once per offset, as in HF, except when
    there is a single chunk: then it is plain full attention). Logits scale * q_i · k_j, scale
    1 / sqrt(D) when None; ``causal`` masks keys after the query; key_padding_mask (B, L) bool,
    True marks padding. No self-mask.

    dropout: probability in [0, 1) of dropping each attention weight (one query, one key
    listing of its window) after the softmax, kept weights scaled by 1 / (1 - dropout); applied
    whenever dropout > 0 (pass 0.0 for evaluation); lse stays that of the undropped weights. The
    mask is a pure function of ``dropout_seed`` (an int or a one-element int64 CPU tensor) and of
    the element (docs/semantics.md §9 "Dropout"); with dropout > 0 and no seed, one is drawn
    from torch's default CPU generator.

    Returns out (B, H, L, Dv), or (out, lse) with lse (B, H, L) in float32 (float64 for float64
    inputs) when return_lse. Padding query positions give out 0 and lse 0.
    """
    check_tensor(q, "q")
    dropout = check_probability(dropout, "dropout")
    seed = None
    if dropout > 0.0:
        seed = draw_dropout_seed() if dropout_seed is None else seed_tensor(dropout_seed)
    check_tensor(k, "k")
    check_tensor(v, "v")
    chunk_length = check_int(chunk_length, "chunk_length", 1)
    n_chunks_before = check_int(n_chunks_before, "n_chunks_before", 0)
    n_chunks_after = check_int(n_chunks_after, "n_chunks_after", 0)
    causal = check_bool(causal, "causal")
    return_lse = check_bool(return_lse, "return_lse")
    if key_padding_mask is not None:
        check_tensor(key_padding_mask, "key_padding_mask")
    if scale is None:
        if q.dim() != 4:
            raise ValueError(f"q must have shape (batch, heads, length, dim), got shape "
                             f"{tuple(q.shape)}")
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] > 0 else 1.0
    else:
        scale = check_real(scale, "scale")
    out, lse, _ = torch.ops.reformer.local_attention(
        q, k, v, key_padding_mask, chunk_length, causal, n_chunks_before, n_chunks_after, scale,
        dropout, seed
    )
    return (out, lse) if return_lse else out

"""reformer_ext.nn.LocalSelfAttention: multi-head local (chunked sliding-window) self-attention,
HF Reformer's LocalSelfAttention (docs/semantics.md §9, §4), over the
``reformer::local_attention`` operator."""

from __future__ import annotations

from typing import Optional

from torch import Tensor
from torch import nn as tnn

from ..ops._checks import (check_bool, check_float_dtype, check_input, check_int,
                           check_probability)
from ..ops.local_attention import MAX_WINDOW_CHUNKS, local_attention

__all__ = ["LocalSelfAttention"]


class LocalSelfAttention(tnn.Module):
    """Multi-head local self-attention (the Reformer's "local" layer).

    ``x (B, L, d_model)`` -> ``to_q``, ``to_k``, ``to_v`` (Linear, no bias; HF's ``query``,
    ``key``, ``value``) -> heads of ``d_head`` -> :func:`reformer_ext.local_attention` with scale
    ``1 / sqrt(d_head)`` -> merge heads -> ``to_out`` (Linear; HF's ``ReformerSelfOutput.dense``,
    which has no bias: ``out_bias=False``). Any ``L >= 1``: the operator pads to a multiple of
    ``chunk_length`` itself.

    Args:
        d_model: input and output width.
        n_heads: number of heads.
        d_head: width of each head (default ``d_model // n_heads``, which must then divide).
        chunk_length: length of the chunks the sequence is cut into.
        n_chunks_before, n_chunks_after: how many neighbouring chunks each chunk attends to
            (cyclically, as HF; docs/semantics.md §9).
        causal: mask keys after the query (HF's ``is_decoder``).
        out_bias: whether ``to_out`` has a bias (default True, as LSHSelfAttention; HF's output
            projection has none, so converted HF models use False).
        attention_dropout: dropout rate on the attention weights (HF's
            ``local_attention_probs_dropout_prob``), applied in training mode only, with a seed
            drawn per forward from torch's default CPU generator (docs/semantics.md §9).

    ``forward(x, key_padding_mask=None)``: ``key_padding_mask`` is ``(B, L)`` bool, True marks
    padding (HF's ``attention_mask`` is its negation). Outputs at padded positions are
    ``to_out``'s bias (0 without one); outputs at the other positions do not depend on padded
    tokens.
    """

    def __init__(self, d_model: int, n_heads: int, *, d_head: Optional[int] = None,
                 chunk_length: int = 64, n_chunks_before: int = 1, n_chunks_after: int = 0,
                 causal: bool = False, out_bias: bool = True, attention_dropout: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        d_model, n_heads = check_int(d_model, "d_model", 1), check_int(n_heads, "n_heads", 1)
        chunk_length = check_int(chunk_length, "chunk_length", 1)
        n_chunks_before = check_int(n_chunks_before, "n_chunks_before", 0)
        n_chunks_after = check_int(n_chunks_after, "n_chunks_after", 0)
        if n_chunks_before >= MAX_WINDOW_CHUNKS or n_chunks_after >= MAX_WINDOW_CHUNKS or \
                n_chunks_before + n_chunks_after + 1 > MAX_WINDOW_CHUNKS:
            raise ValueError(f"n_chunks_before + n_chunks_after + 1 must be <= "
                             f"{MAX_WINDOW_CHUNKS}, got {n_chunks_before + n_chunks_after + 1}")
        if d_head is None:
            if d_model % n_heads:
                raise ValueError(f"d_model ({d_model}) is not divisible by n_heads ({n_heads}); "
                                 "pass d_head")
            d_head = d_model // n_heads
        d_head = check_int(d_head, "d_head", 1)
        causal = check_bool(causal, "causal")
        out_bias = check_bool(out_bias, "out_bias")
        attention_dropout = check_probability(attention_dropout, "attention_dropout")
        check_float_dtype(dtype)
        factory = dict(device=device, dtype=dtype)
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_head
        self.chunk_length = chunk_length
        self.n_chunks_before, self.n_chunks_after = n_chunks_before, n_chunks_after
        self.causal = causal
        self.attention_dropout = attention_dropout
        inner = n_heads * d_head
        self.to_q = tnn.Linear(d_model, inner, bias=False, **factory)
        self.to_k = tnn.Linear(d_model, inner, bias=False, **factory)
        self.to_v = tnn.Linear(d_model, inner, bias=False, **factory)
        self.to_out = tnn.Linear(inner, d_model, bias=out_bias, **factory)

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor] = None, *,
                attention_dropout_seed=None) -> Tensor:
        """``attention_dropout_seed`` (an int or a one-element int64 CPU tensor; None: drawn
        from torch's CPU generator) seeds the attention dropout's mask in training."""
        check_input(x, "x", self.to_q.weight)
        if x.dim() != 3 or x.shape[-1] != self.d_model or x.shape[1] < 1:
            raise ValueError(f"x must have shape (batch, length >= 1, {self.d_model}), got "
                             f"{tuple(x.shape)}")
        batch, length, _ = x.shape
        heads, d_head = self.n_heads, self.d_head

        def split(t: Tensor) -> Tensor:
            return t.view(batch, length, heads, d_head).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x))
        out = local_attention(q, k, v, chunk_length=self.chunk_length, causal=self.causal,
                              n_chunks_before=self.n_chunks_before,
                              n_chunks_after=self.n_chunks_after, scale=d_head ** -0.5,
                              key_padding_mask=key_padding_mask,
                              dropout=self.attention_dropout if self.training else 0.0,
                              dropout_seed=attention_dropout_seed)
        return self.to_out(out.transpose(1, 2).reshape(batch, length, heads * d_head))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, d_head={self.d_head}, "
                f"chunk_length={self.chunk_length}, n_chunks_before={self.n_chunks_before}, "
                f"n_chunks_after={self.n_chunks_after}, causal={self.causal}"
                + ("" if not self.attention_dropout
                   else f", attention_dropout={self.attention_dropout}"))

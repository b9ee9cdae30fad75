"""reformer_ext.nn.Reformer and ReformerLM: the reversible Reformer stack (SPEC §3, §4)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn as tnn

from .attention import LSHSelfAttention
from .feed_forward import ChunkedFeedForward
from .reversible import ReversibleSequence

__all__ = ["PreNormAttention", "PreNormFeedForward", "Reformer", "ReformerLM"]

MERGES = ("concat", "mean")


class PreNormAttention(tnn.Module):
    """The F branch of a Reformer layer: ``attn(norm(x), key_padding_mask)``; ``attn`` is an
    :class:`LSHSelfAttention` (its ``dropout`` acts on its output)."""

    def __init__(self, d_model: int, attn: LSHSelfAttention, *, device=None, dtype=None):
        super().__init__()
        self.norm = tnn.LayerNorm(d_model, device=device, dtype=dtype)
        self.attn = attn

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        return self.attn(self.norm(x), key_padding_mask)


class PreNormFeedForward(tnn.Module):
    """The G branch of a Reformer layer: ``dropout(ff(norm(x)))``; ``ff`` is a
    :class:`ChunkedFeedForward` (its own ``dropout`` acts on the hidden activation), ``dropout``
    here on the branch output."""

    def __init__(self, d_model: int, ff: ChunkedFeedForward, *, dropout: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        self.norm = tnn.LayerNorm(d_model, device=device, dtype=dtype)
        self.ff = ff
        self.dropout = float(dropout)

    def forward(self, x: Tensor) -> Tensor:
        out = self.ff(self.norm(x))
        if self.training and self.dropout > 0.0:
            out = F.dropout(out, self.dropout, training=True)
        return out


class Reformer(tnn.Module):
    """The Reformer stack: ``depth`` reversible layers over two streams of width d_model.

    Layer i: ``y1 = x1 + F_i(x2)``, ``y2 = x2 + G_i(y1)`` with ``F_i`` = LayerNorm ->
    :class:`LSHSelfAttention` and ``G_i`` = LayerNorm -> :class:`ChunkedFeedForward`. The input
    ``x (B, L, d_model)`` is fed to both streams; the output ``(B, L, d_model)`` merges them:

    - ``merge="concat"`` (default; trax / HF): ``LayerNorm(2·d_model)`` of ``[y1, y2]`` (what
      trax and HF hand to their heads), then ``Linear(2·d_model, d_model)`` (attribute
      ``proj``) to give d_model features;
    - ``merge="mean"`` (reformer-pytorch): ``LayerNorm(d_model)`` of ``(y1 + y2) / 2``
      (reformer-pytorch returns the plain mean and normalises in its LM).

    Args (beyond SPEC §4's): ``d_ff`` defaults to ``4·d_model``; ``dropout`` is used for the
    attention output (after to_out), the feed-forward's hidden activation and the feed-forward
    output, in training mode only. ``reversible=False`` runs the very same layers (same
    parameters, same random draws) with ordinary autograd, storing all activations; the results
    agree to rounding. The attribute ``reversible`` can be flipped on a built model. Extra
    keyword-only options: ``merge``, ``d_head``, ``n_buckets``, ``n_chunks_before``,
    ``n_chunks_after``, ``activation``, ``fixed_rotations`` (see LSHSelfAttention: by default
    fresh rotations per forward in training, fixed per-layer seeded ones in eval).

    ``forward(x, key_padding_mask=None)``: ``key_padding_mask (B, L)`` bool, True marks padding;
    padded positions get meaningless outputs and do not influence the others. Any L works.
    """

    def __init__(self, d_model: int, depth: int, n_heads: int, *, d_ff: Optional[int] = None,
                 bucket_size: int = 64, n_hashes: int = 4, causal: bool = False,
                 ff_chunk_size: int = 1024, dropout: float = 0.0, reversible: bool = True,
                 merge: str = "concat", d_head: Optional[int] = None,
                 n_buckets: Optional[int] = None, n_chunks_before: int = 1,
                 n_chunks_after: int = 0, activation: str = "gelu",
                 fixed_rotations: Optional[bool] = None, device=None, dtype=None):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {depth!r}")
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        factory = dict(device=device, dtype=dtype)
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.d_model, self.depth, self.n_heads, self.d_ff = d_model, depth, n_heads, d_ff
        self.merge = merge
        blocks = []
        for _ in range(depth):
            attn = LSHSelfAttention(d_model, n_heads, d_head=d_head, bucket_size=bucket_size,
                                    n_hashes=n_hashes, n_buckets=n_buckets, causal=causal,
                                    n_chunks_before=n_chunks_before,
                                    n_chunks_after=n_chunks_after, dropout=dropout,
                                    fixed_rotations=fixed_rotations, **factory)
            ff = ChunkedFeedForward(d_model, d_ff, chunk_size=ff_chunk_size,
                                    activation=activation, dropout=dropout, **factory)
            blocks.append((PreNormAttention(d_model, attn, **factory),
                           PreNormFeedForward(d_model, ff, dropout=dropout, **factory)))
        self.layers = ReversibleSequence(blocks, reversible=reversible)
        if merge == "concat":
            self.norm = tnn.LayerNorm(2 * d_model, **factory)
            self.proj = tnn.Linear(2 * d_model, d_model, **factory)
        else:
            self.norm = tnn.LayerNorm(d_model, **factory)
            self.proj = None

    @property
    def reversible(self) -> bool:
        return self.layers.reversible

    @reversible.setter
    def reversible(self, value: bool) -> None:
        self.layers.reversible = bool(value)

    def forward_streams(self, x: Tensor, key_padding_mask: Optional[Tensor] = None):
        """The two streams ``(y1, y2)`` after the last layer, before the merge."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (batch, length, {self.d_model}), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        return self.layers(x, x, key_padding_mask=key_padding_mask)

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        y1, y2 = self.forward_streams(x, key_padding_mask)
        if self.proj is not None:
            return self.proj(self.norm(torch.cat([y1, y2], dim=-1)))
        return self.norm((y1 + y2) * 0.5)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, depth={self.depth}, n_heads={self.n_heads}, "
                f"d_ff={self.d_ff}, merge={self.merge!r}")


class ReformerLM(tnn.Module):
    """Reformer language model: token embedding + learned absolute position embedding ->
    :class:`Reformer` -> Linear head.

    ``forward(tokens (B, L) int64, key_padding_mask=None) -> logits (B, L, num_tokens)``, for
    any ``1 <= L <= max_seq_len`` (a longer input is a ValueError). ``causal`` defaults to True;
    the other keyword arguments go to :class:`Reformer` (d_ff, bucket_size, n_hashes,
    ff_chunk_size, dropout, reversible, merge, ...). Both embeddings are initialised from
    N(0, init_std²) (init_std=0.02, as in GPT-style models); the head is an nn.Linear.
    """

    def __init__(self, num_tokens: int, d_model: int, depth: int, n_heads: int,
                 max_seq_len: int, *, causal: bool = True, init_std: float = 0.02,
                 device=None, dtype=None, **reformer_kwargs):
        super().__init__()
        for value, name in ((num_tokens, "num_tokens"), (max_seq_len, "max_seq_len")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        factory = dict(device=device, dtype=dtype)
        self.num_tokens, self.max_seq_len = num_tokens, max_seq_len
        self.token_emb = tnn.Embedding(num_tokens, d_model, **factory)
        self.pos_emb = tnn.Embedding(max_seq_len, d_model, **factory)
        tnn.init.normal_(self.token_emb.weight, std=init_std)
        tnn.init.normal_(self.pos_emb.weight, std=init_std)
        self.reformer = Reformer(d_model, depth, n_heads, causal=causal, **factory,
                                 **reformer_kwargs)
        self.to_logits = tnn.Linear(d_model, num_tokens, **factory)

    def forward(self, tokens: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        if not isinstance(tokens, Tensor) or tokens.dim() != 2:
            raise ValueError("tokens must have shape (batch, length), got "
                             f"{tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__}")
        length = tokens.shape[1]
        if length > self.max_seq_len:
            raise ValueError(f"sequence length {length} exceeds max_seq_len={self.max_seq_len} "
                             "(the learned position embedding has no entry beyond it)")
        positions = torch.arange(length, device=tokens.device)
        x = self.token_emb(tokens) + self.pos_emb(positions)
        return self.to_logits(self.reformer(x, key_padding_mask))

"""reformer_ext.nn.Reformer and ReformerLM: the reversible Reformer stack (docs/semantics.md
§3, §4)."""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
from torch import Tensor
from torch import nn as tnn

from ..ops._checks import (check_bool, check_float_dtype, check_input, check_int,
                           check_int_tuple, check_key_padding_mask, check_nonnegative,
                           check_probability, describe)
from ..ops.reformer_stack import StackOptions, reformer_stack
from ..ops.seeded_random import (ATTENTION_PROBS_SALT, derived_seed, draw_dropout_seed,
                                 seeded_dropout)
from .attention import LSHSelfAttention
from .feed_forward import ChunkedFeedForward
from .local_attention import LocalSelfAttention
from .position import AxialPositionEmbedding
from .reversible import ReversibleBlock
from . import sharding as _sharding

__all__ = ["PreNormAttention", "PreNormFeedForward", "Reformer", "ReformerLM"]

MERGES = ("concat", "mean", "concat_norm")
ATTENTION_KINDS = ("lsh", "local")


class PreNormAttention(tnn.Module):
    """The F branch of a Reformer layer: ``dropout(attn(norm(x), key_padding_mask))``; ``attn``
    is an :class:`LSHSelfAttention` or a :class:`LocalSelfAttention` built without dropout of its
    own; the branch's output dropout uses the seeded mask of
    ``reformer_ext.ops.seeded_random.seeded_dropout`` (what the stack operator applies), so
    forward and recompute agree given the seed."""

    def __init__(self, d_model: int, attn, *, dropout: float = 0.0, eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__()
        self.norm = tnn.LayerNorm(d_model, eps=eps, device=device, dtype=dtype)
        self.attn = attn
        self.dropout = float(dropout)

    @property
    def is_local(self) -> bool:
        return isinstance(self.attn, LocalSelfAttention)

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor] = None, *,
                rotations: Optional[Tensor] = None, dropout_seed=None,
                attention_dropout_seed=None) -> Tensor:
        # the attention dropout's seed, unless given, is derived from the branch's (what the
        # stack operator does with three seed columns)
        attention_seed = attention_dropout_seed
        if attention_seed is None and dropout_seed is not None:
            attention_seed = derived_seed(dropout_seed, ATTENTION_PROBS_SALT)
        if self.is_local:
            out = self.attn(self.norm(x), key_padding_mask, attention_dropout_seed=attention_seed)
        else:
            out = self.attn(self.norm(x), key_padding_mask, rotations=rotations,
                            attention_dropout_seed=attention_seed)
        return _branch_dropout(out, self.dropout if self.training else 0.0, dropout_seed)

    def make_rotations(self, length: int, device, dtype) -> Tensor:
        """This layer's rotations for one forward: the LSH layer's, an empty tensor for a local
        layer (what the stack operator expects)."""
        if self.is_local:
            return torch.empty(0, device=device, dtype=dtype)
        return self.attn.make_rotations(length, device, dtype)

    def stack_weights(self) -> Dict[str, Tensor]:
        """This branch's weights under the stack operator's names (LAYER_WEIGHT_NAMES); a local
        layer's ``qk_weight`` is its query weight stacked on its key weight; zeros stand for
        the bias of a ``to_out`` built without one (``out_bias=False``)."""
        if self.is_local:
            qk_weight = torch.cat([self.attn.to_q.weight, self.attn.to_k.weight])
        else:
            qk_weight = self.attn.to_qk.weight
        out_bias = self.attn.to_out.bias
        if out_bias is None:
            out_bias = self.attn.to_out.weight.new_zeros(self.attn.to_out.out_features)
        return {"norm1_weight": self.norm.weight, "norm1_bias": self.norm.bias,
                "qk_weight": qk_weight, "v_weight": self.attn.to_v.weight,
                "out_weight": self.attn.to_out.weight, "out_bias": out_bias}


class PreNormFeedForward(tnn.Module):
    """The G branch of a Reformer layer: ``dropout(ff(norm(x)))``; ``ff`` is a
    :class:`ChunkedFeedForward` (its own ``dropout`` acts on the hidden activation), the
    seeded output dropout as in :class:`PreNormAttention`."""

    def __init__(self, d_model: int, ff: ChunkedFeedForward, *, dropout: float = 0.0,
                 eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.norm = tnn.LayerNorm(d_model, eps=eps, device=device, dtype=dtype)
        self.ff = ff
        self.dropout = float(dropout)

    def forward(self, x: Tensor, *, hidden_seed=None, dropout_seed=None) -> Tensor:
        out = self.ff(self.norm(x), dropout_seed=hidden_seed)
        return _branch_dropout(out, self.dropout if self.training else 0.0, dropout_seed)

    def stack_weights(self) -> Dict[str, Tensor]:
        """This branch's weights under the stack operator's names (LAYER_WEIGHT_NAMES)."""
        return {"norm2_weight": self.norm.weight, "norm2_bias": self.norm.bias,
                "ffn_w1": self.ff.w1.weight, "ffn_b1": self.ff.w1.bias,
                "ffn_w2": self.ff.w2.weight, "ffn_b2": self.ff.w2.bias}


def _branch_dropout(x: Tensor, p: float, seed) -> Tensor:
    if p == 0.0:
        return x
    return seeded_dropout(x, p, draw_dropout_seed() if seed is None else seed)


def _rename_old_layer_keys(state_dict, prefix, *args) -> None:
    """Loads state_dicts of the earlier layout, whose layers lived in a ReversibleSequence
    (``layers.blocks.<i>.``), into the current one (``layers.<i>.``)."""
    old = prefix + "layers.blocks."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "layers." + key[len(old):]] = state_dict.pop(key)


class Reformer(tnn.Module):
    """The Reformer stack: ``depth`` reversible layers over two streams of width d_model.

    Layer i: ``y1 = x1 + F_i(x2)``, ``y2 = x2 + G_i(y1)`` with ``F_i`` = LayerNorm ->
    :class:`LSHSelfAttention` (or :class:`LocalSelfAttention`, see ``attn_layers``) -> dropout
    and ``G_i`` = LayerNorm -> :class:`ChunkedFeedForward` -> dropout. The input
    ``x (B, L, d_model)`` is fed to both streams; the output
    ``(B, L, d_model)`` merges them:

    - ``merge="concat"`` (default; trax / HF): ``LayerNorm(2·d_model)`` of ``[y1, y2]`` (what
      trax and HF hand to their heads), then ``Linear(2·d_model, d_model)`` (attribute
      ``proj``) to give d_model features;
    - ``merge="mean"`` (reformer-pytorch): ``LayerNorm(d_model)`` of ``(y1 + y2) / 2``
      (reformer-pytorch returns the plain mean and normalises in its LM);
    - ``merge="concat_norm"`` (HF's encoder output, used by converted HF models):
      ``LayerNorm(2·d_model)`` of ``[y1, y2]`` and nothing after it, so the output has
      ``2·d_model`` features (``out_features``; no ``proj``).

    ``reversible=True`` (default) runs the whole stack as ONE operator,
    ``torch.ops.reformer.reformer_stack`` (C++; reformer_ext.ops.reformer_stack), that keeps only
    the final streams and recomputes every layer in the backward: activation memory does not
    grow with depth, and torch.compile sees one node. ``reversible=False`` runs the very same
    layers (same parameters, same random draws) as ordinary modules with autograd, storing all
    activations; the results agree to rounding. The attribute ``reversible`` can be flipped on
    a built model.

    Random state per forward: each layer's rotations (fresh N(0, 1) draws from torch's default
    generator of x's device in training, the layer's fixed seeded ones in eval: see
    LSHSelfAttention) and, in training with dropout > 0, three dropout seeds per layer drawn
    from torch's default CPU generator. Dropout masks are pure functions of those seeds (the
    rule of reformer_ext.ops.seeded_random), so ``torch.manual_seed`` makes a step reproducible and
    both modes see identical masks.

    Args (beyond docs/semantics.md §4's): ``d_ff`` defaults to ``4·d_model``; ``dropout`` is used
    for the attention branch output (after to_out), the feed-forward's hidden activation and the
    feed-forward output, in training mode only. Extra keyword-only options: ``merge``,
    ``d_head``, ``n_buckets``, ``n_chunks_before``, ``n_chunks_after``, ``activation``,
    ``fixed_rotations``, ``attn_out_bias`` (LSHSelfAttention's ``out_bias``), ``hf_hash_seed``
    (see LSHSelfAttention), ``layer_norm_eps`` (every LayerNorm's eps; default 1e-5).

    Mixed layers (HF's ``attn_layers``): ``attn_layers`` is None (every layer LSH) or one of
    ``"lsh"`` / ``"local"`` per layer; local layers are :class:`LocalSelfAttention` with chunk
    length ``local_chunk_length`` and window ``local_chunks_before`` / ``local_chunks_after``
    (causal like the rest). The stack operator runs both kinds.

    ``lsh_attention_dropout`` / ``local_attention_dropout`` (default 0; HF's
    ``lsh_attention_probs_dropout_prob`` / ``local_attention_probs_dropout_prob``): training-mode
    dropout on the attention probabilities of the LSH / local layers (docs/semantics.md §1, §9
    "Dropout"), each layer's mask seeded from its attention-output dropout seed.

    ``pad_to_multiple_of`` (default None; HF's rule, set in converted HF models): forward pads
    an input longer than the shortest chunk length with padding positions up to a multiple of
    it (HF pads to the least common multiple of its chunk lengths), and cuts them off the
    output. With mixed chunk lengths this changes which chunks a layer's windows wrap onto.

    ``forward(x, key_padding_mask=None)``: ``key_padding_mask (B, L)`` bool, True marks padding;
    padded positions get meaningless outputs and do not influence the others. Any L works.

    Rounding: in reversible mode, the reconstruction ``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``
    rounds, so the recompute can, rarely, hash a position whose projection is at a near-tie into
    another bucket than the forward did (the gradient then belongs to a slightly different hash).
    It happens more in float16/bfloat16 than in float32 (never observed in the float64 tests).

    Checkpoints: the layers are ``layers.<i>.f`` / ``layers.<i>.g``; state_dicts saved with the
    earlier ``layers.blocks.<i>.`` keys load too (renamed on load).
    """

    def __init__(self, d_model: int, depth: int, n_heads: int, *, d_ff: Optional[int] = None,
                 bucket_size: int = 64, n_hashes: int = 4, causal: bool = False,
                 ff_chunk_size: int = 1024, dropout: float = 0.0, reversible: bool = True,
                 merge: str = "concat", d_head: Optional[int] = None,
                 n_buckets=None, n_chunks_before: int = 1,
                 n_chunks_after: int = 0, activation: str = "gelu",
                 fixed_rotations: Optional[bool] = None, attn_out_bias: bool = True,
                 hf_hash_seed: Optional[int] = None, layer_norm_eps: float = 1e-5,
                 attn_layers=None, local_chunk_length: int = 64, local_chunks_before: int = 1,
                 local_chunks_after: int = 0, pad_to_multiple_of: Optional[int] = None,
                 lsh_attention_dropout: float = 0.0, local_attention_dropout: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        # The rest (n_heads, bucket_size, activation, ...) is checked by the layers' modules.
        d_model, depth = check_int(d_model, "d_model", 1), check_int(depth, "depth", 1)
        d_ff = 4 * d_model if d_ff is None else check_int(d_ff, "d_ff", 1)
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
        dropout = check_probability(dropout, "dropout")
        reversible = check_bool(reversible, "reversible")
        layer_norm_eps = check_nonnegative(layer_norm_eps, "layer_norm_eps")
        attn_layers = _check_attn_layers(attn_layers, depth)
        local_chunk_length = check_int(local_chunk_length, "local_chunk_length", 1)
        local_chunks_before = check_int(local_chunks_before, "local_chunks_before", 0)
        local_chunks_after = check_int(local_chunks_after, "local_chunks_after", 0)
        self.lsh_attention_dropout = check_probability(lsh_attention_dropout,
                                                       "lsh_attention_dropout")
        self.local_attention_dropout = check_probability(local_attention_dropout,
                                                         "local_attention_dropout")
        if pad_to_multiple_of is not None:
            pad_to_multiple_of = check_int(pad_to_multiple_of, "pad_to_multiple_of", 1)
        self.pad_to_multiple_of = pad_to_multiple_of
        check_float_dtype(dtype)
        factory = dict(device=device, dtype=dtype)
        self.d_model, self.depth, self.n_heads, self.d_ff = d_model, depth, n_heads, d_ff
        self.merge = merge
        self.dropout = dropout
        self.reversible = reversible
        self.attn_layers = attn_layers
        blocks = []
        lsh = local = None  # the last layer of each kind: its module checked the options
        for kind in attn_layers:
            if kind == "local":
                attn = local = LocalSelfAttention(
                    d_model, n_heads, d_head=d_head, chunk_length=local_chunk_length,
                    n_chunks_before=local_chunks_before, n_chunks_after=local_chunks_after,
                    causal=causal, out_bias=attn_out_bias,
                    attention_dropout=self.local_attention_dropout, **factory)
            else:
                attn = lsh = LSHSelfAttention(
                    d_model, n_heads, d_head=d_head, bucket_size=bucket_size, n_hashes=n_hashes,
                    n_buckets=n_buckets, causal=causal, n_chunks_before=n_chunks_before,
                    n_chunks_after=n_chunks_after, fixed_rotations=fixed_rotations,
                    out_bias=attn_out_bias, hf_hash_seed=hf_hash_seed,
                    attention_dropout=self.lsh_attention_dropout, **factory)
            ff = ChunkedFeedForward(d_model, d_ff, chunk_size=ff_chunk_size,
                                    activation=activation, dropout=dropout, **factory)
            blocks.append(ReversibleBlock(
                PreNormAttention(d_model, attn, dropout=dropout, eps=layer_norm_eps, **factory),
                PreNormFeedForward(d_model, ff, dropout=dropout, eps=layer_norm_eps,
                                   **factory)))
        self.layers = tnn.ModuleList(blocks)
        # What the stack operator needs besides weights, random state and dropout rate: the
        # same for every layer of a kind (the layers' modules have checked the values; the
        # options of a kind no layer uses keep their defaults).
        lsh_options = {} if lsh is None else dict(
            bucket_size=lsh.bucket_size, n_chunks_before=lsh.n_chunks_before,
            n_chunks_after=lsh.n_chunks_after, bucket_factors=tuple(lsh.bucket_factors))
        local_options = {} if local is None else dict(
            local_chunk_length=local.chunk_length, local_chunks_before=local.n_chunks_before,
            local_chunks_after=local.n_chunks_after)
        self._shortest_chunk = min(
            block.f.attn.chunk_length if block.f.is_local else block.f.attn.bucket_size
            for block in blocks)
        self.stack_options = StackOptions(
            n_heads=attn.n_heads, causal=attn.causal, ff_chunk_size=ff.chunk_size,
            activation=ff.activation, layer_norm_eps=blocks[0].f.norm.eps,
            local_layers=tuple(i for i, kind in enumerate(attn_layers) if kind == "local"),
            **lsh_options, **local_options)
        self._register_load_state_dict_pre_hook(_rename_old_layer_keys)
        #: width of forward's output: 2·d_model for merge="concat_norm", else d_model
        self.out_features = 2 * d_model if merge == "concat_norm" else d_model
        if merge in ("concat", "concat_norm"):
            self.norm = tnn.LayerNorm(2 * d_model, eps=layer_norm_eps, **factory)
        else:
            self.norm = tnn.LayerNorm(d_model, eps=layer_norm_eps, **factory)
        self.proj = (tnn.Linear(2 * d_model, d_model, **factory) if merge == "concat"
                     else None)

    @classmethod
    def from_hf(cls, source, *, with_embeddings: bool = False):
        """The Reformer of a HuggingFace ``ReformerModel`` (or of the ``reformer`` inside a
        ``ReformerModelWithLMHead`` / ``ReformerForMaskedLM``), given the model object or a
        local directory saved by ``save_pretrained``: eval mode, the source's device and dtype,
        ``merge="concat_norm"``, so ``forward(embeddings, key_padding_mask)`` is HF's
        ``last_hidden_state`` (``2·hidden_size`` features). ``with_embeddings=True`` returns
        ``(embeddings, reformer)``, ``embeddings(tokens)`` being HF's embedding output.
        See reformer_ext.nn.hf_convert and docs/semantics.md
        "Converted HF models"."""
        from .hf_convert import reformer_from_hf
        return reformer_from_hf(source, with_embeddings=with_embeddings)

    def _random_state(self, x: Tensor):
        """Per-layer rotations and a (depth, 3) int64 CPU tensor of dropout seeds (attention
        output, FFN hidden, FFN output) for one forward."""
        length = x.shape[1]
        rotations = [block.f.make_rotations(length, x.device, x.dtype) for block in self.layers]
        if self.training and max(self.dropout, self.lsh_attention_dropout,
                                 self.local_attention_dropout) > 0.0:
            seeds = torch.randint(0, 2**62, (self.depth, 3), dtype=torch.int64)
        else:
            seeds = torch.zeros((self.depth, 3), dtype=torch.int64)
        return rotations, seeds

    def stack_weights(self) -> List[Dict[str, Tensor]]:
        """Per layer, its weights by the stack operator's names (LAYER_WEIGHT_NAMES)."""
        return [{**block.f.stack_weights(), **block.g.stack_weights()} for block in self.layers]

    def forward_streams(self, x: Tensor, key_padding_mask: Optional[Tensor] = None):
        """The two streams ``(y1, y2)`` after the last layer, before the merge."""
        check_input(x, "x", self.norm.weight)
        if x.dim() != 3 or x.shape[-1] != self.d_model or x.shape[1] < 1:
            raise ValueError(f"x must have shape (batch, length >= 1, {self.d_model}), got "
                             f"{tuple(x.shape)}")
        if key_padding_mask is not None:
            check_key_padding_mask(key_padding_mask, x)
        length = x.shape[1]
        pad = self._padding_for(length)
        if pad:
            # the tail as padding: neither queries nor keys (HF pads with masked tokens)
            x = tnn.functional.pad(x, (0, 0, 0, pad))
            if key_padding_mask is None:
                key_padding_mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
            else:
                key_padding_mask = tnn.functional.pad(key_padding_mask, (0, pad))
            key_padding_mask[:, length:] = True
            y1, y2 = self._streams(x, key_padding_mask)
            return y1[:, :length], y2[:, :length]
        return self._streams(x, key_padding_mask)

    def _padding_for(self, length: int) -> int:
        """How many padding positions forward appends: up to a multiple of pad_to_multiple_of,
        for lengths above the shortest chunk length (HF's rule)."""
        multiple = self.pad_to_multiple_of
        if multiple is None or length % multiple == 0 or length <= self._shortest_chunk:
            return 0
        return multiple - length % multiple

    def _streams(self, x: Tensor, key_padding_mask: Optional[Tensor]):
        rotations, seeds = self._random_state(x)
        seeds = _sharding.offset_dropout_seeds(self, seeds, x)
        p = self.dropout if self.training else 0.0
        attention_p = ((self.lsh_attention_dropout, self.local_attention_dropout)
                       if self.training else (0.0, 0.0))
        # FSDP-sharded layers take a module-level path (reformer_ext/nn/sharding.py)
        streams = _sharding.sharded_streams(self, x, key_padding_mask, rotations, seeds, p)
        if streams is not None:
            return streams
        if self.reversible:
            return reformer_stack(x, x, self.stack_weights(), rotations, seeds,
                                  self.stack_options, key_padding_mask=key_padding_mask,
                                  dropout_p=p, lsh_attention_dropout_p=attention_p[0],
                                  local_attention_dropout_p=attention_p[1])
        return _sharding.plain_streams(self, x, key_padding_mask, rotations, seeds)

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        y1, y2 = self.forward_streams(x, key_padding_mask)
        if self.merge == "mean":
            return self.norm((y1 + y2) * 0.5)
        out = self.norm(torch.cat([y1, y2], dim=-1))
        return out if self.proj is None else self.proj(out)

    def extra_repr(self) -> str:
        layers = "" if "local" not in self.attn_layers else f", attn_layers={self.attn_layers}"
        return (f"d_model={self.d_model}, depth={self.depth}, n_heads={self.n_heads}, "
                f"d_ff={self.d_ff}, merge={self.merge!r}, reversible={self.reversible}{layers}")


def _check_attn_layers(attn_layers, depth: int):
    """``attn_layers`` as a tuple of ``depth`` kinds ("lsh" or "local"); None: all LSH."""
    if attn_layers is None:
        return ("lsh",) * depth
    if isinstance(attn_layers, str) or not isinstance(attn_layers, (list, tuple)):
        raise TypeError(f"attn_layers must be a list of 'lsh' / 'local', one per layer, got "
                        f"{describe(attn_layers)}")
    kinds = tuple(attn_layers)
    if len(kinds) != depth or any(kind not in ATTENTION_KINDS for kind in kinds):
        raise ValueError(f"attn_layers must hold one of {ATTENTION_KINDS} per layer (depth="
                         f"{depth}), got {list(attn_layers)}")
    return kinds


class ReformerLM(tnn.Module):
    """Reformer language model: token embedding + position embedding -> :class:`Reformer` ->
    Linear head.

    ``forward(tokens (B, L) int64, key_padding_mask=None) -> logits (B, L, num_tokens)``, for
    any ``1 <= L <= max_seq_len`` (a longer input is a ValueError). ``causal`` defaults to True;
    the other keyword arguments go to :class:`Reformer` (d_ff, bucket_size, n_hashes,
    ff_chunk_size, dropout, reversible, merge, ...). Both embeddings are initialised from
    N(0, init_std²) (init_std=0.02, as in GPT-style models); the head is an nn.Linear.

    Position embedding: by default ``pos_emb`` is a learned absolute ``nn.Embedding(max_seq_len,
    d_model)``. With ``axial_position_shape`` and ``axial_position_dims`` (both or neither;
    reformer-pytorch's names, HF's ``axial_pos_shape`` and ``axial_pos_embds_dim``) it is an
    :class:`AxialPositionEmbedding` of that shape and those widths instead, whose
    ``sum(axial_position_dims)`` must equal d_model and whose ``prod(axial_position_shape)`` must
    be >= max_seq_len (max_seq_len stays the length limit, as HF's ``max_position_embeddings``
    beside its axial shape). Its parameters are ``pos_emb.weights.<i>`` (HF's
    ``embeddings.position_embeddings.weights.<i>``, same shapes). Its dropout is 0 (the learned
    embedding has none either); set ``model.pos_emb.dropout`` for HF's axial dropout.

    ``emb_dropout`` (default 0): training-mode dropout on the token embeddings before the
    position encodings are added (HF's ``hidden_dropout_prob`` on its word embeddings).

    The head ``to_logits`` is ``Linear(reformer.out_features, num_tokens)``: from d_model
    features, or from 2·d_model with ``merge="concat_norm"`` (HF's head, in converted models).
    """

    def __init__(self, num_tokens: int, d_model: int, depth: int, n_heads: int,
                 max_seq_len: int, *, causal: bool = True, init_std: float = 0.02,
                 axial_position_shape=None, axial_position_dims=None, emb_dropout: float = 0.0,
                 device=None, dtype=None, **reformer_kwargs):
        super().__init__()
        num_tokens = check_int(num_tokens, "num_tokens", 1)
        max_seq_len = check_int(max_seq_len, "max_seq_len", 1)
        # checked here too: the embeddings are built before the Reformer checks its arguments
        d_model = check_int(d_model, "d_model", 1)
        init_std = check_nonnegative(init_std, "init_std")
        self.emb_dropout = check_probability(emb_dropout, "emb_dropout")
        check_float_dtype(dtype)
        factory = dict(device=device, dtype=dtype)
        self.num_tokens, self.max_seq_len = num_tokens, max_seq_len
        self.token_emb = tnn.Embedding(num_tokens, d_model, **factory)
        self.pos_emb = _position_embedding(max_seq_len, d_model, axial_position_shape,
                                           axial_position_dims, factory)
        # initialised once both are built: the order (and so the seeded initial weights) the
        # learned position embedding has always had
        tnn.init.normal_(self.token_emb.weight, std=init_std)
        for weight in self.pos_emb.parameters():
            tnn.init.normal_(weight, std=init_std)
        self.reformer = Reformer(d_model, depth, n_heads, causal=causal, **factory,
                                 **reformer_kwargs)
        self.to_logits = tnn.Linear(self.reformer.out_features, num_tokens, **factory)

    @classmethod
    def from_hf(cls, source) -> "ReformerLM":
        """The ReformerLM equivalent to a HuggingFace ``ReformerModelWithLMHead`` (causal) or
        ``ReformerForMaskedLM`` (bidirectional), given the model object or a local directory
        saved by ``save_pretrained``: eval mode, the source's device and dtype; its logits are
        HF's (``key_padding_mask`` = ``attention_mask == 0``). See
        reformer_ext.nn.hf_convert and docs/semantics.md "Converted HF models"."""
        from .hf_convert import lm_from_hf
        return lm_from_hf(source)

    def forward(self, tokens: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """Token ids must lie in ``[0, num_tokens)``. That is checked in eager mode only: it
        reads the tokens (one host synchronisation on GPU), so it is skipped while torch.compile
        traces (an out-of-range id then fails inside nn.Embedding) and for meta tensors."""
        if not isinstance(tokens, Tensor) or tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (batch, length), got {describe(tokens)}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tokens must be int64 or int32 token ids, got {tokens.dtype}")
        length = tokens.shape[1]
        if length < 1:
            raise ValueError("tokens must have length >= 1, got shape "
                             f"{tuple(tokens.shape)}")
        if length > self.max_seq_len:
            raise ValueError(f"sequence length {length} exceeds max_seq_len={self.max_seq_len} "
                             "(the position embedding has no entry beyond it)")
        if not torch.compiler.is_compiling() and tokens.device.type != "meta":
            if bool(((tokens < 0) | (tokens >= self.num_tokens)).any()):
                raise ValueError(f"tokens must lie in [0, num_tokens) = [0, {self.num_tokens}), "
                                 f"got values from {int(tokens.min())} to {int(tokens.max())}")
        if isinstance(self.pos_emb, AxialPositionEmbedding):
            positions = self.pos_emb(length, batch_size=tokens.shape[0])
        else:
            positions = self.pos_emb(torch.arange(length, device=tokens.device))
        x = self.token_emb(tokens)
        if self.training and self.emb_dropout > 0.0:
            x = tnn.functional.dropout(x, self.emb_dropout, training=True)
        x = x + positions
        return self.to_logits(self.reformer(x, key_padding_mask))


def _position_embedding(max_seq_len: int, d_model: int, axial_shape, axial_dims,
                        factory) -> tnn.Module:
    """ReformerLM's ``pos_emb``: learned absolute, or axial when both axial options are given
    (the caller initialises its parameters)."""
    if axial_shape is None and axial_dims is None:
        return tnn.Embedding(max_seq_len, d_model, **factory)
    if axial_shape is None or axial_dims is None:
        missing = "axial_position_shape" if axial_shape is None else "axial_position_dims"
        raise ValueError(f"axial_position_shape and axial_position_dims go together: "
                         f"{missing} is None")
    # checked under the LM's names before AxialPositionEmbedding checks them under its own
    axial_shape = check_int_tuple(axial_shape, "axial_position_shape", 1)
    axial_dims = check_int_tuple(axial_dims, "axial_position_dims", 1)
    if len(axial_dims) != len(axial_shape):
        raise ValueError(f"axial_position_dims must have one width per axis of "
                         f"axial_position_shape {axial_shape}, got {axial_dims}")
    if sum(axial_dims) != d_model:
        raise ValueError(f"axial_position_dims must sum to d_model={d_model}, got {axial_dims} "
                         f"(sum {sum(axial_dims)})")
    if math.prod(axial_shape) < max_seq_len:
        raise ValueError(f"axial_position_shape must multiply to at least max_seq_len="
                         f"{max_seq_len}, got {axial_shape} (product {math.prod(axial_shape)})")
    return AxialPositionEmbedding(axial_shape, axial_dims, **factory)

"""reformer_ext.nn.replace_attention: swaps the nn.MultiheadAttention self-attention layers of an
existing model (e.g. nn.TransformerEncoder) for LSHSelfAttention.

The swap is an APPROXIMATION, meant as the starting point for fine-tuning, not as a model that
computes what it computed before. LSH attention shares one projection between queries and keys,
normalises the keys, uses no 1/sqrt(d_head) scaling and attends only within hash buckets. What
is copied from each nn.MultiheadAttention:

- the value projection (rows 2E..3E of in_proj_weight) -> ``to_v``;
- the output projection -> ``to_out``; the value bias is folded into ``to_out``'s bias
  (``out_proj.bias + out_proj.weight @ bias_v``; exact, because attention weights sum to 1);
- the query projection (rows 0..E of in_proj_weight) -> the shared ``to_qk``. The key projection
  and the query and key biases have no counterpart and are dropped.

The attention-weight dropout of nn.MultiheadAttention is not carried over (the operator has
none); the residual dropout of the surrounding layer stays. ``dropout`` sets the new module's
output dropout if wanted.
"""

from __future__ import annotations

from collections.abc import Iterable as _IterableABC
from typing import Iterable, List, Optional

import torch
from torch import Tensor
from torch import nn as tnn

from ..ops._checks import check_input
from .attention import LSHSelfAttention

__all__ = ["SequenceFirstLSHAttention", "replace_attention"]


class SequenceFirstLSHAttention(tnn.Module):
    """An :class:`LSHSelfAttention` taking the ``nn.MultiheadAttention`` call with
    ``batch_first=False`` tensors ``(L, B, d_model)``; it transposes around ``attn``.
    Used by :func:`replace_attention` for sequence-first models."""

    batch_first = False
    in_proj_bias = None  # see LSHSelfAttention: declines nn.TransformerEncoderLayer's fused path

    def __init__(self, attn: LSHSelfAttention):
        super().__init__()
        if not isinstance(attn, LSHSelfAttention):
            raise TypeError(f"attn must be an LSHSelfAttention module, got "
                            f"{type(attn).__name__}")
        self.attn = attn

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Optional[Tensor] = None, need_weights: Optional[bool] = None,
                attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: Optional[bool] = None):
        if key is not query or value is not query:
            raise ValueError(
                "LSH attention is self-attention: key and value must be the query tensor itself "
                "(attn(x, x, x, ...)); cross-attention is not supported")
        check_input(query, "query", self.attn.to_qk.weight)
        if query.dim() != 3 or query.shape[0] < 1 or query.shape[-1] != self.attn.d_model:
            raise ValueError(f"query must have shape (length >= 1, batch, {self.attn.d_model}) "
                             f"(sequence-first, batch_first=False), got {tuple(query.shape)}")
        x = query.transpose(0, 1)
        out, weights = self.attn(x, x, x, key_padding_mask=key_padding_mask,
                                 need_weights=need_weights, attn_mask=attn_mask,
                                 average_attn_weights=average_attn_weights, is_causal=is_causal)
        return out.transpose(0, 1), weights


def _check_replaceable(name: str, mha: tnn.MultiheadAttention) -> None:
    label = f"model layer {name}" if name else "model"
    if not mha._qkv_same_embed_dim:
        raise ValueError(f"{label}: nn.MultiheadAttention with kdim/vdim != embed_dim is not a "
                         "self-attention layer and cannot be replaced")
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ValueError(f"{label}: add_bias_kv and add_zero_attn have no LSH counterpart")


def _check_names(names, modules: dict) -> List[str]:
    """``names`` as a list without repeats; each must be the qualified name of an
    nn.MultiheadAttention of the model."""
    if isinstance(names, (str, bytes)) or not isinstance(names, _IterableABC):
        raise TypeError("names must be an iterable of qualified module names (as in "
                        f"model.named_modules()), got {type(names).__name__}")
    names = list(names)
    if not names:
        raise ValueError("names must hold at least one module name, got an empty iterable "
                         "(None replaces every self-attention layer)")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"names must hold str module names, got {name!r} "
                            f"({type(name).__name__})")
        if not isinstance(modules.get(name), tnn.MultiheadAttention):
            raise ValueError(f"names: {name!r} is not an nn.MultiheadAttention in the model")
    return list(dict.fromkeys(names))


@torch.no_grad()
def _lsh_from_mha(mha: tnn.MultiheadAttention, options: dict) -> tnn.Module:
    weight = mha.in_proj_weight
    embed = mha.embed_dim
    attn = LSHSelfAttention(embed, mha.num_heads, device=weight.device, dtype=weight.dtype,
                            **options)
    attn.to_qk.weight.copy_(weight[:embed])
    attn.to_v.weight.copy_(weight[2 * embed:])
    attn.to_out.weight.copy_(mha.out_proj.weight)
    out_bias = attn.to_out.bias
    out_bias.zero_()
    if mha.out_proj.bias is not None:
        out_bias.copy_(mha.out_proj.bias)
    if mha.in_proj_bias is not None:  # fold the value bias: sum_j p_ij (v_j + b) = ... + b
        out_bias.add_(mha.out_proj.weight @ mha.in_proj_bias[2 * embed:])
    attn.train(mha.training)
    return attn if mha.batch_first else SequenceFirstLSHAttention(attn).train(mha.training)


def replace_attention(model: tnn.Module, *, bucket_size: int = 64, n_hashes: int = 4,
                      n_buckets: Optional[int] = None, causal: bool = False,
                      n_chunks_before: int = 1, n_chunks_after: int = 0, dropout: float = 0.0,
                      fixed_rotations: Optional[bool] = None,
                      names: Optional[Iterable[str]] = None) -> tnn.Module:
    """Replaces, in place, the ``nn.MultiheadAttention`` self-attention layers of ``model`` by
    :class:`LSHSelfAttention` (weights copied as described in this module's docstring: an
    approximation, to fine-tune from) and returns the model. If ``model`` is itself an
    nn.MultiheadAttention, the new module is returned (``names``, if given, can only be
    ``[""]``).

    Which layers: every nn.MultiheadAttention except the cross-attention ``multihead_attn`` of
    nn.TransformerDecoderLayer, or, when ``names`` is given, exactly the modules with those
    qualified names (as in ``model.named_modules()``). A replaced layer called for anything but
    self-attention raises a ValueError at call time; a model with nothing to replace is a
    ValueError. Layers with ``batch_first=False`` get a
    :class:`SequenceFirstLSHAttention` wrapper (the LSH module is its ``.attn``).

    The other keyword arguments go to every new LSHSelfAttention (``causal=True`` for decoders:
    nn.TransformerEncoder called with a causal mask passes ``is_causal=True``, which must agree
    with it). nn.TransformerEncoders that contain a replaced layer get
    ``use_nested_tensor = False``: their nested-tensor inference path reads
    nn.MultiheadAttention's packed weights.
    """
    options = dict(bucket_size=bucket_size, n_hashes=n_hashes, n_buckets=n_buckets,
                   causal=causal, n_chunks_before=n_chunks_before,
                   n_chunks_after=n_chunks_after, dropout=dropout,
                   fixed_rotations=fixed_rotations)
    if not isinstance(model, tnn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    if names is not None:
        names = _check_names(names, modules)
    if isinstance(model, tnn.MultiheadAttention):  # names can only be [""], the model itself
        _check_replaceable("", model)
        return _lsh_from_mha(model, options)

    if names is None:
        cross = {f"{n}.multihead_attn".lstrip(".") for n, m in modules.items()
                 if isinstance(m, tnn.TransformerDecoderLayer)}
        targets = [n for n, m in modules.items()
                   if isinstance(m, tnn.MultiheadAttention) and n not in cross]
    else:
        targets = names
    if not targets:
        raise ValueError("replace_attention: the model has no nn.MultiheadAttention "
                         "self-attention layer to replace")
    for name in targets:
        _check_replaceable(name, modules[name])
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name], child, _lsh_from_mha(modules[name], options))
    for name, module in modules.items():
        if isinstance(module, tnn.TransformerEncoder) and any(
                t.startswith(f"{name}.") or name == "" for t in targets):
            module.use_nested_tensor = False
    return model

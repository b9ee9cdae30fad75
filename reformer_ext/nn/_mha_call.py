"""The ``nn.MultiheadAttention`` call convention, as LSHSelfAttention accepts it.

``attn(query, key, value, key_padding_mask=None, need_weights=..., attn_mask=None,
average_attn_weights=True, is_causal=...)`` with ``batch_first=True`` tensors. LSH attention is
self-attention over one sequence with an optional causal mask and a key padding mask, so only
the calls that mean exactly that are accepted; everything else is an error that says why:

- key and value must be the query tensor itself (``attn(x, x, x)``): cross-attention, or
  different key/value tensors, cannot be expressed with shared query/keys;
- ``need_weights=True`` is refused: the (L, L) attention matrix is never formed. When
  need_weights is not given, the weights returned are None (nn.MultiheadAttention's default is
  True; a caller that unpacks ``out, _ = attn(...)`` works unchanged);
- ``attn_mask`` is accepted only with ``is_causal=True`` on a causal module, as the hint that it
  is the causal mask (nn.TransformerEncoder passes both). Like nn.MultiheadAttention, the mask's
  contents are then not inspected, only its shape (L, L). Any other attn_mask is refused;
- ``is_causal`` must agree with the module's ``causal`` (None: the module's setting);
- ``need_weights`` and ``is_causal`` are True, False or None, ``average_attn_weights`` True or
  False (otherwise ignored: no weights are returned), as nn.MultiheadAttention documents them;
  other values (strings, tensors) are refused rather than read by their truth value;
- ``key_padding_mask`` (B, L): bool, True marks padding (both conventions agree), or float with
  0 for tokens and -inf for padding (what nn.TransformerEncoderLayer turns a bool mask into).
  Other float values (additive biases) are refused; this check reads the mask (one host
  synchronisation on GPU) and is skipped while torch.compile traces.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["padding_mask_from_mha_call"]


def padding_mask_from_mha_call(query: Tensor, key, value, key_padding_mask: Optional[Tensor],
                               need_weights: Optional[bool], attn_mask: Optional[Tensor],
                               is_causal: Optional[bool], module_causal: bool,
                               average_attn_weights: bool = True) -> Optional[Tensor]:
    """Checks an nn.MultiheadAttention-style self-attention call and returns the bool (B, L)
    key padding mask (True = padding) to run LSH attention with, or None."""
    for flag, name in ((need_weights, "need_weights"), (is_causal, "is_causal")):
        if flag is not None and not isinstance(flag, bool):
            raise TypeError(f"{name} must be True, False or None, got {flag!r} "
                            f"({type(flag).__name__})")
    if not isinstance(average_attn_weights, bool):
        raise TypeError(f"average_attn_weights must be True or False, got "
                        f"{average_attn_weights!r} ({type(average_attn_weights).__name__})")
    if key is not query or value is not query:
        raise ValueError(
            "LSHSelfAttention is self-attention: key and value must be the query tensor itself "
            "(attn(x, x, x, ...)); cross-attention and distinct key/value tensors are not "
            "supported")
    if need_weights:
        raise ValueError(
            "need_weights=True is not supported: LSH attention never forms the attention "
            "matrix; pass need_weights=False (the returned weights are None)")
    if is_causal is not None and bool(is_causal) != module_causal:
        raise ValueError(
            f"is_causal={bool(is_causal)} conflicts with this module's causal={module_causal}: "
            "build the module with the causal setting the caller uses (e.g. "
            "replace_attention(model, causal=True))")
    if attn_mask is not None:
        if not (is_causal and module_causal):
            raise ValueError(
                "attn_mask is not supported (LSH attention has only the causal and key padding "
                "masks); a causal mask is accepted together with is_causal=True on a causal "
                "module, padding goes in key_padding_mask")
        length = query.shape[1] if query.dim() == 3 else -1
        if not isinstance(attn_mask, Tensor) or tuple(attn_mask.shape) != (length, length):
            raise ValueError(
                f"attn_mask with is_causal=True must be the ({length}, {length}) causal mask, "
                f"got {tuple(attn_mask.shape) if isinstance(attn_mask, Tensor) else attn_mask!r}")
    if key_padding_mask is not None and not isinstance(key_padding_mask, Tensor):
        raise TypeError(f"key_padding_mask must be a tensor or None, got "
                        f"{type(key_padding_mask).__name__}")
    if key_padding_mask is None or key_padding_mask.dtype == torch.bool:
        return key_padding_mask
    if not key_padding_mask.is_floating_point():
        raise TypeError(f"key_padding_mask must be bool (True = padding) or float (0 or -inf), "
                        f"got {key_padding_mask.dtype}")
    padding = torch.isneginf(key_padding_mask)
    if not torch.compiler.is_compiling():
        if not bool(((key_padding_mask == 0) | padding).all()):
            raise ValueError("a float key_padding_mask must hold only 0 (token) and -inf "
                             "(padding); additive attention biases are not supported")
    return padding

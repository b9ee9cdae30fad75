"""reformer_ext.nn.LSHSelfAttention: multi-head LSH self-attention with shared query/keys
(docs/semantics.md §1, §4) over the ``reformer::lsh_attention`` operator."""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn as tnn

from ..ops._checks import (check_bool, check_float_dtype, check_input, check_int,
                           check_probability)
from ..ops.lsh_attention import accumulation_dtype, check_n_buckets, lsh_attention
from ..ops.seeded_random import as_int64, seeded_rotations
from ._mha_call import padding_mask_from_mha_call

__all__ = ["LSHSelfAttention", "hf_rotations"]


def hf_rotations(hash_seed: int, shape, device, dtype) -> Tensor:
    """HF's LSH rotations: ``torch.manual_seed(hash_seed)`` then ``torch.randn(shape,
    device=device, dtype=dtype)``, drawn from a private generator of ``device`` seeded with
    ``hash_seed`` (same values, global generators untouched)."""
    device = torch.device(device)
    if device.type == "meta":
        return torch.empty(shape, device=device, dtype=dtype)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(hash_seed))
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


@torch.compiler.disable
def _hf_rotations_outside_graph(hash_seed, shape, device, dtype, acc) -> Tensor:
    return hf_rotations(hash_seed, shape, device, dtype).to(acc)

class LSHSelfAttention(tnn.Module):
    """Multi-head LSH self-attention with shared query/keys (the Reformer's attention layer).

    ``x (B, L, d_model)`` -> ``to_qk``, ``to_v`` (Linear, no bias) -> heads of ``d_head`` ->
    :func:`reformer_ext.lsh_attention` -> merge heads -> ``to_out`` (Linear with bias) ->
    dropout. Any ``L >= 1`` works.

    Args:
        d_model: input and output width.
        n_heads: number of heads.
        d_head: width of each head (default ``d_model // n_heads``, which must then divide).
        bucket_size: chunk length after sorting by bucket (docs/semantics.md §1, ``m``).
        n_hashes: hash rounds.
        n_buckets: buckets per round (even int), or a list of even factors (factorised
            buckets as HF's ``num_buckets`` list: ``[32, 64]`` gives 2048 buckets from rotations
            of 48 columns per round). Default: chosen per forward from the length,
            ``max(2, 2 * ceil(L / bucket_size))`` (docs/semantics.md §4).
        causal: mask keys after the query.
        n_chunks_before, n_chunks_after: how many neighbouring chunks each chunk attends to.
        dropout: dropout rate applied in training mode to the OUTPUT of ``to_out`` (as the
            "hidden dropout" of the HF Reformer), with torch's default generator. Not the
            attention-probability dropout: that is ``attention_dropout``.
        attention_dropout: dropout rate on the attention weights (HF's
            ``lsh_attention_probs_dropout_prob``, reformer-pytorch's ``lsh_dropout``), applied in
            training mode only, with a seed drawn per forward from torch's default CPU generator
            (docs/semantics.md §1 "Dropout").
        seed: the module's rotation seed (see below); default drawn from torch's default CPU
            generator at construction, so ``torch.manual_seed`` before construction fixes it.
        fixed_rotations: ``None`` (default): fresh random rotations per forward in training
            mode, the module's fixed rotations in eval mode. ``True``: always the fixed ones.
            ``False``: always fresh ones.
        out_bias: whether ``to_out`` has a bias (default True; HF's attention output
            projection has none, so converted HF models use False).
        hf_hash_seed: when not None, the fixed rotations are HF's instead of
            :func:`seeded_rotations`: ``torch.randn(shape)`` in x's dtype on x's device from a
            private ``torch.Generator`` seeded with ``hf_hash_seed`` (what HF's
            ``torch.manual_seed(config.hash_seed)`` before its draw gives, without touching the
            global generators; docs/semantics.md "Converted HF models"). ``rotation_seed`` is
            then unused.

    Rotations (the random projections of the hash, ``(n_heads, d_head, n_hashes,
    n_buckets // 2)``, one set per head shared across the batch):

    - fresh: drawn from N(0, 1) with torch's default generator of x's device (the CUDA
      generator for CUDA inputs), so ``torch.manual_seed`` makes a training run reproducible
      and :class:`~reformer_ext.nn.ReversibleSequence`'s RNG replay recomputes the same ones;
    - fixed: :func:`seeded_rotations` of the buffer ``rotation_seed`` (an int64 scalar, saved
      in the state_dict, so a loaded model evaluates identically). They are a pure function of
      the seed and the shape (hence of n_buckets, i.e. of L when n_buckets is None), the same on
      every device and in every process; no generator state is touched.

    Drop-in for ``nn.MultiheadAttention`` (self-attention, ``batch_first=True``): ``attn(x, x,
    x, key_padding_mask=..., need_weights=False, attn_mask=None, is_causal=...)`` returns
    ``(out, None)``; see :meth:`forward` and :func:`reformer_ext.nn.replace_attention`.

    ``forward(x, key_padding_mask=None, *, rotations=None)``: ``key_padding_mask`` is ``(B, L)``
    bool, True marks padding (outputs at padded positions are ``to_out``'s bias; outputs at the
    other positions do not depend on padded tokens). Pass ``rotations`` to use given ones (e.g.
    to recompute a forward); :meth:`make_rotations` returns those forward would use.
    """

    # Read by nn.TransformerEncoder(Layer), which may hold this module as ``self_attn`` (see
    # reformer_ext.nn.replace_attention): the nn.MultiheadAttention call it makes is
    # batch-first, and ``in_proj_bias = None`` makes its fused inference path (which needs
    # nn.MultiheadAttention's packed in_proj weights) decline and call this module instead.
    batch_first = True
    in_proj_bias = None

    def __init__(self, d_model: int, n_heads: int, *, d_head: Optional[int] = None,
                 bucket_size: int = 64, n_hashes: int = 4, n_buckets: Optional[int] = None,
                 causal: bool = False, n_chunks_before: int = 1, n_chunks_after: int = 0,
                 dropout: float = 0.0, seed: Optional[int] = None,
                 fixed_rotations: Optional[bool] = None, out_bias: bool = True,
                 hf_hash_seed: Optional[int] = None, attention_dropout: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        d_model, n_heads = check_int(d_model, "d_model", 1), check_int(n_heads, "n_heads", 1)
        bucket_size, n_hashes = (check_int(bucket_size, "bucket_size", 1),
                                 check_int(n_hashes, "n_hashes", 1))
        n_chunks_before = check_int(n_chunks_before, "n_chunks_before", 0)
        n_chunks_after = check_int(n_chunks_after, "n_chunks_after", 0)
        if d_head is None:
            if d_model % n_heads:
                raise ValueError(f"d_model ({d_model}) is not divisible by n_heads ({n_heads}); "
                                 "pass d_head")
            d_head = d_model // n_heads
        d_head = check_int(d_head, "d_head", 1)
        if n_buckets is not None:
            n_buckets = check_n_buckets(n_buckets)  # an even int, or a list of even factors
        causal = check_bool(causal, "causal")
        dropout = check_probability(dropout, "dropout")
        attention_dropout = check_probability(attention_dropout, "attention_dropout")
        if seed is not None:
            seed = check_int(seed, "seed")  # any int: taken modulo 2^64
        if fixed_rotations is not None:
            fixed_rotations = check_bool(fixed_rotations, "fixed_rotations")
        out_bias = check_bool(out_bias, "out_bias")
        if hf_hash_seed is not None:
            hf_hash_seed = check_int(hf_hash_seed, "hf_hash_seed")
        check_float_dtype(dtype)
        factory = dict(device=device, dtype=dtype)
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_head
        self.bucket_size, self.n_hashes, self.n_buckets = bucket_size, n_hashes, n_buckets
        self.causal = causal
        self.n_chunks_before, self.n_chunks_after = n_chunks_before, n_chunks_after
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.fixed_rotations = fixed_rotations
        self.hf_hash_seed = hf_hash_seed
        inner = n_heads * d_head
        self.to_qk = tnn.Linear(d_model, inner, bias=False, **factory)
        self.to_v = tnn.Linear(d_model, inner, bias=False, **factory)
        self.to_out = tnn.Linear(inner, d_model, bias=out_bias, **factory)
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        self.register_buffer("rotation_seed",
                             torch.tensor(as_int64(int(seed)), dtype=torch.int64, device=device))
        # eager-mode cache of fixed rotations, checked against the seed buffer's identity and
        # version counter, so reseed(), load_state_dict() and .to() invalidate it.
        self._rotation_cache: dict = {}

    # -----------------------------------------------------------------------------------------

    def reseed(self, seed: int) -> None:
        """Sets the seed of the fixed rotations."""
        with torch.no_grad():
            self.rotation_seed.fill_(as_int64(int(seed)))

    @property
    def bucket_factors(self) -> List[int]:
        """The operators' ``bucket_factors``: the factors when n_buckets is a list, else []."""
        return list(self.n_buckets) if isinstance(self.n_buckets, list) else []

    def buckets_for_length(self, length: int):
        """n_buckets used for a sequence of ``length`` (the list of factors when factorised)."""
        if self.n_buckets is not None:
            return self.n_buckets
        # = ops.default_n_buckets, in integer arithmetic (stays symbolic under torch.compile)
        return max(2, 2 * ((length + self.bucket_size - 1) // self.bucket_size))

    def uses_fixed_rotations(self) -> bool:
        return (not self.training) if self.fixed_rotations is None else self.fixed_rotations

    def make_rotations(self, length: int, device=None, dtype=torch.float32) -> Tensor:
        """The rotations a forward on a length-``length`` input of ``dtype`` on ``device`` would
        use now (fresh ones are drawn from the default generator: each call gives new ones)."""
        device = self.rotation_seed.device if device is None else torch.device(device)
        n_buckets = self.buckets_for_length(length)  # may be symbolic under torch.compile
        columns = sum(n_buckets) // 2 if isinstance(n_buckets, list) else n_buckets // 2
        shape = (self.n_heads, self.d_head, self.n_hashes, columns)
        acc = accumulation_dtype(dtype)
        # rotations cached under torch.inference_mode are inference tensors, which autograd
        # refuses to save: they are cached apart, for inference mode only (torch.compile cannot
        # trace the query; compiled graphs read the entries of ordinary eager calls)
        inference = not torch.compiler.is_compiling() and torch.is_inference_mode_enabled()
        if self.uses_fixed_rotations() and self.hf_hash_seed is not None:
            # cached per shape, device and dtype; torch.compile reads the cache (a generator
            # cannot be created inside a graph: a first compiled call at a new shape, device or
            # dtype draws them outside it, with a graph break)
            key = ("hf", shape, device, dtype, self.hf_hash_seed, inference)
            rotations = self._rotation_cache.get(key)
            if rotations is None:
                rotations = _hf_rotations_outside_graph(self.hf_hash_seed, shape, device, dtype,
                                                        acc)
                if not torch.compiler.is_compiling():
                    if len(self._rotation_cache) >= 8:
                        self._rotation_cache.clear()
                    self._rotation_cache[key] = rotations
            return rotations
        if self.uses_fixed_rotations():
            if torch.compiler.is_compiling():
                return seeded_rotations(self.rotation_seed, shape, dtype=acc, device=device)
            seed = self.rotation_seed
            key = (shape, device, acc, inference)
            entry = self._rotation_cache.get(key)
            # valid while the seed is the same tensor (the entry holds it, so its memory cannot
            # be reused by another) at the same version (fill_, copy_ by load_state_dict bump it)
            if entry is None or entry[0] is not seed or entry[1] != seed._version:
                if len(self._rotation_cache) >= 8:
                    self._rotation_cache.clear()
                entry = (seed, seed._version,
                         seeded_rotations(seed, shape, dtype=acc, device=device))
                self._rotation_cache[key] = entry
            return entry[2]
        return torch.randn(shape, dtype=acc, device=device)

    def forward(self, x: Tensor, key=None, value: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None, need_weights: Optional[bool] = None,
                attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: Optional[bool] = None, *, rotations: Optional[Tensor] = None,
                attention_dropout_seed=None):
        """Two call conventions, told apart by ``value``:

        - ``forward(x, key_padding_mask=None, *, rotations=None, attention_dropout_seed=None)
          -> out`` (value not given): the module's own call; a second positional argument is
          the key padding mask. ``attention_dropout_seed`` (an int or a one-element int64 CPU
          tensor; None: drawn from torch's CPU generator) seeds the attention dropout's mask in
          training (the reversible stack passes its own).
        - ``forward(x, x, x, key_padding_mask=None, need_weights=False, attn_mask=None,
          average_attn_weights=True, is_causal=None) -> (out, None)``: the
          ``nn.MultiheadAttention`` self-attention call with ``batch_first=True`` tensors
          (see reformer_ext/nn/_mha_call.py for what it accepts; ``average_attn_weights`` is
          ignored since no weights are returned).
        """
        if value is None:
            if key is not None:
                if key is x:
                    raise TypeError("LSHSelfAttention got (query, key) without value: the "
                                    "nn.MultiheadAttention call is attn(x, x, x, ...)")
                if isinstance(key, Tensor) and key.dim() != 2:
                    # the module's own call: the second positional argument is the mask
                    raise ValueError(
                        "key_padding_mask (the second positional argument) must have shape "
                        f"(batch, length), got {tuple(key.shape)} (the nn.MultiheadAttention "
                        "call passes value too: attn(x, x, x, ...))")
                if key_padding_mask is not None:
                    raise TypeError("key_padding_mask given twice (positionally and by name)")
                key_padding_mask = key
            if need_weights is not None or attn_mask is not None or is_causal is not None:
                raise TypeError("need_weights, attn_mask and is_causal belong to the "
                                "nn.MultiheadAttention call attn(x, x, x, ...), which passes "
                                "value too")
            return self._attend(x, key_padding_mask, rotations, attention_dropout_seed)
        key_padding_mask = padding_mask_from_mha_call(x, key, value, key_padding_mask,
                                                      need_weights, attn_mask, is_causal,
                                                      self.causal, average_attn_weights)
        return self._attend(x, key_padding_mask, rotations, attention_dropout_seed), None

    def _attend(self, x: Tensor, key_padding_mask: Optional[Tensor],
                rotations: Optional[Tensor], attention_dropout_seed=None) -> Tensor:
        check_input(x, "x", self.to_qk.weight)
        if x.dim() != 3 or x.shape[-1] != self.d_model or x.shape[1] < 1:
            raise ValueError(f"x must have shape (batch, length >= 1, {self.d_model}), got "
                             f"{tuple(x.shape)}")
        batch, length, _ = x.shape
        heads, d_head = self.n_heads, self.d_head
        qk = self.to_qk(x).view(batch, length, heads, d_head).transpose(1, 2)
        v = self.to_v(x).view(batch, length, heads, d_head).transpose(1, 2)
        if rotations is None:
            rotations = self.make_rotations(length, x.device, x.dtype)
        out = lsh_attention(qk, v, n_hashes=self.n_hashes, bucket_size=self.bucket_size,
                            causal=self.causal, key_padding_mask=key_padding_mask,
                            rotations=rotations, n_chunks_before=self.n_chunks_before,
                            n_chunks_after=self.n_chunks_after,
                            n_buckets=self.n_buckets if self.bucket_factors else None,
                            dropout=self.attention_dropout if self.training else 0.0,
                            dropout_seed=attention_dropout_seed)
        out = self.to_out(out.transpose(1, 2).reshape(batch, length, heads * d_head))
        if self.training and self.dropout > 0.0:
            out = F.dropout(out, self.dropout, training=True)
        return out

    def extra_repr(self) -> str:
        nb = self.n_buckets if self.n_buckets is not None else "auto"
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, d_head={self.d_head}, "
                f"bucket_size={self.bucket_size}, n_hashes={self.n_hashes}, n_buckets={nb}, "
                f"causal={self.causal}, n_chunks_before={self.n_chunks_before}, "
                f"n_chunks_after={self.n_chunks_after}, dropout={self.dropout}, "
                f"fixed_rotations={self.fixed_rotations}"
                + ("" if not self.attention_dropout
                   else f", attention_dropout={self.attention_dropout}")
                + ("" if self.hf_hash_seed is None else f", hf_hash_seed={self.hf_hash_seed}"))

"""Seeded randomness: the random numbers of the operators and modules as pure functions of a
seed and an element's index, so a backward can regenerate them instead of storing them, and
every device and process draws the same (docs/semantics.md §2 and §3).

Everything rests on SplitMix64. Its k-th output (k = 1, 2, ...) for a 64-bit seed is

    mix64(seed + k · γ)                                       (mod 2^64, γ = 0x9E3779B97F4A7C15)
    mix64(z): z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB;
              z ^= z >> 31                                          (logical shifts)

computed here on int64 tensors with wrapping arithmetic (torch has no uint64 arithmetic), and in
C++ by csrc/seeded_dropout.h and kernels/dropout_hash.h.

- Dropout (the chunked feed-forward's hidden activation, the reversible stack's branch outputs):
  element e of a row-major ``(N, width)`` tensor is dropped iff the (e + 1)-th output, read as a
  signed 64-bit integer, is < -2^63 + p · 2^64; kept elements are scaled by 1 / (1 - p).
- Attention dropout (LSH and local attention, docs/semantics.md §1 "Dropout"): the same rule
  over the element index of :func:`attention_dropout_keep_mask`.
- Rotations in eval mode (:func:`seeded_rotations`): Box-Muller over two words per element.
- Seeds: :func:`draw_dropout_seed` draws one from torch's RNG, so ``torch.manual_seed`` makes a
  step reproducible.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import Tensor

__all__ = ["as_int64", "attention_dropout_keep_mask", "draw_dropout_seed", "hidden_dropout_keep_mask", "mix64", "seed_tensor",
           "seeded_dropout", "seeded_rotations"]

_MASK64 = (1 << 64) - 1


def as_int64(value: int) -> int:
    """Python int -> the int64 with the same low 64 bits."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


GAMMA = as_int64(0x9E3779B97F4A7C15)
_MIX1 = as_int64(0xBF58476D1CE4E5B9)
_MIX2 = as_int64(0x94D049BB133111EB)


def _logical_shift_right(z: Tensor, shift: int) -> Tensor:
    return (z >> shift) & ((1 << (64 - shift)) - 1)


def mix64(z: Tensor) -> Tensor:
    """SplitMix64's finaliser on an int64 tensor (wrapping arithmetic, logical shifts)."""
    z = z ^ _logical_shift_right(z, 30)
    z = z * _MIX1
    z = z ^ _logical_shift_right(z, 27)
    z = z * _MIX2
    return z ^ _logical_shift_right(z, 31)


# ---------------------------------------------------------------------------------------------
# Dropout


#: kAttentionProbsSalt of kernels/dropout_hash.h: the stack's attention-probability dropout seed
#: of a layer is derived from its attention-output seed with it.
ATTENTION_PROBS_SALT = as_int64(0xA0761D6478BD642F)


def derived_seed(seed, salt: int) -> Tensor:
    """``dropout_hash::derived_seed``: ``mix64(seed ^ salt)`` as a 0-dim int64 CPU tensor, for a
    second mask of the owner of ``seed`` (an int or a one-element int64 tensor)."""
    seed = torch.as_tensor(seed, dtype=torch.int64).reshape(())
    return mix64(seed ^ salt)


def draw_dropout_seed(generator: Optional[torch.Generator] = None) -> Tensor:
    """A fresh 63-bit dropout seed from torch's CPU RNG (or ``generator``), so that
    ``torch.manual_seed`` makes dropout reproducible: a 0-dim int64 CPU tensor (drawn with a
    tensor op, so a compiled graph draws it without a graph break)."""
    return torch.randint(0, 2**62, (), dtype=torch.int64, generator=generator)


def seed_tensor(seed) -> Tensor:
    """A dropout seed as the operators take it (a 0-dim int64 CPU tensor): an int (taken modulo
    2^64) or such a tensor, which is returned as it is."""
    if isinstance(seed, Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 1 or seed.device.type != "cpu":
            raise ValueError("dropout_seed must be an int or a one-element int64 CPU tensor, got "
                             f"{seed.dtype} of shape {tuple(seed.shape)} on {seed.device}")
        return seed.reshape(())
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"dropout_seed must be an int or an int64 tensor, got "
                        f"{type(seed).__name__}")
    return torch.tensor(as_int64(int(seed)), dtype=torch.int64)


def hidden_dropout_keep_mask(n_rows: int, d_ff: int, p: float, seed, *, row_offset: int = 0,
                             device=None) -> Tensor:
    """The keep mask (bool, ``(n_rows, d_ff)``) that ``chunked_ffn`` applies to rows
    ``row_offset .. row_offset + n_rows - 1`` of the hidden activation for dropout rate ``p``
    and ``seed`` (an int or a 0-dim int64 tensor; see the module docstring). Kept elements are
    scaled by 1 / (1 - p)."""
    i64 = dict(dtype=torch.int64, device=device)
    cols = torch.arange(1, d_ff + 1, **i64) * GAMMA
    seed = seed.to(device) if isinstance(seed, Tensor) else as_int64(seed)
    rows = torch.arange(row_offset, row_offset + n_rows, **i64) * as_int64(d_ff * GAMMA) + seed
    words = mix64(rows[:, None] + cols[None, :])
    threshold = as_int64(int(math.ldexp(p, 64)) ^ (1 << 63))  # -2^63 + p · 2^64
    return words >= threshold


def attention_dropout_keep_mask(p: float, seed, bh, round_, query_pos, slot, key_pos, *,
                                n_hashes: int, length: int, window_slots: int) -> Tensor:
    """The keep mask (bool) of the attention dropout (docs/semantics.md §1 "Dropout"), for
    broadcastable int64 tensors ``bh`` (b · H + h), ``round_`` (the query's round), ``query_pos``
    (i), ``slot`` (the window slot k: offset + n_chunks_before of the offset that listed the
    key's chunk) and ``key_pos`` (j): element

        e = (((bh · R + r) · L + i) · K + k) · L + j        (mod 2^64)

    with R = n_hashes, L = length (unpadded), K = window_slots (n_chunks_before + 1 +
    n_chunks_after), dropped as in the seeded dropout rule above. Used by the plain-PyTorch
    references only: the kernels compute it on their own (kernels/attention_dropout.h)."""
    seed = seed.reshape(()) if isinstance(seed, Tensor) else as_int64(seed)
    row = ((bh * n_hashes + round_) * length + query_pos) * window_slots
    e = (row + slot) * length + key_pos
    words = mix64(seed + (e + 1) * GAMMA)
    threshold = as_int64(int(math.ldexp(p, 64)) ^ (1 << 63))  # -2^63 + p · 2^64
    return words >= threshold


def seeded_dropout(x: Tensor, p: float, seed) -> Tensor:
    """Inverted dropout of ``x`` viewed as ``(N, x.shape[-1])`` rows, with the mask rule above
    (:func:`hidden_dropout_keep_mask` over those rows): what the reversible stack operator
    applies to its branch outputs (csrc/seeded_dropout.h). ``p == 0`` returns ``x``."""
    if p == 0.0:
        return x
    width = x.shape[-1]
    keep = hidden_dropout_keep_mask(x.numel() // width, width, p, seed, device=x.device)
    return torch.where(keep.view(x.shape), x, 0).mul(1.0 / (1.0 - p))


# ---------------------------------------------------------------------------------------------
# Rotations


def seeded_rotations(seed, shape, *, dtype: torch.dtype = torch.float32,
                     device=None) -> Tensor:
    """Deterministic N(0, 1) rotations of ``shape = (H, D, n_hashes, n_buckets // 2)``: a pure
    function of ``seed`` (int or 0-dim int64 tensor) and of each element's index, computed with
    tensor operations only (no torch.Generator, no host synchronisation, traceable by
    torch.compile), identical on every device.

    Element ``(h, d, r, k)`` uses the counter ``c = ((h·D + d)·n_hashes + r)·2^32 + k``: it does
    not depend on ``n_buckets``, so the rotations for fewer buckets are a prefix (along the last
    dimension) of those for more. Two words ``w_j = mix64(mix64(seed) + (2c + j + 1)·γ)``
    give uniforms ``u_j = ((w_j >>> 11) + 1) · 2^-53`` in (0, 1], and Box-Muller
    ``sqrt(-2 ln u_0) · cos(2π u_1)`` the normal value (in float64, then cast to ``dtype``).
    """
    heads, dim, n_hashes, half = shape  # no int(): sizes may be symbolic under torch.compile
    if torch.is_tensor(seed):
        seed_t = seed.to(dtype=torch.int64)
        device = seed_t.device if device is None else torch.device(device)
    else:
        seed_t = torch.tensor(as_int64(int(seed)), dtype=torch.int64)
        device = torch.device("cpu") if device is None else torch.device(device)
    # float64 is not available everywhere (MPS): compute there on the CPU.
    calc = torch.device("cpu") if device.type == "mps" else device
    seed_t = seed_t.to(calc)
    i64 = dict(dtype=torch.int64, device=calc)
    row = torch.arange(heads * dim * n_hashes, **i64)
    counter = (row[:, None] << 32) + torch.arange(half, **i64)[None, :]
    base = mix64(seed_t.reshape(()))
    words = [mix64(base + (2 * counter + (j + 1)) * GAMMA) for j in (0, 1)]
    u0, u1 = (_logical_shift_right(w, 11).to(torch.float64).add_(1.0).mul_(2.0 ** -53)
              for w in words)
    normal = torch.sqrt(-2.0 * torch.log(u0)) * torch.cos((2.0 * math.pi) * u1)
    return normal.reshape(heads, dim, n_hashes, half).to(device=device, dtype=dtype)

"""The chunked feed-forward operator family (docs/semantics.md §2): the functional API over
``torch.ops.reformer.chunked_ffn`` and its Python-side registrations (fake kernels, autograd,
autocast).

    y = W2 · dropout(act(W1 · x + b1)) + b2,  position-wise on x (..., d_model)

computed ``chunk_size`` positions at a time in the forward AND the backward: the backward
recomputes each chunk's hidden activation, so the (N, d_ff) hidden tensor never exists.

Dropout on the hidden activation is deterministic given a seed: the mask is a pure function of
(seed, element index) of the row-major (N, d_ff) hidden activation, the same on every device, for
every chunk_size, and in the forward and the backward's recompute (the rule is in
reformer_ext/ops/seeded_random.py; :func:`~reformer_ext.ops.seeded_random.hidden_dropout_keep_mask`
computes it in Python).

On the CPU the output and every gradient are bitwise identical across runs and thread counts, in
every dtype (float16 / bfloat16 inputs are computed in float32 and rounded once): the GEMMs and
column sums are the project's own, with a fixed summation order, and the element-wise passes are
per row. That holds on one machine and build; across CPUs of different instruction sets (AVX2,
AVX-512, ...) FMA contraction and vector width change rounding. On CUDA the GEMMs are cuBLAS's.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._autocast import register_low_precision_autocast
from ._checks import check_int, check_probability, check_tensor, check_traced
from .seeded_random import draw_dropout_seed, seed_tensor

__all__ = ["ACTIVATIONS", "chunked_feed_forward"]

#: Accepted values of ``activation``: exact GELU, tanh-approximated GELU, ReLU, SiLU.
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")

# ---------------------------------------------------------------------------------------------
# Fake (meta) kernels: shapes only depend on the input shapes. They repeat the checks of the C++
# operator (check_chunked_ffn_args and read_dropout_seed in csrc/chunked_ffn.cpp) with
# torch._check_value, which also works on symbolic sizes: tracing rejects what eager mode would,
# and so does a call that mixes meta tensors with others (the dispatcher sends it here).

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _fake_check_operand(t, name: str, x) -> None:
    check_traced(isinstance(t, Tensor), f"{name} must be a tensor, got {type(t).__name__}")
    check_traced(t.dtype == x.dtype, f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
    check_traced(t.device == x.device,
           f"{name} must be on the same device as x ({x.device}), got {t.device}")


def _fake_check_dropout_seed(dropout_seed, dropout_p, x) -> None:
    check_traced(0.0 <= dropout_p < 1.0, f"dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_seed is None:
        check_traced(dropout_p == 0.0, "dropout_seed must be given when dropout_p > 0 (got "
                                 f"dropout_p = {dropout_p} and dropout_seed = None)")
        return
    # The seed's value is read on the host; a meta computation never reads it, so there (and
    # only there) a meta seed is accepted as well.
    on_host = dropout_seed.device.type == "cpu" or (dropout_seed.device.type == "meta"
                                                    and x.device.type == "meta")
    check_traced(dropout_seed.dtype == torch.int64 and dropout_seed.numel() == 1 and on_host,
           "dropout_seed must be a one-element int64 tensor on the CPU, got "
           f"{dropout_seed.dtype} of shape {tuple(dropout_seed.shape)} on {dropout_seed.device}")


def _fake_check_args(x, w1, b1, w2, b2, chunk_size, activation, dropout_p, dropout_seed):
    _fake_check_dropout_seed(dropout_seed, dropout_p, x)
    check_traced(isinstance(x, Tensor) and x.dim() >= 1,
           "x must have shape (..., d_model), got a 0-dimensional tensor")
    check_traced(x.dtype in _FLOAT_DTYPES,
           f"x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    d_model = x.shape[-1]
    check_traced(isinstance(w1, Tensor) and w1.dim() == 2 and w1.shape[1] == d_model,
           f"w1 must have shape (d_ff, d_model) with d_model = {d_model} (x's last dimension), "
           f"got {tuple(w1.shape) if isinstance(w1, Tensor) else w1!r}")
    d_ff = w1.shape[0]
    check_traced(isinstance(w2, Tensor) and w2.dim() == 2 and w2.shape[0] == d_model
           and w2.shape[1] == d_ff,
           f"w2 must have shape (d_model, d_ff) = ({d_model}, {d_ff}) (d_model from x, d_ff "
           f"from w1), got {tuple(w2.shape) if isinstance(w2, Tensor) else w2!r}")
    _fake_check_operand(w1, "w1", x)
    _fake_check_operand(w2, "w2", x)
    for bias, name, size, size_name in ((b1, "b1", d_ff, "d_ff"), (b2, "b2", d_model, "d_model")):
        if bias is not None:
            check_traced(bias.dim() == 1 and bias.shape[0] == size,
                   f"{name} must have shape ({size_name},) = ({size},), got {tuple(bias.shape)}")
            _fake_check_operand(bias, name, x)
    check_traced(chunk_size >= 1, f"chunk_size must be >= 1, got {chunk_size}")
    check_traced(activation in ACTIVATIONS, f"activation must be one of "
                                      f"{', '.join(map(repr, ACTIVATIONS))}, got {activation!r}")


@torch.library.register_fake("reformer::chunked_ffn")
def _chunked_ffn_fake(x, w1, b1, w2, b2, chunk_size, activation, dropout_p, dropout_seed):
    _fake_check_args(x, w1, b1, w2, b2, chunk_size, activation, dropout_p, dropout_seed)
    return x.new_empty(x.shape)


@torch.library.register_fake("reformer::chunked_ffn_backward")
def _chunked_ffn_backward_fake(grad_out, x, w1, b1, w2, b2, chunk_size, activation, dropout_p,
                               dropout_seed, output_mask):
    _fake_check_args(x, w1, b1, w2, b2, chunk_size, activation, dropout_p, dropout_seed)
    check_traced(isinstance(grad_out, Tensor) and grad_out.shape == x.shape,
           f"grad_out must have the shape of x {tuple(x.shape)}, got "
           f"{tuple(grad_out.shape) if isinstance(grad_out, Tensor) else grad_out!r}")
    _fake_check_operand(grad_out, "grad_out", x)

    def grad(t, needed):
        return t.new_empty(t.shape) if needed and t is not None else None

    return tuple(grad(t, m) for t, m in zip((x, w1, b1, w2, b2), output_mask))


# ---------------------------------------------------------------------------------------------
# Autograd: the backward operator recomputes the hidden activation chunk by chunk from the inputs.


def _chunked_ffn_setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, chunk_size, activation, dropout_p, dropout_seed = inputs
    ctx.save_for_backward(x, w1, b1, w2, b2, dropout_seed)
    ctx.options = (chunk_size, activation, dropout_p)


def _chunked_ffn_backward(ctx, grad_out):
    x, w1, b1, w2, b2, dropout_seed = ctx.saved_tensors
    needed = [bool(n) for n in ctx.needs_input_grad[:5]]
    if not any(needed):
        return (None,) * 9
    grads = torch.ops.reformer.chunked_ffn_backward(grad_out, x, w1, b1, w2, b2, *ctx.options,
                                                    dropout_seed, needed)
    return (*grads, None, None, None, None)


torch.library.register_autograd(
    "reformer::chunked_ffn", _chunked_ffn_backward, setup_context=_chunked_ffn_setup_context
)

# Autocast (reformer_ext/_autocast.py): the nn.Linear rule, all five tensors in low precision.
register_low_precision_autocast("reformer::chunked_ffn", cast=("x", "w1", "b1", "w2", "b2"))


# ---------------------------------------------------------------------------------------------
# Functional API


def chunked_feed_forward(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor,
                         b2: Optional[Tensor], *, chunk_size: int = 1024,
                         activation: str = "gelu", dropout: float = 0.0,
                         dropout_seed=None,
                         generator: Optional[torch.Generator] = None) -> Tensor:
    """Position-wise feed-forward ``W2 · dropout(act(W1 · x + b1)) + b2``, ``chunk_size``
    positions at a time in forward and backward (docs/semantics.md §2).

    x: ``(..., d_model)``; w1: ``(d_ff, d_model)`` and w2: ``(d_model, d_ff)`` (the nn.Linear
    layout); b1 ``(d_ff,)`` and b2 ``(d_model,)`` may be None. All of one dtype (float32,
    float64, float16, bfloat16) and device. activation: ``"gelu"`` (exact), ``"gelu_tanh"``,
    ``"relu"`` or ``"silu"``. Memory beyond inputs, outputs and gradients is O(chunk_size · d_ff)
    in forward and backward; the result equals the unchunked computation up to rounding.

    dropout: probability in [0, 1) of zeroing a hidden activation (inverted dropout, applied
    whenever dropout > 0; pass 0.0 for evaluation). The mask is a pure function of
    ``dropout_seed`` (an int, taken modulo 2^64, or a one-element int64 CPU tensor) and the
    element's index (reformer_ext/ops/seeded_random.py), independent of chunk_size. With
    dropout > 0 and no seed, one is drawn from torch's RNG (``generator`` or the default CPU
    generator).
    """
    for value, name in ((x, "x"), (w1, "w1"), (w2, "w2")):
        check_tensor(value, name)
    for value, name in ((b1, "b1"), (b2, "b2")):
        if value is not None:
            check_tensor(value, name)
    chunk_size = check_int(chunk_size, "chunk_size", 1)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}, "
                         f"got {activation!r}")
    dropout = check_probability(dropout, "dropout")
    seed = None
    if dropout > 0.0:
        seed = draw_dropout_seed(generator) if dropout_seed is None else seed_tensor(dropout_seed)
    return torch.ops.reformer.chunked_ffn(x, w1, b1, w2, b2, chunk_size, activation, dropout,
                                          seed)

"""The reversible Reformer stack operator (SPEC §3): Python-side registrations (fake kernels,
autograd) and the function the modules call.

``torch.ops.reformer.reformer_stack`` runs ``depth`` reversible layers

    y1 = x1 + F(x2),  F(x) = dropout(to_out(LSHAttention(to_qk(LN1(x)), to_v(LN1(x)))))
    y2 = x2 + G(y1),  G(x) = dropout(ChunkedFFN(LN2(x)))      (hidden dropout inside the FFN)

with all weights as explicit inputs, and keeps only its outputs for the backward, which
rebuilds each layer's inputs from its outputs (csrc/reformer_stack.cpp). To autograd and to
torch.compile it is one node: memory does not grow with depth, and nothing in it breaks a graph.

Random state is explicit too: one rotation tensor per layer and a ``(depth, 3)`` int64 CPU
tensor of dropout seeds (attention output, FFN hidden, FFN output), so the recompute is exact.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._autocast import register_low_precision_autocast

__all__ = ["WEIGHTS_PER_LAYER", "WEIGHT_NAMES", "reformer_stack"]

# The order of one layer's weights in the operator's `weights` list (csrc/reformer_stack.h).
WEIGHT_NAMES = ("norm1_weight", "norm1_bias", "qk_weight", "v_weight", "out_weight", "out_bias",
                "norm2_weight", "norm2_bias", "ffn_w1", "ffn_b1", "ffn_w2", "ffn_b2")
WEIGHTS_PER_LAYER = len(WEIGHT_NAMES)


def _check(condition, message: str) -> None:
    torch._check_value(condition, lambda: message)


def _fake_check(x1, x2, weights, rotations, key_padding_mask, seeds):
    _check(isinstance(x1, Tensor) and x1.dim() == 3,
           "x1 must have shape (batch, length, d_model)")
    _check(isinstance(x2, Tensor) and x2.shape == x1.shape and x2.dtype == x1.dtype
           and x2.device == x1.device, "x2 must have the shape, dtype and device of x1")
    _check(len(weights) > 0 and len(weights) % WEIGHTS_PER_LAYER == 0,
           f"weights must hold {WEIGHTS_PER_LAYER} tensors per layer, got {len(weights)}")
    depth = len(weights) // WEIGHTS_PER_LAYER
    _check(len(rotations) == depth,
           f"rotations must hold one tensor per layer ({depth}), got {len(rotations)}")
    for i, w in enumerate(weights):
        _check(w.dtype == x1.dtype and w.device == x1.device,
               f"weights[{i}] must have the dtype and device of x1")
    for i, r in enumerate(rotations):
        _check(r.device == x1.device, f"rotations[{i}] must be on the device of x1 "
                                      f"({x1.device}), got {r.device}")
    if key_padding_mask is not None:
        # a mask on another device (e.g. meta with CPU streams) is dispatched here: refuse it
        _check(key_padding_mask.dtype == torch.bool and key_padding_mask.dim() == 2
               and key_padding_mask.shape[0] == x1.shape[0]
               and key_padding_mask.shape[1] == x1.shape[1],
               "key_padding_mask must be a bool tensor of shape (batch, length) = "
               f"{tuple(x1.shape[:2])}, got {key_padding_mask.dtype} "
               f"{tuple(key_padding_mask.shape)}")
        _check(key_padding_mask.device == x1.device, "key_padding_mask must be on the device "
               f"of x1 ({x1.device}), got {key_padding_mask.device}")
    _check(seeds.dtype == torch.int64 and seeds.device.type == "cpu" and seeds.dim() == 2
           and seeds.shape[0] == depth and seeds.shape[1] == 3,
           f"seeds must be a CPU int64 tensor of shape ({depth}, 3)")


@torch.library.register_fake("reformer::reformer_stack")
def _reformer_stack_fake(x1, x2, weights, rotations, key_padding_mask, seeds, *options):
    _fake_check(x1, x2, weights, rotations, key_padding_mask, seeds)
    return x1.new_empty(x1.shape), x1.new_empty(x1.shape)


@torch.library.register_fake("reformer::reformer_stack_backward")
def _reformer_stack_backward_fake(grad_y1, grad_y2, y1, y2, weights, rotations, key_padding_mask,
                                  seeds, *options):
    _fake_check(y1, y2, weights, rotations, key_padding_mask, seeds)
    return (y1.new_empty(y1.shape), y1.new_empty(y1.shape),
            [w.new_empty(w.shape) for w in weights])


def _setup_context(ctx, inputs, output):
    _x1, _x2, weights, rotations, key_padding_mask, seeds, *options = inputs
    y1, y2 = output
    # The outputs, the weights and the random state: nothing per layer.
    ctx.save_for_backward(y1, y2, key_padding_mask, seeds, *rotations, *weights)
    ctx.depth = len(rotations)
    ctx.options = options


def _backward(ctx, grad_y1, grad_y2):
    y1, y2, key_padding_mask, seeds, *rest = ctx.saved_tensors
    rotations, weights = rest[:ctx.depth], rest[ctx.depth:]
    grad_x1, grad_x2, grad_weights = torch.ops.reformer.reformer_stack_backward(
        grad_y1, grad_y2, y1, y2, weights, rotations, key_padding_mask, seeds, *ctx.options)
    # rotations (a list), key_padding_mask, seeds and the options get no gradient
    return ((grad_x1, grad_x2, grad_weights, [None] * ctx.depth, None, None)
            + (None,) * len(ctx.options))


torch.library.register_autograd("reformer::reformer_stack", _backward,
                                setup_context=_setup_context)

# Autocast (reformer_ext/_autocast.py): one opaque operator cannot follow autocast op by op, so it
# runs entirely in the region's dtype (its kernels accumulate in float32), the recompute likewise.
register_low_precision_autocast("reformer::reformer_stack", cast=("x1", "x2", "weights"))


def reformer_stack(x1: Tensor, x2: Tensor, weights: Sequence[Tensor], rotations: Sequence[Tensor],
                   seeds: Tensor, *, n_heads: int, key_padding_mask: Optional[Tensor] = None,
                   bucket_size: int = 64, causal: bool = False, n_chunks_before: int = 1,
                   n_chunks_after: int = 0, ff_chunk_size: int = 1024, activation: str = "gelu",
                   dropout_p: float = 0.0, layer_norm_eps: float = 1e-5) -> Tuple[Tensor, Tensor]:
    """Runs the reversible stack operator: ``(y1, y2)`` from the streams ``x1, x2 (B, L, d)``.

    ``weights``: ``WEIGHTS_PER_LAYER`` tensors per layer in the order of ``WEIGHT_NAMES`` (the
    nn.Linear / nn.LayerNorm layouts); ``rotations``: one ``(1 or H, d_head, n_hashes,
    n_buckets // 2)`` tensor per layer; ``seeds``: ``(depth, 3)`` int64 CPU tensor of dropout
    seeds (attention output, FFN hidden, FFN output; unused when ``dropout_p`` is 0).
    """
    return torch.ops.reformer.reformer_stack(
        x1, x2, list(weights), list(rotations), key_padding_mask, seeds, n_heads, bucket_size,
        causal, n_chunks_before, n_chunks_after, ff_chunk_size, activation, float(dropout_p),
        float(layer_norm_eps))

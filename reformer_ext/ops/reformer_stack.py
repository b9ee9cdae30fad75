"""The reversible Reformer stack operator family (docs/semantics.md §3):
``reformer::reformer_stack`` and its backward. Python-side registrations (fake kernels, autograd,
autocast) and the function the modules call.

``torch.ops.reformer.reformer_stack`` runs ``depth`` reversible layers

    y1 = x1 + F(x2),  F(x) = dropout(to_out(LSHAttention(to_qk(LN1(x)), to_v(LN1(x)))))
    y2 = x2 + G(y1),  G(x) = dropout(ChunkedFFN(LN2(x)))      (hidden dropout inside the FFN)

where the layers listed in ``local_layers`` use local attention (docs/semantics.md §9) instead:
their ``qk_weight`` holds the query weight stacked on the key weight, ``(2·H·Dh, d_model)``, and
their rotation tensor is empty.

with all weights as explicit inputs, and keeps only its outputs for the backward, which
rebuilds each layer's inputs from its outputs (csrc/reformer_stack.cpp). To autograd and to
torch.compile it is one node: memory does not grow with depth, and nothing in it breaks a graph.

Weights: the operator takes one flat list, :data:`LAYER_WEIGHT_NAMES` per layer in that order
(the order of ``LayerWeight`` in csrc/reformer_stack.h; the C++ argument checks name each weight
by the same names). :func:`reformer_stack` takes them BY NAME, one mapping per layer, and builds
the list, so two same-shaped weights cannot trade places unnoticed.

Random state is explicit too: one rotation tensor per layer and a ``(depth, 3)`` int64 CPU
tensor of dropout seeds (attention output, FFN hidden, FFN output; optionally a fourth column of
attention-probability seeds), so the recompute is exact.
"""

from __future__ import annotations

from typing import List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._autocast import register_low_precision_autocast
from ._checks import check_traced
from .lsh_attention import check_bucket_factors

__all__ = ["LAYER_WEIGHT_NAMES", "StackOptions", "WEIGHTS_PER_LAYER", "flatten_layer_weights",
           "reformer_stack"]

#: The names of one layer's weights, in the order the operator takes them (``LayerWeight`` in
#: csrc/reformer_stack.h): F's LayerNorm, the shared query/key and value projections (no bias),
#: the attention output projection, G's LayerNorm, the feed-forward's two linear layers.
LAYER_WEIGHT_NAMES = ("norm1_weight", "norm1_bias", "qk_weight", "v_weight", "out_weight",
                      "out_bias", "norm2_weight", "norm2_bias", "ffn_w1", "ffn_b1", "ffn_w2",
                      "ffn_b2")
WEIGHTS_PER_LAYER = len(LAYER_WEIGHT_NAMES)


class StackOptions(NamedTuple):
    """The stack operator's options, in its schema's order after ``seeds`` (all but the dropout
    rate, which depends on training mode): shared by every layer."""
    n_heads: int
    bucket_size: int = 64
    causal: bool = False
    n_chunks_before: int = 1
    n_chunks_after: int = 0
    ff_chunk_size: int = 1024
    activation: str = "gelu"
    layer_norm_eps: float = 1e-5
    #: () for n_buckets = 2 * rotations[l].shape[3]; else the even factors of a factorised
    #: bucket count, shared by every LSH layer (docs/semantics.md §1 step 1)
    bucket_factors: Tuple[int, ...] = ()
    #: increasing indices of the layers that use local attention (docs/semantics.md §9), and
    #: its window; causal is shared with the LSH layers
    local_layers: Tuple[int, ...] = ()
    local_chunk_length: int = 64
    local_chunks_before: int = 1
    local_chunks_after: int = 0


def _fake_check(x1, x2, weights, rotations, key_padding_mask, seeds, options):
    check_traced(isinstance(x1, Tensor) and x1.dim() == 3,
           "x1 must have shape (batch, length, d_model)")
    check_traced(isinstance(x2, Tensor) and x2.shape == x1.shape and x2.dtype == x1.dtype
           and x2.device == x1.device, "x2 must have the shape, dtype and device of x1")
    check_traced(len(weights) > 0 and len(weights) % WEIGHTS_PER_LAYER == 0,
           f"weights must hold {WEIGHTS_PER_LAYER} tensors per layer, got {len(weights)}")
    depth = len(weights) // WEIGHTS_PER_LAYER
    check_traced(len(rotations) == depth,
           f"rotations must hold one tensor per layer ({depth}), got {len(rotations)}")
    for i, w in enumerate(weights):
        check_traced(w.dtype == x1.dtype and w.device == x1.device,
               f"weights[{i}] must have the dtype and device of x1")
    local_layers = set(options[10]) if len(options) > 10 else set()
    for i, r in enumerate(rotations):
        check_traced(r.device == x1.device, f"rotations[{i}] must be on the device of x1 "
                                      f"({x1.device}), got {r.device}")
        if i in local_layers:
            check_traced(r.numel() == 0, f"rotations[{i}] must be an empty tensor: layer {i} "
                                         "uses local attention (local_layers)")
            continue
        if len(options) > 9 and r.dim() == 4:  # bucket_factors given (shared by LSH layers)
            check_bucket_factors(options[9], r.shape[3], f"rotations[{i}]")
    if key_padding_mask is not None:
        # a mask on another device (e.g. meta with CPU streams) is dispatched here: refuse it
        check_traced(key_padding_mask.dtype == torch.bool and key_padding_mask.dim() == 2
               and key_padding_mask.shape[0] == x1.shape[0]
               and key_padding_mask.shape[1] == x1.shape[1],
               "key_padding_mask must be a bool tensor of shape (batch, length) = "
               f"{tuple(x1.shape[:2])}, got {key_padding_mask.dtype} "
               f"{tuple(key_padding_mask.shape)}")
        check_traced(key_padding_mask.device == x1.device, "key_padding_mask must be on the device "
               f"of x1 ({x1.device}), got {key_padding_mask.device}")
    check_traced(seeds.dtype == torch.int64 and seeds.device.type == "cpu" and seeds.dim() == 2
           and seeds.shape[0] == depth and seeds.shape[1] in (3, 4),
           f"seeds must be a CPU int64 tensor of shape ({depth}, 3), or ({depth}, 4) with the "
           "attention-probability seeds")


@torch.library.register_fake("reformer::reformer_stack")
def _reformer_stack_fake(x1, x2, weights, rotations, key_padding_mask, seeds, *options):
    _fake_check(x1, x2, weights, rotations, key_padding_mask, seeds, options)
    return x1.new_empty(x1.shape), x1.new_empty(x1.shape)


@torch.library.register_fake("reformer::reformer_stack_backward")
def _reformer_stack_backward_fake(grad_y1, grad_y2, y1, y2, weights, rotations, key_padding_mask,
                                  seeds, *options):
    _fake_check(y1, y2, weights, rotations, key_padding_mask, seeds, options)
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
    # rotations (a list), key_padding_mask, seeds and the options get no gradient. The options'
    # None must mirror torch.library's view of the inputs: an int list is one leaf (None), but
    # an empty list is an empty list; and trailing options left at their schema defaults are
    # not inputs at all (the dispatcher drops them), hence the cut to the input count.
    grads = ((grad_x1, grad_x2, grad_weights, [None] * ctx.depth, None, None)
             + tuple([] if isinstance(o, (list, tuple)) and not o else None
                     for o in ctx.options))
    return grads[:len(ctx.needs_input_grad)]


torch.library.register_autograd("reformer::reformer_stack", _backward,
                                setup_context=_setup_context)

# Autocast (reformer_ext/ops/_autocast.py): one opaque operator cannot follow autocast op by op,
# so it runs entirely in the region's dtype (its kernels accumulate in float32), the recompute
# likewise.
register_low_precision_autocast("reformer::reformer_stack", cast=("x1", "x2", "weights"))


def flatten_layer_weights(layers: Sequence[Mapping[str, Tensor]]) -> List[Tensor]:
    """The operator's flat ``weights`` list from one ``{name: tensor}`` mapping per layer, with
    exactly the names of :data:`LAYER_WEIGHT_NAMES`."""
    weights = []
    for i, layer in enumerate(layers):
        missing = [name for name in LAYER_WEIGHT_NAMES if name not in layer]
        unexpected = sorted(name for name in layer if name not in LAYER_WEIGHT_NAMES)
        if missing or unexpected:
            raise ValueError(f"layer {i}'s weights must be named {', '.join(LAYER_WEIGHT_NAMES)}; "
                             f"missing: {missing or 'none'}, unexpected: {unexpected or 'none'}")
        weights += [layer[name] for name in LAYER_WEIGHT_NAMES]
    return weights


def reformer_stack(x1: Tensor, x2: Tensor, layers: Sequence[Mapping[str, Tensor]],
                   rotations: Sequence[Tensor], seeds: Tensor, options: StackOptions, *,
                   key_padding_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
                   lsh_attention_dropout_p: float = 0.0,
                   local_attention_dropout_p: float = 0.0) -> Tuple[Tensor, Tensor]:
    """Runs the reversible stack operator: ``(y1, y2)`` from the streams ``x1, x2 (B, L, d)``.

    ``layers``: one mapping per layer from each name of :data:`LAYER_WEIGHT_NAMES` to its tensor
    (the nn.Linear / nn.LayerNorm layouts; a local layer's ``qk_weight`` is the query weight
    stacked on the key weight); ``rotations``: one ``(1 or H, d_head, n_hashes, n_buckets //
    2)`` tensor per LSH layer (``sum(options.bucket_factors) // 2`` columns when factorised), an
    empty tensor per local layer; ``seeds``: ``(depth, 3)`` int64 CPU tensor of dropout seeds
    (attention output, FFN hidden, FFN output; unused when ``dropout_p`` is 0);
    ``lsh_attention_dropout_p`` / ``local_attention_dropout_p``: dropout on the attention
    probabilities of the LSH / local layers, with each layer's seed the fourth column of a
    ``(depth, 4)`` ``seeds``, or else derived from its attention-output seed
    (``seeded_random.derived_seed(seed, ATTENTION_PROBS_SALT)``).
    """
    o = options
    return torch.ops.reformer.reformer_stack(
        x1, x2, flatten_layer_weights(layers), list(rotations), key_padding_mask, seeds,
        o.n_heads, o.bucket_size, o.causal, o.n_chunks_before, o.n_chunks_after,
        o.ff_chunk_size, o.activation, float(dropout_p), float(o.layer_norm_eps),
        [int(f) for f in o.bucket_factors], [int(i) for i in o.local_layers],
        int(o.local_chunk_length), int(o.local_chunks_before), int(o.local_chunks_after),
        float(lsh_attention_dropout_p), float(local_attention_dropout_p))

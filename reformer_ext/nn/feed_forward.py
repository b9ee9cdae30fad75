"""reformer_ext.nn.ChunkedFeedForward: the position-wise feed-forward of a Transformer layer
computed chunk by chunk in forward and backward (docs/semantics.md §2)."""

from __future__ import annotations

import re
from typing import Optional

import torch
from torch import Tensor
from torch import nn as tnn

from ..ops._checks import check_bool, check_float_dtype, check_int, check_probability
from ..ops.chunked_ffn import ACTIVATIONS, chunked_feed_forward
from ..ops.seeded_random import draw_dropout_seed

__all__ = ["ChunkedFeedForward"]

_ACTIVATION_MODULES = {
    "gelu": lambda: tnn.GELU(),
    "gelu_tanh": lambda: tnn.GELU(approximate="tanh"),
    "relu": lambda: tnn.ReLU(),
    "silu": lambda: tnn.SiLU(),
}


def _activation_name(module: tnn.Module) -> Optional[str]:
    if isinstance(module, tnn.GELU):
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    if isinstance(module, tnn.ReLU):
        return "relu"
    if isinstance(module, tnn.SiLU):
        return "silu"
    return None


class ChunkedFeedForward(tnn.Module):
    """``y = w2(dropout(act(w1(x))))`` on ``x`` of shape ``(..., d_model)``, computed
    ``chunk_size`` positions at a time in forward and backward: neither pass ever holds the
    ``(N, d_ff)`` hidden activation (reformer_ext.chunked_feed_forward).

    Args:
        d_model: input and output width.
        d_ff: hidden width.
        chunk_size: positions per chunk (memory beyond inputs, outputs and gradients is about
            2 · chunk_size · d_ff elements in the backward). The result does not depend on it.
        activation: "gelu" (exact, nn.GELU()), "gelu_tanh" (nn.GELU(approximate="tanh")),
            "relu" or "silu".
        dropout: dropout rate on the hidden activation, applied in training mode only. Each
            training forward draws a fresh seed from torch's default CPU generator (so
            ``torch.manual_seed`` makes it reproducible) unless ``dropout_seed`` is passed to
            forward; the backward regenerates exactly the same mask.
        bias: whether w1 and w2 have biases.

    The seed is a 0-dim int64 CPU tensor drawn with a tensor op, so a compiled training forward
    with dropout stays one graph. The backward is not differentiable again (no double backward).

    Weights are two nn.Linear: ``w1 = Linear(d_model, d_ff)``, ``w2 = Linear(d_ff, d_model)``,
    with nn.Linear's default initialisation.

    Loading a plain feed-forward: the state_dict of
    ``nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))`` (optionally
    with an nn.Dropout before the second Linear) maps onto this module by renaming

        0.weight -> w1.weight    0.bias -> w1.bias
        2.weight -> w2.weight    2.bias -> w2.bias     (3.* when an nn.Dropout sits at index 2)

    ``load_state_dict`` does this renaming itself: when the keys under this module's prefix are
    exactly ``<i>.weight`` / ``<i>.bias`` for two indices i < j (and no ``w1.*``/``w2.*`` key
    is present), the lower index becomes w1 and the higher w2, so
    ``ff.load_state_dict(seq.state_dict())`` works, also nested in a larger model.
    ``ChunkedFeedForward.from_sequential(seq)`` builds the module from such a Sequential,
    reading the activation and the dropout rate off it; :meth:`sequential_state_dict` renames
    keys explicitly.
    """

    def __init__(self, d_model: int, d_ff: int, *, chunk_size: int = 1024,
                 activation: str = "gelu", dropout: float = 0.0, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        d_model, d_ff = check_int(d_model, "d_model", 1), check_int(d_ff, "d_ff", 1)
        chunk_size = check_int(chunk_size, "chunk_size", 1)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}, "
                             f"got {activation!r}")
        dropout = check_probability(dropout, "dropout")
        bias = check_bool(bias, "bias")
        check_float_dtype(dtype)
        factory = dict(device=device, dtype=dtype)
        self.d_model, self.d_ff = d_model, d_ff
        self.chunk_size = chunk_size
        self.activation = activation
        self.dropout = dropout
        self.w1 = tnn.Linear(d_model, d_ff, bias=bias, **factory)
        self.w2 = tnn.Linear(d_ff, d_model, bias=bias, **factory)
        self.register_load_state_dict_pre_hook(_rename_sequential_keys)

    def forward(self, x: Tensor, dropout_seed=None) -> Tensor:
        """x: ``(..., d_model)``. ``dropout_seed`` (an int or a 0-dim int64 CPU tensor) fixes
        the training-mode dropout mask (e.g. to replay a forward in a reversible layer); ignored
        in eval mode or when dropout is 0."""
        p = self.dropout if self.training else 0.0
        if p > 0.0 and dropout_seed is None:
            dropout_seed = draw_dropout_seed()
        return chunked_feed_forward(x, self.w1.weight, self.w1.bias, self.w2.weight,
                                    self.w2.bias, chunk_size=self.chunk_size,
                                    activation=self.activation, dropout=p,
                                    dropout_seed=dropout_seed)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_ff={self.d_ff}, chunk_size={self.chunk_size}, "
                f"activation={self.activation!r}, dropout={self.dropout}")

    @staticmethod
    def sequential_state_dict(state_dict: dict, prefix: str = "") -> dict:
        """A copy of ``state_dict`` with the keys of a plain Sequential feed-forward under
        ``prefix`` (``<i>.weight``/``<i>.bias`` for two indices) renamed to w1.* / w2.*."""
        out = dict(state_dict)
        _rename_in_place(out, prefix)
        return out

    @classmethod
    def from_sequential(cls, seq: tnn.Sequential, *, chunk_size: int = 1024) -> "ChunkedFeedForward":
        """Builds the module from ``nn.Sequential(Linear, <GELU|ReLU|SiLU>, [Dropout], Linear)``
        with its weights (copied), activation and dropout rate."""
        layers = list(seq)
        linears = [m for m in layers if isinstance(m, tnn.Linear)]
        acts = [_activation_name(m) for m in layers if not isinstance(m, (tnn.Linear, tnn.Dropout))]
        drops = [m.p for m in layers if isinstance(m, tnn.Dropout)]
        if (len(linears) != 2 or len(acts) != 1 or acts[0] is None or len(drops) > 1
                or not isinstance(layers[0], tnn.Linear) or not isinstance(layers[-1], tnn.Linear)):
            raise ValueError("from_sequential expects nn.Sequential(Linear, GELU/ReLU/SiLU, "
                             f"[Dropout], Linear), got {seq}")
        first, second = linears
        if first.out_features != second.in_features or first.in_features != second.out_features:
            raise ValueError(f"the two Linear layers do not form a feed-forward: {first}, {second}")
        if (first.bias is None) != (second.bias is None):
            raise ValueError("both Linear layers must have a bias, or neither")
        module = cls(first.in_features, first.out_features, chunk_size=chunk_size,
                     activation=acts[0], dropout=drops[0] if drops else 0.0,
                     bias=first.bias is not None, device=first.weight.device,
                     dtype=first.weight.dtype)
        with torch.no_grad():
            module.w1.load_state_dict(first.state_dict())
            module.w2.load_state_dict(second.state_dict())
        return module

    def to_sequential(self) -> tnn.Sequential:
        """The equivalent plain ``nn.Sequential(Linear, act, [Dropout], Linear)`` (copies)."""
        layers = [tnn.Linear(self.d_model, self.d_ff, bias=self.w1.bias is not None),
                  _ACTIVATION_MODULES[self.activation]()]
        if self.dropout > 0:
            layers.append(tnn.Dropout(self.dropout))
        layers.append(tnn.Linear(self.d_ff, self.d_model, bias=self.w2.bias is not None))
        seq = tnn.Sequential(*layers).to(device=self.w1.weight.device, dtype=self.w1.weight.dtype)
        with torch.no_grad():
            seq[0].load_state_dict(self.w1.state_dict())
            seq[-1].load_state_dict(self.w2.state_dict())
        return seq


def _rename_in_place(state_dict: dict, prefix: str) -> None:
    if any(k.startswith((prefix + "w1.", prefix + "w2.")) for k in state_dict):
        return
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(weight|bias)")
    found: dict[int, list[tuple[str, str]]] = {}
    for key in list(state_dict):
        m = pattern.fullmatch(key)
        if m:
            found.setdefault(int(m.group(1)), []).append((key, m.group(2)))
    if len(found) != 2:
        return
    for index, name in zip(sorted(found), ("w1", "w2")):
        for key, param in found[index]:
            state_dict[f"{prefix}{name}.{param}"] = state_dict.pop(key)


def _rename_sequential_keys(module, state_dict, prefix, local_metadata, strict, missing_keys,
                            unexpected_keys, error_msgs):
    _rename_in_place(state_dict, prefix)

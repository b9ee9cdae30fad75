"""reformer_ext.nn.AxialPositionEmbedding: the Reformer's axial position encodings, with the
parameter layout and the encodings of HuggingFace's ``AxialPositionEmbeddings``
(docs/semantics.md §4, "Axial position embeddings")."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn as tnn

from ..ops._checks import (check_float_dtype, check_int_tuple, check_nonnegative,
                           check_probability, check_size)

__all__ = ["AxialPositionEmbedding"]


class AxialPositionEmbedding(tnn.Module):
    """Learned position encodings for ``max_len = prod(axial_shape)`` positions from one small
    table per axis.

    Position ``p`` is written in the mixed radix of ``axial_shape = (n_1, ..., n_k)``, row-major
    (the last axis varies fastest): ``p = sum_j i_j · (n_{j+1} · ... · n_k)`` with
    ``0 <= i_j < n_j``; its encoding is the concatenation ``[E_1[i_1], ..., E_k[i_k]]`` of
    ``d_model = sum(axial_dims)`` features, where ``E_j`` is axis j's ``(n_j, d_j)`` table.
    ``k · n · d`` parameters stand for a ``max_len × d_model`` table (e.g. 128 + 512 rows of
    widths 256 + 768 for enwik8's 65536 positions of width 1024).

    Args:
        axial_shape: ``(n_1, ..., n_k)``, each >= 1 (HF ``config.axial_pos_shape``).
        axial_dims: ``(d_1, ..., d_k)``, one width per axis, each >= 1
            (HF ``config.axial_pos_embds_dim``).
        dropout: training-mode dropout rate with HF's semantics (below).
        init_std: the tables are initialised from N(0, init_std²); 1.0 is HF's
            ``config.axial_norm_std`` default.

    Parameters: ``weights``, an nn.ParameterList holding ``E_j`` as ``weights.<j-1>`` in HF's
    shape, ``n_j`` at position j-1 of k ones followed by ``d_j``: for two axes ``(n_1, 1, d_1)``
    and ``(1, n_2, d_2)``. HF's ``embeddings.position_embeddings.weights.<i>`` therefore loads
    as ``weights.<i>`` unchanged (same name, same shape).

    ``forward(length, *, batch_size=1) -> (batch_size, length, d_model)``: the encodings of
    positions ``0 .. length-1`` for any ``1 <= length <= max_len``, in training and eval mode
    alike (HF requires ``length == max_len`` in training). Without dropout the batch rows are
    one tensor expanded (no copy). HF's eval mode gathers by ``position_ids``; here that is
    ``emb(emb.max_len)[0][position_ids]``.

    Dropout (training mode, ``dropout > 0``), as HF's ``dropout2d`` over the transposed
    ``(batch, n_1, n_2, ..., d_model)`` tensor of encodings: for every batch row and every index
    along dimension 2 of that tensor, one Bernoulli(1 - dropout) draw keeps (scaled by
    ``1 / (1 - dropout)``) or zeroes everything that shares them. With two or more axes that is
    every feature of every position with that second-axis index ``i_2`` (whole rows of
    positions: ``n_1 · n_3 · ... · n_k`` of them); with one axis it is one feature at every
    position. The draws are ``batch_size × n_2`` (or ``batch_size × d_model``) values of
    ``bernoulli_`` in the parameters' dtype, in HF's order: the same generator state gives
    HF's mask. For ``length < max_len`` the encodings are those positions of the full
    dropped-out table.
    """

    def __init__(self, axial_shape, axial_dims, *, dropout: float = 0.0, init_std: float = 1.0,
                 device=None, dtype=None):
        super().__init__()
        axial_shape = check_int_tuple(axial_shape, "axial_shape", 1)
        axial_dims = check_int_tuple(axial_dims, "axial_dims", 1)
        if len(axial_dims) != len(axial_shape):
            raise ValueError(f"axial_dims must have one width per axis of axial_shape "
                             f"{axial_shape} ({len(axial_shape)}), got {axial_dims} "
                             f"({len(axial_dims)})")
        dropout = check_probability(dropout, "dropout")
        init_std = check_nonnegative(init_std, "init_std")
        check_float_dtype(dtype)
        self.axial_shape, self.axial_dims = axial_shape, axial_dims
        self.d_model = sum(axial_dims)
        self.max_len = math.prod(axial_shape)
        self.dropout = dropout
        self.weights = tnn.ParameterList()
        for axis, (size, width) in enumerate(zip(axial_shape, axial_dims)):
            shape = [1] * len(axial_shape) + [width]
            shape[axis] = size
            weight = tnn.Parameter(torch.empty(shape, device=device, dtype=dtype))
            tnn.init.normal_(weight, std=init_std)
            self.weights.append(weight)

    def _axis_indices(self, positions: Tensor):
        """Each position's index along every axis (row-major mixed radix)."""
        indices, stride = [], self.max_len
        for size in self.axial_shape:
            stride //= size
            indices.append((positions // stride) % size)
        return indices

    def forward(self, length, *, batch_size=1) -> Tensor:
        length = check_size(length, "length")
        batch_size = check_size(batch_size, "batch_size")
        if length > self.max_len:
            raise ValueError(f"length must be <= prod(axial_shape) = {self.max_len} (the axial "
                             f"shape {self.axial_shape} has no position beyond it), got {length}")
        first = self.weights[0]
        indices = self._axis_indices(torch.arange(length, device=first.device))
        # each table viewed as (n_j, d_j): a lookup per axis, concatenated along features
        encodings = torch.cat([F.embedding(index, weight.reshape(size, width))
                               for index, weight, size, width
                               in zip(indices, self.weights, self.axial_shape, self.axial_dims)],
                              dim=-1)
        if not (self.training and self.dropout > 0.0):
            return encodings.unsqueeze(0).expand(batch_size, -1, -1)
        # HF's dropout2d drops along dimension 2 of (batch, n_1, n_2, ..., d_model)
        one_axis = len(self.axial_shape) == 1
        dropped_size = self.d_model if one_axis else self.axial_shape[1]
        keep = encodings.new_empty((batch_size, dropped_size))
        keep.bernoulli_(1.0 - self.dropout).div_(1.0 - self.dropout)
        if one_axis:
            return encodings.unsqueeze(0) * keep.unsqueeze(1)
        return encodings.unsqueeze(0) * keep[:, indices[1]].unsqueeze(-1)

    def extra_repr(self) -> str:
        return (f"axial_shape={self.axial_shape}, axial_dims={self.axial_dims}, "
                f"dropout={self.dropout}")

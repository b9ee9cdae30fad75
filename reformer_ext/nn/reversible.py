"""reformer_ext.nn.ReversibleSequence: a stack of reversible residual blocks whose activations
are recomputed in the backward pass instead of being stored (docs/semantics.md §3).

One block with sub-layers f and g maps two streams ``(x1, x2)`` to

    y1 = x1 + f(x2),   y2 = x2 + g(y1)

and is inverted by ``x2 = y2 - g(y1)``, ``x1 = y1 - f(x2)``. A stack keeps only its final
outputs (plus each sub-layer's random state); the backward walks the blocks in reverse,
rebuilds each block's inputs from its outputs, recomputes f and g with autograd on and
backpropagates through them. Activation memory is then that of ONE block, whatever the depth.

How it is built: one ``torch.autograd.Function`` per block, chained in the forward. Only the
last one saves tensors (the final outputs). In the backward, autograd calls them last to first
(each block's outputs feed only the next block); each rebuilds its inputs and hands them to
the block below through a small object shared by the chain. Every block's Function takes the
block's parameters as explicit inputs and returns their gradients (computed with
``torch.autograd.grad``), so:

- autograd delivers each parameter's gradient exactly once, to ``.grad`` or to
  ``torch.autograd.grad(loss, params)`` alike;
- DistributedDataParallel's hooks fire once per parameter, block by block as the backward
  proceeds (its gradient buckets overlap with the rest of the backward, as without recompute);
- parameter gradients are not held until the end of the backward: memory stays flat in depth.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch import nn as tnn
from torch.autograd.function import once_differentiable

from ..ops._checks import check_bool, describe

__all__ = ["ReversibleBlock", "ReversibleSequence"]


class ReversibleBlock(tnn.Module):
    """One reversible residual block: ``y1 = x1 + f(x2)``, ``y2 = x2 + g(y1)``.

    ``f`` and ``g`` are any modules mapping a tensor to a tensor of the same shape.
    ``forward(x1, x2, f_kwargs=None, g_kwargs=None)`` is the plain (non-recomputing) forward;
    :meth:`inverse` rebuilds the inputs from the outputs.
    """

    def __init__(self, f: tnn.Module, g: tnn.Module):
        super().__init__()
        self.f = f
        self.g = g

    def forward(self, x1: Tensor, x2: Tensor, f_kwargs: Optional[dict] = None,
                g_kwargs: Optional[dict] = None) -> Tuple[Tensor, Tensor]:
        y1 = x1 + self.f(x2, **(f_kwargs or {}))
        y2 = x2 + self.g(y1, **(g_kwargs or {}))
        return y1, y2

    @torch.no_grad()
    def inverse(self, y1: Tensor, y2: Tensor, f_kwargs: Optional[dict] = None,
                g_kwargs: Optional[dict] = None) -> Tuple[Tensor, Tensor]:
        """``(x1, x2)`` from ``(y1, y2)``. f and g must compute what they computed in the forward
        (same random state: eval mode, or see ReversibleSequence)."""
        x2 = y2 - self.g(y1, **(g_kwargs or {}))
        x1 = y1 - self.f(x2, **(f_kwargs or {}))
        return x1, x2


# ---------------------------------------------------------------------------------------------
# Random state and autocast state, recorded in the forward and replayed in the backward.


def _cuda_devices(tensors: Iterable[Tensor]) -> List[int]:
    devices = {t.device.index if t.device.index is not None else torch.cuda.current_device()
               for t in tensors if isinstance(t, Tensor) and t.device.type == "cuda"}
    return sorted(devices)


class _RngState:
    """The CPU generator's state and that of each listed CUDA device's default generator."""

    __slots__ = ("cpu", "cuda")

    def __init__(self, cuda_devices: Sequence[int]):
        self.cpu = torch.get_rng_state()
        self.cuda = [(d, torch.cuda.get_rng_state(d)) for d in cuda_devices]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for device, state in self.cuda:
            torch.cuda.set_rng_state(state, device)


@contextlib.contextmanager
def _replayed_rng(state: Optional[_RngState]):
    """Runs the body with the generators set to ``state``, then puts back the states they had
    before (the caller's random stream is unchanged by the replay)."""
    if state is None:
        yield
        return
    outer = _RngState([d for d, _ in state.cuda])
    state.restore()
    try:
        yield
    finally:
        outer.restore()


def _autocast_state(device_types: Iterable[str]) -> list:
    state = []
    for device_type in sorted(set(device_types) | {"cpu"}):
        try:
            state.append((device_type, torch.is_autocast_enabled(device_type),
                          torch.get_autocast_dtype(device_type)))
        except RuntimeError:  # a device type without autocast (e.g. meta)
            pass
    return state


def _autocast_context(state: list, cache_enabled: bool) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for device_type, enabled, dtype in state:
        stack.enter_context(torch.autocast(device_type, dtype=dtype, enabled=enabled,
                                           cache_enabled=cache_enabled))
    return stack


# ---------------------------------------------------------------------------------------------
# The recomputing autograd function (one per block, chained).


class _Chain:
    """Shared by the Functions of one forward: block i's backward leaves its rebuilt inputs
    here for block i - 1, whose outputs they are."""

    __slots__ = ("inputs",)

    def __init__(self):
        self.inputs: dict = {}


class _ReversibleBlockFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x1, x2, block, chain, index, is_last, f_kwargs, g_kwargs, f_idx, g_idx,
                rng_devices, device_types, *params):
        ctx.block, ctx.chain, ctx.index, ctx.is_last = block, chain, index, is_last
        ctx.f_kwargs, ctx.g_kwargs, ctx.f_idx, ctx.g_idx = f_kwargs, g_kwargs, f_idx, g_idx
        ctx.params = params
        ctx.autocast = _autocast_state(device_types)
        ctx.autocast_cache = torch.is_autocast_cache_enabled()
        preserve = rng_devices is not None
        ctx.rng_f = _RngState(rng_devices) if preserve else None
        y1 = x1 + block.f(x2, **f_kwargs)
        ctx.rng_g = _RngState(rng_devices) if preserve else None
        y2 = x2 + block.g(y1, **g_kwargs)
        if is_last:
            ctx.save_for_backward(y1, y2)
        return y1, y2

    @staticmethod
    @once_differentiable
    def backward(ctx, dy1, dy2):
        chain = ctx.chain
        if ctx.is_last:
            y1, y2 = ctx.saved_tensors
        else:
            entry = chain.inputs.pop(ctx.index + 1, None)
            if entry is None:
                raise RuntimeError(
                    "ReversibleSequence: the outputs of block "
                    f"{ctx.index} were not rebuilt by block {ctx.index + 1}'s backward (the "
                    "intermediate streams of a reversible stack can only be reached through "
                    "the final outputs)")
            y1, y2 = entry
        block, params = ctx.block, ctx.params
        grads: List[Optional[Tensor]] = [None] * len(params)

        def accumulate(indices, values):
            for i, value in zip(indices, values):
                if value is not None:
                    grads[i] = value if grads[i] is None else grads[i] + value

        with torch.enable_grad(), _autocast_context(ctx.autocast, ctx.autocast_cache):
            # g: y2 = x2 + g(y1)
            y1_leaf = y1.detach().requires_grad_(True)
            with _replayed_rng(ctx.rng_g):
                gy1 = block.g(y1_leaf, **ctx.g_kwargs)
            g_params = [params[i] for i in ctx.g_idx]
            if gy1.requires_grad:
                out = torch.autograd.grad(gy1, [y1_leaf, *g_params], dy2, allow_unused=True)
                if out[0] is not None:
                    dy1 = dy1 + out[0]
                accumulate(ctx.g_idx, out[1:])
            x2 = y2 - gy1.detach()
            del gy1, y1_leaf, y2
            # f: y1 = x1 + f(x2)
            x2_leaf = x2.detach().requires_grad_(True)
            with _replayed_rng(ctx.rng_f):
                fx2 = block.f(x2_leaf, **ctx.f_kwargs)
            f_params = [params[i] for i in ctx.f_idx]
            dx2 = dy2
            if fx2.requires_grad:
                out = torch.autograd.grad(fx2, [x2_leaf, *f_params], dy1, allow_unused=True)
                if out[0] is not None:
                    dx2 = dy2 + out[0]
                accumulate(ctx.f_idx, out[1:])
            x1 = y1 - fx2.detach()
            del fx2, x2_leaf
        if ctx.index > 0:
            chain.inputs[ctx.index] = (x1, x2)
        return (dy1, dx2, None, None, None, None, None, None, None, None, None, None, *grads)


# ---------------------------------------------------------------------------------------------


def _as_block(item) -> ReversibleBlock:
    if isinstance(item, ReversibleBlock):
        return item
    if isinstance(item, (tuple, list, tnn.ModuleList)) and len(item) == 2:
        f, g = item
        if isinstance(f, tnn.Module) and isinstance(g, tnn.Module):
            return ReversibleBlock(f, g)
    raise TypeError("ReversibleSequence expects ReversibleBlock(f, g) or (f, g) pairs of "
                    f"nn.Modules, got {type(item).__name__}")


def _check_kwargs(kwargs: dict, name: str) -> None:
    for key, value in kwargs.items():
        if isinstance(value, Tensor) and value.requires_grad:
            raise ValueError(f"ReversibleSequence: {name} argument {key!r} requires grad; "
                             "tensors passed as keyword arguments are treated as constants in "
                             "the reversible backward (detach it, or use reversible=False)")


class ReversibleSequence(tnn.Module):
    """A stack of reversible residual blocks (docs/semantics.md §3) that recomputes activations in
    the backward pass.

    Args:
        blocks: ``(f, g)`` module pairs (or :class:`ReversibleBlock`); f and g map a tensor to a
            tensor of its shape. They may hold any parameters (shared ones too) and use
            randomness (dropout, fresh LSH rotations): see "random state".
        reversible: ``False`` runs the same blocks with ordinary autograd (everything stored);
            the result is the same up to rounding. Also settable as an attribute.
        preserve_rng_state: record the random state before every f and g in the forward and
            replay it in the recompute (default True; turn off only for deterministic blocks).

    ``forward(x1, x2, *, g_kwargs=None, **f_kwargs) -> (y1, y2)``: ``f_kwargs`` (e.g.
    ``key_padding_mask=...``) are passed to every f, the dict ``g_kwargs`` to every g. Keyword
    tensors are constants (no gradient reaches them; one that requires grad is an error in
    reversible mode).

    Random state: before each f and each g, the forward records the CPU generator's state and,
    when an input or a parameter is on CUDA, the state of the default generator of every CUDA
    device involved. The backward's recompute runs under those states and then puts the
    generators back as it found them: dropout masks and freshly drawn rotations are identical
    in the recompute, and the random stream the caller sees after ``backward()`` is the one it
    would see without recomputation (the backward consumes none of it). Autocast state is
    likewise recorded and restored for the recompute. Other generators (a user's
    ``torch.Generator``) are not replayed.

    Gradients reach: x1, x2 and every parameter of the blocks that requires grad, each exactly
    once (the parameters are explicit inputs of the autograd functions: this works with
    DistributedDataParallel, ``torch.autograd.grad`` and gradient accumulation). Not supported in
    reversible mode: double backward (``create_graph=True``), tensors captured by f or g that
    require grad other than their own parameters, and f or g that modify their input in place.
    Gradients may differ from ``reversible=False`` by the rounding of the reconstruction
    ``x2 = y2 - g(y1)``, ``x1 = y1 - f(x2)``; with LSH attention in low precision a rounding
    difference can, rarely, move a position to another bucket in the recompute.
    In ``torch.no_grad()`` (or when nothing requires grad) the blocks simply run in order.
    """

    def __init__(self, blocks, *, reversible: bool = True, preserve_rng_state: bool = True):
        super().__init__()
        if isinstance(blocks, Tensor) or not isinstance(blocks, Iterable):
            raise TypeError("blocks must be an iterable of ReversibleBlock(f, g) or (f, g) pairs "
                            f"of nn.Modules, got {type(blocks).__name__}")
        self.blocks = tnn.ModuleList([_as_block(b) for b in blocks])
        self.reversible = check_bool(reversible, "reversible")
        self.preserve_rng_state = check_bool(preserve_rng_state, "preserve_rng_state")

    def __len__(self) -> int:
        return len(self.blocks)

    def forward(self, x1: Tensor, x2: Tensor, *, g_kwargs: Optional[dict] = None,
                **f_kwargs) -> Tuple[Tensor, Tensor]:
        if not isinstance(x1, Tensor) or not isinstance(x2, Tensor):
            raise TypeError("x1 and x2 must be tensors, got "
                            f"{describe(x1)} and {describe(x2)}")
        if x1.shape != x2.shape:
            raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and "
                             f"{tuple(x2.shape)}")
        if x2.dtype != x1.dtype or x2.device != x1.device:
            raise ValueError(f"x2 must have the dtype and device of x1 ({x1.dtype} on "
                             f"{x1.device}), got {x2.dtype} on {x2.device}")
        if g_kwargs is not None and not isinstance(g_kwargs, dict):
            raise TypeError(f"g_kwargs must be a dict of keyword arguments for g, or None, got "
                            f"{type(g_kwargs).__name__}")
        g_kwargs = dict(g_kwargs or {})
        if not self.reversible or not torch.is_grad_enabled() or not self._needs_grad(x1, x2):
            for block in self.blocks:
                x1, x2 = block(x1, x2, f_kwargs, g_kwargs)
            return x1, x2
        _check_kwargs(f_kwargs, "f")
        _check_kwargs(g_kwargs, "g")
        chain = _Chain()
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            params, f_idx, g_idx = _block_params(block)
            tensors = [x1, x2, *params]
            rng_devices = _cuda_devices(tensors) if self.preserve_rng_state else None
            device_types = {t.device.type for t in tensors}
            x1, x2 = _ReversibleBlockFunction.apply(
                x1, x2, block, chain, index, index == last, f_kwargs, g_kwargs, f_idx, g_idx,
                rng_devices, device_types, *params)
        return x1, x2

    def _needs_grad(self, x1: Tensor, x2: Tensor) -> bool:
        return x1.requires_grad or x2.requires_grad or any(
            p.requires_grad for p in self.parameters())

    def extra_repr(self) -> str:
        return f"reversible={self.reversible}, preserve_rng_state={self.preserve_rng_state}"


def _block_params(block: ReversibleBlock):
    """The block's parameters that require grad (each once), and the positions in that list of
    f's and of g's parameters."""
    params: List[Tensor] = []
    position: dict = {}
    indices = []
    for sub in (block.f, block.g):
        idx = []
        for p in sub.parameters():
            if not p.requires_grad:
                continue
            if id(p) not in position:
                position[id(p)] = len(params)
                params.append(p)
            idx.append(position[id(p)])
        indices.append(tuple(idx))
    return params, indices[0], indices[1]

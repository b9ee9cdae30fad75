"""FSDP2 (``torch.distributed.fsdp.fully_shard``) per-layer sharding of :class:`Reformer` and
:class:`ReformerLM`, with the reversible property kept (docs/architecture.md, "Sharded
training").

The fused stack operator (``torch.ops.reformer.reformer_stack``) takes every layer's weights at
once and never calls the layer modules, so FSDP's hooks, which gather a module's weights around
that module's forward and backward, cannot fire for it. Under FSDP the Reformer therefore runs a
module-level path instead:

- :func:`shard_reformer` applies ``fully_shard`` to each layer's two branches (``layers[i].f``,
  the attention branch, and ``layers[i].g``, the feed-forward branch), then to the model (the
  root: embeddings, final norm, head).
- ``Reformer.forward_streams`` asks :func:`sharded_streams` first; it returns None (the
  unchanged fused or plain path) unless the layers are FSDP-sharded.
- ``reversible=True``: one autograd Function over the stack (:class:`_ShardedReversible`). Its
  forward calls each branch module under ``no_grad`` (FSDP gathers the branch's weights, runs
  it, reshards) and keeps only the final streams. Its backward walks the layers in reverse and,
  per branch, calls the module again with grad on (FSDP gathers again; its post-backward hook
  sits on the recompute's input), backpropagates into the gathered weights with a nested
  ``torch.autograd.backward`` (FSDP reduce-scatters the gradient into the shard and reshards),
  and rebuilds the layer's inputs ``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``. Weights are gathered
  one branch at a time (plus FSDP's one-branch backward prefetch); activations are those of one
  branch, whatever the depth.
- ``reversible=False``: the layers run as ordinary FSDP modules (autograd stores everything).

Parameters are NOT explicit inputs of the autograd Function (unlike
:class:`reformer_ext.nn.ReversibleSequence`): FSDP swaps each module's parameters between the
sharded DTensor and a gathered tensor around every call, and expects the gradient in the gathered
tensor's ``.grad`` (from which its post-backward hook reduce-scatters). A Function holding the
sharded parameters as inputs would differentiate tensors the recompute never uses.

Dropout across processes: every mask is a pure function of (seed, element index), element
``e`` of a branch output or FFN hidden activation getting the word ``mix64(seed + (e + 1)·γ)``
(reformer_ext.ops.seeded_random). Shifting the element index by ``k`` is the same as shifting the
seed by ``k·γ``, so a process that holds samples ``b0 .. b0 + b - 1`` of a global batch gets the
very masks of the whole-batch run with seeds shifted by ``b0·L·width·γ``:
:func:`set_dropout_sample_offset` sets ``b0`` (the fused operator and both module paths apply
it). Every process must draw the same seeds and rotations (same ``torch.manual_seed``).

What this does not cover: a process whose samples are not one contiguous run of the global
batch (an interleaving sampler: rank r taking samples r, r + N, ...) gets the masks of the
batch reordered rank by rank (a valid whole-batch run, of the permuted batch); unequal slices
need the loss weighted by slice size (FSDP and DDP average the gradients over processes); the
axial position embedding's own dropout (``pos_emb.dropout``, 0 by default) draws from torch's
generator and differs per process. Attention-probability dropout (``lsh_attention_dropout``,
``local_attention_dropout``) is covered: its per-layer seed is a hash of the attention-output
seed, which no shift carries through, so with an offset the seeds get a fourth column holding it,
hashed from the unshifted seed and then shifted by the attention dropout's own elements per
sample (:func:`offset_dropout_seeds`).
"""

from __future__ import annotations

import os
import warnings
from typing import List, Optional

import torch
from torch import Tensor
from torch import nn as tnn

from ..ops.seeded_random import ATTENTION_PROBS_SALT, GAMMA, as_int64, mix64
from .reversible import _autocast_context, _autocast_state

__all__ = ["is_fsdp_module", "load_sharded_checkpoint", "save_sharded_checkpoint",
           "set_dropout_sample_offset", "shard_reformer", "sharded_streams"]

# FSDP warns when a wrapped module returns a view (an in-place op on it would skip its hook);
# the branches' outputs are only ever added out of place, here and in the Reformer.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPPreNorm(Attention|"
                        r"FeedForward)\) returned a view tensor")

_HOW = ("use reformer_ext.nn.shard_reformer(model) (fully_shard on every layers[i].f and "
        "layers[i].g, then on the model as the root)")


def _fsdp_module_class():
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed
        return None
    return FSDPModule


def is_fsdp_module(module: tnn.Module) -> bool:
    """Whether ``fully_shard`` has been applied to ``module``."""
    cls = _fsdp_module_class()
    return cls is not None and isinstance(module, cls)


# ---------------------------------------------------------------------------------------------
# Which modules FSDP manages


def _fsdp_states():
    """Every live FSDP state (FSDP2 keeps a module -> state registry)."""
    try:
        from torch.distributed._composable_state import _module_state_mapping
        from torch.distributed.fsdp._fully_shard._fsdp_state import FSDPState
    except ImportError:
        return []
    states = []
    for ref in list(_module_state_mapping.values()):
        state = ref()
        if isinstance(state, FSDPState) and state not in states:
            states.append(state)
    return states


def _owners(reformer) -> dict:
    """``id(branch module) -> FSDP state`` for every layer branch (f or g) one of whose
    parameters some FSDP state manages (the state of the branch itself or of a module above)."""
    branches = {}
    for block in reformer.layers:
        for branch in (block.f, block.g):
            for sub in branch.modules():
                branches[id(sub)] = branch
    owners = {}
    for state in _fsdp_states():
        for group in getattr(state, "_fsdp_param_groups", ()):
            for fsdp_param in group.fsdp_params:
                module = fsdp_param._module_info.module
                branch = branches.get(id(module))
                if branch is not None:
                    owners.setdefault(id(branch), state)
    return owners


def _layout(reformer) -> Optional[str]:
    """None: no layer weight is FSDP-managed (the fused or plain path). "branches": every
    ``layers[i].f`` and ``layers[i].g`` is its own FSDP unit. "enclosing": the layers' weights
    belong to FSDP units above the branches (fully_shard on the blocks or the whole model).
    Mixed layouts raise."""
    owners = _owners(reformer)
    if not owners:
        return None
    branch_units, unmanaged, enclosing = [], [], []
    for i, block in enumerate(reformer.layers):
        for name, branch in (("f", block.f), ("g", block.g)):
            state = owners.get(id(branch))
            where = f"layers[{i}].{name}"
            if state is None:
                unmanaged.append(where)
            elif is_fsdp_module(branch) and branch in getattr(state, "_modules", ()):
                branch_units.append(where)
            else:
                enclosing.append(where)
    if unmanaged:
        raise RuntimeError(
            f"Reformer: some layers are FSDP-sharded and others are not ({_listing(unmanaged)} "
            f"not sharded, {len(branch_units) + len(enclosing)} branches sharded): {_HOW}")
    if branch_units and enclosing:
        raise RuntimeError(
            f"Reformer: mixed FSDP sharding ({_listing(branch_units)} sharded per branch, "
            f"{_listing(enclosing)} by an enclosing module): {_HOW}")
    return "branches" if branch_units else "enclosing"


def _listing(names: List[str]) -> str:
    return ", ".join(names) if len(names) <= 4 else ", ".join(names[:3]) + f", ... ({len(names)})"


def _check_root(reformer) -> None:
    state = reformer.layers[0].f._get_fsdp_state()
    if state._is_root is not False:
        raise RuntimeError(
            "Reformer: the layer branches are FSDP-sharded but the model is not: apply "
            "fully_shard to the model as well (the root), after the layers: " + _HOW)


# ---------------------------------------------------------------------------------------------
# The hook of Reformer.forward_streams


def sharded_streams(reformer, x: Tensor, key_padding_mask: Optional[Tensor], rotations, seeds,
                    p: float):
    """The sharded path of ``Reformer.forward_streams``: ``(y1, y2)`` when the layers are
    FSDP-sharded per branch, None for the unchanged path (no FSDP on the layers, or torch.compile
    tracing). Raises for a sharding the Reformer cannot honour. ``p`` is not used: the branch
    modules apply their own dropout rate in training mode."""
    if torch.compiler.is_compiling():
        return None
    layout = _layout(reformer)
    if layout is None:
        return None
    if layout == "enclosing":
        if reformer.reversible:
            raise RuntimeError(
                "Reformer(reversible=True) under FSDP needs the layers sharded per branch: the "
                "layers' weights belong to an enclosing fully_shard unit (the whole model or "
                "layers[i]), which would gather every layer's weights at once for the fused "
                "stack operator: " + _HOW)
        # plain FSDP around the ordinary modules, through the blocks' __call__ (their hooks
        # gather the weights of fully_shard(layers[i]))
        return _block_streams(reformer, x, key_padding_mask, rotations, seeds)
    _check_root(reformer)
    if not reformer.reversible or not torch.is_grad_enabled():
        return plain_streams(reformer, x, key_padding_mask, rotations, seeds)
    anchor = torch.empty(0, dtype=x.dtype, device=x.device, requires_grad=True)
    return _ShardedReversible.apply(x, x, anchor, reformer, key_padding_mask, list(rotations),
                                    seeds)


def branch_kwargs(key_padding_mask, rotations, seeds, i):
    """Layer i's keyword arguments for its f (attention) and g (feed-forward) branches."""
    s = seeds[i]
    return (dict(key_padding_mask=key_padding_mask, rotations=rotations[i], dropout_seed=s[0],
                 attention_dropout_seed=s[3] if len(s) > 3 else None),
            dict(hidden_seed=s[1], dropout_seed=s[2]))


def plain_streams(reformer, x, key_padding_mask, rotations, seeds):
    """The layers one after another with ordinary autograd (reversible=False, or no gradient):
    the streams (y1, y2)."""
    x1 = x2 = x
    for i, block in enumerate(reformer.layers):
        fk, gk = branch_kwargs(key_padding_mask, rotations, seeds, i)
        x1 = x1 + block.f(x2, **fk)
        x2 = x2 + block.g(x1, **gk)
    return x1, x2


def _block_streams(reformer, x, key_padding_mask, rotations, seeds):
    x1 = x2 = x
    for i, block in enumerate(reformer.layers):
        x1, x2 = block(x1, x2, *branch_kwargs(key_padding_mask, rotations, seeds, i))
    return x1, x2


class _ShardedReversible(torch.autograd.Function):
    """The reversible stack over FSDP-wrapped branch modules (see the module docstring)."""

    @staticmethod
    def forward(ctx, x1, x2, anchor, reformer, key_padding_mask, rotations, seeds):
        ctx.reformer, ctx.kpm, ctx.rotations, ctx.seeds = reformer, key_padding_mask, rotations, seeds
        ctx.autocast = _autocast_state({x1.device.type})
        ctx.autocast_cache = torch.is_autocast_cache_enabled()
        for i, block in enumerate(reformer.layers):
            fk, gk = branch_kwargs(key_padding_mask, rotations, seeds, i)
            x1 = x1 + block.f(x2, **fk)
            x2 = x2 + block.g(x1, **gk)
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy1, dy2):
        y1, y2 = ctx.saved_tensors
        layers = ctx.reformer.layers
        with torch.enable_grad(), _autocast_context(ctx.autocast, ctx.autocast_cache):
            for i in reversed(range(len(layers))):
                block = layers[i]
                fk, gk = branch_kwargs(ctx.kpm, ctx.rotations, ctx.seeds, i)
                # G: y2 = x2 + G(y1). Calling the module gathers its weights (FSDP pre-forward);
                # the backward accumulates into the gathered weights' .grad, and FSDP's
                # post-backward hook on the recompute's input reduce-scatters and reshards.
                y1_leaf = y1.detach().requires_grad_(True)
                gy1 = block.g(y1_leaf, **gk)
                torch.autograd.backward(gy1, dy2)
                dy1 = dy1 + y1_leaf.grad
                x2 = y2 - gy1.detach()
                del gy1, y1_leaf
                # F: y1 = x1 + F(x2)
                x2_leaf = x2.detach().requires_grad_(True)
                fx2 = block.f(x2_leaf, **fk)
                torch.autograd.backward(fx2, dy1)
                dy2 = dy2 + x2_leaf.grad
                x1 = y1 - fx2.detach()
                del fx2, x2_leaf
                y1, y2 = x1, x2
        return dy1, dy2, None, None, None, None, None


# ---------------------------------------------------------------------------------------------
# Dropout masks independent of how the batch is split


def set_dropout_sample_offset(model: tnn.Module, offset: int) -> None:
    """Tells every :class:`Reformer` in ``model`` that its inputs start at sample ``offset`` of
    a global batch (e.g. ``rank * local_batch`` when each process takes a contiguous slice), so
    its dropout masks are those the whole batch would get in one process (see the module
    docstring). 0 (the default) is the ordinary single-process behaviour."""
    from .reformer import Reformer
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be an int >= 0, got {offset!r}")
    found = False
    for module in model.modules():
        if isinstance(module, Reformer):
            module.dropout_sample_offset = offset
            found = True
    if not found:
        raise TypeError(f"{type(model).__name__} holds no Reformer")


def offset_dropout_seeds(reformer, seeds: Tensor, x: Tensor) -> Tensor:
    """``seeds`` (depth, 3) shifted for the reformer's ``dropout_sample_offset`` (unchanged when
    it is 0): columns attention output (width d_model), FFN hidden (d_ff), FFN output
    (d_model); and a fourth column, each layer's attention-probability seed, which the stack
    would otherwise derive from the attention-output seed by a hash that no shift carries
    through: derived here from the unshifted seed, then shifted by the attention dropout's
    elements per sample, H·R·L·K·L (heads, hash rounds (1 in a local layer), length, window
    slots, key positions: the index of docs/semantics.md §1 "Dropout")."""
    offset = getattr(reformer, "dropout_sample_offset", 0)
    if offset == 0:
        return seeds
    def seed_shifts(elements_per_sample):  # k elements further: the seed k·γ further
        return torch.tensor([as_int64(offset * n * (GAMMA % 2**64))
                             for n in elements_per_sample], dtype=torch.int64)

    length = x.shape[1]
    shift = seed_shifts([length * width
                         for width in (reformer.d_model, reformer.d_ff, reformer.d_model)])
    per_sample = []
    for block in reformer.layers:
        attn = block.f.attn
        rounds = 1 if block.f.is_local else attn.n_hashes
        slots = attn.n_chunks_before + attn.n_chunks_after + 1
        per_sample.append(attn.n_heads * rounds * length * slots * length)
    probs = mix64(seeds[:, 0] ^ ATTENTION_PROBS_SALT) + seed_shifts(per_sample)
    # int64 addition wraps: the seeds modulo 2^64
    return torch.cat([seeds + shift, probs.unsqueeze(1)], dim=1)


# ---------------------------------------------------------------------------------------------
# Applying fully_shard


def shard_reformer(model: tnn.Module, mesh=None, *, process_group=None, **fsdp_kwargs):
    """Applies FSDP2 per layer: ``fully_shard`` on each ``layers[i].f`` and ``layers[i].g`` of
    every :class:`Reformer` in ``model``, then on ``model`` (the root, holding the rest:
    embeddings, final norm, head). Returns ``model`` (now an ``FSDPModule``).

    ``mesh``: a 1-D DeviceMesh (or 2-D for HSDP) of the parameters' device type; by default the
    whole world on that device type (``init_process_group`` must have run). ``process_group``:
    alternatively, the group to shard over (a 1-D mesh is built from it); given with ``mesh``,
    it must hold exactly the mesh's ranks. Other keyword arguments go to every ``fully_shard``
    call (``mp_policy``, ``reshard_after_forward``, ``offload_policy``, ...)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from .reformer import Reformer
    reformers = [m for m in model.modules() if isinstance(m, Reformer)]
    if not reformers:
        raise TypeError(f"shard_reformer: {type(model).__name__} holds no Reformer")
    if is_fsdp_module(model) or any(is_fsdp_module(m) for m in model.modules()):
        raise RuntimeError("shard_reformer: fully_shard has already been applied to (part of) "
                           "this model")
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("shard_reformer: torch.distributed is not initialized "
                           "(call torch.distributed.init_process_group first)")
    device_types = {p.device.type for p in model.parameters()}
    if len(device_types) != 1:
        raise ValueError(f"shard_reformer: the model's parameters are on several device types "
                         f"{sorted(device_types)}")
    device_type = device_types.pop()
    if process_group is not None:
        group_ranks = dist.get_process_group_ranks(process_group)
        if mesh is None:
            mesh = DeviceMesh.from_group(process_group, device_type)
        else:
            mesh_ranks = sorted(mesh.mesh.flatten().tolist())
            if sorted(group_ranks) != mesh_ranks:
                raise ValueError(f"shard_reformer: process_group (ranks {sorted(group_ranks)}) "
                                 f"does not match the mesh (ranks {mesh_ranks})")
    if mesh is None:
        mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    if not isinstance(mesh, DeviceMesh):
        raise TypeError(f"mesh must be a DeviceMesh, got {type(mesh).__name__}")
    if mesh.device_type != device_type:
        raise ValueError(f"shard_reformer: the mesh is for {mesh.device_type!r} but the model's "
                         f"parameters are on {device_type!r}")
    mesh_ranks = mesh.mesh.flatten().tolist()
    if dist.get_rank() not in mesh_ranks:
        raise ValueError(f"shard_reformer: this process (rank {dist.get_rank()}) is not in the "
                         f"mesh (ranks {mesh_ranks})")
    for reformer in reformers:
        for block in reformer.layers:
            fully_shard(block.f, mesh=mesh, **fsdp_kwargs)
            fully_shard(block.g, mesh=mesh, **fsdp_kwargs)
    fully_shard(model, mesh=mesh, **fsdp_kwargs)
    return model


# ---------------------------------------------------------------------------------------------
# torch.distributed.checkpoint


class _RngState:
    """The CPU generator's state as a DCP Stateful (every rank draws the same dropout seeds)."""

    def state_dict(self):
        return {"cpu": torch.get_rng_state()}

    def load_state_dict(self, state):
        torch.set_rng_state(state["cpu"])


def save_sharded_checkpoint(path: str, model: tnn.Module, optimizer=None, **extra) -> None:
    """Saves the (sharded) model, optimizer, CPU RNG state and ``extra`` plain values with
    torch.distributed.checkpoint: each rank writes its shards (call on every rank)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, [] if optimizer is None else optimizer)
    state = {"model": model_sd, "rng": _RngState(), "extra": dict(extra)}
    if optimizer is not None:
        state["optim"] = optim_sd
    with warnings.catch_warnings():  # a later step's checkpoint replaces an earlier one
        warnings.filterwarnings("ignore", message="Detected an existing checkpoint")
        dcp.save(state, storage_writer=dcp.FileSystemWriter(os.fspath(path), overwrite=True))


def load_sharded_checkpoint(path: str, model: tnn.Module, optimizer=None, **extra_defaults):
    """Loads what :func:`save_sharded_checkpoint` saved into ``model`` (sharded the same or
    differently) and ``optimizer`` and restores the RNG state; returns the ``extra`` values
    (``extra_defaults`` give their types and the values when absent)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, [] if optimizer is None else optimizer)
    state = {"model": model_sd, "rng": _RngState(), "extra": dict(extra_defaults)}
    if optimizer is not None:
        state["optim"] = optim_sd
    import torch.distributed as dist
    # without a process group (e.g. sampling from a distributed run's checkpoint in one
    # process) DCP reads the whole tensors
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=os.fspath(path),
                 no_dist=not (dist.is_available() and dist.is_initialized()))
    set_state_dict(model, [] if optimizer is None else optimizer,
                   model_state_dict=state["model"],
                   optim_state_dict=state.get("optim", {}))
    return state["extra"]

"""Conversion of HuggingFace Reformer models (``transformers``' ``ReformerModelWithLMHead``,
``ReformerForMaskedLM``, ``ReformerModel``) into reformer_ext modules: :meth:`ReformerLM.from_hf
<reformer_ext.nn.ReformerLM.from_hf>` and :meth:`Reformer.from_hf
<reformer_ext.nn.Reformer.from_hf>` call :func:`lm_from_hf` and :func:`reformer_from_hf`.

The converted model reproduces the source's eval-mode outputs (docs/semantics.md, "Converted HF
models", lists the options that make our modules follow HF, and what still differs), with HF's
mix of "lsh" and "local" attention layers (``attn_layers``).

The source may be a model object or a local directory written by its ``save_pretrained``
(loaded with ``from_pretrained(..., local_files_only=True)``: never the network). Loading a
directory needs ``transformers``; converting an object only reads its config and weights.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor
from torch import nn as tnn

from ..ops.chunked_ffn import ACTIVATIONS

__all__ = ["HF_ACTIVATIONS", "HFEmbeddings", "lm_from_hf", "reformer_from_hf",
           "reformer_kwargs_from_hf_config"]

#: HF ``config.hidden_act`` names -> our ``activation`` names (reformer_ext.ops.chunked_ffn).
#: HF's "gelu" is the exact (erf) GELU; "gelu_new", "gelu_pytorch_tanh" and "gelu_fast" are the
#: tanh approximation (the last written differently, same function to rounding).
HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                  "silu": "silu", "swish": "silu"}
assert set(HF_ACTIVATIONS.values()) <= set(ACTIVATIONS)

_LM_CLASSES = ("ReformerModelWithLMHead", "ReformerForMaskedLM")
_BASE_CLASS = "ReformerModel"


class HFEmbeddings(tnn.Module):
    """HF's ``ReformerEmbeddings`` in eval mode: ``token_emb(tokens) + pos_emb(positions
    0..L-1)`` (what :class:`~reformer_ext.nn.ReformerLM` computes before its Reformer), returned
    by :func:`reformer_from_hf` beside the stack. ``dropout`` (HF's ``hidden_dropout_prob``) acts
    on the token embeddings in training mode, as in HF."""

    def __init__(self, token_emb: tnn.Embedding, pos_emb: tnn.Module, max_seq_len: int,
                 dropout: float = 0.0):
        super().__init__()
        self.token_emb, self.pos_emb = token_emb, pos_emb
        self.max_seq_len, self.dropout = max_seq_len, float(dropout)

    def forward(self, tokens: Tensor) -> Tensor:
        from .position import AxialPositionEmbedding
        if not isinstance(tokens, Tensor) or tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (batch, length), got {tokens!r}")
        length = tokens.shape[1]
        if not 1 <= length <= self.max_seq_len:
            raise ValueError(f"sequence length must be in [1, {self.max_seq_len}], got {length}")
        x = self.token_emb(tokens)
        if self.training and self.dropout > 0.0:
            x = tnn.functional.dropout(x, self.dropout, training=True)
        if isinstance(self.pos_emb, AxialPositionEmbedding):
            return x + self.pos_emb(length, batch_size=tokens.shape[0])
        return x + self.pos_emb(torch.arange(length, device=tokens.device))


# ---------------------------------------------------------------------------------------------
# Loading and checking the source

def _load(source, allowed: Tuple[str, ...], caller: str):
    """The HF model object: ``source`` itself, or loaded from a local save_pretrained
    directory."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isdir(path):
            raise ValueError(f"{caller}: {path!r} is not a directory (expected a local directory "
                             "written by save_pretrained, or a model object)")
        try:
            import transformers
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"{caller}: loading a directory needs transformers") from e
        config = transformers.ReformerConfig.from_pretrained(path, local_files_only=True)
        names = list(getattr(config, "architectures", None) or [])
        name = next((n for n in names if n in allowed), None)
        if name is None:
            raise ValueError(f"{caller}: the config's architectures {names} name none of "
                             f"{', '.join(allowed)}")
        cls = getattr(transformers, name)
        try:  # the saved dtype ("dtype" since transformers 4.56, "torch_dtype" before)
            return cls.from_pretrained(path, local_files_only=True, dtype="auto")
        except TypeError:  # pragma: no cover - older transformers
            return cls.from_pretrained(path, local_files_only=True, torch_dtype="auto")
    name = type(source).__name__
    if name not in allowed:
        hint = ""
        if name == _BASE_CLASS:
            hint = " (a ReformerModel has no head: use Reformer.from_hf)"
        elif name in _LM_CLASSES:
            hint = " (use ReformerLM.from_hf for a model with an LM head)"
        raise TypeError(f"{caller} takes {' or '.join(allowed)} (or a directory saved from one), "
                        f"got {name}{hint}")
    return source


def _field(config, name: str):
    if not hasattr(config, name):
        raise ValueError(f"the HF config has no field {name!r}")
    return getattr(config, name)


def reformer_kwargs_from_hf_config(config) -> Dict:
    """Our :class:`~reformer_ext.nn.Reformer` keyword arguments for an HF ``ReformerConfig``
    (plus ``d_model``, ``depth``, ``n_heads``); raises a ValueError / NotImplementedError naming
    the config field for what cannot be converted."""
    attn_layers = list(_field(config, "attn_layers"))
    for i, kind in enumerate(attn_layers):
        if kind not in _LAYER_CONVERTERS:
            raise ValueError(f"config.attn_layers[{i}] is {kind!r}: HF Reformer attention types "
                             f"are 'lsh' and 'local' (attn_layers = {attn_layers})")
    depth = int(_field(config, "num_hidden_layers"))
    if len(attn_layers) != depth:
        raise ValueError(f"config.attn_layers has {len(attn_layers)} entries but "
                         f"config.num_hidden_layers is {depth}")

    kwargs = dict(attn_layers=attn_layers, **_local_kwargs(config, attn_layers))
    if "lsh" in attn_layers:
        kwargs.update(_lsh_kwargs(config))
    act = _field(config, "hidden_act")
    if not isinstance(act, str) or act not in HF_ACTIVATIONS:
        raise ValueError(f"config.hidden_act {act!r} is not supported: convertible activations "
                         f"are {', '.join(map(repr, HF_ACTIVATIONS))}")
    d_model = int(_field(config, "hidden_size"))
    kwargs.update(d_model=d_model, depth=depth,
                  n_heads=int(_field(config, "num_attention_heads")),
                  d_head=int(_field(config, "attention_head_size")),
                  d_ff=int(_field(config, "feed_forward_size")),
                  causal=bool(_field(config, "is_decoder")), activation=HF_ACTIVATIONS[act],
                  dropout=float(_field(config, "hidden_dropout_prob") or 0.0),
                  layer_norm_eps=float(_field(config, "layer_norm_eps")),
                  merge="concat_norm", attn_out_bias=False,
                  pad_to_multiple_of=_least_common_chunk_multiple(kwargs, attn_layers))
    ff_chunk = int(getattr(config, "chunk_size_feed_forward", 0) or 0)
    if ff_chunk > 0:
        kwargs["ff_chunk_size"] = ff_chunk  # the result does not depend on it
    return kwargs


def _least_common_chunk_multiple(kwargs: Dict, attn_layers) -> int:
    """What HF pads every input longer than its shortest chunk length to a multiple of: the
    least common multiple of the chunk lengths of the layer kinds in use."""
    lengths = []
    if "lsh" in attn_layers:
        lengths.append(kwargs["bucket_size"])
    if "local" in attn_layers:
        lengths.append(kwargs["local_chunk_length"])
    return math.lcm(*lengths)


def _window(config, prefix: str) -> Tuple[int, int, int]:
    """(chunk length, chunks before, chunks after) of HF's ``<prefix>`` fields, checked."""
    chunk_name = "lsh_attn_chunk_length" if prefix == "lsh" else "local_attn_chunk_length"
    chunk = _field(config, chunk_name)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"config.{chunk_name} must be an int >= 1, got {chunk!r}")
    window = []
    for name in (f"{prefix}_num_chunks_before", f"{prefix}_num_chunks_after"):
        value = _field(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"config.{name} must be an int >= 0, got {value!r}")
        window.append(value)
    return chunk, window[0], window[1]


def _local_kwargs(config, attn_layers) -> Dict:
    if "local" not in attn_layers:
        return {}
    chunk, before, after = _window(config, "local")
    return dict(local_chunk_length=chunk, local_chunks_before=before, local_chunks_after=after,
                local_attention_dropout=float(
                    _field(config, "local_attention_probs_dropout_prob") or 0.0))


def _lsh_kwargs(config) -> Dict:
    num_buckets = _field(config, "num_buckets")
    if num_buckets is None:
        raise ValueError("config.num_buckets is None: HF then derives it from the length of the "
                         "first input it sees (and writes it into the config); set "
                         "config.num_buckets to an even int or a list of even factors")
    factors = list(num_buckets) if isinstance(num_buckets, (list, tuple)) else [num_buckets]
    for f in factors:
        if isinstance(f, bool) or not isinstance(f, int) or f < 2 or f % 2:
            raise ValueError(f"config.num_buckets must be an even int >= 2 or a list of such "
                             f"factors, got {num_buckets!r}")
    n_buckets = factors if isinstance(num_buckets, (list, tuple)) and len(factors) > 1 \
        else factors[0]
    chunk, before, after = _window(config, "lsh")
    hash_seed = _field(config, "hash_seed")
    if hash_seed is None:
        warnings.warn("config.hash_seed is None: HF draws fresh random rotations at every "
                      "forward, so its outputs are random; the converted model uses fixed "
                      "seeded rotations in eval mode instead (deterministic, not HF's draws)",
                      stacklevel=3)
    kwargs = dict(bucket_size=chunk, n_hashes=int(_field(config, "num_hashes")),
                  n_buckets=n_buckets, n_chunks_before=before, n_chunks_after=after,
                  lsh_attention_dropout=float(
                      _field(config, "lsh_attention_probs_dropout_prob") or 0.0))
    if hash_seed is not None:
        # HF reseeds before every draw, in training too: the rotations are always these
        kwargs.update(hf_hash_seed=int(hash_seed), fixed_rotations=True)
    return kwargs


def _position_kwargs(config) -> Dict:
    """ReformerLM's max_seq_len and position-embedding options for an HF config."""
    d_model = int(config.hidden_size)
    max_len = int(_field(config, "max_position_embeddings"))
    if not _field(config, "axial_pos_embds"):
        return dict(max_seq_len=max_len)
    shape = tuple(int(n) for n in _field(config, "axial_pos_shape"))
    dims = tuple(int(d) for d in _field(config, "axial_pos_embds_dim"))
    if len(shape) != len(dims):
        raise ValueError(f"config.axial_pos_embds_dim {dims} must have one width per axis of "
                         f"config.axial_pos_shape {shape}")
    if sum(dims) != d_model:
        raise ValueError(f"config.axial_pos_embds_dim {dims} must sum to config.hidden_size "
                         f"{d_model} (sum {sum(dims)})")
    # HF cannot encode positions beyond prod(axial_pos_shape) either
    return dict(max_seq_len=min(max_len, math.prod(shape)), axial_position_shape=shape,
                axial_position_dims=dims)


def _check_decoder_flag(model) -> None:
    name, is_decoder = type(model).__name__, bool(model.config.is_decoder)
    if name == "ReformerModelWithLMHead" and not is_decoder:
        raise ValueError("config.is_decoder is False but ReformerModelWithLMHead is a causal LM "
                         "(is_decoder=True)")
    if name == "ReformerForMaskedLM" and is_decoder:
        raise ValueError("config.is_decoder is True but ReformerForMaskedLM is bidirectional "
                         "(is_decoder=False)")


# ---------------------------------------------------------------------------------------------
# Weights

def _copy(dst: Tensor, src: Tensor, name: str) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"HF weight {name} has shape {tuple(src.shape)}, expected "
                         f"{tuple(dst.shape)}")
    dst.copy_(src)


def _copy_layer_norm(dst: tnn.LayerNorm, state: Dict[str, Tensor], prefix: str) -> None:
    _copy(dst.weight, state[prefix + "weight"], prefix + "weight")
    _copy(dst.bias, state[prefix + "bias"], prefix + "bias")


def _convert_layer(block, state: Dict[str, Tensor], prefix: str, projections) -> None:
    """Loads HF layer ``prefix`` (``...encoder.layers.<i>.``) into our ReversibleBlock ``block``:
    F = attention (LayerNorm, the ``projections`` (ours, HF's name under self_attention),
    output.dense), G = feed-forward (LayerNorm, dense.dense, output.dense)."""
    attn = prefix + "attention."
    _copy_layer_norm(block.f.norm, state, attn + "layer_norm.")
    for ours, theirs in projections:
        name = f"{attn}self_attention.{theirs}.weight"
        _copy(getattr(block.f.attn, ours).weight, state[name], name)
    _copy(block.f.attn.to_out.weight, state[attn + "output.dense.weight"],
          attn + "output.dense.weight")
    ff = prefix + "feed_forward."
    _copy_layer_norm(block.g.norm, state, ff + "layer_norm.")
    for ours, theirs in ((block.g.ff.w1, ff + "dense.dense."), (block.g.ff.w2, ff + "output.dense.")):
        _copy(ours.weight, state[theirs + "weight"], theirs + "weight")
        _copy(ours.bias, state[theirs + "bias"], theirs + "bias")


def _convert_lsh_layer(block, state: Dict[str, Tensor], prefix: str) -> None:
    _convert_layer(block, state, prefix, (("to_qk", "query_key"), ("to_v", "value")))


def _convert_local_layer(block, state: Dict[str, Tensor], prefix: str) -> None:
    _convert_layer(block, state, prefix, (("to_q", "query"), ("to_k", "key"), ("to_v", "value")))


#: Per HF ``attn_layers`` entry, the function loading one such layer.
_LAYER_CONVERTERS: Dict[str, Callable] = {"lsh": _convert_lsh_layer,
                                          "local": _convert_local_layer}


def _load_stack(reformer, config, state: Dict[str, Tensor], prefix: str) -> None:
    for i, kind in enumerate(config.attn_layers):
        _LAYER_CONVERTERS[kind](reformer.layers[i], state, f"{prefix}encoder.layers.{i}.")
    _copy_layer_norm(reformer.norm, state, prefix + "encoder.layer_norm.")


def _load_embeddings(token_emb, pos_emb, config, state: Dict[str, Tensor], prefix: str) -> None:
    emb = prefix + "embeddings."
    _copy(token_emb.weight, state[emb + "word_embeddings.weight"], emb + "word_embeddings.weight")
    if config.axial_pos_embds:
        for i, weight in enumerate(pos_emb.weights):
            name = f"{emb}position_embeddings.weights.{i}"
            _copy(weight, state[name], name)
    else:
        name = emb + "position_embeddings.embedding.weight"
        _copy(pos_emb.weight, state[name], name)


def _factory(model) -> Dict:
    param = next(model.parameters())
    return dict(device=param.device, dtype=param.dtype)


def _state(model) -> Dict[str, Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Entry points

def lm_from_hf(source):
    """:class:`~reformer_ext.nn.ReformerLM` from an HF ``ReformerModelWithLMHead`` (causal) or
    ``ReformerForMaskedLM`` (bidirectional), or a directory saved from one; in eval mode, on
    the source's device and in its dtype."""
    from .reformer import ReformerLM
    model = _load(source, _LM_CLASSES, "ReformerLM.from_hf")
    _check_decoder_flag(model)
    config = model.config
    kwargs = reformer_kwargs_from_hf_config(config)
    d_model, depth, n_heads = kwargs.pop("d_model"), kwargs.pop("depth"), kwargs.pop("n_heads")
    dropout = kwargs["dropout"]
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # leave the global RNG alone
        lm = ReformerLM(int(config.vocab_size), d_model, depth, n_heads,
                        emb_dropout=dropout, **_position_kwargs(config), **kwargs,
                        **_factory(model))
        if config.axial_pos_embds:
            lm.pos_emb.dropout = dropout  # HF's axial dropout (dropout2d, training only)
        state = _state(model)
        _load_embeddings(lm.token_emb, lm.pos_emb, config, state, "reformer.")
        _load_stack(lm.reformer, config, state, "reformer.")
        _copy(lm.to_logits.weight, state["lm_head.decoder.weight"], "lm_head.decoder.weight")
        _copy(lm.to_logits.bias, state["lm_head.decoder.bias"], "lm_head.decoder.bias")
    return lm.eval()


def reformer_from_hf(source, *, with_embeddings: bool = False):
    """:class:`~reformer_ext.nn.Reformer` from an HF ``ReformerModel`` (or the ``reformer`` of
    a model with an LM head, or a directory saved from any of them): the stack whose output is
    HF's ``last_hidden_state`` (``merge="concat_norm"``: ``2·hidden_size`` features) given HF's
    embedding output. With ``with_embeddings=True`` returns ``(embeddings, reformer)`` with
    ``embeddings`` an :class:`HFEmbeddings`, so that ``reformer(embeddings(tokens), mask)`` is
    HF's ``ReformerModel(tokens, attention_mask).last_hidden_state`` (eval mode)."""
    from .position import AxialPositionEmbedding
    from .reformer import Reformer, _position_embedding
    model = _load(source, (_BASE_CLASS,) + _LM_CLASSES, "Reformer.from_hf")
    if type(model).__name__ in _LM_CLASSES:
        _check_decoder_flag(model)
        prefix = "reformer."
    else:
        prefix = ""
    config = model.config
    kwargs = reformer_kwargs_from_hf_config(config)
    d_model, depth, n_heads = kwargs.pop("d_model"), kwargs.pop("depth"), kwargs.pop("n_heads")
    factory = _factory(model)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        reformer = Reformer(d_model, depth, n_heads, **kwargs, **factory)
        state = _state(model)
        _load_stack(reformer, config, state, prefix)
        reformer.eval()
        if not with_embeddings:
            return reformer
        pos = _position_kwargs(config)
        token_emb = tnn.Embedding(int(config.vocab_size), d_model, **factory)
        pos_emb = _position_embedding(pos["max_seq_len"], d_model,
                                      pos.get("axial_position_shape"),
                                      pos.get("axial_position_dims"), factory)
        if isinstance(pos_emb, AxialPositionEmbedding):
            pos_emb.dropout = kwargs["dropout"]
        _load_embeddings(token_emb, pos_emb, config, state, prefix)
        embeddings = HFEmbeddings(token_emb, pos_emb, pos["max_seq_len"], kwargs["dropout"])
    return embeddings.eval(), reformer

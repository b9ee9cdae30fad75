"""Argument errors of the reversible stack operator torch.ops.reformer.reformer_stack: each bad
argument (shapes, dtypes, counts, devices, options) raises an error whose message names it."""

import pytest
import torch

from _helpers import LAYER_WEIGHT_NAMES, WEIGHTS_PER_LAYER, stack_op_args


def _replace(args, index, value):
    args = list(args)
    args[index] = value
    return tuple(args)


def _bad_calls():
    args = stack_op_args(requires_grad=False)
    x1, x2, weights, rotations, mask, seeds = args[:6]
    w = list(weights)
    w_bad_shape = list(w)
    w_bad_shape[13] = torch.ones(3, dtype=torch.float32)  # layer 1's norm1_bias
    w_bad_dtype = list(w)
    w_bad_dtype[4] = w[4].double()
    return [
        ("x1", _replace(args, 0, x1[0])),
        ("x2", _replace(args, 1, x2[:, :5])),
        ("weights must hold 12", _replace(args, 2, w[:11])),
        ("weights[13] (layer 1, norm1_bias)", _replace(args, 2, w_bad_shape)),
        ("weights[4] (layer 0, out_weight)", _replace(args, 2, w_bad_dtype)),
        ("rotations must hold one tensor per layer", _replace(args, 3, rotations[:1])),
        ("rotations[1]", _replace(args, 3, [rotations[0], rotations[1][:, :2]])),
        ("key_padding_mask", _replace(args, 4, mask.int())),
        ("key_padding_mask", _replace(args, 4, mask[:, :3])),
        # one argument on meta sends the call to the fake kernel, which must refuse it too
        ("key_padding_mask must be on the device", _replace(args, 4, mask.to("meta"))),
        ("rotations[0] must be on the device",
         _replace(args, 3, [rotations[0].to("meta"), rotations[1]])),
        ("seeds", _replace(args, 5, seeds.int())),
        ("seeds", _replace(args, 5, seeds[:1])),
        ("n_heads", _replace(args, 6, 3)),
        ("bucket_size", _replace(args, 7, 0)),
        ("n_chunks_before", _replace(args, 9, -1)),
        ("ff_chunk_size", _replace(args, 11, 0)),
        ("activation", _replace(args, 12, "tanh")),
        ("dropout_p", _replace(args, 13, 1.0)),
        ("layer_norm_eps", _replace(args, 14, 0.0)),
        # bucket_factors (shared by every layer): sum / 2 must be each layer's columns (2 here)
        ("bucket_factors must sum to 2 * 2 (twice rotations[0]", args + ([2, 4],)),
        ("bucket_factors must hold even factors", args + ([1, 3],)),
        ("bucket_factors must hold at most 8", args + ([2] * 9,)),
        ("rotations[1].shape[3]", _replace(args, 3, [rotations[0], rotations[1][..., :1]])
         + ([2, 2],)),
        # the fake kernel checks them too (every tensor but the CPU seeds on meta)
        ("bucket_factors must sum",
         (x1.to("meta"), x2.to("meta"), [t.to("meta") for t in w],
          [r.to("meta") for r in rotations], mask.to("meta"), seeds, *args[6:], [6])),
    ] + _bad_local_calls()


def _bad_local_calls():
    """Layer 1 uses local attention (local chunk length 4)."""
    args = stack_op_args(requires_grad=False, local_layers=(1,))
    x1, x2, weights, rotations, mask, seeds = args[:6]
    w = list(weights)
    lsh_qk = list(w)
    lsh_qk[12 + 2] = w[2]  # layer 1 given an LSH layer's (H·Dh, d) qk weight
    return [
        ("local_layers must hold increasing layer indices in [0, depth) = [0, 2)",
         _replace(args, 16, [2])),
        ("local_layers must hold increasing", _replace(args, 16, [1, 1])),
        ("weights[14] (layer 1, qk_weight) must have shape [16, 8]", _replace(args, 2, lsh_qk)),
        ("rotations[1] must be an empty tensor: layer 1 uses local attention",
         _replace(args, 3, [rotations[0], rotations[0]])),
        ("rotations[1] must be an empty tensor",
         (x1.to("meta"), x2.to("meta"), [t.to("meta") for t in w],
          [rotations[0].to("meta"), rotations[0].to("meta")], mask.to("meta"), seeds,
          *args[6:])),
        ("local_chunk_length must be >= 1", _replace(args, 17, 0)),
        ("lsh_attention_dropout_p must be in [0, 1)", args + (1.0, 0.0)),
        ("local_attention_dropout_p must be in [0, 1)", args + (0.0, -0.1)),
    ]


@pytest.mark.parametrize("needle,args", _bad_calls(), ids=[n for n, _ in _bad_calls()])
def test_bad_arguments_name_the_argument(needle, args):
    with pytest.raises((ValueError, RuntimeError)) as info:
        torch.ops.reformer.reformer_stack(*args)
    assert needle in str(info.value)


@pytest.mark.parametrize("fault", ["dtype", "shape"])
def test_cpp_checks_name_each_weight_as_python_does(fault):
    """The weight order is defined once per language (LAYER_WEIGHT_NAMES in Python, LayerWeight
    in csrc/reformer_stack.h): a bad weight at every index of every layer gets a C++ message
    naming it by the Python name of that index, so the two orders cannot drift apart."""
    args = stack_op_args(requires_grad=False)
    weights = args[2]
    for i, w in enumerate(weights):
        bad = list(weights)
        bad[i] = w.double() if fault == "dtype" else torch.ones(w.shape[0] + 1, dtype=w.dtype)
        layer, name = divmod(i, WEIGHTS_PER_LAYER)
        with pytest.raises((ValueError, RuntimeError)) as info:
            torch.ops.reformer.reformer_stack(*_replace(args, 2, bad))
        label = f"weights[{i}] (layer {layer}, {LAYER_WEIGHT_NAMES[name]})"
        assert label in str(info.value), (label, str(info.value))

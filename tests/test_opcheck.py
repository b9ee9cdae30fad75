"""torch.library.opcheck of every operator: the one file that calls it.

- ``test_aot_dispatch_static`` (not among opcheck's defaults) for the LSH and feed-forward
  operators on the CPU;
- all five utilities (schema, autograd registration, fake tensor, AOT dispatch static and
  dynamic) in the low-precision dtypes (bfloat16, float16) on the CPU;
- all five utilities for those operators on CUDA, in float32 and bfloat16 (skipped without
  a GPU);
- opcheck's default utilities (schema, autograd registration, fake tensor, AOT dispatch
  dynamic), operator by operator: the LSH operators (lsh_buckets, lsh_attention,
  lsh_attention_backward) in float32/float64 on the CPU and on CUDA, the local attention
  operators (local_attention, local_attention_backward) in float32/float64, chunked_ffn and
  chunked_ffn_backward with and without biases and dropout, reformer_stack and
  reformer_stack_backward.
"""

import pytest
import torch
from torch.testing._internal.optests.generate_tests import ALL_TEST_UTILS

import reformer_ext  # noqa: F401  (loads torch.ops.reformer)

from _helpers import (BF16, F32, F64, cuda, ffn_params, ffn_randn, lsh_case, lsh_case_id,
                      lsh_cotangents, lsh_inputs, lsh_seed, ops, stack_op_args)

ALL_UTILS = tuple(ALL_TEST_UTILS)  # schema, autograd registration, fake, aot static and dynamic
OPS = ["lsh_buckets", "lsh_attention", "lsh_attention_backward", "local_attention",
       "local_attention_backward", "chunked_ffn", "chunked_ffn_backward"]


def _randn(*shape, dtype, device, generator):
    return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)


def _lsh_samples(dtype, device):
    """(op name, args) for the three LSH operators: padding mask and causal, then neither."""
    g = torch.Generator().manual_seed(5)
    B, H, L, D, Dv, R, half, m = 2, 2, 11, 8, 6, 2, 2, 4
    qk = _randn(B, H, L, D, dtype=dtype, device=device, generator=g)
    v = _randn(B, H, L, Dv, dtype=dtype, device=device, generator=g)
    rotations = _randn(H, D, R, half, dtype=torch.float32, device=device, generator=g)
    mask = torch.zeros(B, L, dtype=torch.bool, device=device)
    mask[1, 8:] = True
    samples = []
    for key_mask, causal in ((mask, True), (None, False)):
        options = (key_mask, m, causal, 1, 0, 1.0)
        out, lse, positions, stats = ops.lsh_attention(qk, v, rotations, *options)
        grad_out = _randn(*out.shape, dtype=dtype, device=device, generator=g)
        grad_lse = _randn(*lse.shape, dtype=lse.dtype, device=device, generator=g)
        samples += [
            ("lsh_buckets", (qk, rotations, key_mask)),
            ("lsh_attention", (qk.clone().requires_grad_(), v.clone().requires_grad_(),
                               rotations, *options)),
            ("lsh_attention_backward", (grad_out, grad_lse if causal else None, qk, v, out,
                                        stats, positions, *options)),
        ]
    if device == "cpu" or getattr(device, "type", None) == "cpu":
        # attention dropout (CPU kernels only so far), with its seed tensor
        options = (mask, m, True, 1, 1, 1.0)
        drop = (0.3, torch.tensor(99, dtype=torch.int64))
        out, lse, positions, stats = ops.lsh_attention(qk, v, rotations, *options, [], *drop)
        grad_out = _randn(*out.shape, dtype=dtype, device=device, generator=g)
        samples += [
            ("lsh_attention", (qk.clone().requires_grad_(), v.clone().requires_grad_(),
                               rotations, *options, [], *drop)),
            ("lsh_attention_backward", (grad_out, None, qk, v, out, stats, positions, *options,
                                        *drop)),
        ]
    return samples


def _local_samples(dtype, device, L=11, m=4, before=1, after=0):
    """(op name, args) for the two local attention operators: padding mask and causal, then
    neither (and grad_lse absent)."""
    g = torch.Generator().manual_seed(7)
    B, H, D, Dv = 2, 2, 8, 6
    q, k = (_randn(B, H, L, D, dtype=dtype, device=device, generator=g) for _ in range(2))
    v = _randn(B, H, L, Dv, dtype=dtype, device=device, generator=g)
    mask = torch.zeros(B, L, dtype=torch.bool, device=device)
    mask[1, L - 3:] = True
    samples = []
    for key_mask, causal in ((mask, True), (None, False)):
        options = (key_mask, m, causal, before, after, 0.5)
        out, lse, stats = ops.local_attention(q, k, v, *options)
        grad_out = _randn(*out.shape, dtype=dtype, device=device, generator=g)
        grad_lse = _randn(*lse.shape, dtype=lse.dtype, device=device, generator=g)
        samples += [
            ("local_attention", (q.clone().requires_grad_(), k.clone().requires_grad_(),
                                 v.clone().requires_grad_(), *options)),
            ("local_attention_backward", (grad_out, grad_lse if causal else None, q, k, v, out,
                                          stats, *options)),
        ]
    if device == "cpu" or getattr(device, "type", None) == "cpu":
        # attention dropout (CPU kernels only so far), with its seed tensor
        options = (mask, m, False, before, after, 0.5, 0.3, torch.tensor(7, dtype=torch.int64))
        out, lse, stats = ops.local_attention(q, k, v, *options)
        grad_out = _randn(*out.shape, dtype=dtype, device=device, generator=g)
        grad_lse = _randn(*lse.shape, dtype=lse.dtype, device=device, generator=g)
        samples += [
            ("local_attention", (q.clone().requires_grad_(), k.clone().requires_grad_(),
                                 v.clone().requires_grad_(), *options)),
            ("local_attention_backward", (grad_out, grad_lse, q, k, v, out, stats, *options)),
        ]
    return samples


def _dropout_seed(seed, device):
    """The chunked_ffn schema's dropout seed: an int, or (once it is one) a tensor."""
    seed_type = next(a.type for a in ops.chunked_ffn.default._schema.arguments
                     if a.name == "dropout_seed")
    if isinstance(seed_type, torch.IntType):
        return seed
    return torch.tensor(seed, dtype=torch.int64, device=device)


def _ffn_samples(dtype, device):
    """(op name, args) for the two feed-forward operators: with biases and dropout, then
    without biases and with a partial output mask."""
    g = torch.Generator().manual_seed(6)
    x = _randn(2, 5, 6, dtype=dtype, device=device, generator=g)
    w1, w2 = (_randn(*s, dtype=dtype, device=device, generator=g) for s in ((10, 6), (6, 10)))
    b1, b2 = (_randn(n, dtype=dtype, device=device, generator=g) for n in (10, 6))
    samples = []
    for biases, chunk, act, p, needed in (((b1, b2), 4, "gelu", 0.25, [True] * 5),
                                          ((None, None), 3, "silu", 0.0,
                                           [True, False, False, True, False])):
        tensors = (x, w1, biases[0], w2, biases[1])
        options = (chunk, act, p, _dropout_seed(1234, device))
        grad_out = _randn(*x.shape, dtype=dtype, device=device, generator=g)
        samples += [
            ("chunked_ffn", (*(t.clone().requires_grad_() if t is not None else None
                               for t in tensors), *options)),
            ("chunked_ffn_backward", (grad_out, *tensors, *options, needed)),
        ]
    return samples


def _opcheck(op_name, dtype, device, utils):
    samples = [(name, args) for name, args in _lsh_samples(dtype, device)
               + _local_samples(dtype, device) + _ffn_samples(dtype, device)
               if name == op_name]
    assert samples
    for _, args in samples:
        result = torch.library.opcheck(getattr(ops, op_name).default, args, test_utils=utils)
        assert set(result) == set(utils) and all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("op_name", OPS)
def test_cpu_aot_dispatch_static(op_name):
    _opcheck(op_name, torch.float32, "cpu", ("test_aot_dispatch_static",))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("op_name", OPS)
def test_cpu_low_precision_all_utils(op_name, dtype):
    _opcheck(op_name, dtype, "cpu", ALL_UTILS)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("op_name", OPS)
def test_cuda_all_utils(op_name, dtype):
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"reformer::{op_name}", "CUDA"):
        pytest.skip(f"reformer::{op_name} has no CUDA kernel in this build")
    _opcheck(op_name, dtype, "cuda", ALL_UTILS)


# ------------------------------------------------------- default utilities: the LSH operators

OPCHECK_CASES = [
    lsh_case(L=10, R=2, causal=True),
    lsh_case(L=7, R=3, Hr=1, mask="random", before=0, after=0),
    lsh_case(L=12, D=8, Dv=5, R=2, m=4, mask="row", before=2, after=1, scale=0.5),
    # factorised bucket counts: the trailing bucket_factors argument
    lsh_case(L=11, R=2, Hr=1, mask="random", causal=True, factors=(2, 4, 6)),
]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("c", OPCHECK_CASES, ids=lsh_case_id)
def test_lsh_default_utils(c, dtype):
    qk, v, rot, mask = lsh_inputs(c, dtype, lsh_seed(c))
    go, gl = lsh_cotangents(c, 5, dtype)
    args = (mask, c["m"], c["causal"], c["before"], c["after"], c["scale"])
    factors = [list(c["factors"])] if c["factors"] else []  # the trailing bucket_factors
    torch.library.opcheck(ops.lsh_buckets.default, (qk, rot, mask, *factors))
    torch.library.opcheck(ops.lsh_attention.default,
                          (qk.clone().requires_grad_(), v.clone().requires_grad_(), rot, *args,
                           *factors))
    torch.library.opcheck(ops.lsh_attention.default, (qk, v, rot, *args, *factors))
    out, lse, sp, st = ops.lsh_attention(qk, v, rot, *args, *factors)
    torch.library.opcheck(ops.lsh_attention_backward.default,
                          (go, gl, qk, v, out, st, sp, *args))
    torch.library.opcheck(ops.lsh_attention_backward.default,
                          (go, None, qk, v, out, st, sp, *args))


@cuda
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_lsh_cuda_default_utils(dtype):
    c = lsh_case(L=12, D=8, Dv=5, R=2, m=4, mask="row", before=2, after=1, scale=0.5)
    qk, v, rot, mask = (t.cuda() for t in lsh_inputs(c, dtype, lsh_seed(c)))
    go, gl = (t.cuda() for t in lsh_cotangents(c, 5, dtype))
    args = (mask, c["m"], c["causal"], c["before"], c["after"], c["scale"])
    torch.library.opcheck(ops.lsh_attention.default,
                          (qk.clone().requires_grad_(), v.clone().requires_grad_(), rot, *args))
    out, lse, sp, st = ops.lsh_attention(qk, v, rot, *args)
    assert out.is_cuda and lse.is_cuda and sp.is_cuda and st.is_cuda
    torch.library.opcheck(ops.lsh_attention_backward.default, (go, gl, qk, v, out, st, sp, *args))
    torch.library.opcheck(ops.lsh_attention_backward.default,
                          (go, None, qk, v, out, st, sp, *args))


@cuda
def test_lsh_cuda_opcheck_and_fake():
    c = OPCHECK_CASES[2]
    qk, v, rot, mask = (None if t is None else t.cuda() for t in lsh_inputs(c, F32, 10))
    args = (mask, c["m"], c["causal"], c["before"], c["after"], c["scale"])
    torch.library.opcheck(ops.lsh_buckets.default, (qk, rot, mask))
    torch.library.opcheck(ops.lsh_attention.default,
                          (qk.clone().requires_grad_(), v.clone().requires_grad_(), rot, *args))
    out, lse, sp, st = ops.lsh_attention(qk, v, rot, *args)
    torch.library.opcheck(ops.lsh_attention_backward.default,
                          (out, lse, qk, v, out, st, sp, *args))


# ------------------------------------------- default utilities: the chunked feed-forward


# ----------------------------------------------- default utilities: the local attention operators


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(11, 4, 1, 0), (8, 4, 1, 1), (5, 8, 2, 1)],
                         ids=["L11-m4-b1a0", "L8-m4-b1a1-repeated", "L5-m8-single-chunk"])
def test_local_attention_default_utils(shape, dtype):
    for name, args in _local_samples(dtype, "cpu", *shape):
        result = torch.library.opcheck(getattr(ops, name).default, args)
        assert all(v == "SUCCESS" for v in result.values()), (name, result)


def _ffn_op_samples():
    x = ffn_randn((2, 5, 6))
    full = (x, *ffn_params(6, 10))
    nobias = (x, full[1], None, full[3], None)
    return [
        (full, 4, "gelu", 0.0, None),
        (nobias, 3, "relu", 0.0, None),
        (full, 100, "silu", 0.25, torch.tensor(1234)),
        (nobias, 1, "gelu_tanh", 0.5, torch.tensor(-7)),
    ]


@pytest.mark.parametrize("sample", range(4))
def test_chunked_ffn_forward(sample):
    tensors, *options = _ffn_op_samples()[sample]
    tensors = [t.clone().requires_grad_() if t is not None else None for t in tensors]
    torch.library.opcheck(ops.chunked_ffn.default, (*tensors, *options))


@pytest.mark.parametrize("sample", range(4))
def test_chunked_ffn_backward(sample):
    tensors, *options = _ffn_op_samples()[sample]
    grad_out = torch.ones_like(tensors[0])
    mask = [True, True, True, True, True] if sample % 2 == 0 else [True, False, True, True, False]
    torch.library.opcheck(ops.chunked_ffn_backward.default,
                          (grad_out, *tensors, *options, mask))


# -------------------------------------------------- default utilities: the reformer_stack


@pytest.mark.parametrize("requires_grad", [False, True])
def test_reformer_stack(requires_grad):
    torch.library.opcheck(torch.ops.reformer.reformer_stack,
                          stack_op_args(requires_grad=requires_grad))
    torch.library.opcheck(torch.ops.reformer.reformer_stack,
                          stack_op_args(requires_grad=requires_grad, factors=(2, 4)))
    torch.library.opcheck(torch.ops.reformer.reformer_stack,
                          stack_op_args(requires_grad=requires_grad, local_layers=(1,)))
    torch.library.opcheck(torch.ops.reformer.reformer_stack,
                          stack_op_args(requires_grad=requires_grad, local_layers=(1,))
                          + (0.3, 0.2))  # attention dropout in both kinds of layer
    # seeds with a fourth column: the attention-probability seeds given
    x1, x2, weights, rotations, mask, seeds, *options = stack_op_args(
        requires_grad=requires_grad, local_layers=(1,))
    seeds = torch.cat([seeds, seeds[:, :1] + 1], dim=1)
    torch.library.opcheck(torch.ops.reformer.reformer_stack,
                          (x1, x2, weights, rotations, mask, seeds, *options, 0.3, 0.2))


@pytest.mark.parametrize("factors,local_layers,attention_dropout",
                         [(None, (), ()), ((4, 2), (), ()), (None, (0,), ()),
                          (None, (0,), (0.3, 0.2)), (None, (0,), (0.3, 0.2, "4 seeds"))],
                         ids=["int", "factorised", "local", "attention_dropout",
                              "attention_seeds_given"])
def test_reformer_stack_backward(factors, local_layers, attention_dropout):
    x1, x2, weights, rotations, mask, seeds, *options = stack_op_args(
        requires_grad=False, factors=factors, local_layers=local_layers)
    if "4 seeds" in attention_dropout:  # a fourth column: the attention-probability seeds
        seeds = torch.cat([seeds, seeds[:, :1] + 1], dim=1)
        attention_dropout = attention_dropout[:2]
    options += list(attention_dropout)
    y1, y2 = torch.ops.reformer.reformer_stack(x1, x2, weights, rotations, mask, seeds, *options)
    args = (torch.randn_like(y1), torch.randn_like(y2), y1, y2, weights, rotations, mask, seeds,
            *options)
    torch.library.opcheck(torch.ops.reformer.reformer_stack_backward, args)

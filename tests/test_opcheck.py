"""torch.library.opcheck with every test utility (issue 6) on every operator.

tests/test_lsh_attention.py and tests/test_chunked_ffn.py already run opcheck's default
utilities (schema, autograd registration, fake tensor, AOT dispatch dynamic) on the CPU in
float32/float64, and the three LSH operators on CUDA. This file fills the gaps:

- ``test_aot_dispatch_static`` (not among the defaults) for all five operators on the CPU;
- all five utilities in the low-precision dtypes (bfloat16, float16) on the CPU;
- all five utilities for all five operators on CUDA, in float32 and bfloat16 (skipped without
  a GPU).
"""

import pytest
import torch
from torch.testing._internal.optests.generate_tests import ALL_TEST_UTILS

import reformer_ext  # noqa: F401  (loads torch.ops.reformer)

ops = torch.ops.reformer
ALL_UTILS = tuple(ALL_TEST_UTILS)  # schema, autograd registration, fake, aot static and dynamic
OPS = ["lsh_buckets", "lsh_attention", "lsh_attention_backward", "chunked_ffn",
       "chunked_ffn_backward"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


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
               + _ffn_samples(dtype, device) if name == op_name]
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

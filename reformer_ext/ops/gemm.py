"""The fake kernel of the private ``reformer::_gemm`` operator (csrc/gemm.h): the GEMM the
feed-forward and the stack use, exposed for tests and benchmarks only."""

from __future__ import annotations

import torch

from ._checks import check_traced


@torch.library.register_fake("reformer::_gemm")
def _gemm_fake(a, b, bias=None, c=None, alpha=1.0, packed_b=False):
    check_traced(a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[0],
                 f"_gemm: a (M, K) and b (K, N) expected, got {tuple(a.shape)} and "
                 f"{tuple(b.shape)}")
    if c is not None:
        return c.new_empty(c.shape)
    return a.new_empty((a.shape[0], b.shape[1]))

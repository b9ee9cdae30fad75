"""Tests of rx.nn.ReversibleSequence and rx.nn.ReversibleBlock (docs/semantics.md §4): the
reversible sequence against the plain composition for generic blocks (Linear + dropout, shared
and frozen parameters, keyword arguments to f and g), its outputs, gradients and the global
random state after backward; the inverse of a block; its argument errors.
"""

import pytest
import torch
from torch import nn

import reformer_ext as rx

from _helpers import F32, F64, TOL, rel_error

# small tensors: one thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def _generic_blocks(p=0.3, shared=None):
    torch.manual_seed(0)
    blocks = []
    for i in range(3):
        f = nn.Sequential(nn.Linear(16, 16), nn.Dropout(p), nn.Tanh())
        g = nn.Sequential(nn.Linear(16, 16), nn.Dropout(p), nn.GELU(), nn.Linear(16, 16))
        if shared is not None:
            g[3] = shared  # the same Linear in every g
        blocks.append((f, g))
    blocks[1][0][0].bias.requires_grad_(False)  # a frozen parameter
    return blocks


def _plain_composition(blocks, x1, x2):
    for f, g in blocks:
        x1 = x1 + f(x2)
        x2 = x2 + g(x1)
    return x1, x2


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_reversible_sequence_equals_plain_composition(dropout, dtype):
    shared = nn.Linear(16, 16)
    blocks = _generic_blocks(dropout, shared)
    seq = rx.nn.ReversibleSequence(blocks).to(dtype)
    params = [p for p in seq.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(3)
    x1 = torch.randn(4, 5, 16, generator=gen, dtype=dtype)
    x2 = torch.randn(4, 5, 16, generator=gen, dtype=dtype)
    gy = [torch.randn(4, 5, 16, generator=gen, dtype=dtype) for _ in range(2)]

    def run(fn):
        a, b = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
        torch.manual_seed(11)
        y1, y2 = fn(a, b)
        state = torch.get_rng_state()
        grads = torch.autograd.grad((y1 * gy[0]).sum() + (y2 * gy[1]).sum(), [a, b] + params)
        assert torch.equal(torch.get_rng_state(), state)
        # the stream after backward is the one the caller would see without recomputation
        return y1.detach(), y2.detach(), grads, torch.rand(4)

    rev = run(seq)
    plain = run(lambda a, b: _plain_composition(blocks, a, b))
    assert rel_error(rev[0], plain[0]) <= TOL[dtype] and rel_error(rev[1], plain[1]) <= TOL[dtype]
    for a, b in zip(rev[2], plain[2]):
        assert rel_error(a, b) <= TOL[dtype]
    assert torch.equal(rev[3], plain[3])
    assert blocks[1][0][0].bias.grad is None


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x, scale=None, add=0.0):
        out = self.lin(x)
        return out * scale if scale is not None else out + add


def test_reversible_sequence_kwargs_and_errors():
    torch.manual_seed(0)
    seq = rx.nn.ReversibleSequence([rx.nn.ReversibleBlock(_Scaled(), _Scaled()) for _ in range(2)])
    x1, x2 = torch.randn(2, 8, requires_grad=True), torch.randn(2, 8, requires_grad=True)
    scale = torch.rand(2, 1)
    y1, y2 = seq(x1, x2, scale=scale, g_kwargs={"add": 0.5})
    (y1.sum() + y2.sum()).backward()
    grads = [x1.grad, x2.grad] + [p.grad.clone() for p in seq.parameters()]
    seq.zero_grad()
    x1.grad = x2.grad = None
    seq.reversible = False
    z1, z2 = seq(x1, x2, scale=scale, g_kwargs={"add": 0.5})
    (z1.sum() + z2.sum()).backward()
    ref = [x1.grad, x2.grad] + [p.grad for p in seq.parameters()]
    assert rel_error(y1, z1) < 1e-6 and rel_error(y2, z2) < 1e-6
    for a, b in zip(grads, ref):
        assert rel_error(a, b) < 1e-5
    seq.reversible = True
    with pytest.raises(ValueError, match="requires grad"):
        seq(x1, x2, scale=scale.requires_grad_(True))
    with pytest.raises(ValueError, match="same shape"):
        seq(x1, x2[:1])
    with pytest.raises(TypeError):
        rx.nn.ReversibleSequence([nn.Linear(2, 2)])
    with torch.no_grad():  # no autograd: the blocks simply run
        w1, w2 = seq(x1, x2, scale=scale.detach(), g_kwargs={"add": 0.5})
    assert torch.allclose(w1, z1) and torch.allclose(w2, z2)
    inv = seq.blocks[1].inverse(z1, z2, {"scale": scale.detach()}, {"add": 0.5})
    mid = seq.blocks[0](x1, x2, {"scale": scale.detach()}, {"add": 0.5})
    assert torch.allclose(inv[0], mid[0], atol=1e-6) and torch.allclose(inv[1], mid[1], atol=1e-6)

"""Tests of rx.nn.ChunkedFeedForward (docs/semantics.md §2, §4): state_dicts of and from an
nn.Sequential FFN (nested, bias-free), dropout in training and eval, torch.compile of the
module. The operator and the function: tests/test_chunked_ffn.py.
"""

import pytest
import torch

import reformer_ext as rx

from _helpers import assert_rel, ffn_randn, plain_ffn


def test_compile_module():
    ff = rx.nn.ChunkedFeedForward(8, 16, chunk_size=3).double()
    x = ffn_randn((2, 5, 8)).requires_grad_()
    compiled = torch.compile(ff, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    y_ref = ff(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    (gx,) = torch.autograd.grad(y.sum(), [x])
    (gx_ref,) = torch.autograd.grad(y_ref.sum(), [x])
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=0)




def test_module_matches_sequential_state_dict():
    torch.manual_seed(0)
    for seq, act in [
        (torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)),
         "gelu"),
        (torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                             torch.nn.Linear(32, 8)), "relu"),
    ]:
        seq = seq.double().eval()
        ff = rx.nn.ChunkedFeedForward(8, 32, chunk_size=5, activation=act, dropout=0.1).double()
        ff.load_state_dict(seq.state_dict())  # 0.* -> w1.*, 2.* / 3.* -> w2.*
        ff.eval()
        x = ffn_randn((3, 7, 8))
        assert_rel(ff(x), seq(x), 1e-12)
        assert set(ff.state_dict()) == {"w1.weight", "w1.bias", "w2.weight", "w2.bias"}
        assert torch.equal(ff.w2.weight, seq[-1].weight)

        built = rx.nn.ChunkedFeedForward.from_sequential(seq, chunk_size=3).eval()
        assert built.activation == act and built.dropout == (0.1 if act == "relu" else 0.0)
        assert_rel(built(x), seq(x), 1e-12)
        assert_rel(built.to_sequential().eval()(x), seq(x), 1e-12)

        renamed = rx.nn.ChunkedFeedForward.sequential_state_dict(seq.state_dict())
        assert set(renamed) == {"w1.weight", "w1.bias", "w2.weight", "w2.bias"}


def test_module_nested_load_and_bias_free():
    class Block(torch.nn.Module):
        def __init__(self, ff):
            super().__init__()
            self.norm = torch.nn.LayerNorm(8)
            self.ff = ff

    plain = Block(torch.nn.Sequential(torch.nn.Linear(8, 16, bias=False), torch.nn.SiLU(),
                                      torch.nn.Linear(16, 8, bias=False)))
    ours = Block(rx.nn.ChunkedFeedForward(8, 16, activation="silu", bias=False))
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(4, 8)
    torch.testing.assert_close(ours.ff(x), plain.ff(x))
    with pytest.raises(RuntimeError, match="size mismatch"):
        rx.nn.ChunkedFeedForward(8, 12).load_state_dict(
            torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(),
                                torch.nn.Linear(16, 8)).state_dict())


def test_module_dropout_training_and_eval():
    ff = rx.nn.ChunkedFeedForward(8, 64, chunk_size=4, dropout=0.5).double()
    x = ffn_randn((10, 8))
    torch.manual_seed(3)
    a = ff(x)
    torch.manual_seed(3)
    b = ff(x)
    c = ff(x)
    assert torch.equal(a, b) and not torch.equal(b, c)  # fresh seed per forward, reproducible
    torch.testing.assert_close(ff(x, dropout_seed=9), ff(x, dropout_seed=9), rtol=0, atol=0)
    ff.eval()
    plain = plain_ffn(x, ff.w1.weight, ff.w1.bias, ff.w2.weight, ff.w2.bias)
    assert_rel(ff(x).detach(), plain.detach(), 1e-12)
    with pytest.raises(ValueError, match="activation"):
        rx.nn.ChunkedFeedForward(8, 16, activation="tanh")

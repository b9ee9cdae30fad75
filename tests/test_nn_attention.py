"""Tests of rx.nn.LSHSelfAttention (docs/semantics.md §4): padding independence (of the module
and of the whole stack), rotations (fresh in training, fixed in eval, from the module seed),
and the seeded rotations themselves.
"""

import pytest
import torch

import reformer_ext as rx

from _helpers import F32, F64, seeded_rotations, small_reformer

# small tensors: one thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_attention_padding_independence():
    torch.manual_seed(0)
    attn = rx.nn.LSHSelfAttention(32, 4, bucket_size=8, n_hashes=3).train()
    x = torch.randn(3, 45, 32)
    mask = torch.zeros(3, 45, dtype=torch.bool)
    mask[0, 40:] = True
    mask[2, 10:] = True
    y = x.clone()
    y[mask] = torch.randn(int(mask.sum()), 32) * 100
    rot = attn.make_rotations(45)
    a = attn(x, mask, rotations=rot)
    b = attn(y, mask, rotations=rot)
    keep = ~mask
    assert torch.allclose(a[keep], b[keep], rtol=1e-5, atol=1e-5)
    # padded positions output to_out's bias (the operator gives 0 there)
    assert torch.allclose(a[mask], attn.to_out.bias.expand(int(mask.sum()), 32))
    # the whole stack: non-padded outputs do not depend on padded tokens either
    model = small_reformer(F32).eval()
    assert torch.allclose(model(x, mask)[keep], model(y, mask)[keep], rtol=1e-4, atol=1e-4)


def test_attention_rotations_train_and_eval():
    torch.manual_seed(0)
    attn = rx.nn.LSHSelfAttention(32, 2, bucket_size=8, n_hashes=2)
    x = torch.randn(2, 30, 32)
    # training: fresh rotations from the default generator, reproducible with manual_seed
    attn.train()
    torch.manual_seed(4)
    a = attn(x)
    torch.manual_seed(4)
    assert torch.equal(attn(x), a)
    torch.manual_seed(4)
    rot = attn.make_rotations(30)
    assert rot.shape == (2, 16, 2, 4)  # n_buckets = 2 * ceil(30 / 8) = 8
    assert torch.equal(attn(x, rotations=rot), a)
    assert not torch.equal(attn(x), attn(x))
    # eval: fixed rotations from the module seed; the global RNG is not touched
    attn.eval()
    state = torch.get_rng_state()
    e = attn(x)
    assert torch.equal(attn(x), e)
    assert torch.equal(torch.get_rng_state(), state)
    fixed = attn.make_rotations(30)
    assert torch.equal(fixed, seeded_rotations(attn.rotation_seed, (2, 16, 2, 4)))
    assert torch.equal(attn(x, rotations=fixed), e)
    attn.reseed(attn.rotation_seed.item() + 1)
    assert not torch.equal(attn(x), e)
    # fixed rotations in training too, when asked; fresh ones in eval when asked
    attn.fixed_rotations = True
    attn.train()
    assert torch.equal(attn(x), attn(x))
    attn.fixed_rotations = False
    attn.eval()
    assert not torch.equal(attn(x), attn(x))
    # the seed is fixed by manual_seed before construction
    torch.manual_seed(9)
    s1 = rx.nn.LSHSelfAttention(32, 2).rotation_seed
    torch.manual_seed(9)
    assert torch.equal(rx.nn.LSHSelfAttention(32, 2).rotation_seed, s1)


def test_attention_factorised_buckets():
    # n_buckets as a list of even factors (HF's num_buckets list): rotations of sum // 2
    # columns, prod buckets, the factors handed to the operator
    torch.manual_seed(0)
    attn = rx.nn.LSHSelfAttention(32, 2, bucket_size=8, n_hashes=2, n_buckets=[4, 6]).eval()
    assert attn.bucket_factors == [4, 6] and "n_buckets=[4, 6]" in repr(attn)
    x = torch.randn(2, 30, 32)
    rot = attn.make_rotations(30)
    assert rot.shape == (2, 16, 2, 5)
    assert torch.equal(rot, seeded_rotations(attn.rotation_seed, (2, 16, 2, 5)))
    qk = attn.to_qk(x).view(2, 30, 2, 16).transpose(1, 2)
    v = attn.to_v(x).view(2, 30, 2, 16).transpose(1, 2)
    out = rx.lsh_attention(qk, v, n_hashes=2, bucket_size=8, rotations=rot, n_buckets=[4, 6])
    want = attn.to_out(out.transpose(1, 2).reshape(2, 30, 32))
    torch.testing.assert_close(attn(x), want, rtol=0, atol=0)
    # the same rotations read as one factor of 10 give other buckets, hence another output
    one = rx.lsh_attention(qk, v, n_hashes=2, bucket_size=8, rotations=rot)
    assert not torch.equal(one, out)
    with pytest.raises(ValueError, match="n_buckets"):
        rx.nn.LSHSelfAttention(32, 2, n_buckets=[4, 5])


def test_seeded_rotations_are_normal_and_prefix_stable():
    r = seeded_rotations(123, (4, 16, 4, 64))
    assert r.dtype == F32 and r.shape == (4, 16, 4, 64)
    assert abs(r.mean().item()) < 0.03 and abs(r.std().item() - 1) < 0.03
    assert torch.equal(seeded_rotations(123, (4, 16, 4, 8), dtype=F64).float(), r[..., :8])
    assert not torch.equal(seeded_rotations(124, (4, 16, 4, 64)), r)



@pytest.mark.parametrize("hf_hash_seed", [None, 7])
def test_fixed_rotations_cached_in_inference_mode_still_train(hf_hash_seed):
    """Rotations first drawn under torch.inference_mode (inference tensors) must not be reused
    where autograd saves them: the reversible stack saves its rotations for the backward."""
    torch.manual_seed(0)
    model = rx.nn.Reformer(16, 2, 2, bucket_size=4, n_hashes=2, fixed_rotations=True,
                           hf_hash_seed=hf_hash_seed)
    x = torch.randn(1, 12, 16)
    with torch.inference_mode():
        expected = model(x)
    out = model(x.requires_grad_())
    out.sum().backward()
    assert torch.equal(out.detach(), expected)

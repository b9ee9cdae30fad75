"""Tests of the Reformer modules (docs/semantics.md §3, §4): rx.nn.Reformer and
rx.nn.ReformerLM.

- the reversible stack's output and every gradient (input and each parameter) equal those of the
  same stack with reversible=False (float64 <= 1e-8, float32 <= 1e-4 relative), with dropout on
  (same seed before each run) and off, causal and not, with a padding mask;
- the global random state after backward is what it was before it;
- the reversible forward saves the same tensors whatever the depth;
- a 2-process DistributedDataParallel (gloo, CPU) step of ReformerLM gives the gradients of one
  process on the whole batch;
- a tiny ReformerLM learns a copy task;
- any length, state_dict round trips (of every module).

ReversibleSequence/ReversibleBlock: tests/test_nn_reversible.py; LSHSelfAttention:
tests/test_nn_attention.py.
"""

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import reformer_ext as rx

from _helpers import F32, F64, TOL, cuda, rel_error, small_reformer


# ------------------------------------------------------------------------ helpers


# small tensors: one thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def _mask(batch, length, pad_from):
    """(batch, length) bool: batch element 1 (if any) is padded from pad_from on."""
    mask = torch.zeros(batch, length, dtype=torch.bool)
    if batch > 1:
        mask[1, pad_from:] = True
    return mask


def _step(model, x, mask, seed, grad_seed=1):
    """Forward + backward of a fixed random output gradient after torch.manual_seed(seed).
    Returns (output, [x.grad, *param grads]) and checks backward left the RNG state alone."""
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(seed)
    x = x.detach().clone().requires_grad_(True)
    out = model(x, mask)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed),
                           dtype=out.dtype)
    state = torch.get_rng_state()
    out.backward(grad_out)
    assert torch.equal(torch.get_rng_state(), state), "backward changed the global RNG state"
    return out.detach(), [x.grad] + [p.grad for p in model.parameters()]


def _assert_close(out_a, grads_a, out_b, grads_b, tol, names=None):
    assert rel_error(out_a, out_b) <= tol, f"output: {rel_error(out_a, out_b):.3g}"
    names = names or [str(i) for i in range(len(grads_a))]
    assert len(grads_a) == len(grads_b)
    for name, a, b in zip(names, grads_a, grads_b):
        assert a is not None and b is not None, f"missing gradient for {name}"
        assert rel_error(a, b) <= tol, f"gradient of {name}: relative error {rel_error(a, b):.3g}"


# ------------------------------------------------------------------------ Reformer: reversible == plain


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dropout", [0.0, 0.2], ids=["nodrop", "dropout"])
def test_reformer_reversible_equals_plain(dtype, causal, dropout):
    model = small_reformer(dtype, causal=causal, dropout=dropout)
    assert model.reversible
    x, mask, out_p = _assert_reversible_equals_plain(model, dtype)
    if dropout > 0:  # the seed matters: dropout and fresh rotations are really random
        out_other, _ = _step(model, x, mask, seed=6)
        assert rel_error(out_other, out_p) > 1e-3


def _assert_reversible_equals_plain(model, dtype):
    """The model's output and every gradient with the stack operator equal those of the same
    layers run as plain modules (same seed: same rotations and dropout masks), on a padded
    batch of 2 x 37 positions; leaves the model non-reversible. Returns (x, mask, output)."""
    x = torch.randn(2, 37, 32, generator=torch.Generator().manual_seed(2), dtype=dtype)
    mask = _mask(2, 37, 29)
    names = ["x"] + [n for n, _ in model.named_parameters()]
    out_r, grads_r = _step(model, x, mask, seed=5)
    model.reversible = False
    out_p, grads_p = _step(model, x, mask, seed=5)
    _assert_close(out_r, grads_r, out_p, grads_p, TOL[dtype], names)
    return x, mask, out_p


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_reformer_mixed_local_and_lsh_layers_reversible_equals_plain(dtype, causal):
    # HF's attn_layers: the stack operator runs local layers among LSH ones, with the local
    # layers' query and key weights stacked into its qk weight
    model = small_reformer(dtype, causal=causal, dropout=0.1,
                           attn_layers=["local", "lsh", "local"], local_chunk_length=8,
                           local_chunks_before=1, local_chunks_after=0 if causal else 1)
    assert model.stack_options.local_layers == (0, 2)
    assert isinstance(model.layers[0].f.attn, rx.nn.LocalSelfAttention)
    assert isinstance(model.layers[1].f.attn, rx.nn.LSHSelfAttention)
    _assert_reversible_equals_plain(model, dtype)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_reformer_attention_dropout_reversible_equals_plain(dtype):
    # the stack operator and the modules draw the same attention-probability masks (seeded from
    # each layer's attention-output seed); hidden dropout off, so only they act
    model = small_reformer(dtype, causal=True, attn_layers=["local", "lsh", "lsh"],
                           local_chunk_length=8, lsh_attention_dropout=0.3,
                           local_attention_dropout=0.2)
    assert model.layers[0].f.attn.attention_dropout == 0.2
    assert model.layers[1].f.attn.attention_dropout == 0.3
    x, mask, out_p = _assert_reversible_equals_plain(model, dtype)
    model.lsh_attention_dropout = model.local_attention_dropout = 0.0
    for block in model.layers:
        block.f.attn.attention_dropout = 0.0
    out_none, _ = _step(model, x, mask, seed=5)
    assert rel_error(out_none, out_p) > 1e-3  # the masks act


def test_reformer_attn_layers_errors():
    with pytest.raises(ValueError, match="attn_layers must hold one of"):
        rx.nn.Reformer(32, 2, 2, attn_layers=["lsh"])
    with pytest.raises(ValueError, match="attn_layers must hold one of"):
        rx.nn.Reformer(32, 2, 2, attn_layers=["lsh", "global"])
    with pytest.raises(TypeError, match="attn_layers must be a list"):
        rx.nn.Reformer(32, 2, 2, attn_layers="local")


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_reformer_factorised_buckets_reversible_equals_plain(dtype):
    # n_buckets as a list of factors reaches the stack operator through StackOptions
    model = small_reformer(dtype, causal=True, dropout=0.1, n_buckets=[2, 4, 2])
    assert model.stack_options.bucket_factors == (2, 4, 2)
    assert model.layers[0].f.attn.make_rotations(37).shape == (2, 16, 2, 4)
    _assert_reversible_equals_plain(model, dtype)


@pytest.mark.parametrize("merge", ["concat", "mean"])
def test_reformer_eval_and_merge(merge):
    """Eval mode (fixed rotations, no dropout) gives the same forward and gradients in both
    modes, for both merges; the merge decides the output layers."""
    model = small_reformer(F64, merge=merge, dropout=0.3).eval()
    x = torch.randn(3, 20, 32, dtype=F64)
    out_r, grads_r = _step(model, x, None, seed=1)
    model.reversible = False
    out_p, grads_p = _step(model, x, None, seed=2)  # another seed: eval needs none
    _assert_close(out_r, grads_r, out_p, grads_p, TOL[F64])
    assert out_r.shape == (3, 20, 32)
    assert (model.proj is not None) == (merge == "concat")
    assert model.norm.normalized_shape == ((64,) if merge == "concat" else (32,))


def test_reversible_under_autocast():
    """Under autocast (bfloat16 on the CPU) both modes return bfloat16 close to the float32
    result: the stack operator runs in the autocast dtype (float32 accumulation in its kernels),
    the plain modules follow autocast layer by layer."""
    model = small_reformer(F32, dropout=0.1)
    x = torch.randn(2, 37, 32)
    results = {}
    for mode in ("float32", True, False):
        model.reversible = mode is not False
        for p in model.parameters():
            p.grad = None
        xr = x.clone().requires_grad_(True)
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode != "float32"):
            out = model(xr, _mask(2, 37, 30))
        assert out.dtype == (torch.float32 if mode == "float32" else torch.bfloat16)
        out.float().sum().backward()
        results[mode] = [out.float(), xr.grad] + [p.grad for p in model.parameters()]
    for mode in (True, False):
        out, *grads = results[mode]
        assert torch.isfinite(out).all() and rel_error(out, results["float32"][0]) <= 0.05
        # looser for gradients: in bfloat16 a few positions hash to other buckets
        for a, b in zip(grads, results["float32"][1:]):
            assert torch.isfinite(a).all() and rel_error(a, b) <= 0.2


def test_autograd_grad_and_accumulation():
    """torch.autograd.grad sees the parameters' gradients (nothing goes to .grad behind its
    back); two backward passes accumulate; retain_graph allows a second backward."""
    model = small_reformer(F64).eval()
    params = list(model.parameters())
    x = torch.randn(2, 21, 32, dtype=F64, requires_grad=True)
    out = model(x)
    loss = (out ** 2).sum()
    grads = torch.autograd.grad(loss, [x] + params, retain_graph=True)
    assert all(p.grad is None for p in params)
    loss.backward(retain_graph=True)
    first = [p.grad.clone() for p in params]
    loss.backward()
    for g, p, f in zip(grads[1:], params, first):
        assert rel_error(f, g) <= 1e-12
        assert rel_error(p.grad, 2 * g) <= 1e-12
    model.reversible = False
    x2 = x.detach().requires_grad_(True)
    ref = torch.autograd.grad((model(x2) ** 2).sum(), [x2] + params)
    for a, b in zip(grads, ref):
        assert rel_error(a, b) <= TOL[F64]


def test_saved_memory_independent_of_depth():
    """The reversible forward saves the same tensors for depth 2 and depth 6, but for each
    layer's random state (rotations and dropout seeds, docs/semantics.md §3); the plain stack
    saves more the deeper it is."""

    def saved_bytes(depth, reversible):
        torch.manual_seed(0)
        model = rx.nn.Reformer(32, depth, 2, bucket_size=8, n_hashes=2, reversible=reversible)
        param_ptrs = {p.data_ptr() for p in model.parameters()}
        x = torch.randn(2, 64, 32, requires_grad=True)
        seen = {}

        def pack(t):
            if t.data_ptr() not in param_ptrs:
                seen[t.data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)  # what the forward keeps for the backward
        out.sum().backward()
        return sum(seen.values())

    rotation_bytes = rx.nn.Reformer(32, 1, 2, bucket_size=8, n_hashes=2).layers[0].f.attn \
        .make_rotations(64).nbytes
    seed_bytes = 3 * 8  # a layer's three int64 dropout seeds
    assert saved_bytes(6, True) - saved_bytes(2, True) == 4 * (rotation_bytes + seed_bytes)
    assert saved_bytes(6, False) > 2 * saved_bytes(2, True)


@pytest.mark.parametrize("length", [1, 5, 8, 37])
def test_any_length(length):
    model = small_reformer(F32, causal=True)
    x = torch.randn(2, length, 32, requires_grad=True)
    out = model(x, _mask(2, length, max(1, length - 2)))
    out.sum().backward()
    assert out.shape == (2, length, 32) and torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------ state_dict


def _roundtrip(make, inputs):
    torch.manual_seed(0)
    a = make().eval()
    torch.manual_seed(1)
    b = make().eval()
    b.load_state_dict(a.state_dict())
    assert a.state_dict().keys() == b.state_dict().keys()
    with torch.no_grad():
        out_a, out_b = a(*inputs), b(*inputs)
    if isinstance(out_a, tuple):
        assert all(torch.equal(u, v) for u, v in zip(out_a, out_b))
    else:
        assert torch.equal(out_a, out_b)


def test_state_dict_roundtrip():
    x = torch.randn(2, 19, 32)
    mask = _mask(2, 19, 15)
    _roundtrip(lambda: rx.nn.LSHSelfAttention(32, 4, bucket_size=4, n_hashes=2), (x, mask))
    attn = rx.nn.LSHSelfAttention(32, 4)
    assert set(attn.state_dict()) == {"to_qk.weight", "to_v.weight", "to_out.weight",
                                      "to_out.bias", "rotation_seed"}
    _roundtrip(lambda: rx.nn.Reformer(32, 2, 2, bucket_size=4, n_hashes=2), (x, mask))
    _roundtrip(lambda: rx.nn.Reformer(32, 2, 2, bucket_size=4, merge="mean"), (x,))
    tokens = torch.randint(0, 11, (2, 19))
    _roundtrip(lambda: rx.nn.ReformerLM(11, 32, 2, 2, 24, bucket_size=4), (tokens, mask))

    def seq():
        return rx.nn.ReversibleSequence([(nn.Linear(32, 32), nn.Linear(32, 32))])

    _roundtrip(seq, (x, x))
    assert set(seq().state_dict()) == {"blocks.0.f.weight", "blocks.0.f.bias",
                                       "blocks.0.g.weight", "blocks.0.g.bias"}
    # a state_dict of another shape is refused with torch's size-mismatch error
    with pytest.raises(RuntimeError, match="size mismatch"):
        rx.nn.LSHSelfAttention(48, 4).load_state_dict(rx.nn.LSHSelfAttention(32, 4).state_dict())
    with pytest.raises(RuntimeError, match="Missing key"):
        rx.nn.LSHSelfAttention(32, 4).load_state_dict({"to_qk.weight": torch.zeros(32, 32)})
    # a copy evaluates identically (the rotation cache is not shared state)
    torch.manual_seed(0)
    model = rx.nn.ReformerLM(11, 32, 2, 2, 24, bucket_size=4).eval()
    twin = copy.deepcopy(model)
    assert torch.equal(model(tokens), twin(tokens))


# ------------------------------------------------------------------------ ReformerLM


def test_reformer_lm_shapes_and_max_length():
    torch.manual_seed(0)
    model = rx.nn.ReformerLM(13, 32, 2, 2, 24, bucket_size=4, n_hashes=2)
    assert model(torch.randint(0, 13, (3, 24))).shape == (3, 24, 13)
    assert model(torch.randint(0, 13, (1, 3))).shape == (1, 3, 13)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.randint(0, 13, (1, 25)))
    assert model.reformer.layers[0].f.attn.causal  # causal by default


def test_reformer_lm_learns_copy_task():
    torch.manual_seed(0)
    vocab, n, batch = 10, 16, 16
    model = rx.nn.ReformerLM(vocab + 1, 64, 2, 2, 2 * n, bucket_size=8, n_hashes=2,
                             ff_chunk_size=64)
    assert model.reformer.reversible
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(80):
        src = torch.randint(0, vocab, (batch, n), generator=gen)
        seq = torch.cat([src, torch.full((batch, 1), vocab), src], 1)  # x SEP x
        logits = model(seq[:, :-1])
        # loss on the copy only: the first half is random and cannot be predicted
        loss = F.cross_entropy(logits[:, n:].reshape(-1, vocab + 1), seq[:, n + 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last < 0.5 * first, f"loss {first:.3f} -> {last:.3f}"


# ------------------------------------------------------------------------ DistributedDataParallel


def _ddp_model():
    torch.manual_seed(0)
    return rx.nn.ReformerLM(11, 32, 2, 2, 24, bucket_size=4, n_hashes=2, ff_chunk_size=8).double()


def _ddp_batch():
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, 11, (4, 24), generator=gen)
    mask = torch.zeros(4, 23, dtype=torch.bool)
    mask[1, 20:] = True
    mask[2, 18:] = True
    return tokens, mask


def _lm_loss(model, tokens, mask, divisor):
    logits = model(tokens[:, :-1], mask)
    targets = tokens[:, 1:].masked_fill(mask, -100)  # no loss at padded positions
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           reduction="sum") / divisor


def _train_two_steps(model, module, tokens, mask, divisor):
    """Two SGD steps of ``model`` (``module`` or its DDP wrapper) in training mode: fresh
    rotations drawn after manual_seed, so every process draws the same ones. Returns the first
    step's gradients and the parameters after the second step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = None
    for step in range(2):
        torch.manual_seed(100 + step)
        opt.zero_grad()
        _lm_loss(model, tokens, mask, divisor).backward()
        if first is None:
            first = {n: p.grad.clone() for n, p in module.named_parameters()}
        opt.step()
    return first, {n: p.detach().clone() for n, p in module.named_parameters()}


def _ddp_worker(rank, world_size, store_path, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=world_size)
    try:
        module = _ddp_model()
        model = nn.parallel.DistributedDataParallel(module)
        tokens, mask = _ddp_batch()
        n_valid = int((~mask).sum())
        part = slice(2 * rank, 2 * rank + 2)
        # DDP averages the ranks' gradients: with each rank's loss = its sum / (n_valid / 2),
        # the average is the gradient of the whole batch's mean loss.
        grads, params = _train_two_steps(model, module, tokens[part], mask[part],
                                         n_valid / world_size)
        torch.save({"grads": grads, "params": params}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_matches_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    model = _ddp_model()
    tokens, mask = _ddp_batch()
    grads, params = _train_two_steps(model, model, tokens, mask, int((~mask).sum()))  # mean
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["grads"].keys() == grads.keys()
        for name, g in grads.items():
            assert rel_error(got["grads"][name], g) <= 1e-10, name
            assert g.abs().sum() > 0, name
        for name, p in params.items():
            assert rel_error(got["params"][name], p) <= 1e-10, name


# ------------------------------------------------------------------------ CUDA


@cuda
def test_cuda_reversible_equals_plain_with_dropout():
    model = small_reformer(F32, dropout=0.2, causal=True).cuda()
    x = torch.randn(2, 37, 32, device="cuda")
    mask = _mask(2, 37, 29).cuda()
    out = []
    for reversible in (True, False):
        model.reversible = reversible
        for p in model.parameters():
            p.grad = None
        torch.manual_seed(5)
        xr = x.clone().requires_grad_(True)
        y = model(xr, mask)
        cuda_state = torch.cuda.get_rng_state()
        y.sum().backward()
        assert torch.equal(torch.cuda.get_rng_state(), cuda_state)
        out.append([y.detach(), xr.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*out):
        assert rel_error(a, b) <= TOL[F32]

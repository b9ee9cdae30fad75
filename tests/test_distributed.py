"""Distributed training: FSDP2 per-layer sharding (reformer_ext.nn.shard_reformer) and DDP, 2 and
4 processes over gloo on the CPU, against single-process training on the whole batch; DCP
checkpoints; the shardings the Reformer refuses.

One spawn per world size runs every scenario (spawning is most of the time on a small machine);
each rank 0 writes its results and the parent compares them with single-process runs.
"""

import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import reformer_ext as rx

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

VOCAB, LENGTH, BATCH, STEPS = 11, 16, 4, 2
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _model(dtype, reversible, dropout=0.1, seed=0, **options):
    torch.manual_seed(seed)
    return rx.nn.ReformerLM(VOCAB, 16, 2, 2, LENGTH, bucket_size=4, n_hashes=2, ff_chunk_size=8,
                            dropout=dropout, reversible=reversible, **options).to(dtype)


def _batch():
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=gen)
    mask = torch.zeros(BATCH, LENGTH - 1, dtype=torch.bool)
    mask[1, 12:] = True
    mask[3, 9:] = True
    return tokens, mask


def _loss(model, tokens, mask, divisor):
    logits = model(tokens[:, :-1], mask)
    targets = tokens[:, 1:].masked_fill(mask, -100)
    return F.cross_entropy(logits.reshape(-1, VOCAB).double(), targets.reshape(-1),
                           reduction="sum") / divisor


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _train(model, tokens, mask, divisor, steps=STEPS, first_step=0, opt=None, world=1):
    """``steps`` Adam steps; the losses (averaged over the processes) and the first step's
    gradients (gathered)."""
    opt = opt or torch.optim.Adam(model.parameters(), lr=1e-2)
    losses, grads = [], None
    for step in range(first_step, first_step + steps):
        torch.manual_seed(100 + step)  # every rank draws the same seeds and rotations
        opt.zero_grad()
        loss = _loss(model, tokens, mask, divisor)
        loss.backward()
        loss = loss.detach()
        if world > 1:
            dist.all_reduce(loss)  # world x the whole batch's loss (see _local)
        losses.append(loss.item() / world)
        if grads is None:
            grads = {n: _full(p.grad).detach().clone() for n, p in model.named_parameters()}
        opt.step()
    return losses, grads, opt


def _local(rank, world):
    tokens, mask = _batch()
    n_valid = int((~mask).sum())
    b = BATCH // world
    part = slice(rank * b, (rank + 1) * b)
    # FSDP and DDP average the ranks' gradients: with each rank's loss = its sum / (n_valid /
    # world) the average is the gradient of the whole batch's mean loss (and the sum over the
    # ranks of the losses is the whole batch's loss).
    return tokens[part], mask[part], n_valid / world, rank * b


SCENARIOS = [  # name, how, dtype, reversible
    ("fsdp_rev_f64", "fsdp", torch.float64, True),
    ("fsdp_plain_f64", "fsdp", torch.float64, False),
    ("ddp_rev_f64", "ddp", torch.float64, True),
    ("fsdp_rev_f32", "fsdp", torch.float32, True),
    ("fsdp_rev_attention_dropout_f64", "fsdp", torch.float64, True),
    ("ddp_rev_attention_dropout_f64", "ddp", torch.float64, True),
]
WORLDS = {"fsdp_rev_f64": (2, 4), "fsdp_plain_f64": (2, 4), "ddp_rev_f64": (2, 4),
          "fsdp_rev_f32": (2,), "fsdp_rev_attention_dropout_f64": (2,),
          "ddp_rev_attention_dropout_f64": (2,)}  # the world sizes each scenario runs at (time)
# attention-probability dropout alone, in a local and an LSH layer
ATTENTION_DROPOUT = dict(dropout=0.0, attn_layers=["local", "lsh"], local_chunk_length=4,
                         lsh_attention_dropout=0.3, local_attention_dropout=0.3)
OPTIONS = {"fsdp_rev_attention_dropout_f64": ATTENTION_DROPOUT,
           "ddp_rev_attention_dropout_f64": ATTENTION_DROPOUT}  # _model's other scenarios: defaults


def _scenario(rank, world, how, dtype, reversible, offset=True, options=None):
    tokens, mask, divisor, first = _local(rank, world)
    model = _model(dtype, reversible, **(options or {}))
    if offset:
        rx.nn.set_dropout_sample_offset(model, first)
    if how == "fsdp":
        rx.nn.shard_reformer(model)
        wrapped = model
    else:
        wrapped = nn.parallel.DistributedDataParallel(model)
    losses, grads, _ = _train(wrapped, tokens, mask, divisor, world=world)
    if how == "ddp":
        grads = {n[len("module."):] if n.startswith("module.") else n: g
                 for n, g in grads.items()}
    return {"losses": losses, "grads": grads}


def _dcp(rank, world, path):
    """Uninterrupted 4 steps vs 2 steps, save, a fresh differently initialised model + optimizer,
    load, 2 steps."""
    tokens, mask, divisor, first = _local(rank, world)
    model = _model(torch.float64, True)
    rx.nn.set_dropout_sample_offset(model, first)
    rx.nn.shard_reformer(model)
    whole, _, _ = _train(model, tokens, mask, divisor, steps=4, world=world)

    model = _model(torch.float64, True)
    rx.nn.set_dropout_sample_offset(model, first)
    rx.nn.shard_reformer(model)
    head, _, opt = _train(model, tokens, mask, divisor, steps=2, world=world)
    rx.nn.save_sharded_checkpoint(path, model, opt, step=2)
    torch.manual_seed(12345)  # the checkpoint restores the generator

    model = _model(torch.float64, True, seed=3)
    rx.nn.set_dropout_sample_offset(model, first)
    rx.nn.shard_reformer(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    extra = rx.nn.load_sharded_checkpoint(path, model, opt, step=0)
    tail, _, _ = _train(model, tokens, mask, divisor, steps=2, first_step=extra["step"], opt=opt,
                        world=world)
    return {"whole": whole, "resumed": head + tail, "step": extra["step"]}


def _gathered(rank, world):
    """How many layer branches hold gathered weights whenever a branch runs (forward and
    recompute), and after the step: weights are gathered one branch at a time (plus FSDP's
    prefetch of the next one in the backward)."""
    tokens, mask, divisor, first = _local(rank, world)
    model = _model(torch.float64, True)
    model.reformer.layers.extend(_model(torch.float64, True, seed=1).reformer.layers)  # depth 4
    model.reformer.depth = len(model.reformer.layers)
    rx.nn.shard_reformer(model)
    branches = [b for block in model.reformer.layers for b in (block.f, block.g)]

    def unsharded():
        return sum(b._get_fsdp_state()._fsdp_param_group.is_unsharded for b in branches)

    counts = []
    for b in branches:
        b.register_forward_pre_hook(lambda *_: counts.append(unsharded()))
    torch.manual_seed(1)
    _loss(model, tokens, mask, divisor).backward()
    return {"counts": counts, "after": unsharded(), "calls": len(counts),
            "branches": len(branches)}


def _errors(rank, world):
    """The shardings the Reformer refuses: the error messages (None: no error)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    tokens, mask, divisor, _ = _local(rank, world)
    out = {}

    def attempt(name, build, run=True):
        try:
            model = build()
            if run:
                _loss(model, tokens, mask, divisor).backward()
            out[name] = None
        except (RuntimeError, ValueError, TypeError) as e:
            out[name] = str(e)

    def whole_model():
        return fully_shard(_model(torch.float64, True))

    def some_layers():
        model = _model(torch.float64, True)
        block = model.reformer.layers[0]
        fully_shard(block.f)
        fully_shard(block.g)
        return fully_shard(model)

    def no_root():
        model = _model(torch.float64, True)
        for block in model.reformer.layers:
            fully_shard(block.f)
            fully_shard(block.g)
        return model

    def blocks_reversible():
        model = _model(torch.float64, True)
        for block in model.reformer.layers:
            fully_shard(block)
        return fully_shard(model)

    def blocks_plain():  # plain FSDP around ordinary modules: allowed
        model = _model(torch.float64, False)
        for block in model.reformer.layers:
            fully_shard(block)
        return fully_shard(model)

    def group_mismatch():
        mesh = init_device_mesh("cpu", (world,))
        group = dist.new_group([0])  # every rank must take part in new_group
        return rx.nn.shard_reformer(_model(torch.float64, True), mesh, process_group=group)

    attempt("whole_model", whole_model)
    attempt("some_layers", some_layers)
    attempt("no_root", no_root)
    attempt("blocks_reversible", blocks_reversible)
    attempt("blocks_plain", blocks_plain)
    attempt("group_mismatch", group_mismatch, run=False)
    return out


def _worker(rank, world, store_path, out_dir):
    import time
    t0 = time.time()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=world)
    try:
        results = {name: _scenario(rank, world, how, dtype, rev, options=OPTIONS.get(name))
                   for name, how, dtype, rev in SCENARIOS if world in WORLDS[name]}
        if world == 2:
            # without the sample offset each rank's masks are those of the first samples
            results["no_offset"] = _scenario(rank, world, "fsdp", torch.float64, True,
                                             offset=False)
            results["dcp"] = _dcp(rank, world, os.path.join(out_dir, "ckpt"))
            results["errors"] = _errors(rank, world)
            results["gathered"] = _gathered(rank, world)
        results["seconds"] = time.time() - t0
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "results.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def reference():
    """Single-process training on the whole batch, per scenario."""
    tokens, mask = _batch()
    n_valid = int((~mask).sum())
    out = {}
    for name, _, dtype, rev in SCENARIOS:
        losses, grads, _ = _train(_model(dtype, rev, **OPTIONS.get(name, {})), tokens, mask,
                                  n_valid)
        out[name] = {"losses": losses, "grads": grads}
    return out


def _run(world, tmp_path):
    mp.spawn(_worker, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world,
             join=True)
    return torch.load(tmp_path / "results.pt")


def _rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return {world: _run(world, tmp_path_factory.mktemp(f"world{world}")) for world in (2, 4)}


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("name,how,dtype,reversible", SCENARIOS)
def test_matches_single_process_whole_batch(runs, reference, world, name, how, dtype,
                                            reversible):
    if world not in WORLDS[name]:
        pytest.skip(f"{name} runs at world sizes {WORLDS[name]} only")
    got, want = runs[world][name], reference[name]
    tol = TOL[dtype]
    for a, b in zip(got["losses"], want["losses"]):
        assert abs(a - b) <= tol * abs(b), (a, b)
    assert got["grads"].keys() == want["grads"].keys()
    for key, g in want["grads"].items():
        assert g.abs().sum() > 0, key
        assert _rel(got["grads"][key], g) <= tol, key


def test_without_sample_offset_dropout_masks_depend_on_the_split(runs, reference):
    # without set_dropout_sample_offset each rank's masks are those of samples 0.. of the
    # whole batch: the result depends on the number of processes
    got, want = runs[2]["no_offset"], reference["fsdp_rev_f64"]
    assert abs(got["losses"][0] - want["losses"][0]) > 1e-6


def test_dcp_resume_continues_the_same_losses(runs):
    got = runs[2]["dcp"]
    assert got["step"] == 2
    for a, b in zip(got["resumed"], got["whole"]):
        assert abs(a - b) <= 1e-12 * abs(b), (got["resumed"], got["whole"])


def test_refused_shardings_name_the_problem(runs):
    print({world: round(r["seconds"], 1) for world, r in runs.items()})
    errors = runs[2]["errors"]
    assert "enclosing fully_shard unit" in errors["whole_model"]
    # layer 0 sharded per branch, layer 1's weights left to the root
    assert "mixed FSDP sharding" in errors["some_layers"]
    assert "layers[1].f" in errors["some_layers"]
    assert "root" in errors["no_root"]
    assert "enclosing fully_shard unit" in errors["blocks_reversible"]
    assert errors["blocks_plain"] is None
    assert "does not match the mesh" in errors["group_mismatch"]


def test_weights_are_gathered_one_branch_at_a_time(runs):
    got = runs[2]["gathered"]
    assert got["calls"] == 2 * got["branches"]  # forward + recompute of each branch
    assert max(got["counts"]) <= 2, got["counts"]  # the running branch (+ a prefetched one)
    assert got["after"] == 0


def test_shard_reformer_needs_an_initialised_process_group():
    with pytest.raises(RuntimeError, match="not initialized"):
        rx.nn.shard_reformer(_model(torch.float64, True))
    with pytest.raises(TypeError, match="holds no Reformer"):
        rx.nn.shard_reformer(nn.Linear(2, 2))


@pytest.mark.parametrize("options", [dict(dropout=0.3), ATTENTION_DROPOUT],
                         ids=["branch dropout", "attention dropout"])
def test_sample_offset_reproduces_the_whole_batch_masks(options):
    """Single process: the second half of a batch run alone with offset 2 gives the rows the
    whole batch gives (the rule the distributed tests rely on), for both stack paths; for
    attention-probability dropout too, whose seeds the offset passes as a fourth column."""
    tokens, _ = _batch()
    for reversible in (True, False):
        model = _model(torch.float64, reversible, **options)
        torch.manual_seed(5)
        whole = model(tokens)
        rx.nn.set_dropout_sample_offset(model, 2)
        torch.manual_seed(5)
        half = model(tokens[2:])
        assert torch.allclose(half, whole[2:], rtol=0, atol=1e-12)
        rx.nn.set_dropout_sample_offset(model, 0)
        torch.manual_seed(5)
        assert not torch.allclose(model(tokens[2:]), whole[2:])

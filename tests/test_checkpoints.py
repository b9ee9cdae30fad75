"""Checkpoints: the state_dict of every reformer_ext.nn module survives a
save/load round trip (through torch.save / torch.load into a freshly built module with other
random initial weights and seeds), after which the module computes bitwise what the original
computes; loading a checkpoint of the wrong shapes gives PyTorch's clear error.
"""

import io

import pytest
import torch

import reformer_ext as rx
import reformer_ext.nn as rnn

B, L, D = 2, 19, 16


def _x(seed=0, shape=(B, L, D)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _mask():
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[1, -4:] = True
    return mask


def _attention(seed):
    return rnn.LSHSelfAttention(D, 2, bucket_size=4, n_hashes=3, seed=seed)


def _feed_forward(seed):
    return rnn.ChunkedFeedForward(D, 24, chunk_size=8, dropout=0.2)


def _reversible(seed):
    return rnn.ReversibleSequence(
        [(_attention(seed + k), _feed_forward(seed + k)) for k in range(2)])


def _reformer(seed):
    return rnn.Reformer(D, 2, 2, d_ff=32, bucket_size=4, n_hashes=2, ff_chunk_size=8,
                        dropout=0.1)


def _reformer_lm(seed):
    return rnn.ReformerLM(23, D, 2, 2, 32, bucket_size=4, n_hashes=2, ff_chunk_size=8,
                          dropout=0.1)


def _axial(seed):
    return rnn.AxialPositionEmbedding((4, 5), (6, 10), dropout=0.2)


def _axial_reformer_lm(seed):
    model = rnn.ReformerLM(23, D, 2, 2, 32, bucket_size=4, n_hashes=2, ff_chunk_size=8,
                           dropout=0.1, axial_position_shape=(4, 8), axial_position_dims=(6, 10))
    model.pos_emb.dropout = 0.1
    return model


def _tokens():
    return torch.randint(0, 23, (B, L), generator=torch.Generator().manual_seed(5))


# name -> (build(seed) -> module, run(module) -> tensor or tuple)
MODULES = {
    "LSHSelfAttention": (_attention, lambda m: m(_x(), _mask())),
    "ChunkedFeedForward": (_feed_forward, lambda m: m(_x(), dropout_seed=3)),
    "ReversibleSequence": (_reversible, lambda m: m(_x(1), _x(2), key_padding_mask=_mask())),
    "Reformer": (_reformer, lambda m: m(_x(), _mask())),
    "ReformerLM": (_reformer_lm, lambda m: m(_tokens(), _mask())),
    "AxialPositionEmbedding": (_axial, lambda m: m(L, batch_size=B)),
    "ReformerLM axial": (_axial_reformer_lm, lambda m: m(_tokens(), _mask())),
}


def _build(name, seed):
    torch.manual_seed(seed)  # parameter init, and the rotation seeds drawn at construction
    return MODULES[name][0](seed)


def _round_trip(module):
    """The state_dict written with torch.save and read back (a real checkpoint file)."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _outputs(name, module):
    out = MODULES[name][1](module)
    return out if isinstance(out, tuple) else (out,)


def _assert_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", MODULES)
def test_state_dict_round_trip_eval(name):
    """Eval mode: a fresh module (other weights, other rotation seeds) loaded from the
    checkpoint computes bitwise what the saved one does, with the fixed (seeded) rotations."""
    original = _build(name, seed=1).eval()
    fresh = _build(name, seed=2).eval()
    with torch.no_grad():
        want = _outputs(name, original)
        assert not all(torch.equal(a, b) for a, b in zip(want, _outputs(name, fresh))), \
            "the two modules agree before loading: the test would prove nothing"
        missing, unexpected = fresh.load_state_dict(_round_trip(original))
        assert not missing and not unexpected
        _assert_identical(want, _outputs(name, fresh))
    for key, value in original.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key


@pytest.mark.parametrize("name", MODULES)
def test_state_dict_round_trip_training_step(name):
    """Training mode (dropout, fresh rotations): with the same torch.manual_seed, the loaded
    module's forward and parameter gradients are bitwise those of the saved one (resuming a
    training run from a checkpoint reproduces it)."""
    results = []
    original = _build(name, seed=1).train()
    fresh = _build(name, seed=2).train()
    fresh.load_state_dict(_round_trip(original))
    for module in (original, fresh):
        torch.manual_seed(123)
        out = _outputs(name, module)
        loss = sum((o.float() * torch.linspace(-1, 1, o.shape[-1])).sum() for o in out)
        grads = torch.autograd.grad(loss, list(module.parameters()))
        results.append((out, grads))
    _assert_identical(results[0][0], results[1][0])
    _assert_identical(results[0][1], results[1][1])


def test_lsh_attention_rotation_seed_is_saved():
    """The fixed rotations are a function of the rotation_seed buffer: it is in the checkpoint,
    and loading it (into a module whose rotations were already used and cached) changes the
    rotations the module evaluates with."""
    original = _build("LSHSelfAttention", seed=1).eval()
    fresh = _build("LSHSelfAttention", seed=2).eval()
    state = _round_trip(original)
    assert "rotation_seed" in state
    assert not torch.equal(original.make_rotations(L), fresh.make_rotations(L))
    fresh.load_state_dict(state)
    assert torch.equal(original.make_rotations(L), fresh.make_rotations(L))


# ------------------------------------------------------------------ checkpoints of another shape

WRONG_SHAPE = {
    # name -> (the module, a module of other sizes whose checkpoint must not load into it)
    "LSHSelfAttention d_model": (lambda: rnn.LSHSelfAttention(D, 2),
                                 lambda: rnn.LSHSelfAttention(D + 4, 2)),
    "LSHSelfAttention d_head": (lambda: rnn.LSHSelfAttention(D, 2),
                                lambda: rnn.LSHSelfAttention(D, 2, d_head=4)),
    "ChunkedFeedForward d_ff": (lambda: rnn.ChunkedFeedForward(D, 24),
                                lambda: rnn.ChunkedFeedForward(D, 32)),
    "ReversibleSequence width": (
        lambda: rnn.ReversibleSequence([(torch.nn.Linear(D, D), torch.nn.Linear(D, D))]),
        lambda: rnn.ReversibleSequence([(torch.nn.Linear(D, D), torch.nn.Linear(D, D + 1))])),
    "Reformer d_ff": (lambda: rnn.Reformer(D, 1, 2, d_ff=32),
                      lambda: rnn.Reformer(D, 1, 2, d_ff=48)),
    "ReformerLM num_tokens": (lambda: rnn.ReformerLM(23, D, 1, 2, 32),
                              lambda: rnn.ReformerLM(29, D, 1, 2, 32)),
    "ReformerLM max_seq_len": (lambda: rnn.ReformerLM(23, D, 1, 2, 32),
                               lambda: rnn.ReformerLM(23, D, 1, 2, 64)),
    "AxialPositionEmbedding axial_shape": (lambda: rnn.AxialPositionEmbedding((4, 8), (6, 10)),
                                           lambda: rnn.AxialPositionEmbedding((8, 4), (6, 10))),
}


@pytest.mark.parametrize("name", WRONG_SHAPE)
def test_wrong_shapes_give_size_mismatch(name):
    make, make_other = WRONG_SHAPE[name]
    module = make()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(RuntimeError, match="size mismatch for"):
        module.load_state_dict(_round_trip(make_other()))
    # A failed strict load leaves no half-loaded tensor of the wrong shape behind.
    for key, value in module.state_dict().items():
        assert value.shape == before[key].shape, key


@pytest.mark.parametrize("strict", [True, False])
def test_wrong_shapes_fail_even_when_not_strict(strict):
    """strict=False forgives missing and unexpected keys, never a size mismatch."""
    module = rnn.Reformer(D, 1, 2, d_ff=32)
    other = rnn.Reformer(D, 1, 2, d_ff=48)
    with pytest.raises(RuntimeError, match="size mismatch for"):
        module.load_state_dict(other.state_dict(), strict=strict)


def test_other_depth_gives_missing_or_unexpected_keys():
    deep = rnn.Reformer(D, 2, 2, d_ff=32)
    shallow = rnn.Reformer(D, 1, 2, d_ff=32)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        shallow.load_state_dict(deep.state_dict())
    with pytest.raises(RuntimeError, match="Missing key"):
        deep.load_state_dict(shallow.state_dict())


def test_rotation_seed_of_wrong_shape():
    module = rnn.LSHSelfAttention(D, 2)
    state = module.state_dict()
    state["rotation_seed"] = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="size mismatch for rotation_seed"):
        module.load_state_dict(state)


def test_reformer_loads_state_dicts_of_the_earlier_layer_layout():
    """Before the stack operator, Reformer's layers lived in a ReversibleSequence
    (``layers.blocks.<i>.``); such checkpoints still load, also nested in ReformerLM."""
    torch.manual_seed(0)
    source = rx.nn.ReformerLM(20, 16, 2, 2, 32, bucket_size=4, n_hashes=1).eval()
    old = {k.replace("reformer.layers.", "reformer.layers.blocks."): v
           for k, v in source.state_dict().items()}
    assert any(".layers.blocks.0." in k for k in old)
    torch.manual_seed(1)
    target = rx.nn.ReformerLM(20, 16, 2, 2, 32, bucket_size=4, n_hashes=1).eval()
    target.load_state_dict(old)
    tokens = torch.randint(0, 20, (2, 11))
    assert torch.equal(target(tokens), source(tokens))


def test_axial_and_learned_position_checkpoints_do_not_mix():
    """A ReformerLM with axial position embeddings (``pos_emb.weights.<i>``) and one with the
    learned table (``pos_emb.weight``) have the same keys elsewhere; across the two, a strict
    load names the position keys as missing and unexpected."""
    learned = rnn.ReformerLM(23, D, 1, 2, 32)
    axial = rnn.ReformerLM(23, D, 1, 2, 32, axial_position_shape=(4, 8),
                           axial_position_dims=(6, 10))
    with pytest.raises(RuntimeError) as error:
        learned.load_state_dict(axial.state_dict())
    assert '"pos_emb.weight"' in str(error.value) and '"pos_emb.weights.0"' in str(error.value)
    assert ({k for k in learned.state_dict() if not k.startswith("pos_emb.")}
            == {k for k in axial.state_dict() if not k.startswith("pos_emb.")})

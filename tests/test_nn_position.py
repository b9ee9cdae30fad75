"""Tests of rx.nn.AxialPositionEmbedding and ReformerLM's axial option (docs/semantics.md §4,
"Axial position embeddings").

- the encodings equal, bit for bit, those of HF's ``AxialPositionEmbeddings`` with the same
  weights (float32 and float64): eval mode at any length (HF's eval path takes two axes only),
  training mode at the full length, with 1, 2 and 3 axes (skipped without transformers);
- with dropout, the same torch.manual_seed gives HF's mask (skipped without transformers), and
  the mask has HF's structure and rate;
- any length in training and eval; an independent formula for the encodings; gradients reach
  exactly the table rows the positions use (gradcheck in float64); state_dict round trip;
- ReformerLM with axial embeddings: forward/backward at L < max_seq_len and L = max_seq_len, and
  the same logits as token_emb + encodings -> reformer -> head computed by hand.

Bad inputs: the catalogue in tests/test_nn_errors.py; the messages' numbers here.
"""

import math
import warnings

import pytest
import torch

import reformer_ext as rx

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = {  # id -> (axial_shape, axial_dims)
    "1-axis": ((7,), (5,)),
    "2-axis": ((4, 6), (3, 5)),
    "3-axis": ((3, 4, 2), (2, 3, 4)),
}
DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]


def _module(name, dtype=torch.float64, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    shape, dims = SHAPES[name]
    return rx.nn.AxialPositionEmbedding(shape, dims, dropout=dropout, dtype=dtype)


def _reference(module, length):
    """Position p: the row-major multi-index (i_1, ..., i_k) of p, and each axis' table entry
    at its own index (the weight indexed directly, zeros on the other axes)."""
    rows = []
    for p in range(length):
        multi_index = []
        for size in reversed(module.axial_shape):
            multi_index.insert(0, p % size)
            p //= size
        parts = []
        for axis, weight in enumerate(module.weights):
            at = tuple(multi_index[axis] if a == axis else 0 for a in range(weight.dim() - 1))
            parts.append(weight[at])
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def _lengths(max_len):
    return sorted({1, 2, 5, max_len // 2 + 1, max_len - 1, max_len} - {0})


# ------------------------------------------------------------------------ against HF

def _hf_twin(module):
    """HF's AxialPositionEmbeddings of the module's shape, dims and dropout, with its weights."""
    pytest.importorskip("transformers")
    from transformers import ReformerConfig
    from transformers.models.reformer.modeling_reformer import AxialPositionEmbeddings

    config = ReformerConfig(hidden_size=module.d_model, axial_pos_shape=module.axial_shape,
                            axial_pos_embds_dim=module.axial_dims, attn_layers=["lsh"],
                            hidden_dropout_prob=module.dropout)
    hf = AxialPositionEmbeddings(config).to(module.weights[0].dtype)
    hf.load_state_dict(module.state_dict())  # same names, same shapes
    return hf


def _hf_encodings(hf, length, batch):
    with warnings.catch_warnings():  # dropout2d's warnings about 3-D and 5-D inputs
        warnings.simplefilter("ignore")
        return hf(torch.arange(length).expand(batch, length))


@pytest.mark.parametrize("dtype", DTYPES)
def test_equals_hf_in_eval_at_any_length(dtype):
    module = _module("2-axis", dtype).eval()
    hf = _hf_twin(module).eval()
    for length in _lengths(module.max_len) + [7, 13]:
        ours = module(length, batch_size=2)
        assert ours.shape == (2, length, module.d_model)
        assert torch.equal(ours, _hf_encodings(hf, length, 2)), length


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SHAPES)
def test_equals_hf_in_training_at_full_length(name, dtype):
    module = _module(name, dtype).train()
    hf = _hf_twin(module).train()
    assert torch.equal(module(module.max_len, batch_size=3),
                       _hf_encodings(hf, module.max_len, 3))


@pytest.mark.parametrize("name", SHAPES)
def test_dropout_mask_equals_hf_under_the_same_seed(name):
    module = _module(name, torch.float32, dropout=0.3).train()
    hf = _hf_twin(module).train()
    for seed in range(3):
        torch.manual_seed(seed)
        ours = module(module.max_len, batch_size=4)
        torch.manual_seed(seed)
        theirs = _hf_encodings(hf, module.max_len, 4)
        assert torch.equal(ours, theirs)
        assert (ours == 0).any() and (ours != 0).any()


def test_loads_into_hf_and_back():
    module = _module("2-axis", torch.float32).eval()
    hf = _hf_twin(module).eval()
    assert list(hf.state_dict()) == list(module.state_dict()) == ["weights.0", "weights.1"]
    fresh = _module("2-axis", torch.float32, seed=1).eval()
    fresh.load_state_dict(hf.state_dict())
    assert torch.equal(fresh(11), module(11))


# ------------------------------------------------------------------------ the encodings

@pytest.mark.parametrize("name", SHAPES)
def test_parameter_shapes_are_hf_layout(name):
    module = _module(name)
    shape, dims = SHAPES[name]
    k = len(shape)
    for axis, weight in enumerate(module.weights):
        expected = [1] * k + [dims[axis]]
        expected[axis] = shape[axis]
        assert tuple(weight.shape) == tuple(expected)
    assert [n for n, _ in module.named_parameters()] == [f"weights.{i}" for i in range(k)]
    assert module.d_model == sum(dims) and module.max_len == math.prod(shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SHAPES)
def test_encodings_follow_the_formula_in_training_and_eval(name, dtype):
    module = _module(name, dtype)
    for length in _lengths(module.max_len):
        want = _reference(module, length)
        for training in (True, False):
            out = module.train(training)(length)
            assert out.shape == (1, length, module.d_model)
            assert torch.equal(out[0], want), (length, training)


def test_batch_rows_without_dropout_are_one_tensor():
    module = _module("2-axis").train()
    out = module(10, batch_size=3)
    assert out.stride(0) == 0 and torch.equal(out[2], out[0])


@pytest.mark.parametrize("name", SHAPES)
def test_gradcheck(name):
    module = _module(name, torch.float64)
    names = [n for n, _ in module.named_parameters()]
    length = module.max_len - 3

    def encodings(*weights):
        return torch.func.functional_call(module, dict(zip(names, weights)), (length,),
                                          {"batch_size": 2})

    weights = [w.detach().clone().requires_grad_() for w in module.weights]
    assert torch.autograd.gradcheck(encodings, weights)


def test_gradients_reach_exactly_the_rows_used():
    """3 axes (3, 4, 2): positions 0..10 use rows 0-1 of axis 0, all rows of axes 1 and 2;
    each row's gradient is the sum of the output gradients of the positions that use it."""
    module = _module("3-axis")
    length = 11
    grad_out = torch.randn(1, length, module.d_model, dtype=torch.float64)
    module(length).backward(grad_out)
    dims = module.axial_dims
    per_axis = grad_out[0].split(list(dims), dim=-1)
    for axis, (weight, g) in enumerate(zip(module.weights, per_axis)):
        size = module.axial_shape[axis]
        stride = math.prod(module.axial_shape[axis + 1:])
        want = torch.zeros(size, dims[axis], dtype=torch.float64)
        for p in range(length):
            want[(p // stride) % size] += g[p]
        torch.testing.assert_close(weight.grad.reshape(size, dims[axis]), want)
    assert (module.weights[0].grad[2] == 0).all()  # row 2 of axis 0 starts at position 16


def test_state_dict_round_trip():
    module = _module("3-axis", torch.float32)
    fresh = _module("3-axis", torch.float32, seed=1)
    assert not torch.equal(fresh(24), module(24))
    fresh.load_state_dict(module.state_dict())
    assert torch.equal(fresh(24), module(24))


# ------------------------------------------------------------------------ dropout

@pytest.mark.parametrize("name", SHAPES)
def test_dropout_drops_hf_slices(name):
    """Two or more axes: every feature of every position sharing (batch row, i_2) is kept
    (scaled by 1/(1-p)) or zeroed together; one axis: one feature at every position."""
    p = 0.4
    module = _module(name, dropout=p)
    clean = module.eval()(module.max_len)[0]
    torch.manual_seed(7)
    out = module.train()(module.max_len, batch_size=64)
    ratio = out / clean
    scale = 1.0 / (1.0 - p)
    assert torch.all((ratio == 0) | torch.isclose(ratio, torch.tensor(scale, dtype=out.dtype)))
    kept = ratio != 0
    shape = module.axial_shape
    if len(shape) == 1:  # (batch, position, feature): the same at every position
        assert torch.equal(kept, kept[:, :1].expand_as(kept))
        slices = kept[:, 0, :]
    else:  # (batch, i_1, i_2, rest, feature): the same for all but (batch, i_2)
        grid = kept.reshape(64, shape[0], shape[1], -1)
        slices = grid[:, 0, :, 0]
        assert torch.equal(grid, slices[:, None, :, None].expand_as(grid))
    rate = 1.0 - slices.double().mean().item()  # 64 x (5 to 6) independent draws
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / slices.numel())


@pytest.mark.parametrize("name", SHAPES)
def test_dropout_at_short_length_is_the_full_table_cut(name):
    module = _module(name, dropout=0.5).train()
    torch.manual_seed(3)
    full = module(module.max_len, batch_size=3)
    for length in _lengths(module.max_len):
        torch.manual_seed(3)
        assert torch.equal(module(length, batch_size=3), full[:, :length])


def test_no_dropout_in_eval():
    module = _module("2-axis", dropout=0.5)
    assert torch.equal(module.eval()(24, batch_size=2)[0], _reference(module, 24))


# ------------------------------------------------------------------------ errors (messages)

def test_length_error_names_the_maximum_and_the_length():
    module = _module("2-axis")
    with pytest.raises(ValueError, match=r"length must be <= prod\(axial_shape\) = 24.*got 25"):
        module(25)


def test_reformer_lm_errors_name_the_sizes():
    with pytest.raises(ValueError, match=r"axial_position_dims must sum to d_model=16.*sum 15"):
        rx.nn.ReformerLM(11, 16, 1, 2, 24, axial_position_shape=(4, 6),
                         axial_position_dims=(5, 10))
    with pytest.raises(ValueError, match=r"max_seq_len=32.*product 24"):
        rx.nn.ReformerLM(11, 16, 1, 2, 32, axial_position_shape=(4, 6),
                         axial_position_dims=(6, 10))


# ------------------------------------------------------------------------ ReformerLM

def _axial_lm(max_seq_len=24, **kw):
    torch.manual_seed(0)
    return rx.nn.ReformerLM(11, 16, 2, 2, max_seq_len, bucket_size=4, n_hashes=2,
                            ff_chunk_size=8, axial_position_shape=(4, 6),
                            axial_position_dims=(6, 10), dtype=torch.float64, **kw)


def test_reformer_lm_axial_parameters():
    model = _axial_lm(max_seq_len=20)
    assert isinstance(model.pos_emb, rx.nn.AxialPositionEmbedding)
    keys = [k for k in model.state_dict() if k.startswith("pos_emb.")]
    assert keys == ["pos_emb.weights.0", "pos_emb.weights.1"]
    assert model.pos_emb.weights[0].shape == (4, 1, 6)
    assert model.pos_emb.weights[1].shape == (1, 6, 10)
    assert model.pos_emb.dropout == 0.0
    # both embeddings from N(0, init_std²), init_std = 0.02
    assert model.pos_emb.weights[1].std() < 0.05


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("length", [13, 24], ids=["L<max", "L=max"])
def test_reformer_lm_axial_equals_by_hand(length, training):
    model = _axial_lm().train(training)
    tokens = torch.randint(0, 11, (2, length), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)  # the training-mode rotations
    logits = model(tokens)
    assert logits.shape == (2, length, 11)
    logits.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert (model.pos_emb.weights[0].grad != 0).any()
    with torch.no_grad():
        x = model.token_emb(tokens) + _reference(model.pos_emb, length)
        torch.manual_seed(5)
        want = model.to_logits(model.reformer(x))
    assert torch.equal(logits.detach(), want)


def test_reformer_lm_axial_rejects_length_beyond_max_seq_len():
    model = _axial_lm(max_seq_len=20)
    with pytest.raises(ValueError, match="max_seq_len=20"):
        model(torch.zeros(1, 21, dtype=torch.long))

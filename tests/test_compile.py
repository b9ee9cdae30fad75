"""torch.compile of the modules: fullgraph compilation, outputs and gradients equal to
eager mode, zero graph breaks in torch._dynamo.explain, and no recompilation with dynamic=True
for new batch sizes and sequence lengths.

Kept small for CI: the aot_eager backend (Dynamo + AOTAutograd, the same kernels as eager, so
results match to the bit) everywhere but one inductor test. Training-mode forwards draw fresh
rotations (and dropout masks) from torch's generator: eager and compiled runs are compared
under the same seed, which aot_eager replays identically. Sizes 0 and 1 are always specialised
by torch.compile (a first call with batch 1 or length 1 compiles a separate graph), so the
dynamic-shape tests use sizes >= 2.
"""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import reformer_ext as rx

D_MODEL, HEADS, VOCAB = 16, 2, 37


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Every test starts from an empty compile cache, with one CPU thread (small tensors on a
    shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(threads)


def _padding_mask(batch, length):
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[-1, length - 3:] = True  # the last batch element has three padding tokens
    return mask


def _inputs(kind, batch, length):
    if kind == "tokens":
        return torch.randint(0, VOCAB, (batch, length))
    return torch.randn(batch, length, D_MODEL)


def _run(fn, model, x, mask, seed):
    """Output and gradients (input if float, then every parameter) of one step under ``seed``."""
    torch.manual_seed(seed)
    x = x.clone().requires_grad_() if x.is_floating_point() else x
    y = fn(x) if mask is None else fn(x, mask)
    wrt = ([x] if x.is_floating_point() else []) + list(model.parameters())
    grads = torch.autograd.grad(y.square().mean(), wrt)
    return y.detach(), grads


def _assert_compiled_matches_eager(model, x, mask, *, backend="aot_eager", tol=None, seed=11):
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    y_eager, g_eager = _run(model, model, x, mask, seed)
    y_comp, g_comp = _run(compiled, model, x, mask, seed)
    kw = {} if tol is None else dict(rtol=tol, atol=tol)
    torch.testing.assert_close(y_comp, y_eager, **kw)
    assert len(g_comp) == len(g_eager)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, **kw)


def _assert_no_graph_breaks(model, *args):
    explanation = torch._dynamo.explain(model)(*args)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def _assert_no_recompilation(model, kind, shapes, with_mask):
    """First call compiles once; later (batch, length) pairs compile nothing new."""
    # Counts backend calls; one compile may call it more than once (Dynamo can restart its
    # analysis of a frame), so the count after the first call is the baseline.
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, dynamic=True, fullgraph=True)
    first_count = None
    for batch, length in shapes:
        x = _inputs(kind, batch, length)
        args = (x, _padding_mask(batch, length)) if with_mask else (x,)
        out = compiled(*args)
        assert out.shape[:2] == (batch, length)
        out.float().square().mean().backward()
        if first_count is None:
            first_count = counter.frame_count
            assert first_count >= 1
        assert counter.frame_count == first_count, \
            f"recompiled for batch={batch}, length={length}"


DYNAMIC_SHAPES = [(2, 10), (3, 17), (4, 29), (2, 6)]


# ------------------------------------------------------------------------ LSHSelfAttention

ATTENTION_CASES = [  # (training, padding mask, causal)
    pytest.param(True, True, True, id="train-mask-causal"),
    pytest.param(True, False, False, id="train-nomask"),
    pytest.param(False, True, False, id="eval-mask"),
    pytest.param(False, False, True, id="eval-nomask-causal"),
]


def _attention(training, causal, dropout=0.0):
    torch.manual_seed(0)
    attn = rx.nn.LSHSelfAttention(D_MODEL, HEADS, bucket_size=4, n_hashes=2, causal=causal,
                                  dropout=dropout)
    return attn.train(training)


@pytest.mark.parametrize("training,with_mask,causal", ATTENTION_CASES)
def test_attention_matches_eager(training, with_mask, causal):
    attn = _attention(training, causal, dropout=0.1 if training else 0.0)
    x = _inputs("float", 2, 11)
    _assert_compiled_matches_eager(attn, x, _padding_mask(2, 11) if with_mask else None)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_attention_no_graph_breaks(training):
    _assert_no_graph_breaks(_attention(training, causal=True), _inputs("float", 2, 9),
                            _padding_mask(2, 9))


def test_attention_dynamic_shapes_compile_once():
    # eval: the seeded rotations' shape follows the length (n_buckets); training-mode fresh
    # rotations are covered by the ReformerLM test below
    _assert_no_recompilation(_attention(False, causal=False), "float", DYNAMIC_SHAPES,
                             with_mask=True)


def test_attention_given_rotations_match_eager():
    attn = _attention(training=True, causal=False)
    rotations = attn.make_rotations(12)
    fn = torch.compile(lambda x: attn(x, rotations=rotations), backend="aot_eager",
                       fullgraph=True)
    x = _inputs("float", 2, 12)
    torch.testing.assert_close(fn(x), attn(x, rotations=rotations))


# ------------------------------------------------------------------------ ChunkedFeedForward


def _feed_forward(dropout=0.0):
    torch.manual_seed(0)
    return rx.nn.ChunkedFeedForward(D_MODEL, 24, chunk_size=5, dropout=dropout)


def test_feed_forward_matches_eager_and_has_no_graph_breaks():
    ff = _feed_forward()
    x = _inputs("float", 3, 7)
    _assert_compiled_matches_eager(ff, x, None)
    torch._dynamo.reset()
    _assert_no_graph_breaks(ff, x)


def test_feed_forward_dynamic_shapes_compile_once():
    _assert_no_recompilation(_feed_forward(), "float", DYNAMIC_SHAPES, with_mask=False)


def test_feed_forward_dropout_training_compiles():
    ff = _feed_forward(dropout=0.2).train()
    x = _inputs("float", 2, 9)
    _assert_no_graph_breaks(ff, x)
    torch._dynamo.reset()
    _assert_compiled_matches_eager(ff, x, None)


# ------------------------------------------------------------------------ Reformer, ReformerLM


def _reformer(reversible, training, causal=False):
    torch.manual_seed(0)
    model = rx.nn.Reformer(D_MODEL, 2, HEADS, d_ff=32, bucket_size=4, n_hashes=2, causal=causal,
                           ff_chunk_size=8, reversible=reversible)
    return model.train(training)


def _reformer_lm(reversible, training):
    torch.manual_seed(0)
    model = rx.nn.ReformerLM(VOCAB, D_MODEL, 2, HEADS, 64, d_ff=32, bucket_size=4, n_hashes=2,
                             ff_chunk_size=8, reversible=reversible)
    return model.train(training)


REVERSIBLE = [pytest.param(False, id="plain"),
              pytest.param(True, id="reversible")]
TRAINING = [pytest.param(True, id="train"), pytest.param(False, id="eval")]


@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("reversible", REVERSIBLE)
def test_reformer_matches_eager(reversible, training):
    model = _reformer(reversible, training, causal=training)
    _assert_compiled_matches_eager(model, _inputs("float", 2, 13), _padding_mask(2, 13))


@pytest.mark.parametrize("training", TRAINING)
@pytest.mark.parametrize("reversible", REVERSIBLE)
def test_reformer_lm_matches_eager(reversible, training):
    model = _reformer_lm(reversible, training)
    _assert_compiled_matches_eager(model, _inputs("tokens", 2, 13), _padding_mask(2, 13))


@pytest.mark.parametrize("reversible", REVERSIBLE)
def test_reformer_no_graph_breaks(reversible):
    model = _reformer(reversible, training=True)
    x = _inputs("float", 2, 9).requires_grad_()
    _assert_no_graph_breaks(model, x, _padding_mask(2, 9))


def test_reformer_with_dropout_no_graph_breaks():
    torch.manual_seed(0)
    model = rx.nn.Reformer(D_MODEL, 1, HEADS, d_ff=32, bucket_size=4, n_hashes=2, dropout=0.1,
                           reversible=False).train()
    _assert_no_graph_breaks(model, _inputs("float", 2, 9))


@pytest.mark.parametrize("reversible", REVERSIBLE)
def test_reformer_lm_no_graph_breaks(reversible):
    _assert_no_graph_breaks(_reformer_lm(reversible, training=True), _inputs("tokens", 2, 9))


@pytest.mark.parametrize("reversible", REVERSIBLE)
def test_reformer_lm_dynamic_shapes_compile_once(reversible):
    _assert_no_recompilation(_reformer_lm(reversible, training=True), "tokens", DYNAMIC_SHAPES,
                             with_mask=False)


def _axial_reformer_lm(training, dropout=0.0):
    """ReformerLM with axial position embeddings (8 x 8 = max_seq_len 64); ``dropout`` is the
    axial embedding's own (HF's mask over batch rows and second-axis indices)."""
    torch.manual_seed(0)
    model = rx.nn.ReformerLM(VOCAB, D_MODEL, 2, HEADS, 64, d_ff=32, bucket_size=4, n_hashes=2,
                             ff_chunk_size=8, axial_position_shape=(8, 8),
                             axial_position_dims=(6, 10))
    model.pos_emb.dropout = dropout
    return model.train(training)


@pytest.mark.parametrize("training", TRAINING)
def test_reformer_lm_axial_matches_eager_and_has_no_graph_breaks(training):
    model = _axial_reformer_lm(training, dropout=0.1 if training else 0.0)
    _assert_compiled_matches_eager(model, _inputs("tokens", 2, 13), _padding_mask(2, 13))
    torch._dynamo.reset()
    _assert_no_graph_breaks(model, _inputs("tokens", 2, 9))


def test_reformer_lm_axial_dynamic_shapes_compile_once():
    _assert_no_recompilation(_axial_reformer_lm(training=True, dropout=0.1), "tokens",
                             DYNAMIC_SHAPES, with_mask=False)


# ------------------------------------------------------------------------ inductor


def test_reformer_lm_inductor_matches_eager():
    """One real code-generating compile. The bucket spans the whole sequence, so the result does
    not depend on the hash: inductor's different float rounding of qk cannot move a token into
    another bucket (which would change its output by more than rounding)."""
    torch.manual_seed(0)
    model = rx.nn.ReformerLM(VOCAB, D_MODEL, 1, HEADS, 16, d_ff=32, bucket_size=16, n_hashes=1,
                             ff_chunk_size=8, reversible=False).eval()
    _assert_compiled_matches_eager(model, _inputs("tokens", 2, 12), None, backend="inductor",
                                   tol=1e-4)


# ------------------------------------------------------------ factorised bucket counts


@pytest.mark.parametrize("reversible", REVERSIBLE)
def test_reformer_mixed_local_and_lsh_layers_compile_fullgraph(reversible):
    # attn_layers: the stack stays one opaque node with local layers among LSH ones
    torch.manual_seed(0)
    model = rx.nn.Reformer(D_MODEL, 2, HEADS, d_ff=32, bucket_size=4, n_hashes=2,
                           ff_chunk_size=8, reversible=reversible, attn_layers=["local", "lsh"],
                           local_chunk_length=4).train()
    _assert_compiled_matches_eager(model, _inputs("float", 2, 13), _padding_mask(2, 13))
    _assert_no_graph_breaks(model, _inputs("float", 2, 9).requires_grad_(), _padding_mask(2, 9))


@pytest.mark.parametrize("reversible", REVERSIBLE)
def test_reformer_factorised_buckets_compile_fullgraph(reversible):
    # n_buckets as a list: the int[] bucket_factors reach the operators inside one graph
    torch.manual_seed(0)
    model = rx.nn.Reformer(D_MODEL, 2, HEADS, d_ff=32, bucket_size=4, n_hashes=2,
                           ff_chunk_size=8, reversible=reversible, n_buckets=[2, 4]).train()
    _assert_compiled_matches_eager(model, _inputs("float", 2, 13), _padding_mask(2, 13))
    _assert_no_graph_breaks(model, _inputs("float", 2, 9).requires_grad_(), _padding_mask(2, 9))

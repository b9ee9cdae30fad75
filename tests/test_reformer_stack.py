"""The reversible stack operator torch.ops.reformer.reformer_stack (docs/semantics.md §3)
against the plain-PyTorch reference (reformer_ext.reference.reformer_stack_reference): outputs
and every gradient, gradcheck and determinism. opcheck: tests/test_opcheck.py; argument errors:
tests/test_reformer_stack_errors.py. The module-level comparison with the non-reversible stack
is in tests/test_nn_reformer.py."""

import pytest
import torch

import reformer_ext as rx

from _helpers import (ATTENTION_PROBS_SALT, F64, LAYER_WEIGHT_NAMES, WEIGHTS_PER_LAYER,
                      StackOptions, measure_step_memory, mix64, reformer_stack,
                      reformer_stack_reference, stack_op_args, stack_ops, stack_problem)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_matches_reference_float64(causal, dropout_p, masked, activation):
    x1, x2, weights, rotations, seeds = stack_problem()
    mask = None
    if masked:
        mask = torch.zeros(2, 21, dtype=torch.bool)
        mask[1, 15:] = True
    options = dict(n_heads=2, key_padding_mask=mask, bucket_size=4, causal=causal,
                   activation=activation, dropout_p=dropout_p)
    y = reformer_stack(x1, x2, weights, rotations, seeds, ff_chunk_size=5, **options)
    y_ref = reformer_stack_reference(x1, x2, weights, rotations, seeds, **options)
    _assert_matches_reference(y, y_ref, [x1, x2, *weights])


def _assert_matches_reference(y, y_ref, inputs):
    """Outputs within 1e-10 and the gradients of every input within 1e-8 (relative, float64)."""
    g = [torch.randn_like(t) for t in y_ref]
    grads = torch.autograd.grad(y, inputs, g)
    grads_ref = torch.autograd.grad(y_ref, inputs, g)
    for a, b in zip(y, y_ref):
        assert _rel(a, b) <= 1e-10
    names = ["x1", "x2"] + [f"weights[{i}]" for i in range(len(inputs) - 2)]
    for a, b, name in zip(grads, grads_ref, names):
        assert _rel(a, b) <= 1e-8, name


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("local_layers", [(0,), (1, 2), (0, 1, 2)])
def test_mixed_local_and_lsh_layers_match_reference_float64(causal, dropout_p, masked,
                                                            local_layers):
    """HF's attn_layers: local layers among LSH ones (or only local layers); 21 positions in
    local chunks of 4 (a partial last chunk) with windows before and after."""
    x1, x2, weights, rotations, seeds = stack_problem(depth=3, local_layers=local_layers)
    mask = None
    if masked:
        mask = torch.zeros(2, 21, dtype=torch.bool)
        mask[0, :3] = True
        mask[1, 15:] = True
    options = dict(n_heads=2, key_padding_mask=mask, bucket_size=4, causal=causal,
                   dropout_p=dropout_p, local_layers=local_layers, local_chunk_length=4,
                   local_chunks_before=2, local_chunks_after=0 if causal else 1)
    y = reformer_stack(x1, x2, weights, rotations, seeds, ff_chunk_size=5, **options)
    y_ref = reformer_stack_reference(x1, x2, weights, rotations, seeds, **options)
    _assert_matches_reference(y, y_ref, [x1, x2, *weights])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("rates", [(0.3, 0.0), (0.0, 0.4), (0.2, 0.5)],
                         ids=["lsh", "local", "both"])
def test_attention_dropout_matches_reference_float64(causal, rates):
    """Attention-probability dropout inside the stack: each layer's mask seeded from its
    attention-output seed (docs/semantics.md §3), the same in the backward's recompute."""
    x1, x2, weights, rotations, seeds = stack_problem(depth=3, local_layers=(1,))
    mask = torch.zeros(2, 21, dtype=torch.bool)
    mask[1, 15:] = True
    options = dict(n_heads=2, key_padding_mask=mask, bucket_size=4, causal=causal,
                   dropout_p=0.1, local_layers=(1,), local_chunk_length=4,
                   lsh_attention_dropout_p=rates[0], local_attention_dropout_p=rates[1])
    y = reformer_stack(x1, x2, weights, rotations, seeds, ff_chunk_size=5, **options)
    y_ref = reformer_stack_reference(x1, x2, weights, rotations, seeds, **options)
    _assert_matches_reference(y, y_ref, [x1, x2, *weights])
    # the rates act: the same call without them differs
    options.update(lsh_attention_dropout_p=0.0, local_attention_dropout_p=0.0)
    y_plain = reformer_stack(x1, x2, weights, rotations, seeds, ff_chunk_size=5, **options)
    assert not torch.equal(y[0], y_plain[0])


def test_fourth_seed_column_seeds_the_attention_dropout():
    """seeds (depth, 4): the fourth column is each layer's attention-probability seed, used as
    given (against the reference, every gradient); holding the seeds the stack would derive, it
    gives bitwise the three-column result, and other values give other masks."""
    x1, x2, weights, rotations, seeds = stack_problem(depth=2, local_layers=(1,))
    options = dict(n_heads=2, bucket_size=4, causal=True, local_layers=(1,),
                   local_chunk_length=4, lsh_attention_dropout_p=0.3,
                   local_attention_dropout_p=0.3)
    g = torch.Generator().manual_seed(3)
    given = torch.cat([seeds, torch.randint(0, 2**62, (2, 1), generator=g)], dim=1)
    y = reformer_stack(x1, x2, weights, rotations, given, **options)
    y_ref = reformer_stack_reference(x1, x2, weights, rotations, given, **options)
    _assert_matches_reference(y, y_ref, [x1, x2, *weights])
    derived = torch.cat([seeds, mix64(seeds[:, :1] ^ ATTENTION_PROBS_SALT)], dim=1)
    three = reformer_stack(x1, x2, weights, rotations, seeds, **options)
    assert all(torch.equal(a, b) for a, b in
               zip(reformer_stack(x1, x2, weights, rotations, derived, **options), three))
    assert not torch.equal(y[0], three[0])


def test_gradcheck_float64_with_a_local_layer():
    x1, x2, weights, rotations, seeds = stack_problem(depth=2, batch=1, length=9, d_model=4,
                                                      n_heads=1, d_ff=6, n_buckets=2,
                                                      local_layers=(1,))

    def fn(x1, x2, *w):
        return reformer_stack(x1, x2, w, rotations, seeds, n_heads=1, bucket_size=4,
                              ff_chunk_size=4, dropout_p=0.25, causal=True, local_layers=(1,),
                              local_chunk_length=3)

    assert torch.autograd.gradcheck(fn, (x1, x2, *weights), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_dropout_is_applied_and_reproducible():
    x1, x2, weights, rotations, seeds = stack_problem()
    run = lambda p, s: reformer_stack(x1, x2, weights, rotations, s, n_heads=2,  # noqa: E731
                                      bucket_size=4, dropout_p=p)
    plain = run(0.0, seeds)
    dropped = run(0.3, seeds)
    again = run(0.3, seeds.clone())
    other = run(0.3, seeds + 1)
    assert not torch.equal(plain[0], dropped[0])
    assert torch.equal(dropped[0], again[0]) and torch.equal(dropped[1], again[1])
    assert not torch.equal(dropped[0], other[0])


def test_gradcheck_float64():
    x1, x2, weights, rotations, seeds = stack_problem(depth=2, batch=1, length=9,
                                                      d_model=4, n_heads=1, d_ff=6, n_buckets=2)

    def fn(x1, x2, *w):
        return reformer_stack(x1, x2, w, rotations, seeds, n_heads=1, bucket_size=4,
                              ff_chunk_size=4, dropout_p=0.25)

    assert torch.autograd.gradcheck(fn, (x1, x2, *weights), eps=1e-6, atol=1e-5, rtol=1e-4)


THREAD_COUNTS = (1, 2, 3, 4, 7)  # 7: more threads than this machine may have cores


def _large_args(dtype):
    """2 x 1028 positions (2056 rows: thousands, where a BLAS splits its work between threads),
    d_model 128, 4 heads, d_ff 512, one hash, ff chunks of 341 rows (the last one of 10: MKL splits 5 to 11
    rows between 2 threads on some CPUs, with different results), dropout, a padding mask.
    Weights scaled by 1/sqrt(fan_in) so float16 stays finite."""
    x1, x2, weights, rotations, seeds = stack_problem(depth=2, batch=2, length=1028,
                                                      d_model=128, n_heads=4, d_ff=512,
                                                      n_hashes=1, n_buckets=64, dtype=F64,
                                                      seed=5)
    weights = [(w.detach() / (w.shape[1] ** 0.5 if w.dim() == 2 else 1.0)).to(dtype)
               for w in weights]
    mask = torch.zeros(2, 1028, dtype=torch.bool)
    mask[1, 1000:] = True
    x1, x2 = x1.detach().to(dtype), x2.detach().to(dtype)
    rotations = [r.to(dtype) for r in rotations]
    g = torch.Generator().manual_seed(6)
    grads_out = [torch.randn(x1.shape, generator=g).to(dtype) for _ in range(2)]
    options = (4, 16, True, 1, 0, 341, "gelu", 0.1, 1e-5)  # small buckets: attention is cheap
    return (x1, x2, weights, rotations, mask, seeds, *options), grads_out


@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.float16, torch.bfloat16],
                         ids=["f32", "f64", "f16", "bf16"])
def test_deterministic_across_runs_and_threads(dtype):
    """Outputs and the gradients of x1, x2 and every weight bitwise equal across runs and for 1,
    2, 3, 4 and 7 threads."""
    args, grads_out = _large_args(dtype)

    def run():
        leaves = [t.clone().requires_grad_() for t in (args[0], args[1], *args[2])]
        y1, y2 = torch.ops.reformer.reformer_stack(leaves[0], leaves[1], leaves[2:], *args[3:])
        grads = torch.autograd.grad((y1, y2), leaves, grads_out)
        return [y1.detach(), y2.detach(), *grads]

    names = ["y1", "y2", "grad x1", "grad x2"] + [f"grad weights[{i}]" for i in
                                                  range(len(args[2]))]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(THREAD_COUNTS[0])
        first = run()
        assert all(torch.isfinite(t).all() for t in first)
        for name, a, b in zip(names, first, run()):
            assert torch.equal(a, b), f"{name} differs between two runs"
        for n in THREAD_COUNTS[1:]:
            torch.set_num_threads(n)
            for name, a, b in zip(names, first, run()):
                assert torch.equal(a, b), f"{name} differs with {n} threads vs 1"
    finally:
        torch.set_num_threads(threads)


def test_low_precision_runs_finite():
    for dtype in (torch.bfloat16, torch.float16):
        args = stack_op_args(dtype=dtype)
        y1, y2 = torch.ops.reformer.reformer_stack(*args)
        assert y1.dtype == dtype and torch.isfinite(y1).all() and torch.isfinite(y2).all()
        grads = torch.autograd.grad((y1.float() + y2.float()).sum(), [args[0], *args[2]])
        assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)


def test_weights_per_layer_constant():
    assert WEIGHTS_PER_LAYER == 12 == len(set(LAYER_WEIGHT_NAMES))
    model = rx.nn.Reformer(8, 3, 2, d_ff=12)
    layers = model.stack_weights()
    assert len(layers) == 3
    assert all(list(layer) == list(LAYER_WEIGHT_NAMES) for layer in layers)


def test_module_names_each_weight_for_the_stack():
    """The module hands the stack its weights by name: each name maps to the parameter it
    means (same-shaped weights such as the two LayerNorms' cannot trade places)."""
    model = rx.nn.Reformer(8, 2, 2, d_ff=12)
    for block, layer in zip(model.layers, model.stack_weights()):
        f, g = block.f, block.g
        expected = {"norm1_weight": f.norm.weight, "norm1_bias": f.norm.bias,
                    "qk_weight": f.attn.to_qk.weight, "v_weight": f.attn.to_v.weight,
                    "out_weight": f.attn.to_out.weight, "out_bias": f.attn.to_out.bias,
                    "norm2_weight": g.norm.weight, "norm2_bias": g.norm.bias,
                    "ffn_w1": g.ff.w1.weight, "ffn_b1": g.ff.w1.bias,
                    "ffn_w2": g.ff.w2.weight, "ffn_b2": g.ff.w2.bias}
        assert {k: id(v) for k, v in layer.items()} == {k: id(v) for k, v in expected.items()}


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_wrapper_takes_weights_by_name(change):
    x1, x2, weights, rotations, seeds = stack_problem(depth=2, length=9)
    layers = [dict(zip(LAYER_WEIGHT_NAMES, weights[i:i + WEIGHTS_PER_LAYER]))
              for i in (0, WEIGHTS_PER_LAYER)]
    if change == "missing":
        del layers[1]["norm2_bias"]
        needle = "missing: ['norm2_bias']"
    else:
        layers[1]["norm3_bias"] = layers[1]["norm2_bias"]
        needle = "unexpected: ['norm3_bias']"
    with pytest.raises(ValueError, match=r"layer 1's weights must be named") as info:
        stack_ops.reformer_stack(x1, x2, layers, rotations, seeds, StackOptions(n_heads=2))
    assert needle in str(info.value)


@pytest.mark.parametrize("factors", [(2, 4), (4, 2, 2)], ids=["2x4", "4x2x2"])
def test_factorised_buckets_match_reference_float64(factors):
    # bucket_factors shared by every layer; the backward recomputes the factorised hash
    x1, x2, weights, rotations, seeds = stack_problem(n_buckets=factors)
    mask = torch.zeros(2, 21, dtype=torch.bool)
    mask[1, 15:] = True
    options = dict(n_heads=2, key_padding_mask=mask, bucket_size=4, causal=True, dropout_p=0.2)
    y = reformer_stack(x1, x2, weights, rotations, seeds, ff_chunk_size=5,
                       bucket_factors=factors, **options)
    y_ref = reformer_stack_reference(x1, x2, weights, rotations, seeds, bucket_factors=factors,
                                     **options)
    y_int = reformer_stack(x1, x2, weights, rotations, seeds, ff_chunk_size=5, **options)
    assert _rel(y_int[0], y_ref[0]) > 1e-6  # the factors change the hash
    _assert_matches_reference(y, y_ref, [x1, x2, *weights])


@pytest.mark.parametrize("local", [False, True], ids=["lsh", "local"])
def test_backward_holds_no_full_width_temporaries(local):
    """The backward's peak (tensor bytes beyond its inputs, CPU allocator events) is its four
    streams (the rebuilt inputs and their gradients) plus one layer's attention tensors, each
    (B·L, H·Dh) = (L, d_model) here: the projections (qk and v; q, k and v in a local layer), the
    attention output and the gradients of all of them; everything else works on blocks of rows.
    Measured 10.19 (LSH) and 12.13 (local) stream sizes: one more whole-width temporary (a
    LayerNorm output, a dropout copy, a merged-heads copy) fails the bound."""
    length, d_model = 16384, 64
    x1, x2, weights, rotations, seeds = stack_problem(
        depth=1, batch=1, length=length, d_model=d_model, n_heads=2, d_ff=128, n_hashes=1,
        n_buckets=64, dtype=torch.float32, local_layers=(0,) if local else ())
    x1, x2, weights = x1.detach(), x2.detach(), [w.detach() for w in weights]
    options = (2, 64, True, 1, 0, 1024, "relu", 0.0, 1e-5, [], [0] if local else [], 64, 1, 0)
    y1, y2 = torch.ops.reformer.reformer_stack(x1, x2, weights, rotations, None, seeds, *options)
    g = torch.Generator().manual_seed(1)
    grad_y1, grad_y2 = (torch.randn(y1.shape, generator=g) for _ in range(2))
    peak = measure_step_memory(lambda: torch.ops.reformer.reformer_stack_backward(
        grad_y1, grad_y2, y1, y2, weights, rotations, None, seeds, *options), "cpu").peak
    attention_tensors = 8 if local else 6
    assert peak / (length * d_model * 4) <= 4 + attention_tensors + 0.5

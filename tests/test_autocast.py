"""Autocast (policy in reformer_ext/_autocast.py): under torch.autocast the operators
run in the region's low-precision dtype with float32 accumulation, return that dtype (lse stays
float32), give finite results close to float32, and their gradients reach float32 inputs.

"Float32 accumulation" is checked sharply: the autocast result equals the float32 computation on
the low-precision-rounded inputs up to ONE rounding of the output (half a unit in the last
place), which a kernel accumulating in bfloat16/float16 would not meet.

Closeness to float32 uses a bucket that spans the whole sequence where hashing would otherwise
matter: rounding qk can move a token to another bucket, which changes its output by more than
rounding (a property of LSH, not an error).
"""

import pytest
import torch

import reformer_ext as rx

BF16, F16, F32, F64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
LOW = [pytest.param(BF16, id="bf16"), pytest.param(F16, id="f16")]
#: relative size of half a unit in the last place (round to nearest)
HALF_ULP = {BF16: 2.0 ** -8, F16: 2.0 ** -11}
#: relative (Frobenius) distance allowed from the float32 result, for whole modules
MODULE_TOL = {BF16: 2e-2, F16: 3e-3}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# small tensors: one thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _attention_inputs(device="cpu", B=2, H=2, L=40, D=16, R=2, half=2):
    g = torch.Generator().manual_seed(3)
    qk = torch.randn(B, H, L, D, generator=g).to(device)
    v = torch.randn(B, H, L, D, generator=g).to(device)
    rotations = torch.randn(H, D, R, half, generator=g).to(device)
    mask = torch.zeros(B, L, dtype=torch.bool, device=device)
    mask[1, L - 10:] = True
    return qk, v, rotations, mask


def _attend(qk, v, rotations, mask, bucket_size, return_lse=False):
    return rx.lsh_attention(qk, v, rotations=rotations, bucket_size=bucket_size,
                            key_padding_mask=mask, causal=True, return_lse=return_lse)


# ------------------------------------------------------------------------ operators


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("bucket_size", [8, 64])
def test_attention_runs_in_low_precision_with_float32_accumulation(device, dtype, bucket_size):
    if not torch._C._dispatch_has_kernel_for_dispatch_key("reformer::lsh_attention",
                                                          device.upper()):
        pytest.skip(f"reformer::lsh_attention has no {device} kernel in this build")
    qk, v, rotations, mask = _attention_inputs(device)
    with torch.autocast(device, dtype=dtype):
        out, lse = _attend(qk, v, rotations, mask, bucket_size, return_lse=True)
    assert out.dtype == dtype and lse.dtype == F32
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    # the same as calling the operator with low-precision tensors ...
    assert torch.equal(out, _attend(qk.to(dtype), v.to(dtype), rotations, mask, bucket_size))
    # ... which is float32 math on the rounded inputs, rounded once at the end
    exact = _attend(qk.to(dtype).float(), v.to(dtype).float(), rotations, mask, bucket_size)
    slack = 4 if device == "cuda" else 1  # GPU kernels may round probabilities to dtype too
    bound = slack * HALF_ULP[dtype] * exact.abs() + 1e-6
    assert ((out.float() - exact).abs() <= bound).all()
    assert (out[1, :, -10:] == 0).all()  # padding queries: exactly zero


@pytest.mark.parametrize("dtype", LOW)
def test_attention_close_to_float32_with_gradients(dtype):
    qk, v, rotations, mask = _attention_inputs()
    qk32, v32 = qk.clone().requires_grad_(), v.clone().requires_grad_()
    ref = _attend(qk32, v32, rotations, mask, bucket_size=64)
    ref_grads = torch.autograd.grad(ref.square().sum(), (qk32, v32))
    qk_in, v_in = qk.clone().requires_grad_(), v.clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        out = _attend(qk_in, v_in, rotations, mask, bucket_size=64)
    grads = torch.autograd.grad(out.float().square().sum(), (qk_in, v_in))
    assert _rel(out, ref) < 2 * HALF_ULP[dtype]
    for got, want in zip(grads, ref_grads):
        assert got.dtype == F32 and torch.isfinite(got).all()
        assert _rel(got, want) < 8 * HALF_ULP[dtype]


def test_float16_masks_are_safe():
    """-1e9 and -1e5 mask constants would overflow float16; they live in the float32
    accumulator. Fully padded rows, a query that sees only itself, causal and padding masks
    together: everything finite."""
    qk, v, rotations, mask = _attention_inputs()
    mask[0, :] = True  # batch element 0 is all padding
    with torch.autocast("cpu", dtype=F16):
        out, lse = _attend(qk, v, rotations, mask, bucket_size=8, return_lse=True)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert (out[0] == 0).all()
    # causal: the first token of batch element 1 sees only itself, so its output is its value
    torch.testing.assert_close(out[1, :, 0].float(), v[1, :, 0].to(F16).float())


def test_float64_is_left_alone():
    qk, v, rotations, mask = (t.double() if t.is_floating_point() else t
                              for t in _attention_inputs())
    with torch.autocast("cpu", dtype=BF16):
        out = _attend(qk, v, rotations, mask, bucket_size=8)
        ff = rx.chunked_feed_forward(qk, torch.randn(8, 16, dtype=F64), None,
                                     torch.randn(16, 8, dtype=F64), None)
    assert out.dtype == F64 and ff.dtype == F64
    assert torch.equal(out, _attend(qk, v, rotations, mask, bucket_size=8))


def test_buckets_under_autocast_are_those_attention_uses():
    qk, _, rotations, mask = _attention_inputs()
    with torch.autocast("cpu", dtype=BF16):
        buckets = rx.lsh_buckets(qk, rotations, mask)
    assert torch.equal(buckets, rx.lsh_buckets(qk.to(BF16), rotations, mask))


def test_factorised_buckets_under_autocast():
    # the trailing bucket_factors argument passes through the autocast kernels
    qk, v, rotations, mask = _attention_inputs(half=5)
    with torch.autocast("cpu", dtype=BF16):
        buckets = rx.lsh_buckets(qk, rotations, mask, bucket_factors=[4, 6])
        out = rx.lsh_attention(qk, v, rotations=rotations, n_buckets=[4, 6], bucket_size=8,
                               key_padding_mask=mask)
    assert torch.equal(buckets, rx.lsh_buckets(qk.to(BF16), rotations, mask,
                                               bucket_factors=[4, 6]))
    assert out.dtype == BF16
    assert torch.equal(out, rx.lsh_attention(qk.to(BF16), v.to(BF16), rotations=rotations,
                                             n_buckets=[4, 6], bucket_size=8,
                                             key_padding_mask=mask))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW)
def test_chunked_feed_forward_follows_the_linear_rule(device, dtype):
    torch.manual_seed(0)
    ff = rx.nn.ChunkedFeedForward(16, 48, chunk_size=5).to(device)
    plain = ff.to_sequential()
    x = torch.randn(3, 7, 16, device=device, requires_grad=True)
    with torch.autocast(device, dtype=dtype):
        y = ff(x)
        y_plain = plain(x)  # nn.Linear, GELU, nn.Linear under the same autocast
    assert y.dtype == dtype and torch.isfinite(y).all()
    torch.testing.assert_close(y, y_plain, rtol=2 * HALF_ULP[dtype], atol=1e-3)
    assert _rel(y, ff(x)) < 2 * HALF_ULP[dtype]
    y.float().square().sum().backward()
    for t in (x, ff.w1.weight, ff.w1.bias, ff.w2.weight, ff.w2.bias):
        assert t.grad.dtype == F32 and torch.isfinite(t.grad).all()


def test_autocast_inside_torch_compile():
    qk, v, rotations, mask = _attention_inputs()

    def fn(qk, v):
        with torch.autocast("cpu", dtype=BF16):
            return _attend(qk, v, rotations, mask, bucket_size=8)

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)(qk, v)
    assert compiled.dtype == BF16
    assert torch.equal(compiled, fn(qk, v))


# ------------------------------------------------------------------------ modules


def _model_output(model, inputs, dtype, mask=None):
    """Output and parameter gradients of one training step, under autocast(dtype) or not."""
    model.zero_grad()
    with torch.autocast("cpu", dtype=dtype or BF16, enabled=dtype is not None):
        out = model(inputs) if mask is None else model(inputs, mask)
    out.float().square().mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("kind", ["attention", "reformer", "reformer_reversible", "reformer_lm"])
def test_modules_under_autocast(kind, dtype):
    """Training steps (eval-mode rotations, so both runs hash alike) in float32 and under
    autocast: low-precision outputs close to float32, float32 parameter gradients, finite."""
    torch.manual_seed(0)
    length, mask = 24, torch.zeros(2, 24, dtype=torch.bool)
    mask[1, 20:] = True
    if kind == "attention":
        model = rx.nn.LSHSelfAttention(32, 4, bucket_size=32, n_hashes=2, causal=True)
    elif kind == "reformer_lm":
        model = rx.nn.ReformerLM(50, 32, 2, 4, 32, bucket_size=32, n_hashes=2, d_ff=64,
                                 ff_chunk_size=7, reversible=False)
    else:
        model = rx.nn.Reformer(32, 2, 4, bucket_size=32, n_hashes=2, d_ff=64, ff_chunk_size=7,
                               causal=True, reversible=kind == "reformer_reversible")
    model.eval()
    inputs = (torch.randint(0, 50, (2, length)) if kind == "reformer_lm"
              else torch.randn(2, length, 32))
    ref, ref_grads = _model_output(model, inputs, None, mask)
    out, grads = _model_output(model, inputs, dtype, mask)
    assert out.dtype == dtype and torch.isfinite(out).all()
    keep = ~mask  # outputs at padded positions carry no meaning
    assert _rel(out[keep], ref[keep]) < MODULE_TOL[dtype]
    for got, want in zip(grads, ref_grads):
        assert got.dtype == F32 and torch.isfinite(got).all()
        assert _rel(got, want) < 3 * MODULE_TOL[dtype]

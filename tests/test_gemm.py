"""The GEMM the operators use, torch.ops.reformer._gemm (csrc/gemm.h; on the CPU the fixed-order
kernel of csrc/cpu/fixed_order_gemm): values against float64 torch.mm over odd shapes, transposed
operands, alpha, bias and accumulation; results bitwise independent of the thread count, of the
other rows and of packing b beforehand; float16 / bfloat16 computed in float32 and rounded
once."""

import itertools

import pytest
import torch

import reformer_ext  # noqa: F401  (loads torch.ops.reformer)

gemm = torch.ops.reformer._gemm
F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
THREAD_COUNTS = (1, 2, 3, 4)


def _randn(*shape, dtype=F64, seed=0, transposed=False):
    """A (rows, cols) matrix; transposed: the same shape as a view of a (cols, rows) tensor."""
    g = torch.Generator().manual_seed(seed)
    if transposed:
        return torch.randn(*reversed(shape), generator=g, dtype=dtype).t()
    return torch.randn(*shape, generator=g, dtype=dtype)


def _check(out, a, b, bias=None, c=None, alpha=1.0, products=None):
    """|out - exact| <= (K + 2) · eps · (|alpha| · |a|·|b| + |init|) elementwise: the bound of
    a K-term sum. products: (a @ b, |a| @ |b|) in float64, when already computed."""
    prod, abs_prod = products or _products(a, b)
    ref, bound = alpha * prod, abs(alpha) * abs_prod
    for init in (bias, c):
        if init is not None:
            ref = ref + init.double()
            bound = bound + init.double().abs()
    tol = (a.shape[1] + 2) * torch.finfo(out.dtype).eps * bound + 1e-300
    err = (out.double() - ref).abs()
    assert out.shape == ref.shape and out.dtype == a.dtype
    assert bool((err <= tol).all()), f"max error {float(err.max()):.3e}"


def _products(a, b):
    return a.double() @ b.double(), a.double().abs() @ b.double().abs()


SIZES = (1, 7, 17, 33, 100)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)),
                         ids=["nn", "nt", "tn", "tt"])
def test_matches_float64_mm_over_odd_shapes(dtype, ta, tb, one_thread):
    for m, n, k in itertools.product(SIZES, repeat=3):
        a = _randn(m, k, dtype=dtype, seed=m * 7 + k, transposed=ta)
        b = _randn(k, n, dtype=dtype, seed=n * 11 + k + 1, transposed=tb)
        _check(gemm(a, b), a, b)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_alpha_bias_and_accumulate(dtype):
    # more than one K block (256) and tile (96 rows, 256 or 512 columns), with ragged edges
    for m, n, k, ta, tb in [(17, 33, 7, False, True), (100, 1, 33, True, False),
                            (203, 530, 601, False, True), (97, 257, 513, True, True)]:
        a = _randn(m, k, dtype=dtype, seed=1, transposed=ta)
        b = _randn(k, n, dtype=dtype, seed=2, transposed=tb)
        bias = _randn(1, n, dtype=dtype, seed=3)[0]
        c = _randn(m, n, dtype=dtype, seed=4)
        p = _products(a, b)
        for alpha in (1.0, 1.0 / 0.7, -0.25):
            _check(gemm(a, b, alpha=alpha), a, b, alpha=alpha, products=p)
            _check(gemm(a, b, bias, alpha=alpha), a, b, bias=bias, alpha=alpha, products=p)
            c_before = c.clone()
            _check(gemm(a, b, c=c, alpha=alpha), a, b, c=c, alpha=alpha, products=p)
            assert torch.equal(c, c_before), "c must not be modified"


def test_strided_operands():
    """Operands that are neither row- nor column-contiguous (every few rows and columns)."""
    a = _randn(60, 93, dtype=F32, seed=5)[::2, ::3]         # (30, 31), strides (186, 3)
    a_t = _randn(93, 60, dtype=F32, seed=6)[::3, ::2].t()   # (30, 31), strides (2, 180)
    b = _randn(62, 80, dtype=F32, seed=7)[::2, ::2]         # (31, 40), strides (160, 2)
    for x in (a, a_t):
        assert x.shape == (30, 31) and 1 not in x.stride()
        _check(gemm(x, b), x, b)
        _check(gemm(x, b, c=_randn(30, 40, dtype=F32, seed=8)[:, :], alpha=3.0), x, b,
               c=_randn(30, 40, dtype=F32, seed=8), alpha=3.0)


def test_empty_dimensions():
    a, b = _randn(5, 0, dtype=F32), _randn(0, 4, dtype=F32)
    bias, c = _randn(1, 4, dtype=F32, seed=1)[0], _randn(5, 4, dtype=F32, seed=2)
    assert torch.equal(gemm(a, b), torch.zeros(5, 4))
    assert torch.equal(gemm(a, b, bias), bias.expand(5, 4))
    assert torch.equal(gemm(a, b, c=c), c)
    assert gemm(_randn(0, 3, dtype=F32), _randn(3, 4, dtype=F32)).shape == (0, 4)
    assert gemm(_randn(2, 3, dtype=F32), _randn(3, 0, dtype=F32)).shape == (2, 0)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_bitwise_identical_for_any_thread_count(dtype):
    """Many output tiles, and a few rows: MKL splits 5 to 11 rows between 2 threads on some
    CPUs, with different results (the last chunk of a feed-forward can be that short)."""
    cases = [
        (_randn(700, 513, dtype=dtype, seed=1), _randn(513, 300, dtype=dtype, seed=2,
                                                         transposed=True), None),
        (_randn(257, 1100, dtype=dtype, seed=3, transposed=True),
         _randn(1100, 130, dtype=dtype, seed=4), _randn(257, 130, dtype=dtype, seed=5)),
        (_randn(7, 1024, dtype=dtype, seed=6), _randn(1024, 256, dtype=dtype, seed=7,
                                                        transposed=True), None),
        (_randn(10, 256, dtype=dtype, seed=8), _randn(256, 1024, dtype=dtype, seed=9),
         _randn(10, 1024, dtype=dtype, seed=10)),
    ]
    saved = torch.get_num_threads()
    try:
        results = []
        for threads in THREAD_COUNTS:
            torch.set_num_threads(threads)
            results.append([gemm(a, b, c=c, alpha=0.5) for a, b, c in cases])
    finally:
        torch.set_num_threads(saved)
    for threads, other in zip(THREAD_COUNTS[1:], results[1:]):
        for i, (x, y) in enumerate(zip(results[0], other)):
            assert torch.equal(x, y), f"case {i}: {threads} threads differ from 1"


def test_rows_do_not_depend_on_the_other_rows(one_thread):
    """A row of the product is bitwise the same whatever rows surround it (how chunk_size cuts
    a feed-forward's rows cannot change them)."""
    a = _randn(300, 257, dtype=F32, seed=1)
    b = _randn(257, 70, dtype=F32, seed=2, transposed=True)
    bias = _randn(1, 70, dtype=F32, seed=3)[0]
    full = gemm(a, b, bias, alpha=1.5)
    for start, length in [(0, 1), (5, 7), (97, 100), (290, 10)]:
        assert torch.equal(gemm(a[start:start + length], b, bias, alpha=1.5),
                           full[start:start + length])


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_packed_right_operand_gives_the_same_bits(dtype, one_thread):
    """b packed once (as the operators pack a weight for all chunks) changes no bit, for shapes
    where the plain call computes the transposed product instead (N > 2 M) and where it does
    not."""
    for m, n, k, tb in [(7, 1024, 256, True), (300, 70, 257, False), (33, 100, 600, True),
                        (100, 17, 1, False)]:
        a = _randn(m, k, dtype=dtype, seed=1)
        b = _randn(k, n, dtype=dtype, seed=2, transposed=tb)
        bias = _randn(1, n, dtype=dtype, seed=3)[0]
        c = _randn(m, n, dtype=dtype, seed=4)
        for kw in (dict(), dict(alpha=0.3), dict(bias=bias, alpha=2.0), dict(c=c, alpha=-1.5)):
            plain = gemm(a, b, **kw)
            assert torch.equal(gemm(a, b, packed_b=True, **kw), plain), (m, n, k, kw.keys())
            _check(plain, a, b, bias=kw.get("bias"), c=kw.get("c"), alpha=kw.get("alpha", 1.0))


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["f16", "bf16"])
def test_low_precision_is_float32_rounded_once(dtype):
    a = _randn(70, 300, dtype=F32, seed=1).to(dtype)
    b = _randn(300, 45, dtype=F32, seed=2, transposed=True).to(dtype)
    bias = _randn(1, 45, dtype=F32, seed=3)[0].to(dtype)
    c = _randn(70, 45, dtype=F32, seed=4).to(dtype)
    f = [t.float() for t in (a, b, bias, c)]
    assert torch.equal(gemm(a, b, bias, alpha=2.0),
                       gemm(f[0], f[1], f[2], alpha=2.0).to(dtype))
    assert torch.equal(gemm(a, b, c=c), gemm(f[0], f[1], c=f[3]).to(dtype))
    # a float32 accumulator (weight gradients of float16 / bfloat16 inputs)
    acc = _randn(70, 45, dtype=F32, seed=5)
    assert torch.equal(gemm(a, b, c=acc), gemm(f[0], f[1], c=acc))


def test_bad_arguments():
    a, b = _randn(3, 4, dtype=F32), _randn(4, 5, dtype=F32)
    with pytest.raises(ValueError, match="a .M, K. and b .K, N."):
        gemm(a, b.t())
    with pytest.raises(ValueError, match="bias or c"):
        gemm(a, b, torch.zeros(5), torch.zeros(3, 5))
    with pytest.raises(RuntimeError, match="dtype"):
        gemm(a, b.double())

"""reformer_ext._profiling.measure_step_memory on the CPU: tensor bytes from the profiler's
allocation events. Known allocations come out exactly (the CPU allocator reports the bytes asked
for), in the forward, in a backward and inside reformer_ext's C++ operators; gradients are told
apart from activations. Then the behaviour the demo's table (b) is about: the reversible stack's
activations do not grow with depth beyond its per-layer random state, the plain stack's do."""

import math

import pytest
import torch

import reformer_ext as rx

from _helpers import _replay, measure_peak, measure_step_memory

MiB = 2**20
SMALL = 4096  # room for incidental scalars (e.g. the loss) next to the big known buffers


def _bytes(n):
    return torch.empty(n, dtype=torch.uint8)


def test_peak_of_known_allocations():
    def step():
        a = _bytes(1 * MiB)
        b = _bytes(2 * MiB)  # noqa: F841 (live until the end)
        del a
        c = _bytes(4 * MiB)  # noqa: F841
    m = measure_step_memory(step, "cpu")
    assert m.peak == 6 * MiB  # b + c; a was freed before c
    assert m.activations == m.peak and m.grads == 0 and m.note == ""
    peak_mib, note = measure_peak(step, "cpu")
    assert peak_mib == 6.0 and note == ""


def test_what_existed_before_the_step_is_not_counted():
    before = _bytes(3 * MiB)

    def step():
        before.add_(1)  # in place: no allocation
        _bytes(1 * MiB)
    assert measure_step_memory(step, "cpu").peak == 1 * MiB


class _BigBackward(torch.autograd.Function):
    """Identity whose backward allocates 8 MiB of scratch."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        scratch = _bytes(8 * MiB)
        scratch.fill_(1)
        return grad


def test_backward_allocations_and_gradients_are_counted():
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 512)
    x = torch.randn(16, 256)

    def step():
        _BigBackward.apply(lin(x)).sum().backward()
    step()
    lin.zero_grad(set_to_none=True)
    m = measure_step_memory(step, "cpu", lin.parameters())
    param_bytes = (512 * 256 + 512) * 4
    assert m.grads == param_bytes
    # the scratch of the backward, plus the forward's small (16, 512) tensors
    assert 8 * MiB <= m.activations <= 8 * MiB + 2 * 16 * 512 * 4 + SMALL, m
    assert m.activations <= m.peak <= m.activations + param_bytes
    assert lin.weight.grad is not None  # the step ran


def test_allocations_inside_the_cpp_operators_are_counted():
    torch.manual_seed(0)
    B, H, L, D = 1, 2, 256, 16
    qk, v = torch.randn(B, H, L, D), torch.randn(B, H, L, D)
    out_bytes = B * H * L * D * 4

    def step():
        with torch.no_grad():
            rx.lsh_attention(qk, v, bucket_size=32)
    step()
    m = measure_step_memory(step, "cpu")
    # the output alone is out_bytes; the operator also allocates its buckets, sort order and
    # softmax statistics through ATen
    assert m.peak > out_bytes, m


def test_replay_skips_frees_it_did_not_see_allocated():
    # (time, pointer, signed bytes). Pointer 7: freed but allocated before the events (its size
    # may be stale), so not subtracted; pointer 1 reused without a seen free: replaced.
    events = [(0, 1, 100), (1, 7, -50), (2, 2, 30), (3, 1, 40), (4, 2, -30), (5, 3, 5)]
    peak, peak_without_grads, grads = _replay(events, grad_ptrs={3})
    assert peak == 130  # 100 + 30
    assert peak_without_grads == 130
    assert grads == 5


# ------------------------------------------------------------------------------------------
# table (b)'s property at tiny sizes

L, D_MODEL, HEADS, BUCKET, N_HASHES = 128, 32, 2, 32, 2


def _stack_memory(depth, reversible):
    torch.manual_seed(depth)
    model = rx.nn.Reformer(D_MODEL, depth, HEADS, bucket_size=BUCKET, n_hashes=N_HASHES,
                           reversible=reversible).train()
    x = torch.randn(1, L, D_MODEL)
    grad_out = torch.randn(1, L, D_MODEL)

    def step():
        model(x).backward(grad_out)
    step()
    model.zero_grad(set_to_none=True)
    m = measure_step_memory(step, "cpu", model.parameters())
    assert m.grads == sum(p.numel() * p.element_size() for p in model.parameters())
    return m


@pytest.fixture(scope="module")
def stack_memory():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny sizes: threads only add waiting on a busy machine
    try:
        return {(depth, rev): _stack_memory(depth, rev) for depth in (1, 2, 16)
                for rev in (True, False)}
    finally:
        torch.set_num_threads(threads)


def test_reversible_activations_do_not_grow_with_depth(stack_memory):
    act = {depth: stack_memory[depth, True].activations for depth in (1, 2, 16)}
    # what the stack keeps per layer: its rotations (d_model, n_hashes, n_buckets / 2 floats)
    # and 3 int64 dropout seeds
    per_layer = D_MODEL * N_HASHES * math.ceil(L / BUCKET) * 4 + 3 * 8
    # the backward rebuilds every layer's inputs in one pair of working streams, at any depth
    assert act[2] - act[1] <= per_layer + SMALL, act
    assert act[16] - act[1] <= 15 * per_layer + SMALL, act
    assert act[16] <= 1.1 * act[1], act


def test_plain_activations_grow_with_depth(stack_memory):
    act = {depth: stack_memory[depth, False].activations for depth in (1, 16)}
    assert act[16] > 4 * act[1], act
    assert act[16] > 3 * stack_memory[16, True].activations


def test_gradients_are_the_same_for_both_and_grow_with_depth(stack_memory):
    for depth in (1, 2, 16):
        assert stack_memory[depth, True].grads == stack_memory[depth, False].grads
    assert stack_memory[16, True].grads > 8 * stack_memory[1, True].grads

"""How the reformer operators behave under torch.autocast (CPU and CUDA).

Policy: like ``nn.Linear`` and ``F.scaled_dot_product_attention``, a forward operator called in
an autocast region runs in the region's low-precision dtype (``torch.get_autocast_dtype``:
bfloat16 or float16). Its float32 (or bfloat16/float16) tensor inputs listed at registration are
cast to that dtype; float64 tensors, integer/bool tensors (masks) and tensors on another device
type are left alone, as autocast does for torch's own operators. The kernels accumulate in
float32 whatever the input dtype (docs/semantics.md §1, §2), so only storage and the matmul
inputs are in low precision. The output has the low-precision dtype; ``lse`` stays float32.

- ``reformer::lsh_attention``: qk and v are cast; rotations are not (the hash projections are
  computed in float32 anyway, and keeping them lets a float32 and an autocast run hash with the
  very same rotations).
- ``reformer::lsh_buckets``: qk is cast, so the buckets it reports in an autocast region are the
  ones ``lsh_attention`` uses there.
- ``reformer::chunked_ffn``: x, w1, b1, w2 and b2 are cast (the ``nn.Linear`` rule).
- ``reformer::reformer_stack``: the streams x1, x2 and every weight are cast, so the whole
  stack (and its recompute in the backward) runs in the low-precision dtype; rotations are not.
- The backward operators get no rule: autograd calls them with the dtypes the forward saved,
  and the gradients flow back through the casts to the float32 inputs.

Unlike ``torch.library.register_autocast``, which fixes one target dtype at registration, the
kernel reads the region's dtype at call time, so float16 and bfloat16 regions both work.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["register_low_precision_autocast"]

#: Device types with kernels in this package (and an autocast dispatch key in torch).
_DEVICE_TYPES = ("cpu", "cuda")

# Registrations made through a Library object live as long as the object.
_LIBRARY = torch.library.Library("reformer", "IMPL")


def _cast_to(value, device_type: str, dtype: torch.dtype):
    """What autocast does to one argument of a low-precision operator (each tensor of a list
    argument alike)."""
    if isinstance(value, (list, tuple)):
        return [_cast_to(v, device_type, dtype) for v in value]
    if (isinstance(value, torch.Tensor) and value.is_floating_point()
            and value.dtype is not torch.float64 and value.device.type == device_type):
        return value.to(dtype)
    return value


def _autocast_kernel(op, device_type: str, key, cast_names: Sequence[str]):
    """The kernel run at ``key`` (AutocastCPU, AutocastCUDA): cast, then call ``op`` again with
    ``key`` excluded so that the call goes on to autograd and the backend kernel."""
    arg_names = [arg.name for arg in op._schema.arguments]
    positions = [arg_names.index(name) for name in cast_names]

    def kernel(*args, **kwargs):
        dtype = torch.get_autocast_dtype(device_type)
        args = list(args)
        for i in positions:
            if i < len(args):
                args[i] = _cast_to(args[i], device_type, dtype)
            elif arg_names[i] in kwargs:
                kwargs[arg_names[i]] = _cast_to(kwargs[arg_names[i]], device_type, dtype)
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*args, **kwargs)

    return kernel


def _ignoring_keyset(kernel):
    """The dispatcher hands Python kernels registered ``with_keyset`` the key set first."""
    return lambda _keyset, *args, **kwargs: kernel(*args, **kwargs)


def register_low_precision_autocast(qualname: str, cast: Sequence[str]) -> None:
    """Registers, for every device type in ``_DEVICE_TYPES``, an autocast kernel for the
    operator ``qualname`` ("namespace::name") that casts the arguments named in ``cast`` (names
    from the operator's schema) to the autocast dtype and calls the operator with autocast off."""
    namespace, name = qualname.split("::")
    op = getattr(getattr(torch.ops, namespace), name).default
    unknown = set(cast) - {arg.name for arg in op._schema.arguments}
    if unknown:
        raise ValueError(f"{qualname} has no argument(s) {sorted(unknown)}")
    for device_type in _DEVICE_TYPES:
        key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        key = getattr(torch._C.DispatchKey, key_name)
        kernel = _autocast_kernel(op, device_type, key, cast)
        # Two registrations, as torch.library.register_autocast makes: the dispatcher's (eager
        # mode) and the Python dispatcher's (used while torch.compile/AOTAutograd traces).
        op.py_kernels.pop(key, None)
        op.py_impl(key)(kernel)
        _LIBRARY.impl(name, _ignoring_keyset(kernel), key_name, with_keyset=True)

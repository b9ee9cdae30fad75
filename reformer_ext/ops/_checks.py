"""Argument checks shared by the functional API (reformer_ext.ops) and the modules
(reformer_ext.nn).

Eager checks raise TypeError for a value of the wrong type and ValueError for a value out of
range, with a message that names the argument, what was expected and what was given, and return
the value in its canonical form (``int``, ``bool``, ``float``). Constructors call them before
building any layer, so a bad argument never reaches nn.Linear / nn.Embedding, whose messages do
not name it.

Fake kernels check with :func:`check_traced` instead (``torch._check_value``), which also works
on symbolic sizes: tracing rejects what eager mode would.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import Tensor

__all__ = ["check_bool", "check_float_dtype", "check_input", "check_int", "check_int_tuple",
           "check_key_padding_mask", "check_nonnegative", "check_probability", "check_real",
           "check_size", "check_tensor", "check_traced", "describe"]


def describe(value) -> str:
    """A short description of ``value`` for an error message: a tensor's shape, dtype and
    device, or the value's type name."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    return type(value).__name__


def check_int(value, name: str, minimum: Optional[int] = None) -> int:
    """An int (bool excluded: True is not a size), >= ``minimum`` when one is given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        requirement = "an int" if minimum is None else f"an int >= {minimum}"
        raise TypeError(f"{name} must be {requirement}, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_int_tuple(value, name: str, minimum: Optional[int] = None) -> tuple:
    """A non-empty tuple or list of ints, each >= ``minimum`` when one is given (a str, a
    tensor or a bare int is not), returned as a tuple of ints."""
    if not isinstance(value, (tuple, list)) or not value:
        requirement = "ints" if minimum is None else f"ints >= {minimum}"
        raise TypeError(f"{name} must be a non-empty tuple or list of {requirement}, got "
                        f"{value!r} ({type(value).__name__})")
    return tuple(check_int(v, f"{name}[{i}]", minimum) for i, v in enumerate(value))


def check_size(value, name: str, minimum: int = 1):
    """A size given to a forward: an int >= ``minimum``, or a symbolic size while torch.compile
    traces (tensor.shape[i] of a dynamic dimension), which is passed through unchecked."""
    if isinstance(value, torch.SymInt):
        return value
    return check_int(value, name, minimum)


def check_bool(value, name: str) -> bool:
    """True or False (a string such as 'no' would otherwise be taken as True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_tensor(value, name: str) -> Tensor:
    """A torch.Tensor (any shape; the operator checks the rest)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(value)}")
    return value


def check_real(value, name: str, requirement: str = "a real number") -> float:
    """A real number (bool excluded), returned as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {requirement}, got {value!r} ({type(value).__name__})")
    return float(value)


def check_probability(value, name: str = "dropout") -> float:
    """A dropout rate: a number in [0, 1) (NaN is not)."""
    p = check_real(value, name, "a number in [0, 1)")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return p


def check_nonnegative(value, name: str) -> float:
    """A finite number >= 0 (e.g. a standard deviation)."""
    x = check_real(value, name, "a finite number >= 0")
    if not (math.isfinite(x) and x >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return x


def check_float_dtype(dtype: Optional[torch.dtype], name: str = "dtype") -> None:
    """None or a floating-point torch.dtype (the operators compute in float32, float64, float16
    or bfloat16)."""
    if dtype is None:
        return
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype or None, got {dtype!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point dtype, got {dtype}")


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type without autocast (meta)
        return False


def check_input(x, name: str, like: Tensor) -> None:
    """``x`` must be a tensor on the device of ``like`` (a parameter of the module) and of its
    dtype. The dtype is not compared inside an autocast region of x's device, where the
    module's layers run in the region's dtype whatever the input's."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(x)}")
    if x.device != like.device:
        raise ValueError(f"{name} must be on the device of the module's parameters "
                         f"({like.device}), got {x.device}")
    if x.dtype != like.dtype and not _autocast_enabled(x.device.type):
        raise ValueError(f"{name} must have the dtype of the module's parameters "
                         f"({like.dtype}), got {x.dtype}")


def check_key_padding_mask(mask, x: Tensor) -> None:
    """A ``(batch, length)`` bool mask on x's device for ``x (batch, length, d_model)``."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"key_padding_mask must be a bool tensor or None, got {describe(mask)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be a bool tensor (True = padding), got "
                        f"{mask.dtype}")
    if mask.dim() != 2 or mask.shape[0] != x.shape[0] or mask.shape[1] != x.shape[1]:
        raise ValueError(f"key_padding_mask must have shape (batch, length) = "
                         f"{tuple(x.shape[:2])}, got {tuple(mask.shape)}")
    if mask.device != x.device:
        raise ValueError(f"key_padding_mask must be on x's device ({x.device}), got "
                         f"{mask.device}")


def check_traced(condition, message: str) -> None:
    """The fake kernels' check: ``condition`` may involve symbolic sizes."""
    torch._check_value(condition, lambda: message)

"""Loads the compiled operator library (reformer_ext._C) into torch.ops.reformer, and says what
it was built with."""

import importlib.util

import torch

REBUILD_WITH_CUDA = ("rebuild it with the CUDA kernels on a machine with the CUDA toolkit: "
                     "FORCE_CUDA=1 pip install --no-build-isolation -e .")


def load() -> None:
    spec = importlib.util.find_spec("reformer_ext._C")
    if spec is None or spec.origin is None:
        raise ImportError(
            "reformer_ext._C (the compiled operators) was not found: build the package with "
            "`pip install --no-build-isolation .` (or `-e .`) in the repository root"
        )
    # The library holds only TORCH_LIBRARY registrations (no Python bindings).
    torch.ops.load_library(spec.origin)


def has_cuda_kernels() -> bool:
    """Whether this build of reformer_ext holds its CUDA kernels (a CPU-only build does not)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("reformer::lsh_attention", "CUDA")


def require_device(device: torch.device) -> None:
    """Raises a one-line error when reformer_ext cannot run on ``device``."""
    if device.type != "cuda":
        return
    if not has_cuda_kernels():
        raise RuntimeError(f"device {device}: this reformer_ext is a CPU-only build; "
                           + REBUILD_WITH_CUDA)
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {device}: torch sees no CUDA device")


def default_device() -> torch.device:
    """The GPU when torch sees one and this build has the CUDA kernels, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() and has_cuda_kernels() else "cpu")

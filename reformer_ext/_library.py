"""Loads the compiled operator library (reformer_ext._C) into torch.ops.reformer."""

import importlib.util

import torch


def load() -> None:
    spec = importlib.util.find_spec("reformer_ext._C")
    if spec is None or spec.origin is None:
        raise ImportError(
            "reformer_ext._C (the compiled operators) was not found: build the package with "
            "`pip install --no-build-isolation .` (or `-e .`) in the repository root"
        )
    # The library holds only TORCH_LIBRARY registrations (no Python bindings).
    torch.ops.load_library(spec.origin)

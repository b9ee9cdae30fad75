"""What the installed build says about itself: version, whether it has the CUDA kernels, and the
one-line errors for a device it cannot use (the demo and the examples share them)."""

import os
import subprocess
import sys

import pytest
import torch

import reformer_ext as rx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def test_version_is_the_package_metadata_version():
    from importlib.metadata import PackageNotFoundError, version
    try:
        assert version("reformer_ext") == rx.__version__
    except PackageNotFoundError:
        pytest.skip("reformer_ext is imported from a source tree, not installed")


def test_has_cuda_kernels_matches_the_dispatcher():
    registered = all(torch._C._dispatch_has_kernel_for_dispatch_key(f"reformer::{op}", "CUDA")
                     for op in ("lsh_buckets", "lsh_attention", "lsh_attention_backward",
                                "chunked_ffn"))
    assert rx.has_cuda_kernels() == registered


def test_default_device_is_usable():
    device = rx.default_device()
    rx.require_device(device)  # does not raise
    assert device.type == ("cuda" if torch.cuda.is_available() and rx.has_cuda_kernels()
                           else "cpu")


def _expected_cuda_error():
    if not rx.has_cuda_kernels():
        return "CPU-only build"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


@pytest.mark.skipif(_expected_cuda_error() is None, reason="CUDA kernels and a GPU are present")
def test_require_device_names_what_is_missing_and_how_to_fix_it():
    with pytest.raises(RuntimeError, match=_expected_cuda_error()) as info:
        rx.require_device(torch.device("cuda"))
    message = str(info.value)
    assert "\n" not in message
    if not rx.has_cuda_kernels():
        assert "FORCE_CUDA=1 pip install --no-build-isolation" in message


@pytest.mark.skipif(_expected_cuda_error() is None, reason="CUDA kernels and a GPU are present")
@pytest.mark.parametrize("command", [["-m", "reformer_ext"],
                                     [os.path.join(EXAMPLES, "duplication.py")],
                                     [os.path.join(EXAMPLES, "train_char_lm.py")]],
                         ids=["demo", "duplication", "train_char_lm"])
def test_device_cuda_without_kernels_or_gpu_is_a_one_line_usage_error(command):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, *command, "--device", "cuda"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr  # argparse's usage error, before any work
    last = proc.stderr.strip().splitlines()[-1]
    assert _expected_cuda_error() in last, proc.stderr

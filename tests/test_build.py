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


# ------------------------------------------------------------------ the build's one-line errors


def _setup_py(unset=(), **env):
    """setup.py's checks run before any compiling: `setup.py --version` runs them and stops."""
    if not os.path.exists(os.path.join(ROOT, "setup.py")):
        pytest.skip("needs the source tree")
    base = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, env={**base, **env})


def _fake_nvcc(tmp_path, release):
    bin_dir = tmp_path / "cuda" / "bin"
    bin_dir.mkdir(parents=True)
    nvcc = bin_dir / "nvcc"
    nvcc.write_text(f'#!/bin/sh\necho "Cuda compilation tools, release {release}, V{release}.0"\n')
    nvcc.chmod(0o755)
    return str(tmp_path / "cuda")


def _assert_one_line_failure(proc, *fragments):
    assert proc.returncode != 0, proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("reformer_ext build: "), proc.stderr
    for fragment in fragments:
        assert fragment in last, last


@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of torch")
def test_build_refuses_an_nvcc_of_another_cuda_major_version(tmp_path):
    major = int(torch.version.cuda.split(".")[0])
    home = _fake_nvcc(tmp_path, f"{major - 1}.8")
    proc = _setup_py(CUDA_HOME=home, FORCE_CUDA="1")
    _assert_one_line_failure(proc, f"CUDA {torch.version.cuda}", f"is CUDA {major - 1}",
                             "FORCE_CUDA=0")


def test_build_with_force_cuda_and_no_toolkit_says_what_to_set(tmp_path):
    proc = _setup_py(CUDA_HOME=str(tmp_path / "nowhere"), FORCE_CUDA="1")
    if torch.version.cuda is None:
        _assert_one_line_failure(proc, "CPU-only build")
    else:
        _assert_one_line_failure(proc, "no CUDA toolkit", "CUDA_HOME")


def test_build_without_a_compiler_says_so():
    proc = _setup_py(CXX="no-such-c++-compiler", FORCE_CUDA="0")
    _assert_one_line_failure(proc, "no C++ compiler", "no-such-c++-compiler")


def test_build_rejects_a_malformed_force_cuda():
    _assert_one_line_failure(_setup_py(FORCE_CUDA="yes"), "FORCE_CUDA must be 1")


@pytest.mark.skipif(torch.version.cuda is None or torch.cuda.is_available(),
                    reason="needs a CUDA build of torch and no visible GPU")
def test_forced_cuda_build_without_gpu_uses_the_default_arch_list(tmp_path):
    major = int(torch.version.cuda.split(".")[0])
    proc = _setup_py(unset=("TORCH_CUDA_ARCH_LIST",), CUDA_HOME=_fake_nvcc(tmp_path, f"{major}.0"),
                     FORCE_CUDA="1")
    assert proc.returncode == 0, proc.stderr
    assert "TORCH_CUDA_ARCH_LIST=8.0;9.0+PTX" in proc.stdout

"""Builds reformer_ext._C: the C++ (and, when nvcc is available, CUDA) operator library.

Install with `pip install --no-build-isolation .` so the build uses the torch already installed.
Environment:
  FORCE_CUDA=1            build the CUDA sources even if no nvcc is found (fails if none)
  FORCE_CUDA=0            build the CPU kernels only
  TORCH_CUDA_ARCH_LIST    GPU architectures, e.g. "9.0" (torch's default otherwise)
  REFORMER_EXT_MARCH      -march for the C++ kernels (default "native"; "" for the compiler default)
  MAX_JOBS                parallel compile jobs
"""

import glob
import os
import shutil
import sys

from setuptools import setup


def _find_cuda_home():
    """Where the CUDA toolkit lives, so torch's extension builder does not guess /usr/local."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ.setdefault("CUDA_HOME", _cuda_home)

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "reformer_ext needs PyTorch to build: install it first (pip install torch==2.14.1), "
        "then install this package with `pip install --no-build-isolation .`"
    )


def _want_cuda():
    force = os.environ.get("FORCE_CUDA")
    if force is not None:
        return force == "1"
    return _cuda_home is not None and os.path.exists(os.path.join(_cuda_home, "bin", "nvcc"))


def _extension():
    here = os.path.dirname(os.path.abspath(__file__))
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cpp_sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    march = os.environ.get("REFORMER_EXT_MARCH", "native")
    # No -ffast-math: results must match the reference; these two only let loops vectorise.
    cxx_flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wall"]
    if march:
        cxx_flags.append(f"-march={march}")
    common = dict(
        name="reformer_ext._C",
        include_dirs=[here],
        extra_link_args=["-fopenmp"],
    )
    if not _want_cuda():
        return CppExtension(sources=cpp_sources, extra_compile_args={"cxx": cxx_flags}, **common)
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    cuda_sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    return CUDAExtension(
        sources=cpp_sources + cuda_sources,
        extra_compile_args={"cxx": cxx_flags + ["-DREFORMER_WITH_CUDA"], "nvcc": nvcc_flags},
        **common,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)

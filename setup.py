"""Builds reformer_ext._C: the C++ (and, where asked for, CUDA) operator library.

Install with `pip install --no-build-isolation .` so the build uses the torch already installed.

Which kernels are built (the convention of torchvision):
  - the CUDA kernels when a CUDA toolkit (nvcc) is found AND torch sees a GPU, or when
    FORCE_CUDA=1 (e.g. to build on a GPU-less machine for GPUs elsewhere);
  - the CPU kernels only otherwise, or when FORCE_CUDA=0.
Environment:
  FORCE_CUDA=1 / 0        build the CUDA kernels (fails with one line if it cannot) / never
  TORCH_CUDA_ARCH_LIST    GPU architectures, e.g. "9.0". Unset: the visible GPUs' own; with no
                          GPU visible, DEFAULT_CUDA_ARCH_LIST below (A100, H100, and PTX that
                          newer GPUs compile when the library loads).
  REFORMER_EXT_MARCH      -march for the C++ kernels. Default: none, a portable build that runs
                          on any x86-64 CPU and picks AVX2+FMA versions of its hottest loops at
                          load time where the CPU has them; "native" tunes everything for the
                          build machine (the library then may not run on other CPUs)
  MAX_JOBS                parallel compile jobs
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def fail(message: str):
    """Stops the build with one line that says what to do (pip shows it under 'error')."""
    sys.exit(f"reformer_ext build: {message}")


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
    fail("PyTorch is not installed: install it first (pip install torch==2.14.1), then this "
         "package with `pip install --no-build-isolation .`")


def _nvcc():
    path = os.path.join(_cuda_home, "bin", "nvcc") if _cuda_home else None
    return path if path and os.path.exists(path) else None


def _nvcc_major(nvcc: str) -> int:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"release (\d+)\.", out)
    if not found:
        fail(f"cannot read the CUDA version from `{nvcc} --version`")
    return int(found.group(1))


def _want_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA")
    if force not in (None, "", "0", "1"):
        fail(f"FORCE_CUDA must be 1 (build the CUDA kernels) or 0 (CPU only), got {force!r}")
    if force == "0":
        return False
    if force != "1":
        return _nvcc() is not None and torch.version.cuda is not None and torch.cuda.is_available()
    if torch.version.cuda is None:
        fail(f"FORCE_CUDA=1, but torch {torch.__version__} is a CPU-only build: install a CUDA "
             "build of torch, or unset FORCE_CUDA for a CPU-only reformer_ext")
    if _nvcc() is None:
        where = f"no {_cuda_home}/bin/nvcc" if _cuda_home else "no nvcc on PATH, no CUDA_HOME"
        fail(f"FORCE_CUDA=1, but no CUDA toolkit was found ({where}): set CUDA_HOME to one, or "
             "unset FORCE_CUDA for a CPU-only build")
    return True


def _check_cuda_toolchain():
    """torch and nvcc must agree on the CUDA major version, or the kernels cannot link."""
    nvcc_major = _nvcc_major(_nvcc())
    torch_major = int(torch.version.cuda.split(".")[0])
    if nvcc_major != torch_major:
        fail(f"torch {torch.__version__} was built with CUDA {torch.version.cuda} but nvcc "
             f"({_nvcc()}) is CUDA {nvcc_major}: point CUDA_HOME at a CUDA {torch_major} "
             "toolkit, or set FORCE_CUDA=0 for a CPU-only build")
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # torch would derive the list from the visible GPUs, and there are none
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
        print(f"reformer_ext build: no GPU visible, compiling the CUDA kernels for "
              f"TORCH_CUDA_ARCH_LIST={DEFAULT_CUDA_ARCH_LIST}")


def _check_cxx_compiler():
    cxx = os.environ.get("CXX", "c++").split()[0]
    if shutil.which(cxx) is None:
        fail(f"no C++ compiler found ({cxx!r} is not on PATH): install one (e.g. "
             "`apt-get install g++`) or set CXX")


def _extension():
    here = os.path.dirname(os.path.abspath(__file__))
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cpp_sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    march = os.environ.get("REFORMER_EXT_MARCH", "")
    # No -ffast-math: results must match the reference; these two only let loops vectorise.
    # -g0 overrides Python's -g: debug info would triple the compile time and the library size.
    cxx_flags = ["-O3", "-g0", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wall"]
    if march:  # one instruction set for everything: no run-time choice (csrc/cpu/cpu_dispatch.h)
        cxx_flags += [f"-march={march}", "-DREFORMER_SINGLE_ARCH"]
    common = dict(
        name="reformer_ext._C",
        include_dirs=[here],
        extra_link_args=["-fopenmp"],
    )
    _check_cxx_compiler()
    if not _want_cuda():
        print("reformer_ext build: CPU kernels only (no GPU visible or FORCE_CUDA=0; set "
              "FORCE_CUDA=1 to build the CUDA kernels too)")
        return CppExtension(sources=cpp_sources, extra_compile_args={"cxx": cxx_flags}, **common)
    _check_cuda_toolchain()
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
    install_requires=[f"torch=={torch.__version__.split('+')[0]}"],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)

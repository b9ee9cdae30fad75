#!/usr/bin/env bash
# Sets up a fresh machine and runs the whole test suite: the GoogleTest suite (LibTorch, through
# CMake/ctest) and pytest. Idempotent: already-installed pieces are kept.
#   FORCE_CUDA            default 1 where a CUDA toolkit (nvcc) is found, so the CUDA kernels are
#                         compiled and linked even without a GPU (their tests then skip); 0 where
#                         none is found. Set it to override.
#   TORCH_CUDA_ARCH_LIST  CUDA architectures to compile for (default 9.0: one, to keep it short)
#   MAX_JOBS              parallel compile jobs (default 2)
#   SANITIZERS=0          skip the GoogleTest run under ASan+UBSan (build-asan; from scratch
#                         ~5 min of compiler CPU time, i.e. ~3 min on 2 free cores, then
#                         ~15 s CPU / ~20-40 s wall of tests: one process per test)
set -euo pipefail
cd "$(dirname "$0")/.."
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-2}"
PY="${PYTHON:-python3}"
if [ -z "${FORCE_CUDA:-}" ]; then
  if [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] || command -v nvcc >/dev/null 2>&1; then
    export FORCE_CUDA=1
  else
    export FORCE_CUDA=0
    echo "run_all.sh: no CUDA toolkit found: building and testing the CPU kernels only"
  fi
fi

if ! dpkg -s libgtest-dev >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q && $SUDO apt-get install -y -q libgtest-dev
fi
"$PY" -m pip install -q torch==2.14.1 ninja "setuptools>=77"
"$PY" -m pip install -q pytest hypothesis expecttest numpy matplotlib tqdm  # tqdm, matplotlib: the demo's tests
"$PY" -m pip install -q --no-build-isolation -e .

if [ "$FORCE_CUDA" = "1" ]; then
  # The CUDA kernels must be compiled and linked even where no GPU can run them.
  "$PY" -c "import torch, reformer_ext; missing = [op for op in ('lsh_buckets', 'lsh_attention', 'lsh_attention_backward', 'chunked_ffn') if not torch._C._dispatch_has_kernel_for_dispatch_key('reformer::' + op, 'CUDA')]; assert not missing, f'CUDA kernels missing from reformer_ext._C: {missing}'; print('CUDA kernels compiled and registered')"
fi

TORCH_CMAKE="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
cmake -S . -B build -DCMAKE_PREFIX_PATH="$TORCH_CMAKE"
cmake --build build -j "$MAX_JOBS"
ctest --test-dir build --output-on-failure
tests/cpp_package.sh  # the installed CMake package, used by examples/cpp

if [ "${SANITIZERS:-1}" != "0" ]; then
  # The same GoogleTest suite under AddressSanitizer + UndefinedBehaviorSanitizer (CMake option
  # REFORMER_SANITIZE; any report fails the test). LibTorch needs no special ASAN_OPTIONS here;
  # leak checking (LeakSanitizer) stays on. RelWithDebInfo: -O2 -g, for file:line in reports.
  cmake -S . -B build-asan -DREFORMER_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_PREFIX_PATH="$TORCH_CMAKE"
  cmake --build build-asan -j "$MAX_JOBS"
  UBSAN_OPTIONS="print_stacktrace=1" ctest --test-dir build-asan --output-on-failure
fi

"$PY" -m pytest -q tests

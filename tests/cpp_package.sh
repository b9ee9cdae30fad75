#!/usr/bin/env bash
# Installs the LibTorch operator library as a CMake package and builds and runs the standalone
# example examples/cpp against the installed copy, as a C++ user would (find_package(reformer_ext)).
# Reuses the `build` directory of tests/run_all.sh when it exists (only the library is rebuilt
# if stale); otherwise configures build-pkg without the GoogleTest suite. The installed package
# and the example's build go to <build dir>/cpp-package, fresh on every run.
#   MAX_JOBS  parallel compile jobs (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_JOBS="${MAX_JOBS:-2}"
PY="${PYTHON:-python3}"
TORCH_CMAKE="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')"

if [ -f build/CMakeCache.txt ]; then
  BUILD=build
else
  BUILD=build-pkg
  cmake -S . -B "$BUILD" -DREFORMER_BUILD_TESTS=OFF -DCMAKE_PREFIX_PATH="$TORCH_CMAKE"
fi
cmake --build "$BUILD" --target reformer_ops -j "$MAX_JOBS"

WORK="$PWD/$BUILD/cpp-package"
rm -rf "$WORK"
cmake --install "$BUILD" --prefix "$WORK/install"

cmake -S examples/cpp -B "$WORK/example" -DCMAKE_PREFIX_PATH="$WORK/install;$TORCH_CMAKE"
cmake --build "$WORK/example" -j "$MAX_JOBS"
"$WORK/example/lsh_attention_example"

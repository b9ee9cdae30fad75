#!/usr/bin/env bash
# Packaging check (run by .ci/run after the test suite, in an environment that has torch):
# `python -m build --no-isolation` makes an sdist and, from it, a wheel; the sdist must hold every
# tracked file a build needs; the wheel is installed into a new empty venv and smoke-tested
# there, outside the checkout: import, an op forward and backward on the CPU, opcheck of one op.
# The wheel is CPU-only (FORCE_CUDA=0) to keep CI short: the CUDA sources are compiled by the
# test command already.
#   usage: bash tests/packaging_check.sh WORKDIR
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:?usage: tests/packaging_check.sh WORKDIR}"
mkdir -p "$work"
PY="${PYTHON:-python3}"

"$PY" -m pip install -q build
rm -rf "$work/dist"
FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" "$PY" -m build --no-isolation --outdir "$work/dist" . \
  > "$work/build.log" 2>&1 || { tail -40 "$work/build.log"; exit 1; }
sdist=$(ls "$work"/dist/reformer_ext-*.tar.gz)
wheel=$(ls "$work"/dist/reformer_ext-*.whl)
echo "packaging: built $(basename "$sdist") and $(basename "$wheel")"

# Every tracked file that either build reads must be in the sdist.
prefix=$(basename "$sdist" .tar.gz)
tar -tzf "$sdist" | sed "s|^$prefix/||" | sort > "$work/sdist_files"
git ls-files setup.py pyproject.toml CMakeLists.txt README.md MANIFEST.in csrc include kernels \
  cmake reformer_ext tests/cpp tests/cuda_sim examples/cpp docs | sort > "$work/needed_files"
missing=$(comm -23 "$work/needed_files" "$work/sdist_files")
if [ -n "$missing" ]; then
  echo "packaging: the sdist lacks files a build needs:"; echo "$missing"; exit 1
fi
echo "packaging: the sdist holds all $(wc -l < "$work/needed_files") files the builds need"

rm -rf "$work/wheel-venv"
"$PY" -m venv "$work/wheel-venv"
"$work/wheel-venv/bin/python" -m pip install -q "$wheel"
(cd "$work" && "$work/wheel-venv/bin/python" - <<'PY'
import torch
import reformer_ext as rx

assert "site-packages" in rx.__file__, rx.__file__  # the wheel, not a checkout
qk = torch.randn(1, 2, 100, 16, dtype=torch.float64, requires_grad=True)
v = torch.randn(1, 2, 100, 16, dtype=torch.float64, requires_grad=True)
out = rx.lsh_attention(qk, v, n_hashes=2, bucket_size=16, causal=True,
                       generator=torch.Generator().manual_seed(0))
out.square().sum().backward()
assert out.shape == (1, 2, 100, 16) and torch.isfinite(qk.grad).all() and torch.isfinite(v.grad).all()
rot = rx.random_rotations(qk, n_hashes=2, n_buckets=8, generator=torch.Generator().manual_seed(1))
torch.library.opcheck(torch.ops.reformer.lsh_buckets.default, (qk.detach(), rot, None))
print(f"packaging: the wheel's reformer_ext {rx.__version__} imports, runs lsh_attention forward "
      f"and backward and passes opcheck (lsh_buckets), from {rx.__file__}")
PY
)

#!/usr/bin/env bash
# One command for a GPU machine: build the extension against the torch installed there,
# run the CUDA tests, run the GPU benchmark (bench_attention.py --device cuda), and print a
# short table last. Offline: pip never downloads (--no-index); peers (reformer-pytorch,
# transformers) are installed only from wheels found in benchmarks/wheels/, if that folder
# exists. Every stage has its own time limit, so the
# whole run stays within about 8 minutes and a hang cannot eat the budget; a failed stage is
# reported and the next ones still run.
#
#   bash benchmarks/gpu_check.sh            # from the repository root (or anywhere)
# Logs: benchmarks/out/gpu_check/<stage>.log; benchmark rows: benchmarks/out/gpu_check/bench.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
LOGS=benchmarks/out/gpu_check
mkdir -p "$LOGS"
rm -f "$LOGS"/*.log "$LOGS/bench.jsonl"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # import the tree built in place
export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FORCE_CUDA=1
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PY=${PYTHON:-python}
SUMMARY=()

# stage NAME SECONDS COMMAND...: runs COMMAND with a time limit, logs it, records the outcome.
stage() {
  local name=$1 limit=$2 rc=0 t0=$SECONDS
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
  tail -n 15 "$LOGS/$name.log"
  local outcome="ok"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    outcome="TIMED OUT after ${limit}s"
  elif [ "$rc" -ne 0 ]; then
    outcome="FAILED (exit $rc)"
  fi
  SUMMARY+=("$(printf '%-8s %-28s %4ss  log: %s' "$name" "$outcome" $((SECONDS - t0)) "$LOGS/$name.log")")
  return 0
}

build() {
  # Editable install against the local torch; fall back to an in-place build if pip cannot.
  "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . ||
    "$PY" setup.py build_ext --inplace
  "$PY" - <<'EOF'
import torch, reformer_ext
has = torch._C._dispatch_has_kernel_for_dispatch_key
for op in ("lsh_buckets", "lsh_attention", "lsh_attention_backward", "chunked_ffn"):
    assert has(f"reformer::{op}", "CUDA"), f"reformer::{op} has no CUDA kernel"
print("reformer_ext from", reformer_ext.__file__, "- CUDA kernels registered")
EOF
}

peers() {
  if ls benchmarks/wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install --no-index --find-links benchmarks/wheels benchmarks/wheels/*.whl
  else
    echo "no benchmarks/wheels/*.whl: reformer-pytorch and HF rows run only if already installed"
  fi
}

memcheck() {
  # Out-of-bounds or misaligned accesses in the kernels, on one small forward + backward.
  local sanitizer
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null) ||
    { echo "compute-sanitizer not found: skipped"; return 0; }
  "$sanitizer" --tool memcheck --error-exitcode 1 "$PY" - <<'EOF'
import torch, reformer_ext as rx
g = torch.Generator(device="cuda").manual_seed(0)
# bf16/fp16 with D == Dv in {32, 64, 128}: tensor-core kernels; the others: FFMA kernels
for dtype, D in ((torch.bfloat16, 64), (torch.float16, 128), (torch.bfloat16, 32),
                 (torch.float32, 128), (torch.float64, 32)):
    qk = torch.randn(2, 2, 300, D, device="cuda", dtype=dtype, generator=g).requires_grad_()
    v = torch.randn(2, 2, 300, D, device="cuda", dtype=dtype, generator=g).requires_grad_()
    mask = torch.rand(2, 300, device="cuda", generator=g) < 0.2
    out, lse = rx.lsh_attention(qk, v, n_hashes=2, bucket_size=40, causal=True,
                                key_padding_mask=mask, return_lse=True)
    (out.float().sum() + lse.sum()).backward()
torch.cuda.synchronize()
print("memcheck run finished")
EOF
}

export -f build peers memcheck

stage info 15 bash -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'"
stage peers 20 bash -c peers
stage build 170 bash -c build
stage tests 110 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
  tests/test_lsh_attention.py tests/test_lsh_attention_errors.py tests/test_chunked_ffn.py \
  tests/test_opcheck.py tests/test_nn_reformer.py -k "cuda or CUDA"
stage memcheck 35 bash -c memcheck
stage bench 130 "$PY" benchmarks/bench_attention.py --device cuda --budget 1.5 --step-limit 1.0 \
  --results "$LOGS/bench.jsonl"

echo
echo "=== stages"
printf '%s\n' "${SUMMARY[@]}"
grep -E "passed|failed|error" "$LOGS/tests.log" | tail -n 1 || true
echo
echo "=== GPU benchmark: bf16, B=1, H=8, D=64, n_hashes=4, bucket_size=64 (time / ours > 1: ours faster)"
if [ -s "$LOGS/bench.jsonl" ]; then
  "$PY" benchmarks/bench_attention.py --table-from "$LOGS/bench.jsonl" || echo "(could not print the table)"
else
  echo "(no benchmark rows: see $LOGS/bench.log)"
fi

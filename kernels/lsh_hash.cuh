// CUDA hashing of docs/semantics.md §1 step 1: projection of each position onto the random
// rotations and the argmax over [p, -p] (per factor for factorised bucket counts), fused in one
// kernel (one thread per (batch·head, round, position)). Torch-free: raw pointers, a params
// struct and a stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "lsh_common.h"

namespace reformer::cuda {

struct HashParams {
  int64_t batch, heads, length, dim;
  int64_t rotation_heads, n_hashes, half;  // half = rotation columns per round, sum f_j / 2
  BucketFactors factors;                   // the factors f_j (one: f = 2 * half)
};

// qk (B, H, L, D) contiguous; rotations (Hr, D, R, half) contiguous in acc_t; padding (B, L) or
// null; buckets (B, H, R, L) int64.
template <typename scalar_t, typename acc_t>
__global__ void lsh_hash_kernel(const scalar_t* __restrict__ qk,
                                const acc_t* __restrict__ rotations,
                                const bool* __restrict__ padding, HashParams p,
                                int64_t* __restrict__ buckets) {
  const int64_t total = p.batch * p.heads * p.n_hashes * p.length;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pos = idx % p.length;
    const int64_t r = (idx / p.length) % p.n_hashes;
    const int64_t bh = idx / (p.length * p.n_hashes);
    const int64_t b = bh / p.heads, h = bh % p.heads;
    if (padding != nullptr && padding[b * p.length + pos]) {
      buckets[idx] = p.factors.n_buckets();
      continue;
    }
    const scalar_t* x = qk + (bh * p.length + pos) * p.dim;
    const acc_t* rot = rotations + (p.rotation_heads == 1 ? 0 : h) * p.dim * p.n_hashes * p.half +
                       r * p.half;
    // Per factor j, the argmax over [p_j, -p_j] of its slice of columns (docs/semantics.md §1
    // step 1), combined mixed-radix; one factor is the plain argmax over [p, -p].
    int64_t bucket = 0, radix = 1, col = 0;
    for (int j = 0; j < p.factors.count; ++j) {
      const int64_t half = p.factors.half[j];
      acc_t max_p = 0, min_p = 0;
      int64_t arg_max = 0, arg_min = 0;
      for (int64_t k = 0; k < half; ++k, ++col) {
        acc_t dot = 0;
        for (int64_t d = 0; d < p.dim; ++d)
          dot += static_cast<acc_t>(x[d]) * rot[d * p.n_hashes * p.half + col];
        if (k == 0 || dot > max_p) max_p = dot, arg_max = k;
        if (k == 0 || dot < min_p) min_p = dot, arg_min = k;
      }
      bucket += radix * bucket_from_extremes(max_p, arg_max, min_p, arg_min, half);
      radix *= 2 * half;
    }
    buckets[idx] = bucket;
  }
}

#if !defined(REFORMER_CUDA_SIM)  // CPU simulation (tests/cuda_sim): no host launches
template <typename scalar_t, typename acc_t>
cudaError_t launch_lsh_hash(const scalar_t* qk, const acc_t* rotations, const bool* padding,
                            const HashParams& p, int64_t* buckets, cudaStream_t stream) {
  const int64_t total = p.batch * p.heads * p.n_hashes * p.length;
  if (total == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32);
  lsh_hash_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(qk, rotations, padding, p,
                                                                   buckets);
  return cudaGetLastError();
}
#endif  // !REFORMER_CUDA_SIM

}  // namespace reformer::cuda

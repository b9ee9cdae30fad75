// The rotations in the form the tensor-core hash (kernels/lsh_hash_mma.cuh) reads, built with
// ATen on the current stream. Shared by csrc/cuda/lsh_hash_cuda.cu and the CPU simulation of
// the kernels (tests/cuda_sim), so both feed the kernel the same pieces.
#pragma once

#include <ATen/Functions.h>

#include <vector>

#include "../../kernels/lsh_hash_mma.cuh"

namespace reformer::cuda {

// The rotations as lsh_hash_mma.cuh reads them: fp32 (Hr, D, R, half) -> pieces lo, mid, hi in
// `dtype`, each (Hr, R, D, padded_columns(factors)): factor j's columns padded with zero columns
// to padded_half(f_j / 2), factors one after the other (one factor: (Hr, R, D, padded_half)).
// First scaled by a power of two that brings max |rot| to at most 1 (exact, computed on the
// device without a sync): the buckets do not change under a positive scale, and fp16 pieces
// cannot overflow.
inline at::Tensor rotation_pieces(const at::Tensor& rotations, const BucketFactors& factors,
                                  at::ScalarType dtype) {
  auto rot = rotations.to(at::kFloat);
  const auto scale =
      at::exp2(at::neg(at::ceil(at::log2(at::clamp_min(rot.abs().amax(), 1e-30)))));
  const auto scaled = at::mul(rot, scale).permute({0, 2, 1, 3});
  std::vector<at::Tensor> slices;
  int64_t col = 0;
  for (int j = 0; j < factors.count; ++j) {
    const int64_t half = factors.half[j];
    slices.push_back(
        at::constant_pad_nd(scaled.narrow(3, col, half), {0, padded_half(half) - half}));
    col += half;
  }
  auto rest = slices.size() == 1 ? slices[0] : at::cat(slices, 3);
  const auto hi = rest.to(dtype);
  rest = at::sub(rest, hi.to(at::kFloat));
  const auto mid = rest.to(dtype);
  const auto lo = at::sub(rest, mid.to(at::kFloat)).to(dtype);
  return at::stack({lo, mid, hi}).contiguous();
}

}  // namespace reformer::cuda

// The rotations in the form the tensor-core hash (kernels/lsh_hash_mma.cuh) reads, built with
// ATen on the current stream. Shared by csrc/cuda/lsh_hash_cuda.cu and the CPU simulation of
// the kernels (tests/cuda_sim), so both feed the kernel the same pieces.
#pragma once

#include <ATen/Functions.h>

#include "../../kernels/lsh_hash_mma.cuh"

namespace reformer::cuda {

// The rotations as lsh_hash_mma.cuh reads them: fp32 (Hr, D, R, half) -> pieces lo, mid, hi in
// `dtype`, each (Hr, R, D, padded_half) with zero columns past half. First scaled by a power of
// two that brings max |rot| to at most 1 (exact, computed on the device without a sync): the
// buckets do not change under a positive scale, and fp16 pieces cannot overflow.
inline at::Tensor rotation_pieces(const at::Tensor& rotations, at::ScalarType dtype) {
  const int64_t half = rotations.size(3);
  auto rot = rotations.to(at::kFloat);
  const auto scale =
      at::exp2(at::neg(at::ceil(at::log2(at::clamp_min(rot.abs().amax(), 1e-30)))));
  auto rest = at::constant_pad_nd(at::mul(rot, scale).permute({0, 2, 1, 3}),
                                  {0, padded_half(half) - half});
  const auto hi = rest.to(dtype);
  rest = at::sub(rest, hi.to(at::kFloat));
  const auto mid = rest.to(dtype);
  const auto lo = at::sub(rest, mid.to(at::kFloat)).to(dtype);
  return at::stack({lo, mid, hi}).contiguous();
}

}  // namespace reformer::cuda

// The seeded dropout rule (documented in csrc/seeded_dropout.h): element e of a (rows, width)
// tensor is dropped iff the (e + 1)-th SplitMix64 output seeded with the dropout seed, read as a
// signed 64-bit integer, is below -2^63 + p · 2^64. Torch-free and __host__ __device__, so the
// CPU kernels and the CUDA kernels evaluate it inline; csrc/seeded_dropout.h adds the host-side
// threshold and the ATen (int64 tensor) form.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace reformer::dropout_hash {

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kMix1 = 0xBF58476D1CE4E5B9ull;
constexpr uint64_t kMix2 = 0x94D049BB133111EBull;

RX_HOST_DEVICE uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * kMix1;
  z = (z ^ (z >> 27)) * kMix2;
  return z ^ (z >> 31);
}

// A second seed derived from `seed` for another mask of the same owner (the reversible stack's
// attention-probability dropout from its attention-output seed): a well-mixed word, so the two
// masks share no structure.
constexpr uint64_t kAttentionProbsSalt = 0xA0761D6478BD642Full;
RX_HOST_DEVICE int64_t derived_seed(int64_t seed, uint64_t salt) {
  return static_cast<int64_t>(mix(static_cast<uint64_t>(seed) ^ salt));
}

// Whether element `index` (row-major) is dropped.
RX_HOST_DEVICE bool dropped(uint64_t seed, uint64_t index, int64_t threshold) {
  return static_cast<int64_t>(mix(seed + (index + 1) * kGamma)) < threshold;
}

}  // namespace reformer::dropout_hash

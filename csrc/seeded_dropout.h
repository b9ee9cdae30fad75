// Dropout whose mask is a pure function of (seed, element index), so a recompute (the chunked
// feed-forward's backward, the reversible stack's backward) regenerates exactly the forward's
// mask, on any device, for any chunking, without storing it and without a generator.
//
// Element e = row · width + column of a (rows, width) tensor gets the 64-bit word
//   word(e) = mix64(seed + (e + 1) · γ),  γ = 0x9E3779B97F4A7C15      (arithmetic mod 2^64)
//   mix64(z): z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB;
//             z ^= z >> 31                                       (logical shifts)
// i.e. the (e + 1)-th output of Vigna's SplitMix64 seeded with `seed`, and is dropped iff
// word(e), read as a signed int64, is < -2^63 + p · 2^64 (p · 2^64 is exact for a double p).
// Kept elements are scaled by 1 / (1 - p). reformer_ext/ops/seeded_random.py mirrors the rule in
// Python (hidden_dropout_keep_mask).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <cstdint>

#include "../kernels/dropout_hash.h"

namespace reformer {

// The rule as scalar uint64 arithmetic (kGamma, kMix1, kMix2, mix, dropped) is in
// kernels/dropout_hash.h, shared with the CUDA kernels; the threshold is computed on the host.
namespace dropout_hash {
// -2^63 + p · 2^64 as a signed 64-bit integer (p · 2^64 is exact for a double 0 <= p < 1).
inline int64_t threshold(double p) {
  const auto scaled = static_cast<uint64_t>(std::ldexp(p, 64));
  return static_cast<int64_t>(scaled ^ (uint64_t{1} << 63));
}
}  // namespace dropout_hash

// The mask as ATen tensors (int64 ops: two's-complement wrap-around on every backend), for any
// block of rows of a (rows, width) tensor. The work buffers are allocated once, for blocks of up
// to max_rows rows, and reused by every call.
class SeededDropoutMask {
 public:
  SeededDropoutMask(double p, int64_t seed, int64_t width, int64_t max_rows,
                    const at::TensorOptions& device_options);

  // Bool (n, width): true where an element of rows row0 .. row0 + n - 1 is dropped. A view of
  // an internal buffer, valid until the next call.
  at::Tensor dropped(int64_t row0, int64_t n);

 private:
  int64_t width_;
  int64_t seed_;
  int64_t threshold_ = 0;
  at::Tensor col_term_, word_, shifted_, dropped_;
};

// x (rows, width), contiguous: x = x ⊙ keep / (1 - p) in place, by blocks of rows (the int64
// work buffers stay small). p == 0 leaves x unchanged. Applied to a gradient it is dropout's
// backward.
void seeded_dropout_(at::Tensor& x, double p, int64_t seed);

// The same dropout applied to a (rows, width) tensor one block of rows at a time, for callers
// that never hold the whole tensor: block rows row0 .. row0 + n - 1 get exactly the mask and
// scale that seeded_dropout_ gives those rows of the whole tensor. p == 0: no dropout, no
// buffers.
class SeededRowDropout {
 public:
  SeededRowDropout(double p, int64_t seed, int64_t width, int64_t max_rows,
                   const at::TensorOptions& device_options);

  // rows (n <= max_rows, width), the rows from row0 on: dropped out in place.
  void apply_(const at::Tensor& rows, int64_t row0);
  // Dropout's backward of the gradient rows g (n, width) from row0 on: g itself for p == 0,
  // else a new tensor (g is not written).
  at::Tensor backward(const at::Tensor& g, int64_t row0);

 private:
  double p_;
  c10::optional<SeededDropoutMask> mask_;
};

}  // namespace reformer

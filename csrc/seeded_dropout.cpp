// SeededDropoutMask and seeded_dropout_ (the rule is in seeded_dropout.h).
#include "seeded_dropout.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>

namespace reformer {
namespace {

using dropout_hash::kGamma;
using dropout_hash::kMix1;
using dropout_hash::kMix2;

// Two's-complement reinterpretation (well defined since C++20).
constexpr int64_t as_int64(uint64_t v) { return static_cast<int64_t>(v); }

// z ^= z >>> k (logical shift: arithmetic shift, then clear the k sign-extended bits).
void xor_shift_right(at::Tensor& z, at::Tensor& t, int64_t k) {
  at::bitwise_right_shift_out(t, z, k);
  t.bitwise_and_(as_int64((uint64_t{1} << (64 - k)) - 1));
  z.bitwise_xor_(t);
}

// Rows per block in seeded_dropout_: bounds the int64 work buffers to ~16 MiB.
constexpr int64_t kBlockElements = int64_t{1} << 20;

}  // namespace

SeededDropoutMask::SeededDropoutMask(double p, int64_t seed, int64_t width, int64_t max_rows,
                                     const at::TensorOptions& device_options)
    : width_(width), seed_(seed) {
  threshold_ = dropout_hash::threshold(p);  // -2^63 + p · 2^64
  const auto i64 = device_options.dtype(at::kLong);
  col_term_ = at::arange(1, width + 1, i64).mul_(as_int64(kGamma)).unsqueeze(0);
  word_ = at::empty({max_rows, width}, i64);
  shifted_ = at::empty({max_rows, width}, i64);
  dropped_ = at::empty({max_rows, width}, device_options.dtype(at::kBool));
}

at::Tensor SeededDropoutMask::dropped(int64_t row0, int64_t n) {
  // seed + (row · width + col + 1) · γ = [seed + row · (width · γ)] + [(col + 1) · γ]
  const auto row_term = at::arange(row0, row0 + n, col_term_.options())
                            .mul_(as_int64(static_cast<uint64_t>(width_) * kGamma))
                            .add_(seed_)
                            .unsqueeze(1);
  auto z = word_.narrow(0, 0, n);
  auto t = shifted_.narrow(0, 0, n);
  at::add_out(z, row_term, col_term_);
  xor_shift_right(z, t, 30);
  z.mul_(as_int64(kMix1));
  xor_shift_right(z, t, 27);
  z.mul_(as_int64(kMix2));
  xor_shift_right(z, t, 31);
  auto dropped = dropped_.narrow(0, 0, n);
  at::lt_out(dropped, z, threshold_);
  return dropped;
}

void seeded_dropout_(at::Tensor& x, double p, int64_t seed) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "seeded_dropout_: x must be 2-d and contiguous");
  if (p <= 0.0 || x.numel() == 0) return;
  const int64_t rows = x.size(0), width = x.size(1);
  const int64_t block = std::max<int64_t>(1, std::min(rows, kBlockElements / std::max<int64_t>(width, 1)));
  SeededRowDropout dropout(p, seed, width, block, x.options());
  for (int64_t row0 = 0; row0 < rows; row0 += block) {
    dropout.apply_(x.narrow(0, row0, std::min(block, rows - row0)), row0);
  }
}

SeededRowDropout::SeededRowDropout(double p, int64_t seed, int64_t width, int64_t max_rows,
                                   const at::TensorOptions& device_options)
    : p_(p) {
  if (p > 0.0) mask_.emplace(p, seed, width, max_rows, device_options);
}

void SeededRowDropout::apply_(const at::Tensor& rows, int64_t row0) {
  if (!mask_) return;
  rows.masked_fill_(mask_->dropped(row0, rows.size(0)), 0);
  rows.mul_(1.0 / (1.0 - p_));
}

at::Tensor SeededRowDropout::backward(const at::Tensor& g, int64_t row0) {
  if (!mask_) return g;
  auto out = g.clone(at::MemoryFormat::Contiguous);
  apply_(out, row0);
  return out;
}

}  // namespace reformer

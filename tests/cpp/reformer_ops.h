// The LSH operators called through the dispatcher from C++, as a LibTorch user calls them
// (no Python): shared by the GoogleTest suites (tests/cpp, tests/cuda_sim).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/scalar_tensor.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

namespace reformer_test {

using Tensor = at::Tensor;
using OptTensor = std::optional<Tensor>;

inline std::tuple<Tensor, Tensor, Tensor, Tensor> lsh_attention(const Tensor& qk, const Tensor& v,
                                                 const Tensor& rot, const OptTensor& mask,
                                                 int64_t m, bool causal, int64_t before,
                                                 int64_t after, double scale,
                                                 at::IntArrayRef bucket_factors = {},
                                                 double dropout_p = 0.0,
                                                 const OptTensor& dropout_seed = std::nullopt) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("reformer::lsh_attention", "")
                       .typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(
                           const Tensor&, const Tensor&, const Tensor&, const OptTensor&, int64_t,
                           bool, int64_t, int64_t, double, at::IntArrayRef, double,
                           const OptTensor&)>();
  return op.call(qk, v, rot, mask, m, causal, before, after, scale, bucket_factors, dropout_p,
                 dropout_seed);
}

inline std::tuple<Tensor, Tensor> lsh_attention_backward(const Tensor& grad_out, const OptTensor& grad_lse,
                                                  const Tensor& qk, const Tensor& v,
                                                  const Tensor& out, const Tensor& stats,
                                                  const Tensor& sorted, const OptTensor& mask,
                                                  int64_t m, bool causal, int64_t before,
                                                  int64_t after, double scale,
                                                  double dropout_p = 0.0,
                                                  const OptTensor& dropout_seed = std::nullopt) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("reformer::lsh_attention_backward", "")
          .typed<std::tuple<Tensor, Tensor>(const Tensor&, const OptTensor&, const Tensor&,
                                            const Tensor&, const Tensor&, const Tensor&,
                                            const Tensor&, const OptTensor&, int64_t, bool,
                                            int64_t, int64_t, double, double,
                                            const OptTensor&)>();
  return op.call(grad_out, grad_lse, qk, v, out, stats, sorted, mask, m, causal, before, after,
                 scale, dropout_p, dropout_seed);
}

inline Tensor lsh_buckets(const Tensor& qk, const Tensor& rot, const OptTensor& mask,
                          at::IntArrayRef bucket_factors = {}) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("reformer::lsh_buckets", "")
          .typed<Tensor(const Tensor&, const Tensor&, const OptTensor&, at::IntArrayRef)>();
  return op.call(qk, rot, mask, bucket_factors);
}

// Gradients of chunked_ffn: (x, w1, b1, w2, b2).
using ChunkedFfnGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

// The operators take the seed as a one-element int64 CPU tensor.
inline Tensor seed_tensor(int64_t seed) { return at::scalar_tensor(seed, at::kLong); }

inline Tensor chunked_ffn(const Tensor& x, const Tensor& w1, const OptTensor& b1, const Tensor& w2,
                   const OptTensor& b2, int64_t chunk_size, const std::string& activation,
                   double p, int64_t seed) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("reformer::chunked_ffn", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const OptTensor&,
                                     const Tensor&, const OptTensor&, int64_t, c10::string_view,
                                     double, const OptTensor&)>();
  return op.call(x, w1, b1, w2, b2, chunk_size, activation, p, seed_tensor(seed));
}

inline ChunkedFfnGrads chunked_ffn_backward(const Tensor& grad_out, const Tensor& x,
                                            const Tensor& w1, const OptTensor& b1, const Tensor& w2,
                                            const OptTensor& b2, int64_t chunk_size,
                                            const std::string& activation, double p, int64_t seed,
                                            std::array<bool, 5> mask) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("reformer::chunked_ffn_backward", "")
          .typed<ChunkedFfnGrads(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                 const Tensor&, const OptTensor&, int64_t, c10::string_view, double,
                                 const OptTensor&, std::array<bool, 5>)>();
  return op.call(grad_out, x, w1, b1, w2, b2, chunk_size, activation, p, seed_tensor(seed),
                 mask);
}

}  // namespace reformer_test

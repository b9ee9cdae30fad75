// The LSH operators called through the dispatcher from C++, as a LibTorch user calls them
// (no Python): shared by the GoogleTest suites (tests/cpp, tests/cuda_sim).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace reformer_test {

using Tensor = at::Tensor;
using OptTensor = std::optional<Tensor>;

inline std::tuple<Tensor, Tensor, Tensor, Tensor> lsh_attention(const Tensor& qk, const Tensor& v,
                                                 const Tensor& rot, const OptTensor& mask,
                                                 int64_t m, bool causal, int64_t before,
                                                 int64_t after, double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("reformer::lsh_attention", "")
                       .typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(
                           const Tensor&, const Tensor&, const Tensor&, const OptTensor&, int64_t,
                           bool, int64_t, int64_t, double)>();
  return op.call(qk, v, rot, mask, m, causal, before, after, scale);
}

inline std::tuple<Tensor, Tensor> lsh_attention_backward(const Tensor& grad_out, const OptTensor& grad_lse,
                                                  const Tensor& qk, const Tensor& v,
                                                  const Tensor& out, const Tensor& stats,
                                                  const Tensor& sorted, const OptTensor& mask,
                                                  int64_t m, bool causal, int64_t before,
                                                  int64_t after, double scale) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("reformer::lsh_attention_backward", "")
          .typed<std::tuple<Tensor, Tensor>(const Tensor&, const OptTensor&, const Tensor&,
                                            const Tensor&, const Tensor&, const Tensor&,
                                            const Tensor&, const OptTensor&, int64_t, bool,
                                            int64_t, int64_t, double)>();
  return op.call(grad_out, grad_lse, qk, v, out, stats, sorted, mask, m, causal, before, after,
                 scale);
}

inline Tensor lsh_buckets(const Tensor& qk, const Tensor& rot, const OptTensor& mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("reformer::lsh_buckets", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const OptTensor&)>();
  return op.call(qk, rot, mask);
}

}  // namespace reformer_test

// The C++ entry points of lsh_attention.h: typed dispatcher calls of the reformer:: operators.
#include "lsh_attention.h"

#include <ATen/core/dispatch/Dispatcher.h>

namespace reformer {

at::Tensor lsh_buckets(const at::Tensor& qk, const at::Tensor& rotations,
                       const c10::optional<at::Tensor>& key_padding_mask,
                       at::IntArrayRef bucket_factors) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("reformer::lsh_buckets", "")
                             .typed<decltype(lsh_buckets)>();
  return op.call(qk, rotations, key_padding_mask, bucket_factors);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lsh_attention(
    const at::Tensor& qk, const at::Tensor& v, const at::Tensor& rotations,
    const c10::optional<at::Tensor>& key_padding_mask, int64_t bucket_size, bool causal,
    int64_t n_chunks_before, int64_t n_chunks_after, double scale,
    at::IntArrayRef bucket_factors, double dropout_p,
    const c10::optional<at::Tensor>& dropout_seed) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("reformer::lsh_attention", "")
                             .typed<decltype(lsh_attention)>();
  return op.call(qk, v, rotations, key_padding_mask, bucket_size, causal, n_chunks_before,
                 n_chunks_after, scale, bucket_factors, dropout_p, dropout_seed);
}

std::tuple<at::Tensor, at::Tensor> lsh_attention_backward(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& qk,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& softmax_stats,
    const at::Tensor& sorted_positions, const c10::optional<at::Tensor>& key_padding_mask,
    int64_t bucket_size, bool causal, int64_t n_chunks_before, int64_t n_chunks_after,
    double scale, double dropout_p, const c10::optional<at::Tensor>& dropout_seed) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("reformer::lsh_attention_backward", "")
                             .typed<decltype(lsh_attention_backward)>();
  return op.call(grad_out, grad_lse, qk, v, out, softmax_stats, sorted_positions,
                 key_padding_mask, bucket_size, causal, n_chunks_before, n_chunks_after, scale,
                 dropout_p, dropout_seed);
}

}  // namespace reformer

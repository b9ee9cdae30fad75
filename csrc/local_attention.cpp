// The C++ entry points of local_attention.h: typed dispatcher calls of the reformer:: operators.
#include "local_attention.h"

#include <ATen/core/dispatch/Dispatcher.h>

namespace reformer {

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_attention(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& key_padding_mask, int64_t chunk_length, bool causal,
    int64_t n_chunks_before, int64_t n_chunks_after, double scale, double dropout_p,
    const c10::optional<at::Tensor>& dropout_seed) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("reformer::local_attention", "")
                             .typed<decltype(local_attention)>();
  return op.call(q, k, v, key_padding_mask, chunk_length, causal, n_chunks_before,
                 n_chunks_after, scale, dropout_p, dropout_seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_attention_backward(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& softmax_stats, const c10::optional<at::Tensor>& key_padding_mask,
    int64_t chunk_length, bool causal, int64_t n_chunks_before, int64_t n_chunks_after,
    double scale, double dropout_p, const c10::optional<at::Tensor>& dropout_seed) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("reformer::local_attention_backward", "")
                             .typed<decltype(local_attention_backward)>();
  return op.call(grad_out, grad_lse, q, k, v, out, softmax_stats, key_padding_mask, chunk_length,
                 causal, n_chunks_before, n_chunks_after, scale, dropout_p, dropout_seed);
}

}  // namespace reformer

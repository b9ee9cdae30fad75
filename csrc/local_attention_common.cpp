// Argument checks of the local attention operators (local_attention_common.h), for every backend.
// Each failure is a ValueError in Python that names the argument, the expectation and the value.
#include "local_attention_common.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>

#include "../kernels/lsh_common.h"
#include "arg_checks.h"

namespace reformer {

LocalShape check_local_attention_args(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v,
                                      const c10::optional<at::Tensor>& key_padding_mask,
                                      int64_t chunk_length, int64_t n_chunks_before,
                                      int64_t n_chunks_after) {
  LocalShape s = check_query_shape(q, "q");
  check_defined(k, "k");
  TORCH_CHECK_VALUE(k.sizes() == q.sizes(), "k must have the shape of q ", q.sizes(), ", got ",
                    k.sizes());
  check_same_dtype(k, "k", q, "q");
  check_same_device(k, "k", q, "q");
  check_value_shape(v, s.batch, s.heads, s.length, "q");
  TORCH_CHECK_VALUE(v.size(3) >= 1, "v must have value_dim >= 1, got shape ", v.sizes());
  check_same_dtype(v, "v", q, "q");
  check_same_device(v, "v", q, "q");
  s.value_dim = v.size(3);
  TORCH_CHECK_VALUE(chunk_length >= 1 && chunk_length < std::numeric_limits<int32_t>::max(),
                    "chunk_length must be in [1, 2^31), got ", chunk_length);
  // A chunk_length >= L is full attention over the L positions (one chunk, attended once:
  // docs/semantics.md §9 step 2); the kernels then use chunks of L, which gives the same window
  // in the same order without sizing their buffers by a chunk_length far above L.
  s.bucket_size = std::min(chunk_length, s.length);
  s.padded_length = padded_length(s.length, s.bucket_size);
  TORCH_CHECK_VALUE(s.padded_length < std::numeric_limits<int32_t>::max(),
                    "q length padded to a multiple of chunk_length must be < 2^31, got ",
                    s.padded_length);
  s.n_hashes = 1;
  s.chunks_per_round = s.padded_length / s.bucket_size;
  s.n_chunks = s.chunks_per_round;
  check_window(n_chunks_before, n_chunks_after);
  check_key_padding_mask(key_padding_mask, s.batch, s.length, q, "q");
  return s;
}

LocalShape check_local_attention_backward_args(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& softmax_stats, const c10::optional<at::Tensor>& key_padding_mask,
    int64_t chunk_length, int64_t n_chunks_before, int64_t n_chunks_after) {
  const LocalShape s = check_local_attention_args(q, k, v, key_padding_mask, chunk_length,
                                                  n_chunks_before, n_chunks_after);
  check_grad_out_and_out(grad_out, out, v, q, "q");
  check_softmax_stats_and_grad_lse(softmax_stats, grad_lse, s.batch, s.heads, s.length, q, "q");
  return s;
}

}  // namespace reformer

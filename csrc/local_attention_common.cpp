// Argument checks of the local attention operators (local_attention_common.h), for every backend.
// Each failure is a ValueError in Python that names the argument, the expectation and the value.
#include "local_attention_common.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../kernels/lsh_common.h"

namespace reformer {
namespace {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_defined(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), name, " must be a tensor, got None");
}

void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& q) {
  check_defined(t, name);
  TORCH_CHECK_VALUE(t.device() == q.device(), name, " must be on the same device as q (",
                    q.device(), "), got ", t.device());
}

}  // namespace

LocalShape check_local_attention_args(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v,
                                      const c10::optional<at::Tensor>& key_padding_mask,
                                      int64_t chunk_length, int64_t n_chunks_before,
                                      int64_t n_chunks_after) {
  check_defined(q, "q");
  TORCH_CHECK_VALUE(q.dim() == 4, "q must have shape (batch, heads, length, dim), got ", q.dim(),
                    " dimensions ", q.sizes());
  TORCH_CHECK_VALUE(is_supported_float(q.scalar_type()),
                    "q must be float32, float64, float16 or bfloat16, got ", q.scalar_type());
  LocalShape s;
  s.batch = q.size(0);
  s.heads = q.size(1);
  s.length = q.size(2);
  s.dim = q.size(3);
  TORCH_CHECK_VALUE(s.length >= 1, "q must have length >= 1 (dimension 2), got shape ",
                    q.sizes());
  TORCH_CHECK_VALUE(s.dim >= 1, "q must have dim >= 1 (dimension 3), got shape ", q.sizes());
  check_defined(k, "k");
  TORCH_CHECK_VALUE(k.sizes() == q.sizes(), "k must have the shape of q ", q.sizes(), ", got ",
                    k.sizes());
  TORCH_CHECK_VALUE(k.scalar_type() == q.scalar_type(), "k must have the dtype of q (",
                    q.scalar_type(), "), got ", k.scalar_type());
  check_same_device(k, "k", q);
  check_defined(v, "v");
  TORCH_CHECK_VALUE(v.dim() == 4 && v.size(0) == s.batch && v.size(1) == s.heads &&
                        v.size(2) == s.length,
                    "v must have shape (batch, heads, length, value_dim) with (batch, heads, "
                    "length) = (", s.batch, ", ", s.heads, ", ", s.length, ") as in q, got ",
                    v.sizes());
  TORCH_CHECK_VALUE(v.size(3) >= 1, "v must have value_dim >= 1, got shape ", v.sizes());
  TORCH_CHECK_VALUE(v.scalar_type() == q.scalar_type(), "v must have the dtype of q (",
                    q.scalar_type(), "), got ", v.scalar_type());
  check_same_device(v, "v", q);
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
  // Each bound is checked before the sum, which could otherwise overflow.
  TORCH_CHECK_VALUE(n_chunks_before >= 0 && n_chunks_before < kMaxWindowChunks,
                    "n_chunks_before must be in [0, ", kMaxWindowChunks, "), got ",
                    n_chunks_before);
  TORCH_CHECK_VALUE(n_chunks_after >= 0 && n_chunks_after < kMaxWindowChunks,
                    "n_chunks_after must be in [0, ", kMaxWindowChunks, "), got ", n_chunks_after);
  TORCH_CHECK_VALUE(n_chunks_before + n_chunks_after + 1 <= kMaxWindowChunks,
                    "n_chunks_before + n_chunks_after + 1 must be <= ", kMaxWindowChunks,
                    ", got ", n_chunks_before + n_chunks_after + 1);
  if (key_padding_mask.has_value()) {
    const at::Tensor& mask = *key_padding_mask;
    TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool,
                      "key_padding_mask must be a bool tensor (True marks padding), got ",
                      mask.scalar_type());
    TORCH_CHECK_VALUE(mask.dim() == 2 && mask.size(0) == s.batch && mask.size(1) == s.length,
                      "key_padding_mask must have shape (batch, length) = (", s.batch, ", ",
                      s.length, "), got ", mask.sizes());
    check_same_device(mask, "key_padding_mask", q);
  }
  return s;
}

LocalShape check_local_attention_backward_args(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& softmax_stats, const c10::optional<at::Tensor>& key_padding_mask,
    int64_t chunk_length, int64_t n_chunks_before, int64_t n_chunks_after) {
  const LocalShape s = check_local_attention_args(q, k, v, key_padding_mask, chunk_length,
                                                  n_chunks_before, n_chunks_after);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{grad_out, "grad_out"},
                                {out, "out"}}) {
    check_defined(t, name);
    TORCH_CHECK_VALUE(t.sizes() == v.sizes(), name, " must have the shape of v ", v.sizes(),
                      ", got ", t.sizes());
    TORCH_CHECK_VALUE(t.scalar_type() == q.scalar_type(), name, " must have the dtype of q (",
                      q.scalar_type(), "), got ", t.scalar_type());
    check_same_device(t, name, q);
  }
  const auto acc_type = accumulation_type(q);
  const std::vector<int64_t> lse_shape{s.batch, s.heads, s.length};
  const std::vector<int64_t> stats_shape{s.batch, s.heads, s.length, 2};
  check_defined(softmax_stats, "softmax_stats");
  TORCH_CHECK_VALUE(softmax_stats.sizes() == stats_shape && softmax_stats.scalar_type() == acc_type,
                    "softmax_stats must have shape ", at::IntArrayRef(stats_shape), " and dtype ",
                    acc_type, ", got ", softmax_stats.sizes(), " ", softmax_stats.scalar_type());
  check_same_device(softmax_stats, "softmax_stats", q);
  if (grad_lse.has_value()) {
    TORCH_CHECK_VALUE(grad_lse->sizes() == lse_shape && grad_lse->scalar_type() == acc_type,
                      "grad_lse must have shape ", at::IntArrayRef(lse_shape), " and dtype ",
                      acc_type, ", got ", grad_lse->sizes(), " ", grad_lse->scalar_type());
    check_same_device(*grad_lse, "grad_lse", q);
  }
  return s;
}

}  // namespace reformer

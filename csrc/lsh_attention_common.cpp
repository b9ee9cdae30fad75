// Argument checks of the LSH attention operators (lsh_attention_common.h), for every backend.
// Each failure is a ValueError in Python that names the argument, the expectation and the value.
#include "lsh_attention_common.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <limits>
#include <string>

#include "../kernels/lsh_common.h"
#include "arg_checks.h"

namespace reformer {
namespace {

// qk, mask and bucket_size; fills the sizes that do not depend on rotations.
LshShape check_qk_and_mask(const at::Tensor& qk, const c10::optional<at::Tensor>& key_padding_mask,
                           int64_t bucket_size) {
  LshShape s = check_query_shape(qk, "qk");
  TORCH_CHECK_VALUE(bucket_size >= 1 && bucket_size < std::numeric_limits<int32_t>::max(),
                    "bucket_size must be in [1, 2^31), got ", bucket_size);
  s.bucket_size = bucket_size;
  s.padded_length = padded_length(s.length, bucket_size);
  TORCH_CHECK_VALUE(s.padded_length < std::numeric_limits<int32_t>::max(),
                    "qk length padded to a multiple of bucket_size must be < 2^31, got ",
                    s.padded_length);
  s.chunks_per_round = s.padded_length / bucket_size;
  check_key_padding_mask(key_padding_mask, s.batch, s.length, qk, "qk");
  return s;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> forward_buffers(const LshShape& s,
                                                  const at::TensorOptions& options) {
  return {at::zeros({s.batch, s.heads, s.length, s.value_dim}, options),
          at::full({s.batch, s.heads, s.length, 2}, -std::numeric_limits<double>::infinity(),
                   options)};
}

LshShape check_query_shape(const at::Tensor& t, const char* name) {
  check_query_tensor(t, name);
  LshShape s;
  s.batch = t.size(0);
  s.heads = t.size(1);
  s.length = t.size(2);
  s.dim = t.size(3);
  return s;
}

BucketFactors check_bucket_factors(at::IntArrayRef bucket_factors, int64_t rotation_cols,
                                   const std::string& what) {
  if (bucket_factors.empty()) {
    TORCH_CHECK_VALUE(2 * rotation_cols < std::numeric_limits<int32_t>::max(),
                      "n_buckets must be < 2^31, got ", 2 * rotation_cols);
    return single_factor(rotation_cols);
  }
  TORCH_CHECK_VALUE(static_cast<int64_t>(bucket_factors.size()) <= kMaxBucketFactors,
                    "bucket_factors must hold at most ", kMaxBucketFactors, " factors, got ",
                    bucket_factors.size(), ": ", bucket_factors);
  BucketFactors f;
  int64_t sum = 0, prod = 1;
  for (const int64_t factor : bucket_factors) {
    TORCH_CHECK_VALUE(factor >= 2 && factor % 2 == 0 && factor < std::numeric_limits<int32_t>::max(),
                      "bucket_factors must hold even factors >= 2 (buckets come from argmax over "
                      "[p, -p]), got ", bucket_factors);
    sum += factor;
    prod *= factor;  // < 2^31 so far, times a factor < 2^31: no overflow
    TORCH_CHECK_VALUE(prod < std::numeric_limits<int32_t>::max(),
                      "bucket_factors must multiply to n_buckets < 2^31, got ", bucket_factors);
    f.half[f.count++] = factor / 2;
  }
  TORCH_CHECK_VALUE(sum / 2 == rotation_cols,
                    "bucket_factors must sum to 2 * ", rotation_cols, " (twice ", what,
                    ".shape[3], the rotation columns per round), got ", bucket_factors,
                    " (sum ", sum, ")");
  return f;
}

LshShape check_hash_args(const at::Tensor& qk, const at::Tensor& rotations,
                         const c10::optional<at::Tensor>& key_padding_mask, int64_t bucket_size,
                         at::IntArrayRef bucket_factors) {
  LshShape s = check_qk_and_mask(qk, key_padding_mask, bucket_size);
  check_defined(rotations, "rotations");
  TORCH_CHECK_VALUE(rotations.dim() == 4,
                    "rotations must have shape (heads or 1, dim, n_hashes, n_buckets // 2), got ",
                    rotations.dim(), " dimensions ", rotations.sizes());
  TORCH_CHECK_VALUE(is_supported_float(rotations.scalar_type()),
                    "rotations must be a floating-point tensor, got ", rotations.scalar_type());
  check_same_device(rotations, "rotations", qk, "qk");
  s.rotation_heads = rotations.size(0);
  TORCH_CHECK_VALUE(s.rotation_heads == 1 || s.rotation_heads == s.heads,
                    "rotations must have 1 or heads = ", s.heads, " entries in dimension 0, got ",
                    rotations.sizes());
  TORCH_CHECK_VALUE(rotations.size(1) == s.dim, "rotations must have dim = ", s.dim,
                    " (qk's last dimension) in dimension 1, got ", rotations.sizes());
  s.n_hashes = rotations.size(2);
  TORCH_CHECK_VALUE(s.n_hashes >= 1, "rotations must have n_hashes >= 1 in dimension 2, got ",
                    rotations.sizes());
  TORCH_CHECK_VALUE(rotations.size(3) >= 1,
                    "rotations must have n_buckets // 2 >= 1 in dimension 3 (n_buckets >= 2), got ",
                    rotations.sizes());
  s.rotation_cols = rotations.size(3);
  s.factors = check_bucket_factors(bucket_factors, s.rotation_cols, "rotations");
  s.n_buckets = s.factors.n_buckets();
  s.n_chunks = s.n_hashes * s.chunks_per_round;
  return s;
}

LshShape check_attention_args(const at::Tensor& qk, const at::Tensor& v,
                              const at::Tensor& rotations,
                              const c10::optional<at::Tensor>& key_padding_mask,
                              int64_t bucket_size, int64_t n_chunks_before,
                              int64_t n_chunks_after, at::IntArrayRef bucket_factors) {
  LshShape s = check_hash_args(qk, rotations, key_padding_mask, bucket_size, bucket_factors);
  check_value_shape(v, s.batch, s.heads, s.length, "qk");
  check_same_dtype(v, "v", qk, "qk");
  TORCH_CHECK_VALUE(v.size(3) >= 1, "v must have value_dim >= 1, got shape ", v.sizes());
  check_same_device(v, "v", qk, "qk");
  check_window(n_chunks_before, n_chunks_after);
  s.value_dim = v.size(3);
  return s;
}

LshShape check_backward_args(const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse,
                             const at::Tensor& qk, const at::Tensor& v, const at::Tensor& out,
                             const at::Tensor& softmax_stats, const at::Tensor& sorted_positions,
                             const c10::optional<at::Tensor>& key_padding_mask,
                             int64_t bucket_size, int64_t n_chunks_before,
                             int64_t n_chunks_after) {
  LshShape s = check_qk_and_mask(qk, key_padding_mask, bucket_size);
  check_defined(v, "v");
  TORCH_CHECK_VALUE(v.dim() == 4 && v.size(0) == s.batch && v.size(1) == s.heads &&
                        v.size(2) == s.length && v.size(3) >= 1,
                    "v must have shape (", s.batch, ", ", s.heads, ", ", s.length,
                    ", value_dim), got ", v.sizes());
  check_same_dtype(v, "v", qk, "qk");
  check_same_device(v, "v", qk, "qk");
  check_window(n_chunks_before, n_chunks_after);
  s.value_dim = v.size(3);
  check_grad_out_and_out(grad_out, out, v, qk, "qk");
  check_softmax_stats_and_grad_lse(softmax_stats, grad_lse, s.batch, s.heads, s.length, qk, "qk");
  check_defined(sorted_positions, "sorted_positions");
  TORCH_CHECK_VALUE(sorted_positions.dim() == 3 && sorted_positions.size(0) == s.batch &&
                        sorted_positions.size(1) == s.heads &&
                        sorted_positions.scalar_type() == at::kInt &&
                        sorted_positions.size(2) >= s.padded_length &&
                        sorted_positions.size(2) % s.padded_length == 0,
                    "sorted_positions must be int32 of shape (batch, heads, n_hashes * ",
                    s.padded_length, "), got ", sorted_positions.sizes(), " ",
                    sorted_positions.scalar_type());
  check_same_device(sorted_positions, "sorted_positions", qk, "qk");
  // The kernels index with these values: positions outside [0, L') are an error (one device
  // sync on CUDA), not an out-of-bounds read or a silently different result.
  if (sorted_positions.numel() > 0) {
    const auto [lowest, highest] = at::aminmax(sorted_positions);
    const int32_t lo = lowest.item<int32_t>(), hi = highest.item<int32_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi < s.padded_length,
                      "sorted_positions must hold positions in [0, ", s.padded_length,
                      ") as returned by lsh_attention, got values in [", lo, ", ", hi, "]");
  }
  s.n_hashes = sorted_positions.size(2) / s.padded_length;
  s.n_chunks = s.n_hashes * s.chunks_per_round;
  return s;
}

}  // namespace reformer

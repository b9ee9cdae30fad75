// Argument checks of the LSH attention operators (lsh_attention_common.h), for every backend.
// Each failure is a ValueError in Python that names the argument, the expectation and the value.
#include "lsh_attention_common.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <limits>
#include <string>

#include "../kernels/lsh_common.h"

namespace reformer {
namespace {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_defined(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), name, " must be a tensor, got None");
}

void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& qk) {
  check_defined(t, name);
  TORCH_CHECK_VALUE(t.device() == qk.device(), name, " must be on the same device as qk (",
                    qk.device(), "), got ", t.device());
}

void check_window(int64_t n_chunks_before, int64_t n_chunks_after) {
  // Each bound is checked before the sum, which could otherwise overflow.
  TORCH_CHECK_VALUE(n_chunks_before >= 0 && n_chunks_before < kMaxWindowChunks,
                    "n_chunks_before must be in [0, ", kMaxWindowChunks, "), got ",
                    n_chunks_before);
  TORCH_CHECK_VALUE(n_chunks_after >= 0 && n_chunks_after < kMaxWindowChunks,
                    "n_chunks_after must be in [0, ", kMaxWindowChunks, "), got ", n_chunks_after);
  TORCH_CHECK_VALUE(n_chunks_before + n_chunks_after + 1 <= kMaxWindowChunks,
                    "n_chunks_before + n_chunks_after + 1 must be <= ", kMaxWindowChunks,
                    ", got ", n_chunks_before + n_chunks_after + 1);
}

// qk, mask and bucket_size; fills the sizes that do not depend on rotations.
LshShape check_qk_and_mask(const at::Tensor& qk, const c10::optional<at::Tensor>& key_padding_mask,
                           int64_t bucket_size) {
  check_defined(qk, "qk");
  TORCH_CHECK_VALUE(qk.dim() == 4, "qk must have shape (batch, heads, length, dim), got ",
                    qk.dim(), " dimensions ", qk.sizes());
  TORCH_CHECK_VALUE(is_supported_float(qk.scalar_type()),
                    "qk must be float32, float64, float16 or bfloat16, got ", qk.scalar_type());
  LshShape s;
  s.batch = qk.size(0);
  s.heads = qk.size(1);
  s.length = qk.size(2);
  s.dim = qk.size(3);
  TORCH_CHECK_VALUE(s.length >= 1, "qk must have length >= 1 (dimension 2), got shape ",
                    qk.sizes());
  TORCH_CHECK_VALUE(s.dim >= 1, "qk must have dim >= 1 (dimension 3), got shape ", qk.sizes());
  TORCH_CHECK_VALUE(bucket_size >= 1 && bucket_size < std::numeric_limits<int32_t>::max(),
                    "bucket_size must be in [1, 2^31), got ", bucket_size);
  s.bucket_size = bucket_size;
  s.padded_length = padded_length(s.length, bucket_size);
  TORCH_CHECK_VALUE(s.padded_length < std::numeric_limits<int32_t>::max(),
                    "qk length padded to a multiple of bucket_size must be < 2^31, got ",
                    s.padded_length);
  s.chunks_per_round = s.padded_length / bucket_size;
  if (key_padding_mask.has_value()) {
    const at::Tensor& mask = *key_padding_mask;
    TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool,
                      "key_padding_mask must be a bool tensor (True marks padding), got ",
                      mask.scalar_type());
    TORCH_CHECK_VALUE(mask.dim() == 2 && mask.size(0) == s.batch && mask.size(1) == s.length,
                      "key_padding_mask must have shape (batch, length) = (", s.batch, ", ",
                      s.length, "), got ", mask.sizes());
    check_same_device(mask, "key_padding_mask", qk);
  }
  return s;
}

}  // namespace

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
  check_same_device(rotations, "rotations", qk);
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
  check_defined(v, "v");
  TORCH_CHECK_VALUE(v.dim() == 4 && v.size(0) == s.batch && v.size(1) == s.heads &&
                        v.size(2) == s.length,
                    "v must have shape (batch, heads, length, value_dim) with (batch, heads, "
                    "length) = (", s.batch, ", ", s.heads, ", ", s.length, ") as in qk, got ",
                    v.sizes());
  TORCH_CHECK_VALUE(v.scalar_type() == qk.scalar_type(), "v must have the dtype of qk (",
                    qk.scalar_type(), "), got ", v.scalar_type());
  TORCH_CHECK_VALUE(v.size(3) >= 1, "v must have value_dim >= 1, got shape ", v.sizes());
  check_same_device(v, "v", qk);
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
  TORCH_CHECK_VALUE(v.scalar_type() == qk.scalar_type(), "v must have the dtype of qk (",
                    qk.scalar_type(), "), got ", v.scalar_type());
  check_same_device(v, "v", qk);
  check_window(n_chunks_before, n_chunks_after);
  s.value_dim = v.size(3);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{grad_out, "grad_out"},
                                {out, "out"}}) {
    check_defined(t, name);
    TORCH_CHECK_VALUE(t.sizes() == v.sizes(), name, " must have the shape of v ", v.sizes(),
                      ", got ", t.sizes());
    TORCH_CHECK_VALUE(t.scalar_type() == qk.scalar_type(), name, " must have the dtype of qk (",
                      qk.scalar_type(), "), got ", t.scalar_type());
    check_same_device(t, name, qk);
  }
  const auto acc_type = qk.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const std::vector<int64_t> lse_shape{s.batch, s.heads, s.length};
  const std::vector<int64_t> stats_shape{s.batch, s.heads, s.length, 2};
  check_defined(softmax_stats, "softmax_stats");
  TORCH_CHECK_VALUE(softmax_stats.sizes() == stats_shape && softmax_stats.scalar_type() == acc_type,
                    "softmax_stats must have shape ", at::IntArrayRef(stats_shape), " and dtype ",
                    acc_type, ", got ", softmax_stats.sizes(), " ", softmax_stats.scalar_type());
  check_same_device(softmax_stats, "softmax_stats", qk);
  if (grad_lse.has_value()) {
    TORCH_CHECK_VALUE(grad_lse->sizes() == lse_shape && grad_lse->scalar_type() == acc_type,
                      "grad_lse must have shape ", at::IntArrayRef(lse_shape), " and dtype ",
                      acc_type, ", got ", grad_lse->sizes(), " ", grad_lse->scalar_type());
    check_same_device(*grad_lse, "grad_lse", qk);
  }
  check_defined(sorted_positions, "sorted_positions");
  TORCH_CHECK_VALUE(sorted_positions.dim() == 3 && sorted_positions.size(0) == s.batch &&
                        sorted_positions.size(1) == s.heads &&
                        sorted_positions.scalar_type() == at::kInt &&
                        sorted_positions.size(2) >= s.padded_length &&
                        sorted_positions.size(2) % s.padded_length == 0,
                    "sorted_positions must be int32 of shape (batch, heads, n_hashes * ",
                    s.padded_length, "), got ", sorted_positions.sizes(), " ",
                    sorted_positions.scalar_type());
  check_same_device(sorted_positions, "sorted_positions", qk);
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

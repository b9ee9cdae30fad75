// Argument-check helpers shared by the attention operators' checks (arg_checks.h).
#include "arg_checks.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <utility>
#include <vector>

#include "../kernels/lsh_common.h"

namespace reformer {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_defined(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), name, " must be a tensor, got None");
}

void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref,
                       const char* ref_name) {
  check_defined(t, name);
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " must be on the same device as ", ref_name,
                    " (", ref.device(), "), got ", t.device());
}

void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref,
                      const char* ref_name) {
  TORCH_CHECK_VALUE(t.scalar_type() == ref.scalar_type(), name, " must have the dtype of ",
                    ref_name, " (", ref.scalar_type(), "), got ", t.scalar_type());
}

void check_query_tensor(const at::Tensor& t, const char* name) {
  check_defined(t, name);
  TORCH_CHECK_VALUE(t.dim() == 4, name, " must have shape (batch, heads, length, dim), got ",
                    t.dim(), " dimensions ", t.sizes());
  TORCH_CHECK_VALUE(is_supported_float(t.scalar_type()), name,
                    " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.size(2) >= 1, name, " must have length >= 1 (dimension 2), got shape ",
                    t.sizes());
  TORCH_CHECK_VALUE(t.size(3) >= 1, name, " must have dim >= 1 (dimension 3), got shape ",
                    t.sizes());
}

void check_value_shape(const at::Tensor& v, int64_t batch, int64_t heads, int64_t length,
                       const char* ref_name) {
  check_defined(v, "v");
  TORCH_CHECK_VALUE(v.dim() == 4 && v.size(0) == batch && v.size(1) == heads &&
                        v.size(2) == length,
                    "v must have shape (batch, heads, length, value_dim) with (batch, heads, "
                    "length) = (", batch, ", ", heads, ", ", length, ") as in ", ref_name,
                    ", got ", v.sizes());
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

void check_key_padding_mask(const c10::optional<at::Tensor>& key_padding_mask, int64_t batch,
                            int64_t length, const at::Tensor& ref, const char* ref_name) {
  if (!key_padding_mask.has_value()) return;
  const at::Tensor& mask = *key_padding_mask;
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool,
                    "key_padding_mask must be a bool tensor (True marks padding), got ",
                    mask.scalar_type());
  TORCH_CHECK_VALUE(mask.dim() == 2 && mask.size(0) == batch && mask.size(1) == length,
                    "key_padding_mask must have shape (batch, length) = (", batch, ", ", length,
                    "), got ", mask.sizes());
  check_same_device(mask, "key_padding_mask", ref, ref_name);
}

void check_grad_out_and_out(const at::Tensor& grad_out, const at::Tensor& out,
                            const at::Tensor& v, const at::Tensor& ref, const char* ref_name) {
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{grad_out, "grad_out"},
                                {out, "out"}}) {
    check_defined(t, name);
    TORCH_CHECK_VALUE(t.sizes() == v.sizes(), name, " must have the shape of v ", v.sizes(),
                      ", got ", t.sizes());
    check_same_dtype(t, name, ref, ref_name);
    check_same_device(t, name, ref, ref_name);
  }
}

void check_softmax_stats_and_grad_lse(const at::Tensor& softmax_stats,
                                      const c10::optional<at::Tensor>& grad_lse, int64_t batch,
                                      int64_t heads, int64_t length, const at::Tensor& ref,
                                      const char* ref_name) {
  const auto acc_type = ref.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const std::vector<int64_t> lse_shape{batch, heads, length};
  const std::vector<int64_t> stats_shape{batch, heads, length, 2};
  check_defined(softmax_stats, "softmax_stats");
  TORCH_CHECK_VALUE(softmax_stats.sizes() == stats_shape && softmax_stats.scalar_type() == acc_type,
                    "softmax_stats must have shape ", at::IntArrayRef(stats_shape), " and dtype ",
                    acc_type, ", got ", softmax_stats.sizes(), " ", softmax_stats.scalar_type());
  check_same_device(softmax_stats, "softmax_stats", ref, ref_name);
  if (grad_lse.has_value()) {
    TORCH_CHECK_VALUE(grad_lse->sizes() == lse_shape && grad_lse->scalar_type() == acc_type,
                      "grad_lse must have shape ", at::IntArrayRef(lse_shape), " and dtype ",
                      acc_type, ", got ", grad_lse->sizes(), " ", grad_lse->scalar_type());
    check_same_device(*grad_lse, "grad_lse", ref, ref_name);
  }
}

}  // namespace reformer

// CUDA entry points of reformer::lsh_attention and reformer::lsh_attention_backward
// (docs/semantics.md §1): argument checks (shared with the CPU kernel), device guard, current
// stream, buffers from PyTorch's caching allocator, dtype and head-dim dispatch, and launch checks.
// The device code is torch-free and lives in kernels/: hashing (lsh_hash.cuh), the CUB bucket sort
// (lsh_sort.cuh), the forward (lsh_attention_fwd.cuh) and the backward (lsh_attention_bwd.cuh).
//
// Outputs have the CPU kernel's meaning and layout, so reformer_ext/ops.py's autograd works
// unchanged: sorted_positions (B, H, R * L') int32, softmax_stats (B, H, L, 2) = (max logit,
// log-sum relative to it), lse = their sum; padding queries get out 0, stats 0 and lse 0.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>

#include "../../kernels/lsh_attention_mma.cuh"
#include "../../kernels/lsh_sort.cuh"
#include "../lsh_attention.h"
#include "lsh_attention_cuda.h"

namespace reformer::cuda {

bool use_tensor_cores(const at::Tensor& qk, const at::Tensor& v, const at::Tensor* dout) {
  if (qk.scalar_type() != at::kHalf && qk.scalar_type() != at::kBFloat16) return false;
  if (!mma_head_dims_supported(qk.size(-1), v.size(-1))) return false;
  const auto aligned = [](const at::Tensor& t) {
    return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
  };
  if (!aligned(qk) || !aligned(v) || (dout != nullptr && !aligned(*dout))) return false;
  const char* setting = std::getenv("REFORMER_EXT_TENSOR_CORES");
  if (setting != nullptr && std::string(setting) == "0") return false;
  return tensor_core_kernels_run_on(qk.get_device());
}

namespace {

AttentionParams make_params(const LshShape& s, const at::Tensor& mask, const at::Tensor& sorted,
                            bool causal, int64_t before, int64_t after, double scale) {
  AttentionParams p{};
  p.batch = s.batch;
  p.heads = s.heads;
  p.length = s.length;
  p.padded_length = s.padded_length;
  p.dim = s.dim;
  p.value_dim = s.value_dim;
  p.bucket_size = s.bucket_size;
  p.chunks_per_round = s.chunks_per_round;
  p.n_chunks = s.n_chunks;
  p.before = static_cast<int>(before);
  p.after = static_cast<int>(after);
  p.causal = causal;
  p.scale = scale;
  p.padding = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  p.sorted = sorted.data_ptr<int32_t>();
  return p;
}

// g_j = rsqrt(mean(x_j^2) + eps) / sqrt(D) per position: (B, H, L) in the accumulation type.
at::Tensor key_scales(const at::Tensor& qk, const LshShape& s) {
  const auto x = qk.to(accumulation_type(qk));
  return x.square().mean(-1).add_(kKeyNormEps).mul_(static_cast<double>(s.dim)).rsqrt_();
}

template <typename key_t>
void sort_with_keys(const at::Tensor& buckets, const SortShape& shape, at::Tensor& sorted) {
  const auto key_dtype = sizeof(key_t) == 4 ? at::kInt : at::kLong;
  auto options = buckets.options();
  auto keys_in = at::empty({shape.items()}, options.dtype(key_dtype));
  auto keys_out = at::empty({shape.items()}, options.dtype(key_dtype));
  auto values_in = at::empty({shape.items()}, options.dtype(at::kInt));
  size_t cub_bytes = 0;
  C10_CUDA_CHECK(lsh_sort_temp_bytes<key_t>(shape, cub_bytes));
  // CUB's scratch comes from the caching allocator, on the current stream.
  auto cub_temp = at::empty({static_cast<int64_t>(std::max<size_t>(cub_bytes, 1))},
                            options.dtype(at::kByte));
  C10_CUDA_CHECK(launch_lsh_sort<key_t>(
      buckets.data_ptr<int64_t>(), shape, reinterpret_cast<key_t*>(keys_in.data_ptr()),
      reinterpret_cast<key_t*>(keys_out.data_ptr()), values_in.data_ptr<int32_t>(),
      sorted.data_ptr<int32_t>(), cub_temp.data_ptr(), cub_bytes,
      c10::cuda::getCurrentCUDAStream()));
}

// sorted_positions (B, H, R * L') int32 of docs/semantics.md §1 step 2.
at::Tensor sort_by_bucket(const at::Tensor& buckets, const LshShape& s) {
  auto sorted = at::empty({s.batch, s.heads, s.n_hashes * s.padded_length},
                          buckets.options().dtype(at::kInt));
  const SortShape shape{s.batch * s.heads * s.n_hashes, s.length, s.padded_length, s.n_buckets};
  if (shape.items() == 0) return sorted;
  TORCH_CHECK(shape.key_bits() <= 64, "lsh_attention: too many (batch, head, round) segments ",
              "and buckets to sort with 64-bit keys");
  if (shape.key_bits() <= 32)
    sort_with_keys<uint32_t>(buckets, shape, sorted);
  else
    sort_with_keys<uint64_t>(buckets, shape, sorted);
  return sorted;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lsh_attention_cuda(
    const at::Tensor& qk, const at::Tensor& v, const at::Tensor& rotations,
    const c10::optional<at::Tensor>& key_padding_mask, int64_t bucket_size, bool causal,
    int64_t n_chunks_before, int64_t n_chunks_after, double scale) {
  const LshShape s = check_attention_args(qk, v, rotations, key_padding_mask, bucket_size,
                                          n_chunks_before, n_chunks_after);
  check_head_dims(s.dim, s.value_dim);
  const c10::cuda::CUDAGuard guard(qk.device());
  const auto acc = accumulation_type(qk);
  const auto x = qk.contiguous();
  const auto values = v.contiguous();
  const auto mask = key_padding_mask.has_value() ? key_padding_mask->contiguous() : at::Tensor();
  const auto sorted = sort_by_bucket(hash_buckets(x, rotations, mask, s), s);

  auto out_acc = at::zeros({s.batch, s.heads, s.length, s.value_dim}, x.options().dtype(acc));
  // Running softmax per query: (max logit, log-sum), -inf marking "no round merged yet".
  auto stats = at::full({s.batch, s.heads, s.length, 2}, -std::numeric_limits<double>::infinity(),
                        x.options().dtype(acc));
  if (out_acc.numel() > 0) {
    const auto g = key_scales(x, s);
    const AttentionParams params = make_params(s, mask, sorted, causal, n_chunks_before,
                                               n_chunks_after, scale);
    if (use_tensor_cores(x, values))
      run_lsh_forward_mma(params, s.n_hashes, x, values, g, out_acc, stats);
    else
      run_lsh_forward(params, s.n_hashes, x, values, g, out_acc, stats);
  }
  return forward_outputs(out_acc, stats, sorted, qk.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> lsh_attention_backward_cuda(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& qk,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& softmax_stats,
    const at::Tensor& sorted_positions, const c10::optional<at::Tensor>& key_padding_mask,
    int64_t bucket_size, bool causal, int64_t n_chunks_before, int64_t n_chunks_after,
    double scale) {
  const LshShape s =
      check_backward_args(grad_out, grad_lse, qk, v, out, softmax_stats, sorted_positions,
                          key_padding_mask, bucket_size, n_chunks_before, n_chunks_after);
  check_head_dims(s.dim, s.value_dim);
  const c10::cuda::CUDAGuard guard(qk.device());
  const auto acc = accumulation_type(qk);
  const auto x = qk.contiguous();
  const auto values = v.contiguous();
  const auto dout = grad_out.contiguous();
  const auto stats = softmax_stats.contiguous();
  const auto sorted = sorted_positions.contiguous();
  const auto mask = key_padding_mask.has_value() ? key_padding_mask->contiguous() : at::Tensor();

  auto dqk = at::zeros({s.batch, s.heads, s.length, s.dim}, x.options().dtype(acc));
  auto dv = at::zeros({s.batch, s.heads, s.length, s.value_dim}, x.options().dtype(acc));
  if (dqk.numel() > 0) {
    // Δ_i = dO_i · O_i - dlse_i: the row term of the softmax gradient.
    auto delta = at::mul(dout.to(acc), out.to(acc)).sum(-1);
    if (grad_lse.has_value()) delta.sub_(*grad_lse);
    delta = delta.contiguous();
    const auto g = key_scales(x, s);
    const AttentionParams params = make_params(s, mask, sorted, causal, n_chunks_before,
                                               n_chunks_after, scale);
    if (use_tensor_cores(x, values, &dout))
      run_lsh_backward_mma(params, s.n_hashes, x, values, dout, g, stats, delta, dqk, dv);
    else
      run_lsh_backward(params, s.n_hashes, x, values, dout, g, stats, delta, dqk, dv);
  }
  return {dqk.to(qk.scalar_type()), dv.to(v.scalar_type())};
}

}  // namespace
}  // namespace reformer::cuda

TORCH_LIBRARY_IMPL(reformer, CUDA, m) {
  m.impl("lsh_attention", &reformer::cuda::lsh_attention_cuda);
  m.impl("lsh_attention_backward", &reformer::cuda::lsh_attention_backward_cuda);
}

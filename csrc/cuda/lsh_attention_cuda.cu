// CUDA kernels of the LSH attention operators (docs/semantics.md §1), reformer::lsh_buckets,
// reformer::lsh_attention and reformer::lsh_attention_backward, registered for CUDA at the bottom
// of this file: argument checks (shared with the CPU kernels), device guard, current stream,
// buffers from PyTorch's caching allocator, and the choice of kernels. The device code is
// torch-free and lives in kernels/: hashing (lsh_hash.cuh, via lsh_hash_cuda.cu), the CUB bucket
// sort (lsh_sort.cuh, via lsh_sort_cuda.cu), the forward (lsh_attention_fwd.cuh) and the backward
// (lsh_attention_bwd.cuh), and their tensor-core forms (lsh_attention_mma_*.cuh).
//
// Outputs have the CPU kernels' meaning and layout, so one autograd formula serves both devices:
// sorted_positions (B, H, R * L') int32, softmax_stats (B, H, L, 2) = (max logit, log-sum
// relative to it), lse = their sum; padding queries get out 0, stats 0 and lse 0.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "../../kernels/lsh_common.h"
#include "../lsh_attention_common.h"
#include "../chunked_ffn.h"  // read_dropout_seed
#include "lsh_attention_cuda.h"
#include "lsh_hash_cuda.h"
#include "lsh_sort_cuda.h"
#include "tensor_cores_cuda.h"

namespace reformer::cuda {
namespace {

// g_j = rsqrt(mean(x_j^2) + eps) / sqrt(D) per position: (B, H, L) in the accumulation type.
at::Tensor key_scales(const at::Tensor& qk, const LshShape& s) {
  const auto x = qk.to(accumulation_type(qk));
  return x.square().mean(-1).add_(kKeyNormEps).mul_(static_cast<double>(s.dim)).rsqrt_();
}

at::Tensor lsh_buckets_cuda(const at::Tensor& qk, const at::Tensor& rotations,
                            const c10::optional<at::Tensor>& key_padding_mask,
                            at::IntArrayRef bucket_factors) {
  const LshShape s = check_hash_args(qk, rotations, key_padding_mask, /*bucket_size=*/1,
                                       bucket_factors);
  const c10::cuda::CUDAGuard guard(qk.device());
  const auto mask = contiguous_mask(key_padding_mask);
  return hash_buckets(qk.contiguous(), rotations, mask, s);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lsh_attention_cuda(
    const at::Tensor& qk, const at::Tensor& v, const at::Tensor& rotations,
    const c10::optional<at::Tensor>& key_padding_mask, int64_t bucket_size, bool causal,
    int64_t n_chunks_before, int64_t n_chunks_after, double scale,
    at::IntArrayRef bucket_factors, double dropout_p,
    const c10::optional<at::Tensor>& dropout_seed) {
  const LshShape s = check_attention_args(qk, v, rotations, key_padding_mask, bucket_size,
                                          n_chunks_before, n_chunks_after, bucket_factors);
  const int64_t seed = read_dropout_seed(dropout_seed, dropout_p);
  check_head_dims(s.dim, s.value_dim);
  const c10::cuda::CUDAGuard guard(qk.device());
  const auto acc = accumulation_type(qk);
  const auto x = qk.contiguous();
  const auto values = v.contiguous();
  const auto mask = contiguous_mask(key_padding_mask);
  const auto sorted = sort_by_bucket(hash_buckets(x, rotations, mask, s), s);
  auto [out_acc, stats] = forward_buffers(s, x.options().dtype(acc));
  if (out_acc.numel() > 0) {
    const auto g = key_scales(x, s);
    const AttentionParams params = make_params(s, mask, sorted, causal, n_chunks_before,
                                               n_chunks_after, scale, dropout_p, seed);
    // The tensor-core kernels have no attention dropout: with dropout_p > 0, the FFMA kernels.
    if (!params.dropout && use_tensor_cores(x, values))
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
    double scale, double dropout_p, const c10::optional<at::Tensor>& dropout_seed) {
  const LshShape s =
      check_backward_args(grad_out, grad_lse, qk, v, out, softmax_stats, sorted_positions,
                          key_padding_mask, bucket_size, n_chunks_before, n_chunks_after);
  const int64_t seed = read_dropout_seed(dropout_seed, dropout_p);
  check_head_dims(s.dim, s.value_dim);
  const c10::cuda::CUDAGuard guard(qk.device());
  const auto acc = accumulation_type(qk);
  const auto x = qk.contiguous();
  const auto values = v.contiguous();
  const auto dout = grad_out.contiguous();
  const auto stats = softmax_stats.contiguous();
  const auto sorted = sorted_positions.contiguous();
  const auto mask = contiguous_mask(key_padding_mask);

  auto dqk = at::zeros({s.batch, s.heads, s.length, s.dim}, x.options().dtype(acc));
  auto dv = at::zeros({s.batch, s.heads, s.length, s.value_dim}, x.options().dtype(acc));
  if (dqk.numel() > 0) {
    const auto delta = softmax_row_term(dout, out, grad_lse, acc);
    const auto g = key_scales(x, s);
    const AttentionParams params = make_params(s, mask, sorted, causal, n_chunks_before,
                                               n_chunks_after, scale, dropout_p, seed);
    if (!params.dropout && use_tensor_cores(x, values, &dout))
      run_lsh_backward_mma(params, s.n_hashes, x, values, dout, g, stats, delta, dqk, dv);
    else
      run_lsh_backward(params, s.n_hashes, x, values, dout, g, stats, delta, dqk, dv);
  }
  return {dqk.to(qk.scalar_type()), dv.to(v.scalar_type())};
}

}  // namespace
}  // namespace reformer::cuda

TORCH_LIBRARY_IMPL(reformer, CUDA, m) {
  m.impl("lsh_buckets", &reformer::cuda::lsh_buckets_cuda);
  m.impl("lsh_attention", &reformer::cuda::lsh_attention_cuda);
  m.impl("lsh_attention_backward", &reformer::cuda::lsh_attention_backward_cuda);
}

// Launchers of the LSH attention forward and backward kernels (kernels/lsh_attention_*.cuh) for
// the dtype of qk, called by the CUDA kernels of the operators in lsh_attention_cuda.cu. Each
// lives in its own translation unit (lsh_attention_{fwd,bwd,mma_fwd,mma_bwd}_cuda.cu), so the
// many kernel instantiations (dtype x head-dim slots) compile in parallel. Also the host-side
// pieces that lsh_attention_cuda.cu and local_attention_cuda.cu share: the kernels' parameters
// (make_params), the contiguous mask and the backward's softmax row term.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <type_traits>

#include "../../kernels/lsh_attention_tile.cuh"
#include "../lsh_attention_common.h"
#include "../seeded_dropout.h"

namespace reformer::cuda {

// The kernels keep per-row accumulators in registers, in slots of 32 lanes: head dims up to 128.
inline void check_head_dims(int64_t dim, int64_t value_dim) {
  TORCH_CHECK_VALUE(slots_for(dim > value_dim ? dim : value_dim) > 0,
                    "the CUDA lsh_attention supports qk and v head dims up to 128, got dim = ",
                    dim, " and value_dim = ", value_dim);
}

// Calls f(std::integral_constant<int, kSlots>) with the lane slots for max(dim, value_dim):
// 1, 2 or 4 (head dims up to 32, 64, 128).
template <typename F>
void dispatch_slots(int64_t dim, int64_t value_dim, const F& f) {
  check_head_dims(dim, value_dim);
  switch (slots_for(dim > value_dim ? dim : value_dim)) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

// The kernels' parameters for a call of sizes `s`: window, scale, key padding `mask` (contiguous
// bool, or undefined for none), the order `sorted` (int32, or undefined for the identity order of
// local attention) and attention dropout (docs/semantics.md §1 "Dropout"; off for dropout_p ==
// 0). self_mask and distinct_window keep LSH's defaults.
inline AttentionParams make_params(const LshShape& s, const at::Tensor& mask,
                                   const at::Tensor& sorted, bool causal, int64_t before,
                                   int64_t after, double scale, double dropout_p,
                                   int64_t dropout_seed) {
  AttentionParams p{.batch = s.batch, .heads = s.heads, .length = s.length,
                    .padded_length = s.padded_length, .dim = s.dim, .value_dim = s.value_dim,
                    .bucket_size = s.bucket_size, .chunks_per_round = s.chunks_per_round,
                    .n_chunks = s.n_chunks, .before = static_cast<int>(before),
                    .after = static_cast<int>(after), .causal = causal, .scale = scale,
                    .padding = mask.defined() ? mask.data_ptr<bool>() : nullptr,
                    .sorted = sorted.defined() ? sorted.data_ptr<int32_t>() : nullptr};
  if (dropout_p > 0) {
    p.dropout = true;
    p.dropout_seed = static_cast<uint64_t>(dropout_seed);
    p.dropout_threshold = dropout_hash::threshold(dropout_p);
    p.keep_scale = 1.0 / (1.0 - dropout_p);
  }
  return p;
}

// key_padding_mask made contiguous, or an undefined tensor for None.
inline at::Tensor contiguous_mask(const c10::optional<at::Tensor>& key_padding_mask) {
  return key_padding_mask.has_value() ? key_padding_mask->contiguous() : at::Tensor();
}

// Δ_i = dO_i · O_i - dlse_i: the row term of the softmax gradient, (B, H, L) contiguous in the
// accumulation type `acc`.
inline at::Tensor softmax_row_term(const at::Tensor& dout, const at::Tensor& out,
                                   const c10::optional<at::Tensor>& grad_lse, at::ScalarType acc) {
  auto delta = dout.to(acc).mul(out.to(acc)).sum(-1);
  if (grad_lse.has_value()) delta.sub_(*grad_lse);
  return delta.contiguous();
}

// Every round of the forward on the current stream. qk, v contiguous in the input dtype;
// key_scale (B, H, L), out_acc (B, H, L, Dv) zero and stats (B, H, L, 2) -inf, in the
// accumulation type.
void run_lsh_forward(const AttentionParams& p, int64_t n_hashes, const at::Tensor& qk,
                     const at::Tensor& v, const at::Tensor& key_scale, at::Tensor& out_acc,
                     at::Tensor& stats);

// The dQ and dK/dV passes of every round on the current stream. qk, v, dout contiguous in the
// input dtype; key_scale, stats (final), delta, and the zeroed dqk, dv in the accumulation type.
void run_lsh_backward(const AttentionParams& p, int64_t n_hashes, const at::Tensor& qk,
                      const at::Tensor& v, const at::Tensor& dout, const at::Tensor& key_scale,
                      const at::Tensor& stats, const at::Tensor& delta, at::Tensor& dqk,
                      at::Tensor& dv);

// Tensor-core forms of run_lsh_forward / run_lsh_backward, same arguments, for calls that
// use_tensor_cores (tensor_cores_cuda.h) accepts. lsh_attention_mma_{fwd,bwd}_cuda.cu.
void run_lsh_forward_mma(const AttentionParams& p, int64_t n_hashes, const at::Tensor& qk,
                         const at::Tensor& v, const at::Tensor& key_scale, at::Tensor& out_acc,
                         at::Tensor& stats);
void run_lsh_backward_mma(const AttentionParams& p, int64_t n_hashes, const at::Tensor& qk,
                          const at::Tensor& v, const at::Tensor& dout,
                          const at::Tensor& key_scale, const at::Tensor& stats,
                          const at::Tensor& delta, at::Tensor& dqk, at::Tensor& dv);

}  // namespace reformer::cuda

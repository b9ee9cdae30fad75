// Launchers of the LSH attention forward and backward kernels (kernels/lsh_attention_*.cuh) for
// the dtype of qk, called by the CUDA kernels of the operators in lsh_attention_cuda.cu. Each
// lives in its own translation unit (lsh_attention_{fwd,bwd,mma_fwd,mma_bwd}_cuda.cu), so the
// many kernel instantiations (dtype x head-dim slots) compile in parallel.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <type_traits>

#include "../../kernels/lsh_attention_tile.cuh"
#include "../lsh_attention_common.h"

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

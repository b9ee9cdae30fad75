// Launchers of the LSH attention forward and backward kernels (kernels/lsh_attention_*.cuh) for
// the dtype of qk, shared by the entry points in lsh_attention_cuda.cu. Each lives in its own
// translation unit (lsh_attention_{fwd,bwd}_cuda.cu), so the many kernel instantiations
// (dtype x head-dim slots) compile in parallel.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <type_traits>

#include "../../kernels/lsh_attention_tile.cuh"
#include "../lsh_attention.h"

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

// Buckets (B, H, R, L) int64 of docs/semantics.md §1 step 1 on the current stream (padding
// positions: the bucket n_buckets); qk contiguous, mask contiguous bool or undefined.
// lsh_buckets_cuda.cu.
at::Tensor hash_buckets(const at::Tensor& qk, const at::Tensor& rotations, const at::Tensor& mask,
                        const LshShape& s);

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

// Whether the tensor-core kernels (kernels/lsh_attention_mma_*.cuh) take this call: fp16/bf16
// inputs, D == Dv in {32, 64, 128}, qk, v (and dout in the backward) 16-byte aligned,
// tensor_core_kernels_run_on(qk's device), and the environment variable REFORMER_EXT_TENSOR_CORES
// not "0" (the switch that selects the FFMA kernels instead, e.g. to compare the two).
// lsh_attention_cuda.cu.
bool use_tensor_cores(const at::Tensor& qk, const at::Tensor& v,
                      const at::Tensor* dout = nullptr);

// Whether `device` (the current device) has compute capability 8.0+ and loads the tensor-core
// kernels compiled for a compute_80+ target. Cached per device. lsh_attention_mma_fwd_cuda.cu.
bool tensor_core_kernels_run_on(int device);

// Tensor-core forms of run_lsh_forward / run_lsh_backward, same arguments, for calls that
// use_tensor_cores accepts. lsh_attention_mma_{fwd,bwd}_cuda.cu.
void run_lsh_forward_mma(const AttentionParams& p, int64_t n_hashes, const at::Tensor& qk,
                         const at::Tensor& v, const at::Tensor& key_scale, at::Tensor& out_acc,
                         at::Tensor& stats);
void run_lsh_backward_mma(const AttentionParams& p, int64_t n_hashes, const at::Tensor& qk,
                          const at::Tensor& v, const at::Tensor& dout,
                          const at::Tensor& key_scale, const at::Tensor& stats,
                          const at::Tensor& delta, at::Tensor& dqk, at::Tensor& dv);

}  // namespace reformer::cuda

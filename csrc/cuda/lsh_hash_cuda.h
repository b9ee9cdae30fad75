// CUDA hashing of docs/semantics.md §1 step 1 (kernels/lsh_hash.cuh, kernels/lsh_hash_mma.cuh),
// used by lsh_buckets and the attention forward.
#pragma once

#include <ATen/core/Tensor.h>

#include "../lsh_attention_common.h"

namespace reformer::cuda {

// Buckets (B, H, R, L) int64 on the current stream (padding positions: the bucket n_buckets);
// qk contiguous, mask contiguous bool or undefined. On tensor cores where use_tensor_cores
// (tensor_cores_cuda.h) accepts the call, else FFMA.
at::Tensor hash_buckets(const at::Tensor& qk, const at::Tensor& rotations, const at::Tensor& mask,
                        const LshShape& s);

}  // namespace reformer::cuda

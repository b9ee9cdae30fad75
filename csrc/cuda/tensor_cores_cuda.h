// Whether a call of the CUDA LSH attention runs on the tensor-core kernels
// (kernels/lsh_attention_mma_*.cuh, kernels/lsh_hash_mma.cuh) or on the FFMA ones.
#pragma once

#include <ATen/core/Tensor.h>

namespace reformer::cuda {

// Whether the tensor-core kernels take this call: fp16/bf16 inputs, D == Dv in {32, 64, 128},
// qk, v (and dout in the backward) 16-byte aligned, tensor_core_kernels_run_on(qk's device), and
// the environment variable REFORMER_EXT_TENSOR_CORES not "0" (the switch that selects the FFMA
// kernels instead, e.g. to compare the two).
bool use_tensor_cores(const at::Tensor& qk, const at::Tensor& v,
                      const at::Tensor* dout = nullptr);

// Whether `device` (the current device) has compute capability 8.0+ and loads the tensor-core
// kernels compiled for a compute_80+ target. Cached per device.
bool tensor_core_kernels_run_on(int device);

}  // namespace reformer::cuda

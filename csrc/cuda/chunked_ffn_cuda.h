// CUDA versions of the fused element-wise kernels of the chunked feed-forward (the CPU ones are in
// csrc/cpu/chunked_ffn_cpu.h, with the same meaning): csrc/chunked_ffn.cpp picks one by device.
#pragma once

#include <ATen/core/Tensor.h>

#include "../chunked_ffn_common.h"

namespace reformer::cuda {

// Whether the kernels below handle h: a contiguous CUDA tensor (float32/64, float16, bfloat16).
bool chunked_ffn_fused_supported(const at::Tensor& h);

// h = act(h + bias) ⊙ keep, in place. h (rows, d_ff); bias (d_ff) or undefined.
void chunked_ffn_bias_activation_(const at::Tensor& h, const at::Tensor& bias,
                                  const ChunkedFfnHiddenDropoutRows& dropout,
                                  ChunkedFfnActivation act);

// With z = h + bias: act_out = act(z) ⊙ keep and h = act'(z) ⊙ keep.
void chunked_ffn_bias_activation_grad_(const at::Tensor& h, const at::Tensor& act_out,
                                       const at::Tensor& bias,
                                       const ChunkedFfnHiddenDropoutRows& dropout,
                                       ChunkedFfnActivation act);

// grad = grad ⊙ deriv, in place; col_sums += Σ_rows grad when defined (ATen's deterministic
// column sum, accumulated in col_sums' dtype).
void chunked_ffn_mul_colsum_(const at::Tensor& grad, const at::Tensor& deriv,
                             const at::Tensor& col_sums);

}  // namespace reformer::cuda

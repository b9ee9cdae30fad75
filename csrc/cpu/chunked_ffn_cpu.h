// Fused element-wise CPU kernels of the chunked feed-forward (csrc/chunked_ffn.cpp): one pass over
// a chunk's (rows, d_ff) hidden activation where the ATen composition would take two or three
// (bias copy, activation, activation backward, column sum). float32 and float64, contiguous.
#pragma once

#include <ATen/core/Tensor.h>

#include "../chunked_ffn_common.h"

namespace reformer::cpu {

// Whether the kernels below handle h: a contiguous float32/float64 CPU tensor.
bool chunked_ffn_fused_supported(const at::Tensor& h);

// h = act(h + bias) ⊙ keep, in place. h (rows, d_ff); bias (d_ff) or undefined.
void chunked_ffn_bias_activation_(const at::Tensor& h, const at::Tensor& bias,
                                  const ChunkedFfnHiddenDropoutRows& dropout,
                                  ChunkedFfnActivation act);

// With z = h + bias: act_out = act(z) ⊙ keep and h = act'(z) ⊙ keep (h is overwritten with the
// derivative). act_out has h's shape.
void chunked_ffn_bias_activation_grad_(const at::Tensor& h, const at::Tensor& act_out,
                                       const at::Tensor& bias,
                                       const ChunkedFfnHiddenDropoutRows& dropout,
                                       ChunkedFfnActivation act);

// grad = grad ⊙ deriv, in place; when col_sums (d_ff) is defined, col_sums += Σ_rows grad, each
// column summed over the rows in order (the result does not depend on the thread count).
void chunked_ffn_mul_colsum_(const at::Tensor& grad, const at::Tensor& deriv,
                             const at::Tensor& col_sums);

}  // namespace reformer::cpu

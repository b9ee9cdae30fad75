// The matrix products and column sums of the operators (chunked_ffn, reformer_stack), one entry
// for every device:
//   CPU   the fixed-order kernels of cpu/fixed_order_gemm.h: results bitwise independent of the
//         thread count. float16 / bfloat16 go through float32 (operands converted, one rounding
//         to the output's dtype at the end).
//   CUDA  ATen (cuBLAS, at::sum), as before.
#pragma once

#include <ATen/core/Tensor.h>

#include "cpu/fixed_order_gemm.h"

namespace reformer {

// out = init + alpha · a · b for 2-D a (M, K), b (K, N), out (M, N), any strides; init = out
// (accumulate), bias (1-D (N), undefined: none) or nothing. a, b and bias have one dtype; out
// has it too, or float32 for float16 / bfloat16 operands (a float32 accumulator). out must not
// overlap a, b or bias.
void gemm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
              const at::Tensor& bias = {}, double alpha = 1.0, bool accumulate = false);

// A right-hand operand that several products share (a weight used by every chunk): on the CPU
// (float32 / float64) packed once for the fixed-order kernel, elsewhere just the tensor.
// Products with it are bitwise those with the tensor itself.
struct GemmRhs {
  at::Tensor b;
  cpu::PackedRhs packed;  // panels undefined where not packed
};

GemmRhs gemm_rhs(const at::Tensor& b);

void gemm_out(const at::Tensor& out, const at::Tensor& a, const GemmRhs& b,
              const at::Tensor& bias = {}, double alpha = 1.0, bool accumulate = false);

// bias + a · b (bias undefined: a · b) as a new (M, N) tensor of a's dtype.
at::Tensor gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias = {});

// acc (N) += Σ over the rows of m (M, N), m converted to acc's dtype. On the CPU each column is
// summed over the rows in order.
void add_column_sums_(const at::Tensor& acc, const at::Tensor& m);

// Σ over the rows of m as a new (N) tensor of dtype `dtype`.
at::Tensor column_sums(const at::Tensor& m, at::ScalarType dtype);

}  // namespace reformer

// A CPU GEMM whose result does not depend on the thread count, and the column sums that go with
// it (the operators' replacements for the CPU BLAS and for at::sum over rows, whose blocking and
// reduction order change with the number of threads and with the CPU).
//
// Every output element is computed the same way whatever the tiling, the thread count and the
// element's position:
//   s = 0;  s += A(i, k) · B(k, j) for k = 0, 1, ..., K - 1 in that order;  C(i, j) = init + α · s
// with init = the old C(i, j) (accumulate), bias(j), or nothing. The K loop is blocked for the
// caches, but partial sums go through memory in their own type, which is exact; threads only
// split the output into tiles (at::parallel_for), never a sum. So C is bitwise the same for any
// number of threads (and any chunking of the rows) on one machine and build; it is not across
// builds for different instruction sets, where FMA contraction and vector width change rounding.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace reformer::cpu {

// A (M x K), B (K x N), C (M x N) with element (r, c) at data[r * row_stride + c * col_stride]
// (so a transposed operand is just swapped strides). bias: N elements at bias[j * bias_stride],
// or nullptr. C may not overlap A, B or bias.
template <typename T>
struct GemmArgs {
  int64_t m = 0, n = 0, k = 0;
  const T* a = nullptr;
  int64_t a_rs = 0, a_cs = 0;
  const T* b = nullptr;
  int64_t b_rs = 0, b_cs = 0;
  T* c = nullptr;
  int64_t c_rs = 0, c_cs = 0;
  const T* bias = nullptr;
  int64_t bias_stride = 1;
  T alpha = T(1);
  bool accumulate = false;  // init = C (bias must then be nullptr)
};

// packed_b: B already packed (PackedRhs::panels; args.b is then not read), or nullptr.
template <typename T>
void fixed_order_gemm(const GemmArgs<T>& args, const T* packed_b = nullptr);

// out = init + alpha · a · b for 2-D CPU tensors of one dtype (float32 or float64), any strides;
// init = out (accumulate), bias (1-D, undefined: none) or nothing. out must not alias a or b.
void fixed_order_gemm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                          const at::Tensor& bias, double alpha, bool accumulate);

// A right-hand operand packed once into the kernel's panels, for several products with it (a
// weight that every chunk of a feed-forward multiplies). Packing copies values, so products with
// it are bitwise those with the operand itself.
struct PackedRhs {
  at::Tensor b;       // the operand (a view of the caller's tensor; shape and dtype)
  at::Tensor panels;  // its packed copy
};

// b: a 2-D float32 / float64 CPU tensor, any strides.
PackedRhs pack_rhs(const at::Tensor& b);

void fixed_order_gemm_out(const at::Tensor& out, const at::Tensor& a, const PackedRhs& b,
                          const at::Tensor& bias, double alpha, bool accumulate);

// acc (cols) += Σ_rows m, each column summed over the rows in order by one thread, in acc's
// dtype (float32 or float64). m: a 2-D CPU tensor (rows, cols) of float32, float64, float16 or
// bfloat16 (converted element by element), any strides.
void fixed_order_column_sums_(const at::Tensor& acc, const at::Tensor& m);

}  // namespace reformer::cpu

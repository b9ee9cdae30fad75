// Fused element-wise CUDA kernels of the chunked feed-forward (csrc/chunked_ffn.cpp): bias,
// activation and dropout mask in one pass over a chunk's (rows, d_ff) hidden activation, in the
// forward (h = act(h + b) ⊙ keep) and the backward (a = act(z) ⊙ keep, h = act'(z) ⊙ keep with
// z = h + b). The mask is evaluated inline from (seed, element index) by kernels/dropout_hash.h,
// so no mask tensor exists. Math in the accumulation type (float for half types). Torch-free.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dropout_hash.h"

namespace reformer::cuda {

enum class ChunkedFfnAct : int { Gelu = 0, GeluTanh = 1, Relu = 2, Silu = 3 };

// Rows first_row, first_row + 1, ... of the (N, d_ff) hidden activation; enabled = p > 0.
struct ChunkedFfnDropoutRows {
  bool enabled;
  uint64_t seed;
  int64_t threshold;  // dropout_hash::threshold(p), computed on the host
  int64_t first_row;
};

__device__ __forceinline__ float chunked_ffn_exp(float x) { return expf(x); }
__device__ __forceinline__ double chunked_ffn_exp(double x) { return exp(x); }
__device__ __forceinline__ float chunked_ffn_erf(float x) { return erff(x); }
__device__ __forceinline__ double chunked_ffn_erf(double x) { return erf(x); }
__device__ __forceinline__ float chunked_ffn_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double chunked_ffn_tanh(double x) { return tanh(x); }

// a = act(z) and, when want_derivative, d = act'(z) (the formulas of torch's activations).
template <ChunkedFfnAct kAct, typename T>
__device__ __forceinline__ void chunked_ffn_activation(T z, T& a, T& d, bool want_derivative) {
  if constexpr (kAct == ChunkedFfnAct::Gelu) {
    const T cdf = T(0.5) * (T(1) + chunked_ffn_erf(z * T(0.70710678118654752440)));
    a = z * cdf;
    if (want_derivative) d = cdf + z * T(0.39894228040143267794) * chunked_ffn_exp(T(-0.5) * z * z);
  } else if constexpr (kAct == ChunkedFfnAct::GeluTanh) {
    constexpr double kBeta = 0.79788456080286535588;  // sqrt(2 / pi)
    constexpr double kKappa = 0.044715;
    const T z2 = z * z;
    const T t = chunked_ffn_tanh(T(kBeta) * (z + T(kKappa) * z2 * z));
    a = T(0.5) * z * (T(1) + t);
    if (want_derivative)
      d = T(0.5) * (T(1) + t) + T(0.5) * z * (T(1) - t * t) * T(kBeta) * (T(1) + T(3 * kKappa) * z2);
  } else if constexpr (kAct == ChunkedFfnAct::Relu) {
    a = z > T(0) ? z : (z == z ? T(0) : z);  // NaN stays NaN, as in torch.relu
    if (want_derivative) d = z > T(0) ? T(1) : T(0);
  } else {
    const T s = T(1) / (T(1) + chunked_ffn_exp(-z));
    a = z * s;
    if (want_derivative) d = s * (T(1) + z * (T(1) - s));
  }
}

// One element: reads h (and bias), writes the activation to `out` and, when deriv != null, the
// derivative to deriv; both zero where dropout drops the element.
template <ChunkedFfnAct kAct, typename scalar_t, typename acc_t>
__global__ void chunked_ffn_bias_activation_kernel(const scalar_t* h, const scalar_t* bias,
                                                   int64_t rows, int64_t cols,
                                                   ChunkedFfnDropoutRows drop, scalar_t* out,
                                                   scalar_t* deriv) {  // out or deriv may alias h
  const int64_t total = rows * cols;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = idx % cols;
    acc_t z = static_cast<acc_t>(h[idx]);
    if (bias != nullptr) z += static_cast<acc_t>(bias[col]);
    acc_t a, d = 0;
    chunked_ffn_activation<kAct>(z, a, d, deriv != nullptr);
    if (drop.enabled) {
      const uint64_t element = static_cast<uint64_t>(drop.first_row) * cols + idx;
      if (dropout_hash::dropped(drop.seed, element, drop.threshold)) a = 0, d = 0;
    }
    out[idx] = static_cast<scalar_t>(a);
    if (deriv != nullptr) deriv[idx] = static_cast<scalar_t>(d);
  }
}

#if !defined(REFORMER_CUDA_SIM)  // CPU simulation (tests/cuda_sim): no host launches
// Forward (deriv == null): out = act(h + bias) ⊙ keep (out may be h). Backward: out = act(z) ⊙
// keep and deriv = act'(z) ⊙ keep (deriv may be h). h, out, deriv (rows, cols) contiguous; bias
// (cols) or null.
template <typename scalar_t, typename acc_t>
cudaError_t launch_chunked_ffn_bias_activation(ChunkedFfnAct act, const scalar_t* h,
                                               const scalar_t* bias, int64_t rows, int64_t cols,
                                               const ChunkedFfnDropoutRows& drop, scalar_t* out,
                                               scalar_t* deriv, cudaStream_t stream) {
  const int64_t total = rows * cols;
  if (total == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32);
  switch (act) {
    case ChunkedFfnAct::Gelu:
      chunked_ffn_bias_activation_kernel<ChunkedFfnAct::Gelu, scalar_t, acc_t>
          <<<grid, kThreads, 0, stream>>>(h, bias, rows, cols, drop, out, deriv);
      break;
    case ChunkedFfnAct::GeluTanh:
      chunked_ffn_bias_activation_kernel<ChunkedFfnAct::GeluTanh, scalar_t, acc_t>
          <<<grid, kThreads, 0, stream>>>(h, bias, rows, cols, drop, out, deriv);
      break;
    case ChunkedFfnAct::Relu:
      chunked_ffn_bias_activation_kernel<ChunkedFfnAct::Relu, scalar_t, acc_t>
          <<<grid, kThreads, 0, stream>>>(h, bias, rows, cols, drop, out, deriv);
      break;
    case ChunkedFfnAct::Silu:
      chunked_ffn_bias_activation_kernel<ChunkedFfnAct::Silu, scalar_t, acc_t>
          <<<grid, kThreads, 0, stream>>>(h, bias, rows, cols, drop, out, deriv);
      break;
  }
  return cudaGetLastError();
}
#endif  // !REFORMER_CUDA_SIM

}  // namespace reformer::cuda

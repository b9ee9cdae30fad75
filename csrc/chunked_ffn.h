// Torch-facing declarations of the chunked feed-forward operators (docs/semantics.md §2):
//   y = W2 · dropout(act(W1 · x + b1)) + b2, position-wise on x (..., d_model),
// computed chunk_size positions at a time, in forward and backward, so that the (N, d_ff) hidden
// activation never exists. One device-generic implementation (GEMMs through gemm.h: the
// project's fixed-order kernels on CPU, cuBLAS on CUDA), registered for both the CPU and CUDA
// keys. On the CPU, outputs and gradients are bitwise identical across runs and thread counts (on
// one machine and build; see chunked_ffn.cpp).
//
// Dropout on the hidden activation uses the seeded mask of seeded_dropout.h over the (N, d_ff)
// hidden activation, so the backward regenerates exactly the forward's mask whatever the chunking.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <string_view>
#include <tuple>

#include "chunked_ffn_common.h"

namespace reformer {

// Sizes and options of one chunked_ffn call, derived once from checked arguments.
struct ChunkedFfnShape {
  int64_t rows = 0;     // N: positions, the product of x's leading dimensions
  int64_t d_model = 0;  // x.size(-1)
  int64_t d_ff = 0;     // hidden width
  ChunkedFfnActivation activation = ChunkedFfnActivation::Gelu;
};

// Parses "gelu", "gelu_tanh", "relu" or "silu"; a ValueError naming `activation` otherwise.
ChunkedFfnActivation parse_chunked_ffn_activation(std::string_view activation);

// Validates the forward's arguments (shapes, dtypes, devices, chunk_size >= 1, activation,
// 0 <= dropout_p < 1). Every message names the argument, the expectation and the value.
ChunkedFfnShape check_chunked_ffn_args(const at::Tensor& x, const at::Tensor& w1,
                                       const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                                       const c10::optional<at::Tensor>& b2, int64_t chunk_size,
                                       std::string_view activation, double dropout_p);

// The operators' dropout_seed argument as an integer: a one-element int64 CPU tensor, or None
// (then 0) when dropout_p is 0. A ValueError naming dropout_seed otherwise.
int64_t read_dropout_seed(const c10::optional<at::Tensor>& dropout_seed, double dropout_p);

// y (same shape as x).
at::Tensor chunked_ffn(const at::Tensor& x, const at::Tensor& w1,
                       const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                       const c10::optional<at::Tensor>& b2, int64_t chunk_size,
                       c10::string_view activation, double dropout_p, int64_t dropout_seed);

// (grad_x, grad_w1, grad_b1, grad_w2, grad_b2).
using ChunkedFfnGradients = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The gradients; output_mask selects which are computed, in that order; a gradient that is not
// asked for, or whose bias is absent, is an undefined tensor (None in Python). Weight and bias
// gradients are accumulated across chunks in a fixed order.
ChunkedFfnGradients chunked_ffn_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                         const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                                         const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
                                         int64_t chunk_size, c10::string_view activation,
                                         double dropout_p, int64_t dropout_seed,
                                         std::array<bool, 5> output_mask);

// All five gradients, and the forward's output y in `forward_out`, in one pass over the chunks
// (the backward recomputes the hidden activation anyway; y costs one more GEMM per chunk instead
// of a second forward). For recomputing callers such as the reversible stack.
ChunkedFfnGradients chunked_ffn_backward_with_output(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1,
    const c10::optional<at::Tensor>& b1, const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
    int64_t chunk_size, c10::string_view activation, double dropout_p, int64_t dropout_seed,
    at::Tensor& forward_out);

}  // namespace reformer

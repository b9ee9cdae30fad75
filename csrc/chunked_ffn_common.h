// What the chunked feed-forward (chunked_ffn.cpp, docs/semantics.md §2) shares with its
// device-specific element-wise kernels (csrc/cpu/chunked_ffn_cpu.h, csrc/cuda/chunked_ffn_cuda.h):
// the activation and the rows of the hidden activation's dropout. Those headers include this one,
// not the operator header chunked_ffn.h.
#pragma once

#include <cstdint>

namespace reformer {

enum class ChunkedFfnActivation { Gelu, GeluTanh, Relu, Silu };

// Dropout of the rows first_row, first_row + 1, ... of the (N, d_ff) hidden activation, by the
// rule of seeded_dropout.h (dropout_hash), the same on every device. p == 0: no dropout.
struct ChunkedFfnHiddenDropoutRows {
  double p = 0.0;
  int64_t seed = 0;
  int64_t first_row = 0;
};

}  // namespace reformer

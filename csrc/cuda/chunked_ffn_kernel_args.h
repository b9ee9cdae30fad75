// The chunked feed-forward's options in the form the fused CUDA kernel
// (kernels/chunked_ffn_activation.cuh) takes them. Shared by csrc/cuda/chunked_ffn_cuda.cu and the
// CPU simulation of the kernel (tests/cuda_sim), so both launch it with the same parameters.
#pragma once

#include <cstdint>

#include "../../kernels/chunked_ffn_activation.cuh"
#include "../chunked_ffn_common.h"
#include "../seeded_dropout.h"  // dropout_hash::threshold

namespace reformer::cuda {

inline ChunkedFfnAct kernel_activation(ChunkedFfnActivation act) {
  switch (act) {
    case ChunkedFfnActivation::Gelu: return ChunkedFfnAct::Gelu;
    case ChunkedFfnActivation::GeluTanh: return ChunkedFfnAct::GeluTanh;
    case ChunkedFfnActivation::Relu: return ChunkedFfnAct::Relu;
    case ChunkedFfnActivation::Silu: return ChunkedFfnAct::Silu;
  }
  return ChunkedFfnAct::Gelu;  // unreachable
}

inline ChunkedFfnDropoutRows kernel_dropout(const ChunkedFfnHiddenDropoutRows& d) {
  const bool enabled = d.p > 0.0;
  return {enabled, static_cast<uint64_t>(d.seed), enabled ? dropout_hash::threshold(d.p) : 0,
          d.first_row};
}

}  // namespace reformer::cuda

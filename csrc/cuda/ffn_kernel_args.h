// The chunked feed-forward's options in the form the fused CUDA kernel
// (kernels/ffn_activation.cuh) takes them. Shared by csrc/cuda/ffn_cuda.cu and the CPU
// simulation of the kernel (tests/cuda_sim), so both launch it with the same parameters.
#pragma once

#include <cstdint>

#include "../../kernels/ffn_activation.cuh"
#include "../cpu/ffn_cpu.h"

namespace reformer::cuda {

inline FfnAct kernel_activation(FfnActivation act) {
  switch (act) {
    case FfnActivation::Gelu: return FfnAct::Gelu;
    case FfnActivation::GeluTanh: return FfnAct::GeluTanh;
    case FfnActivation::Relu: return FfnAct::Relu;
    case FfnActivation::Silu: return FfnAct::Silu;
  }
  return FfnAct::Gelu;  // unreachable
}

inline FfnDropoutRows kernel_dropout(const cpu::HiddenDropoutRows& d) {
  const bool enabled = d.p > 0.0;
  return {enabled, static_cast<uint64_t>(d.seed), enabled ? dropout_hash::threshold(d.p) : 0,
          d.first_row};
}

}  // namespace reformer::cuda

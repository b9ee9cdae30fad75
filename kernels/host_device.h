// RX_HOST_DEVICE: marks the torch-free helpers of kernels/ that both the CUDA kernels and the CPU
// code (kernels, tests) call: __host__ __device__ and force-inlined under nvcc, inline otherwise.
#pragma once

#if defined(__CUDACC__)
#define RX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define RX_HOST_DEVICE inline
#endif

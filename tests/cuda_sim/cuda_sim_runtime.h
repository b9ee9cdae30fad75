// A CPU simulation of the CUDA execution model, enough to run the repository's own kernels
// (kernels/*.cuh, compiled by the host compiler with REFORMER_CUDA_SIM defined) on the CPU:
// tests/cuda_sim/test_cuda_kernels_sim.cpp drives them like csrc/cuda/*.cu does and compares the
// results with the CPU operators. Nothing here needs a GPU or the CUDA driver; only the CUDA
// headers (cuda_runtime.h, cuda_fp16.h, cuda_bf16.h) are read, for uint3/uint4, __half and
// __nv_bfloat16 and their host conversions.
//
// Model:
//   - One launch runs `ctas` CTAs of `threads` threads (a multiple of 32). Every simulated GPU
//     thread is a fiber (its own stack, cooperative switching; cuda_sim_runtime.cpp), and all
//     fibers of one CTA run on one host thread, so a CTA's simulated threads never race on the
//     host. A barrier (__syncthreads, __syncthreads_or, and every warp collective: __syncwarp,
//     the shuffles, __any_sync, mma) suspends the fiber until every thread of the CTA (or warp)
//     has arrived at it. CTAs of one launch run in parallel on a few host threads, each with its
//     own shared memory: they must not touch each other's data (ThreadSanitizer can check it).
//   - Strict where the hardware is undefined: a barrier that some thread of the CTA (or warp)
//     never reaches (it returned, or waits at a different one), warp collectives of different
//     kinds or with a partial mask are errors (the launch throws std::runtime_error after the
//     CTA), as is a launch configuration an sm_90 GPU refuses (it throws before running).
//   - Dynamic shared memory (the kernels' `extern __shared__ unsigned char shared_bytes[]` of
//     namespace reformer::cuda, declared below) is filled with garbage before every CTA: 0xFF
//     bytes (NaN in fp32/fp16/bf16) in even CTAs, 0x7F bytes (NaN in fp16, 3.4e38 in fp32/bf16,
//     huge indices) in odd ones, so reads of unwritten shared memory show in the results. Bytes
//     past the launch's dynamic size hold a canary checked after each CTA (and are poisoned
//     under AddressSanitizer).
//   - Warp order inside a CTA alternates between CTAs (threads 0..n-1 first, or n-1..0 first),
//     which exposes a missing __syncthreads in either direction.
//   - mma.sync.m16n8k16 (f32 += f16/bf16 x f16/bf16) is emulated from the PTX ISA fragment
//     table, transcribed here independently of kernels/mma_fragments.h (multiply_fragments in
//     the .cpp), with exact products and one rounding to fp32 per accumulator.
//   - Sanitizers: fiber switches are annotated for AddressSanitizer (the CMake REFORMER_SANITIZE
//     build runs these tests) and ThreadSanitizer. A TSan run that checks that the CTAs of each
//     launch touch disjoint data: build the two tests/cuda_sim sources with -fsanitize=thread,
//     then run with OMP_NUM_THREADS=1 (the CPU reference's OpenMP is not instrumented) and
//     CUDA_SIM_HOST_THREADS=4.
#pragma once

#if defined(__CUDACC__)
#error "cuda_sim_runtime.h replaces the device runtime for a host compiler; do not use nvcc"
#endif
#if !defined(REFORMER_CUDA_SIM)
#error "compile with -DREFORMER_CUDA_SIM: it selects the kernels' simulation hooks"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

namespace cuda_sim {

constexpr int kWarpSize = 32;
constexpr int kMaxThreadsPerBlock = 1024;
// Dynamic shared memory one CTA may use: the opt-in maximum of sm_90 (227 KiB).
constexpr size_t kMaxSharedBytes = 227 * 1024;

// The simulated thread's built-in variables (the fiber switch keeps thread_idx current).
// Functions rather than thread_local variables used in the kernels' translation unit: GCC 12
// checks them for null under UBSan with the flags of the TLS address `add`, which the linker
// then relaxes into a flag-less `lea` (false "member access within null pointer" reports).
const uint3& thread_idx();
const uint3& block_idx();
const uint3& block_dim();
const uint3& grid_dim();

// Device-side operations (cuda_sim_runtime.cpp). `mask` must be 0xffffffff: the kernels only
// use full-warp collectives, and partial masks are rejected rather than half-simulated.
void sync_threads();
int sync_threads_or(int predicate);
void sync_warp(unsigned mask);
uint64_t shuffle(unsigned mask, uint64_t bits, int lane_arg, bool xor_mode, int width);
int any_sync(unsigned mask, int predicate);
void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], bool bf16);

// Host-side conversions, independent of cuda_fp16.h / c10 (round to nearest even; NaN stays
// NaN). test_cuda_kernels_sim.cpp checks them against c10::Half and c10::BFloat16.
float half_bits_to_float(uint16_t h);
float bf16_bits_to_float(uint16_t h);
uint16_t float_to_half_bits(float f);
uint16_t float_to_bf16_bits(float f);

// Runs `kernel` (a call of a __global__ function with its arguments) as `ctas` CTAs of
// `threads` threads with `shared_bytes` of dynamic shared memory, like
// kernel<<<ctas, threads, shared_bytes>>>(...) followed by a device synchronisation. Throws
// std::runtime_error for a configuration the GPU would refuse or a simulation error (above).
void launch(int64_t ctas, int threads, size_t shared_bytes, const std::function<void()>& kernel);

// Host threads that run CTAs in parallel (default: hardware threads, at most 8; the
// CUDA_SIM_HOST_THREADS environment variable overrides it).
int host_threads();

}  // namespace cuda_sim

// ----------------------------------------------------------------------------------------------
// The CUDA names the kernels use. cuda_runtime.h, included above, leaves __global__, __device__,
// __host__ and __shared__ empty for a host compiler; __shared__ becomes thread_local so that each
// host thread (running one CTA at a time) has its own shared memory.
#undef __shared__
#define __shared__ thread_local
#if !defined(__launch_bounds__)
#define __launch_bounds__(...)
#endif

#define threadIdx (::cuda_sim::thread_idx())
#define blockIdx (::cuda_sim::block_idx())
#define blockDim (::cuda_sim::block_dim())
#define gridDim (::cuda_sim::grid_dim())

namespace reformer::cuda {
// The dynamic shared memory every kernel declares as `extern __shared__ unsigned char
// shared_bytes[]` in this namespace.
alignas(16) extern thread_local unsigned char shared_bytes[cuda_sim::kMaxSharedBytes];
}  // namespace reformer::cuda

inline void __syncthreads() { cuda_sim::sync_threads(); }
inline int __syncthreads_or(int predicate) { return cuda_sim::sync_threads_or(predicate); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { cuda_sim::sync_warp(mask); }
inline int __any_sync(unsigned mask, int predicate) { return cuda_sim::any_sync(mask, predicate); }

namespace cuda_sim::detail {
template <typename T>
uint64_t to_bits(T value) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle of a <= 8-byte value");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}
template <typename T>
T from_bits(uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}
}  // namespace cuda_sim::detail

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = cuda_sim::kWarpSize) {
  using namespace cuda_sim::detail;
  return from_bits<T>(cuda_sim::shuffle(mask, to_bits(var), src_lane, false, width));
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = cuda_sim::kWarpSize) {
  using namespace cuda_sim::detail;
  return from_bits<T>(cuda_sim::shuffle(mask, to_bits(var), lane_mask, true, width));
}

// The hook kernels/lsh_attention_mma.cuh calls for mma.sync.m16n8k16 under REFORMER_CUDA_SIM.
inline void reformer_sim_mma(float d[4], const uint32_t a[4], const uint32_t b[2], bool bf16) {
  cuda_sim::mma_m16n8k16(d, a, b, bf16);
}

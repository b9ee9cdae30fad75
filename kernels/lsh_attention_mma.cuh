// Building blocks of the tensor-core LSH attention kernels (fp16/bf16 inputs, fp32 accumulation;
// lsh_attention_mma_{fwd,bwd}.cuh): the mma.sync instruction, rounding to the input type, and
// gathering rows by position into shared memory.
//
// Thread layout: a CTA of kMmaWarps warps owns kMmaRows rows (16 per warp: the M of one mma) of
// one chunk and streams the other side in tiles of kMmaTile items. A warp computes its 16 x 64
// score tile as 8 mma column blocks, keeps it in registers as accumulator fragments, and feeds
// it straight back as the A operand of the next product (accumulators_to_a). Rows in shared
// memory are padded by 8 elements (16 bytes), so the 8 rows that one fragment load touches fall
// into distinct banks.
//
// Head dims: D == Dv in {32, 64, 128} (kDim, a template parameter); other shapes use the FFMA
// kernels. Needs compute capability 8.0 (the host dispatch checks it).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "lsh_attention_tile.cuh"
#include "mma_fragments.h"

namespace reformer::cuda {

constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kMmaRows = kMmaWarps * mma::kM;  // owned rows of one CTA
constexpr int kMmaTile = 64;                   // streamed items per tile
constexpr int kMmaTileBlocks = kMmaTile / mma::kN;   // score column blocks of a tile
constexpr int kMmaTileSteps = kMmaTile / mma::kK;    // k steps over a tile's items

// Row stride in shared memory: kDim plus 8 elements of padding (keeps 16-byte alignment).
template <int kDim>
constexpr RX_HOST_DEVICE int mma_stride() {
  return kDim + 8;
}

// Whether the tensor-core kernels handle these head dims.
inline bool mma_head_dims_supported(int64_t dim, int64_t value_dim) {
  return dim == value_dim && (dim == 32 || dim == 64 || dim == 128);
}

// D += A * B for one m16n8k16 block with fp32 accumulators.
__device__ __forceinline__ void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2],
                                          __half) {
#if defined(REFORMER_CUDA_SIM)  // CPU simulation (tests/cuda_sim) emulates the instruction
  reformer_sim_mma(d, a, b, /*bf16=*/false);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();  // the host dispatch never launches tensor-core kernels below sm_80
#endif
}

__device__ __forceinline__ void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2],
                                          __nv_bfloat16) {
#if defined(REFORMER_CUDA_SIM)  // CPU simulation (tests/cuda_sim) emulates the instruction
  reformer_sim_mma(d, a, b, /*bf16=*/true);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();
#endif
}

template <typename T>
__device__ __forceinline__ void mma(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  mma_16816(d, a, b, T{});
}

// Round-to-nearest conversions between fp32 and the input type.
struct RoundToHalf {
  __device__ __forceinline__ __half operator()(float x) const { return __float2half_rn(x); }
};
struct RoundToBFloat16 {
  __device__ __forceinline__ __nv_bfloat16 operator()(float x) const {
    return __float2bfloat16_rn(x);
  }
};
template <typename T>
using RoundTo = std::conditional_t<std::is_same_v<T, __half>, RoundToHalf, RoundToBFloat16>;

__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Copies rows pos[r] (r < rows) of `head` (rows of kDim elements, 16-byte aligned) into `dst`
// with stride mma_stride<kDim>(), zero rows where pos[r] < 0; 16-byte vectors, whole CTA.
template <typename T, int kDim>
__device__ __forceinline__ void gather_rows(T* dst, const T* head, const int32_t* pos,
                                            int rows) {
  constexpr int kVectors = kDim * static_cast<int>(sizeof(T)) / 16;
  for (int e = threadIdx.x; e < rows * kVectors; e += blockDim.x) {
    const int r = e / kVectors, c = e % kVectors;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (pos[r] >= 0) value = reinterpret_cast<const uint4*>(head + int64_t{pos[r]} * kDim)[c];
    reinterpret_cast<uint4*>(dst + r * mma_stride<kDim>())[c] = value;
  }
}

// S(16 x kMmaTile) += rows(16 x kDim) * streamed(kMmaTile x kDim)^T for one warp: A from the
// warp's 16 rows of `rows`, B from the streamed tile stored item-major.
template <typename T, int kDim>
__device__ __forceinline__ void warp_scores(float s[kMmaTileBlocks][4], const T* rows,
                                            const T* streamed, int lane) {
  constexpr int kStride = mma_stride<kDim>();
#pragma unroll
  for (int ks = 0; ks < kDim / mma::kK; ++ks) {
    uint32_t a[4];
    mma::load_a(a, rows + ks * mma::kK, kStride, lane);
#pragma unroll
    for (int nb = 0; nb < kMmaTileBlocks; ++nb) {
      uint32_t b[2];
      mma::load_b_n_major(b, streamed + nb * mma::kN * kStride + ks * mma::kK, kStride, lane);
      mma<T>(s[nb], a, b);
    }
  }
}

// acc(16 x kDim) += W(16 x kMmaTile) * streamed(kMmaTile x kDim) for one warp, where W is the
// accumulator-fragment tile `w` rounded to T.
template <typename T, int kDim>
__device__ __forceinline__ void warp_weighted_sum(float acc[kDim / mma::kN][4],
                                                  const float w[kMmaTileBlocks][4],
                                                  const T* streamed, int lane) {
  constexpr int kStride = mma_stride<kDim>();
#pragma unroll
  for (int ks = 0; ks < kMmaTileSteps; ++ks) {
    uint32_t a[4];
    mma::accumulators_to_a<T>(a, w[2 * ks], w[2 * ks + 1], RoundTo<T>{});
#pragma unroll
    for (int nb = 0; nb < kDim / mma::kN; ++nb) {
      uint32_t b[2];
      mma::load_b_k_major(b, streamed + ks * mma::kK * kStride + nb * mma::kN, kStride, lane);
      mma<T>(acc[nb], a, b);
    }
  }
}

// Sum over the 4 lanes of a fragment row group (lanes 4g..4g+3 hold the same two rows).
__device__ __forceinline__ float group_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

__device__ __forceinline__ float group_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

}  // namespace reformer::cuda

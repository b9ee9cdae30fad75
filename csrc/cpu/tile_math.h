// Small dense building blocks for the CPU kernels: a register-blocked GEMM on cache-resident
// tiles (tile_gemm.cpp) and a vectorisable exp. Written as plain loops over compile-time tile
// sizes so the compiler emits vector code (built with -O3); their results do not depend on
// threading.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace reformer::cpu {

// Column tile of the GEMM: two 256-bit vectors' worth of floats (one of doubles) per row.
template <typename T>
constexpr int64_t kTileCols = 64 / sizeof(T) * 2;
constexpr int64_t kTileRows = 8;

inline int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// C[M x N] (+)= A[M x K] * B[K x N], all row-major with leading dimensions lda/ldb/ldc.
// N must be a multiple of kTileCols<T> (callers pad their tiles with zeros). B's column tile
// j0 starts at B + (j0 / kTileCols) * b_panel_stride: kTileCols for a plain row-major B, or
// K * kTileCols (with ldb = kTileCols) for a B packed panel by panel, which a B much wider than
// a tile needs so its rows are not 4 KiB apart (see pack_panels). Each element of C is summed
// over k in increasing order, so the result does not depend on how callers split M or N.
// Defined in tile_gemm.cpp for float and double, compiled once per instruction set
// (cpu_dispatch.h) and picked for the CPU at load time.
template <typename T>
void tile_gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
               T* C, int64_t ldc, bool accumulate, int64_t b_panel_stride = kTileCols<T>);

// Packs a row-major K x N matrix (N a multiple of kTileCols) panel by panel: panel p holds
// columns [p * kTileCols, (p + 1) * kTileCols) as a contiguous K x kTileCols block.
template <typename T>
void pack_panels(const T* src, int64_t K, int64_t N, T* dst) {
  constexpr int64_t NR = kTileCols<T>;
  for (int64_t p = 0; p < N / NR; ++p)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < NR; ++j) dst[(p * K + k) * NR + j] = src[k * N + p * NR + j];
}

// dst[c, r] = src[r, c] for a rows x cols tile, in square blocks so both sides stay in L1.
template <typename T>
void transpose_tile(const T* __restrict__ src, int64_t rows, int64_t cols, int64_t ld_src,
                    T* __restrict__ dst, int64_t ld_dst) {
  constexpr int64_t kBlock = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock)
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
      const int64_t r1 = std::min(rows, r0 + kBlock), c1 = std::min(cols, c0 + kBlock);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) dst[c * ld_dst + r] = src[r * ld_src + c];
    }
}

// exp(x) for float with ~1 ulp error, branch-free so loops over it vectorise; exactly 0 below
// the smallest normal result (so masked logits of -1e9 contribute exactly nothing).
inline float fast_exp(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;
  constexpr float kLn2Lo = 1.42860682030941723212e-6f;
  const bool underflow = x < -87.3f;
  x = std::min(std::max(x, -87.3f), 88.7f);
  const float n = std::floor(x * kLog2e + 0.5f);
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;  // |r| <= ln2 / 2
  // Taylor polynomial of degree 7: truncation error < 6e-9 relative on |r| <= 0.347.
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return underflow ? 0.0f : p * scale;
}

inline double fast_exp(double x) { return std::exp(x); }

// Reductions over explicit lanes: the compiler vectorises them without reassociating (no
// -ffast-math), and the summation order is fixed, so results are reproducible.
constexpr int64_t kLanes = 16;

template <typename T>
T row_max(const T* x, int64_t n) {
  T lanes[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) lanes[j] = -std::numeric_limits<T>::infinity();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] = x[i + j] > lanes[j] ? x[i + j] : lanes[j];
  T result = -std::numeric_limits<T>::infinity();
  for (; i < n; ++i) result = x[i] > result ? x[i] : result;
  for (int64_t j = 0; j < kLanes; ++j) result = lanes[j] > result ? lanes[j] : result;
  return result;
}

// First index of the largest and of the smallest of x[0..n) (NaNs are skipped), in one
// vectorisable pass: each lane keeps its own first extreme, then lanes are merged so that ties
// go to the lowest index.
template <typename T>
void row_argmax_argmin(const T* x, int64_t n, int64_t& arg_max, int64_t& arg_min) {
  T max_v[kLanes], min_v[kLanes];
  int32_t max_i[kLanes], min_i[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) {
    max_v[j] = -std::numeric_limits<T>::infinity();
    min_v[j] = std::numeric_limits<T>::infinity();
    max_i[j] = min_i[j] = 0;
  }
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) {
      const T v = x[i + j];
      const int32_t idx = static_cast<int32_t>(i + j);
      const bool bigger = v > max_v[j], smaller = v < min_v[j];
      max_v[j] = bigger ? v : max_v[j];
      max_i[j] = bigger ? idx : max_i[j];
      min_v[j] = smaller ? v : min_v[j];
      min_i[j] = smaller ? idx : min_i[j];
    }
  T best_max = -std::numeric_limits<T>::infinity(), best_min = std::numeric_limits<T>::infinity();
  arg_max = arg_min = 0;
  for (int64_t j = 0; j < kLanes; ++j) {
    if (max_v[j] > best_max || (max_v[j] == best_max && max_i[j] < arg_max))
      best_max = max_v[j], arg_max = max_i[j];
    if (min_v[j] < best_min || (min_v[j] == best_min && min_i[j] < arg_min))
      best_min = min_v[j], arg_min = min_i[j];
  }
  for (; i < n; ++i) {  // the tail comes after every lane's indices: strict comparisons
    if (x[i] > best_max) best_max = x[i], arg_max = i;
    if (x[i] < best_min) best_min = x[i], arg_min = i;
  }
}

// x[i] = exp(x[i] - shift); returns the sum of the new x.
template <typename T>
T exp_shift_sum(T* x, int64_t n, T shift) {
  for (int64_t i = 0; i < n; ++i) x[i] = fast_exp(x[i] - shift);
  T lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] += x[i + j];
  T result = 0;
  for (; i < n; ++i) result += x[i];
  for (int64_t j = 0; j < kLanes; ++j) result += lanes[j];
  return result;
}

// Grow-only scratch memory per thread, so tasks do not allocate in the hot loop.
template <typename T>
T* thread_scratch(int64_t count) {
  thread_local std::vector<T> buffer;
  if (static_cast<int64_t>(buffer.size()) < count) buffer.resize(count);
  return buffer.data();
}

}  // namespace reformer::cpu

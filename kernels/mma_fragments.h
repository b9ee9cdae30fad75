// Register fragments of the warp-level tensor-core instruction mma.sync.m16n8k16 (fp16/bf16
// inputs, fp32 accumulators) used by the tensor-core LSH attention kernels, and how they are
// filled from shared memory. One warp computes D(16x8) += A(16x16) * B(16x8).
//
// Fragment layout (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), with
// group = lane / 4 and thread = lane % 4:
//   A (16x16): 8 elements a0..a7 in 4 registers of two halves (low half = even i);
//              row = group (i in 0,1,4,5) or group + 8 (i in 2,3,6,7),
//              col = 2 * thread + (i & 1), plus 8 for i >= 4.
//   B (16x8):  4 elements b0..b3 in 2 registers; row (k) = 2 * thread + (i & 1), plus 8 for
//              i >= 2; col (n) = group.
//   C/D (16x8, fp32): 4 elements c0..c3; row = group (i < 2) or group + 8, col = 2 * thread +
//              (i & 1).
// The coordinate functions below state that layout once; the loaders use only them, and
// tests/cpp/test_mma_fragments.cpp checks the loaders and the accumulator-to-A conversion
// against a host emulation of the instruction built from the same coordinates, so a slip in them
// fails a CPU test (the coordinates themselves can only be checked against the table, or on a GPU).
//
// Host-compilable (the element type is any 2-byte type; the device instruction itself is under
// __CUDACC__), so the fragment logic runs in every CI test run without a GPU.
#pragma once

#include <cstdint>
#include <cstring>

#include "host_device.h"

namespace reformer::mma {

constexpr int kM = 16, kN = 8, kK = 16;  // the instruction shape

struct Coord {
  int row, col;
};

RX_HOST_DEVICE Coord a_coord(int lane, int i) {
  const int group = lane >> 2, thread = lane & 3;
  return {group + ((i & 2) ? 8 : 0), 2 * thread + (i & 1) + (i >= 4 ? 8 : 0)};
}

RX_HOST_DEVICE Coord b_coord(int lane, int i) {
  const int group = lane >> 2, thread = lane & 3;
  return {2 * thread + (i & 1) + (i >= 2 ? 8 : 0), group};
}

RX_HOST_DEVICE Coord c_coord(int lane, int i) {
  const int group = lane >> 2, thread = lane & 3;
  return {group + (i >= 2 ? 8 : 0), 2 * thread + (i & 1)};
}

// Two 2-byte elements in one register, the first in the low half (PTX "low to high" order,
// which is also little-endian memory order, so a 4-byte load of two neighbours is a pair).
template <typename T>
RX_HOST_DEVICE uint32_t pack_pair(T low, T high) {
  static_assert(sizeof(T) == 2, "fragments hold 2-byte elements");
  uint16_t lo, hi;
  memcpy(&lo, &low, 2);
  memcpy(&hi, &high, 2);
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

// The pair p[0], p[1]; p is 4-byte aligned (an even element index in a 4-byte aligned row).
template <typename T>
RX_HOST_DEVICE uint32_t load_pair(const T* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const uint32_t*>(p);
#else
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
#endif
}

// A fragment of the 16x16 block of a row-major matrix starting at `m` (row stride `stride`
// elements, even). Elements 2r and 2r+1 are row neighbours (a_coord), loaded as one pair.
template <typename T>
RX_HOST_DEVICE void load_a(uint32_t a[4], const T* m, int stride, int lane) {
  for (int r = 0; r < 4; ++r) {
    const Coord c = a_coord(lane, 2 * r);
    a[r] = load_pair(m + c.row * stride + c.col);
  }
}

// B fragment where B(k, n) = m[n * stride + k]: the matrix is stored n-major (e.g. keys as rows
// and features as columns for S = Q K^T). Elements 2r and 2r+1 are k neighbours: one pair.
template <typename T>
RX_HOST_DEVICE void load_b_n_major(uint32_t b[2], const T* m, int stride, int lane) {
  for (int r = 0; r < 2; ++r) {
    const Coord c = b_coord(lane, 2 * r);
    b[r] = load_pair(m + c.col * stride + c.row);
  }
}

// B fragment where B(k, n) = m[k * stride + n]: the matrix is stored k-major (e.g. values with
// keys as rows for O = P V). The two elements of a register are in different rows.
template <typename T>
RX_HOST_DEVICE void load_b_k_major(uint32_t b[2], const T* m, int stride, int lane) {
  for (int r = 0; r < 2; ++r) {
    const Coord c = b_coord(lane, 2 * r);
    b[r] = pack_pair(m[c.row * stride + c.col], m[(c.row + 1) * stride + c.col]);
  }
}

// The A fragment of a 16x16 block whose two 16x8 halves are accumulator fragments `left`
// (columns 0-7) and `right` (columns 8-15), rounded to T by `round`: the accumulator element
// (row, 2 * thread + j) of a lane is the A element it needs at the same place, so scores can feed
// the next product without leaving registers.
template <typename T, typename Round>
RX_HOST_DEVICE void accumulators_to_a(uint32_t a[4], const float left[4], const float right[4],
                                      Round round) {
  a[0] = pack_pair<T>(round(left[0]), round(left[1]));    // row g,     cols 2t, 2t+1
  a[1] = pack_pair<T>(round(left[2]), round(left[3]));    // row g + 8, cols 2t, 2t+1
  a[2] = pack_pair<T>(round(right[0]), round(right[1]));  // row g,     cols 8+2t, 9+2t
  a[3] = pack_pair<T>(round(right[2]), round(right[3]));  // row g + 8, cols 8+2t, 9+2t
}

}  // namespace reformer::mma

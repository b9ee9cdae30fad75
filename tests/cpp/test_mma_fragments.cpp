// The tensor-core fragment logic of kernels/mma_fragments.h, run on the CPU: the coordinate
// functions cover each matrix element once, and the loaders and the accumulator-to-A conversion,
// composed the way the tensor-core attention kernels compose them (lsh_attention_mma.cuh:
// warp_scores, then warp_weighted_sum), reproduce plain matrix products under a host emulation
// of mma.sync.m16n8k16 built from the PTX fragment layout. Elements are small integers stored as
// uint16_t (the loaders only move 2-byte patterns), so every product is exact.
// What this cannot prove: that the coordinate functions match the hardware. They transcribe the
// PTX table (quoted in mma_fragments.h); a consistent misreading of it would pass here and fail
// only in tests/test_cuda.py on a GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "kernels/mma_fragments.h"

namespace {

namespace mma = reformer::mma;
constexpr int kLanes = 32;

uint16_t element(uint32_t reg, int which) {
  return static_cast<uint16_t>(which == 0 ? reg & 0xffffu : reg >> 16);
}

// D += A * B for one warp: gathers A (16x16) and B (16x8) from the lanes' registers by the
// documented coordinates, multiplies, scatters into the lanes' accumulators.
void emulate_mma(float d[kLanes][4], const uint32_t a[kLanes][4], const uint32_t b[kLanes][2]) {
  float A[mma::kM][mma::kK] = {}, B[mma::kK][mma::kN] = {};
  for (int lane = 0; lane < kLanes; ++lane) {
    for (int i = 0; i < 8; ++i) {
      const mma::Coord c = mma::a_coord(lane, i);
      A[c.row][c.col] = element(a[lane][i / 2], i % 2);
    }
    for (int i = 0; i < 4; ++i) {
      const mma::Coord c = mma::b_coord(lane, i);
      B[c.row][c.col] = element(b[lane][i / 2], i % 2);
    }
  }
  for (int lane = 0; lane < kLanes; ++lane) {
    for (int i = 0; i < 4; ++i) {
      const mma::Coord c = mma::c_coord(lane, i);
      for (int k = 0; k < mma::kK; ++k) d[lane][i] += A[c.row][k] * B[k][c.col];
    }
  }
}

template <typename CoordFn>
void expect_each_element_once(CoordFn coord, int per_lane, int rows, int cols, bool pairs_in_row) {
  std::vector<int> hits(rows * cols, 0);
  for (int lane = 0; lane < kLanes; ++lane) {
    for (int i = 0; i < per_lane; ++i) {
      const mma::Coord c = coord(lane, i);
      ASSERT_GE(c.row, 0);
      ASSERT_LT(c.row, rows);
      ASSERT_GE(c.col, 0);
      ASSERT_LT(c.col, cols);
      ++hits[c.row * cols + c.col];
      if (i % 2 == 1) {  // elements 2r, 2r+1 of a register are neighbours: the loaders rely on it
        const mma::Coord first = coord(lane, i - 1);
        EXPECT_EQ(c.row, first.row + (pairs_in_row ? 0 : 1));
        EXPECT_EQ(c.col, first.col + (pairs_in_row ? 1 : 0));
      }
    }
  }
  for (int h : hits) EXPECT_EQ(h, 1);
}

TEST(MmaFragments, CoordinatesCoverEveryElementOnce) {
  expect_each_element_once(mma::a_coord, 8, mma::kM, mma::kK, /*pairs_in_row=*/true);
  expect_each_element_once(mma::b_coord, 4, mma::kK, mma::kN, /*pairs_in_row=*/false);
  expect_each_element_once(mma::c_coord, 4, mma::kM, mma::kN, /*pairs_in_row=*/true);
}

// A row-major matrix of small random integers, with the kernels' padded row stride.
struct Padded {
  int rows, cols, stride;
  std::vector<uint16_t> data;
  Padded(int r, int c, std::mt19937& rng) : rows(r), cols(c), stride(c + 8), data(r * (c + 8), 0) {
    std::uniform_int_distribution<int> value(0, 7);
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < cols; ++j) data[i * stride + j] = static_cast<uint16_t>(value(rng));
  }
  float at(int i, int j) const { return data[i * stride + j]; }
};

// One warp's part of the attention products: rows 16w..16w+15 of `q` (rows x kDim) against a
// tile of `items` streamed rows: S = Q K^T (warp_scores), then O = S V (warp_weighted_sum), with
// the scores fed back through accumulators_to_a.
TEST(MmaFragments, ScoresThenWeightedSumMatchMatrixProducts) {
  constexpr int kDim = 32, kItems = 32, kWarpRow = 16;
  constexpr int kBlocks = kItems / mma::kN, kDimBlocks = kDim / mma::kN;
  std::mt19937 rng(7);
  const Padded q(32, kDim, rng), k(kItems, kDim, rng), v(kItems, kDim, rng);

  // S = Q K^T: A from q's rows, B "n-major" from k (B(d, j) = k[j][d]).
  float s[kBlocks][kLanes][4] = {};
  for (int ks = 0; ks < kDim / mma::kK; ++ks) {
    uint32_t a[kLanes][4];
    for (int lane = 0; lane < kLanes; ++lane)
      mma::load_a(a[lane], q.data.data() + kWarpRow * q.stride + ks * mma::kK, q.stride, lane);
    for (int nb = 0; nb < kBlocks; ++nb) {
      uint32_t b[kLanes][2];
      for (int lane = 0; lane < kLanes; ++lane)
        mma::load_b_n_major(b[lane], k.data.data() + nb * mma::kN * k.stride + ks * mma::kK,
                            k.stride, lane);
      emulate_mma(s[nb], a, b);
    }
  }
  for (int nb = 0; nb < kBlocks; ++nb) {
    for (int lane = 0; lane < kLanes; ++lane) {
      for (int i = 0; i < 4; ++i) {
        const mma::Coord c = mma::c_coord(lane, i);
        float expected = 0;
        for (int d = 0; d < kDim; ++d) expected += q.at(kWarpRow + c.row, d) * k.at(nb * 8 + c.col, d);
        EXPECT_EQ(s[nb][lane][i], expected) << "S block " << nb << " lane " << lane << " i " << i;
      }
    }
  }

  // O = S V: A from the score accumulators, B "k-major" from v (B(j, d) = v[j][d]).
  const auto round = [](float x) { return static_cast<uint16_t>(x); };
  float o[kDimBlocks][kLanes][4] = {};
  for (int ks = 0; ks < kItems / mma::kK; ++ks) {
    uint32_t a[kLanes][4];
    for (int lane = 0; lane < kLanes; ++lane)
      mma::accumulators_to_a<uint16_t>(a[lane], s[2 * ks][lane], s[2 * ks + 1][lane], round);
    for (int nb = 0; nb < kDimBlocks; ++nb) {
      uint32_t b[kLanes][2];
      for (int lane = 0; lane < kLanes; ++lane)
        mma::load_b_k_major(b[lane], v.data.data() + ks * mma::kK * v.stride + nb * mma::kN,
                            v.stride, lane);
      emulate_mma(o[nb], a, b);
    }
  }
  for (int nb = 0; nb < kDimBlocks; ++nb) {
    for (int lane = 0; lane < kLanes; ++lane) {
      for (int i = 0; i < 4; ++i) {
        const mma::Coord c = mma::c_coord(lane, i);
        double expected = 0;
        for (int j = 0; j < kItems; ++j) {
          double score = 0;
          for (int d = 0; d < kDim; ++d) score += q.at(kWarpRow + c.row, d) * k.at(j, d);
          expected += score * v.at(j, nb * 8 + c.col);
        }
        EXPECT_EQ(o[nb][lane][i], expected) << "O block " << nb << " lane " << lane;
      }
    }
  }
}

}  // namespace

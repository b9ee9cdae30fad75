// LSH hashing on tensor cores (docs/semantics.md §1 step 1) for fp16/bf16 qk with D in {32, 64,
// 128}: the projections p = qk_i · rotations[h, :, r, :] as a GEMM on mma.sync, fused with the
// argmax over [p, -p] (ties to the lowest index; per factor for factorised counts), so the
// (L x R·nb/2) projections never reach memory.
//
// Hashing is a GEMM with N = R·nb/2 and nb grows with L, so at long L it costs more than the
// attention itself; on FFMA (lsh_hash.cuh) it would dominate the whole operator.
//
// Precision: qk is exact in its dtype; the fp32 rotations are split on the host into three
// pieces of the input dtype, rot ≈ lo + mid + hi (24 significant bits for bf16, the whole fp32
// significand), and the kernel accumulates qk·lo + qk·mid + qk·hi in fp32. The projections
// then match an fp32 computation up to summation order, as the FFMA kernel's do; buckets can
// differ from the CPU's only where two projections tie to ~1e-7 relative.
//
// Layout: a CTA owns kHashRows positions of one (batch·head, round), 16 per warp; it streams the
// round's rotation columns in tiles of kHashTile, each warp computing its 16 x kHashTile block of
// p and folding it into per-row running (max, argmax, min, argmin). Factorised bucket counts:
// each factor's columns start on a tile of their own (padded_columns), so a factor's extremes
// are complete, reduced across the row's lanes and turned into its digit when its last tile is
// done; one factor is the unfactorised layout.
#pragma once

#include "lsh_attention_mma.cuh"
#include "lsh_hash.cuh"

namespace reformer::cuda {

constexpr int kHashWarps = 8;
constexpr int kHashThreads = kHashWarps * 32;
constexpr int kHashRows = kHashWarps * mma::kM;  // positions of one CTA
constexpr int kHashTile = 64;                    // rotation columns per tile
constexpr int kHashTileStride = kHashTile + 8;   // padded row of a rotation tile in shared memory
constexpr int kRotationPieces = 3;               // rot ≈ lo + mid + hi

// The rotation pieces as the kernel reads them: (kRotationPieces, Hr, R, D, padded_columns) in
// the input dtype, lo first; per round, factor j's f_j/2 columns are padded with zero columns to
// padded_half(f_j/2) (a multiple of kHashTile, so every tile load is whole and 16-byte aligned),
// factors one after the other.
RX_HOST_DEVICE int64_t padded_half(int64_t half) {
  return (half + kHashTile - 1) / kHashTile * kHashTile;
}

RX_HOST_DEVICE int64_t padded_columns(const BucketFactors& f) {
  int64_t c = 0;
  for (int j = 0; j < f.count; ++j) c += padded_half(f.half[j]);
  return c;
}

template <typename T, int kDim>
struct HashShared {
  T* x;          // kHashRows x mma_stride<kDim>(), the CTA's qk rows
  T* rotation;   // kRotationPieces x kDim x kHashTileStride
  int32_t* pos;  // kHashRows, -1 past the sequence end

  __host__ __device__ static HashShared carve(SharedCarver& c) {
    HashShared s;
    s.x = c.take<T>(kHashRows * mma_stride<kDim>());
    s.rotation = c.take<T>(kRotationPieces * kDim * kHashTileStride);
    s.pos = c.take<int32_t>(kHashRows);
    return s;
  }
};

// Running extreme of one row: keeps the first (lowest) column among equal values.
struct Extreme {
  float value;
  int32_t index;
};

__device__ __forceinline__ void take_if_better(Extreme& e, float value, int32_t index, bool max) {
  const bool better = max ? (value > e.value) : (value < e.value);
  if (better || (value == e.value && index < e.index)) e = {value, index};
}

// Combines the extremes of the 4 lanes that hold the same row.
__device__ __forceinline__ void group_extreme(Extreme& e, bool max) {
#pragma unroll
  for (int offset = 1; offset <= 2; offset <<= 1) {
    const float value = __shfl_xor_sync(0xffffffffu, e.value, offset);
    const int32_t index = __shfl_xor_sync(0xffffffffu, e.index, offset);
    take_if_better(e, value, index, max);
  }
}

template <typename T, int kDim>
__global__ void __launch_bounds__(kHashThreads)
    lsh_hash_mma_kernel(const T* __restrict__ qk, const T* __restrict__ pieces,
                        const bool* __restrict__ padding, HashParams p, int64_t half_padded,
                        int64_t* __restrict__ buckets) {
  constexpr int kSteps = kDim / mma::kK;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  SharedCarver carver{shared_bytes};
  const HashShared<T, kDim> sh = HashShared<T, kDim>::carve(carver);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t tiles = (p.length + kHashRows - 1) / kHashRows;
  const int64_t first = (blockIdx.x % tiles) * kHashRows;
  const int64_t r = (blockIdx.x / tiles) % p.n_hashes;
  const int64_t bh = blockIdx.x / (tiles * p.n_hashes);
  const int64_t h = bh % p.heads, b = bh / p.heads;

  if (tid < kHashRows) sh.pos[tid] = first + tid < p.length ? static_cast<int32_t>(first + tid) : -1;
  __syncthreads();
  gather_rows<T, kDim>(sh.x, qk + bh * p.length * kDim, sh.pos, kHashRows);
  __syncthreads();
  const int row0 = warp * mma::kM;
  uint32_t a[kSteps][4];
#pragma unroll
  for (int ks = 0; ks < kSteps; ++ks)
    mma::load_a(a[ks], sh.x + row0 * mma_stride<kDim>() + ks * mma::kK, mma_stride<kDim>(), lane);

  // This round's rotation columns of each piece: (D, half_padded) rows of half_padded
  // (half_padded = padded_columns(p.factors)).
  const int64_t piece_stride = p.rotation_heads * p.n_hashes * kDim * half_padded;
  const T* round_rotation =
      pieces + ((p.rotation_heads == 1 ? 0 : h) * p.n_hashes + r) * kDim * half_padded;
  constexpr int kVectorsPerRow = kHashTile * static_cast<int>(sizeof(T)) / 16;
  int64_t bucket[2] = {0, 0}, radix = 1, factor_col0 = 0;  // factor_col0: its first padded column
  for (int j = 0; j < p.factors.count; ++j) {
    const int64_t half = p.factors.half[j];
    Extreme hi[2] = {{-INFINITY, 0}, {-INFINITY, 0}}, lo[2] = {{INFINITY, 0}, {INFINITY, 0}};
    for (int64_t c0 = 0; c0 < half; c0 += kHashTile) {
      __syncthreads();  // the previous tile is no longer read
      for (int e = tid; e < kRotationPieces * kDim * kVectorsPerRow; e += kHashThreads) {
        const int piece = e / (kDim * kVectorsPerRow), d = (e / kVectorsPerRow) % kDim,
                  vec = e % kVectorsPerRow;
        const T* src = round_rotation + piece * piece_stride + d * half_padded + factor_col0 + c0;
        reinterpret_cast<uint4*>(sh.rotation + (piece * kDim + d) * kHashTileStride)[vec] =
            reinterpret_cast<const uint4*>(src)[vec];
      }
      __syncthreads();

      float proj[kMmaTileBlocks][4] = {};
#pragma unroll
      for (int piece = 0; piece < kRotationPieces; ++piece) {  // lo, mid, hi: small terms first
#pragma unroll
        for (int ks = 0; ks < kSteps; ++ks) {
#pragma unroll
          for (int nb = 0; nb < kMmaTileBlocks; ++nb) {
            uint32_t bf[2];
            mma::load_b_k_major(bf,
                                sh.rotation + (piece * kDim + ks * mma::kK) * kHashTileStride +
                                    nb * mma::kN,
                                kHashTileStride, lane);
            mma<T>(proj[nb], a[ks], bf);
          }
        }
      }
      // Columns in increasing order per lane, so a strict comparison keeps the first of equals.
#pragma unroll
      for (int nb = 0; nb < kMmaTileBlocks; ++nb) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int64_t col = c0 + nb * mma::kN + mma::c_coord(lane, i).col;
          if (col >= half) continue;
          take_if_better(hi[i >> 1], proj[nb][i], static_cast<int32_t>(col), /*max=*/true);
          take_if_better(lo[i >> 1], proj[nb][i], static_cast<int32_t>(col), /*max=*/false);
        }
      }
    }
    // Factor j is complete: every lane of a row gets the row's extremes, and its digit.
#pragma unroll
    for (int row = 0; row < 2; ++row) {
      group_extreme(hi[row], /*max=*/true);
      group_extreme(lo[row], /*max=*/false);
      bucket[row] += radix * bucket_from_extremes(hi[row].value, int64_t{hi[row].index},
                                                  lo[row].value, int64_t{lo[row].index}, half);
    }
    radix *= 2 * half;
    factor_col0 += padded_half(half);
  }

#pragma unroll
  for (int row = 0; row < 2; ++row) {
    const int32_t pos = sh.pos[row0 + (lane >> 2) + 8 * row];
    if ((lane & 3) != 0 || pos < 0) continue;
    const bool is_padding = padding != nullptr && padding[b * p.length + pos];
    buckets[(bh * p.n_hashes + r) * p.length + pos] = is_padding ? radix : bucket[row];
  }
}

#if !defined(REFORMER_CUDA_SIM)  // CPU simulation (tests/cuda_sim): no host launches
// qk (B, H, L, D) contiguous and 16-byte aligned; pieces as described at padded_half.
template <typename T, int kDim>
cudaError_t launch_lsh_hash_mma(const T* qk, const T* pieces, const bool* padding,
                                const HashParams& p, int64_t* buckets, cudaStream_t stream) {
  const int64_t ctas =
      p.batch * p.heads * p.n_hashes * ((p.length + kHashRows - 1) / kHashRows);
  if (ctas == 0) return cudaSuccess;
  if (ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;
  SharedCarver carver{nullptr};
  HashShared<T, kDim>::carve(carver);
  const auto kernel = lsh_hash_mma_kernel<T, kDim>;
  cudaError_t status = allow_shared_memory(kernel, carver.used);
  if (status != cudaSuccess) return status;
  kernel<<<static_cast<unsigned>(ctas), kHashThreads, carver.used, stream>>>(
      qk, pieces, padding, p, padded_columns(p.factors), buckets);
  return cudaGetLastError();
}
#endif  // !REFORMER_CUDA_SIM

}  // namespace reformer::cuda

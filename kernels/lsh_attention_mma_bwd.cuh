// LSH attention backward on tensor cores (fp16/bf16, D == Dv in {32, 64, 128}): the algorithm
// and the fixed, atomic-free order of lsh_attention_bwd.cuh (read its header for the formulas),
// with every product on mma.sync. Logit gradients dS are computed in fp32 on the accumulator
// fragments and rounded to the input type only as the A operand of the next product (as
// FlashAttention does; in fp16 that flushes |dS| below ~6e-8 to zero and would overflow above
// 65504, far beyond what a softmax gradient of bounded logits reaches; bf16 has fp32's range).
//
//   - query-major pass (dQ): per key tile, S = Q X^T and dP = dO V^T, then
//     dQ += (dS * g_j) X, with g_j folded into dS in fp32;
//   - key-major pass (dK, dV): per query tile, S^T = X Q^T and dP^T = V dO^T, then
//     dV += P^T dO and dK̂ += dS^T Q; the key-normalisation term at the end.
#pragma once

#include "lsh_attention_bwd.cuh"
#include "lsh_attention_mma.cuh"

namespace reformer::cuda {

template <typename T>
struct MmaBackwardArgs {
  const T* qk;             // (B*H, L, D), 16-byte aligned
  const T* v;              // (B*H, L, D), 16-byte aligned
  const T* dout;           // (B*H, L, D), 16-byte aligned
  const float* key_scale;  // (B*H, L): g_j
  const float* stats;      // (B*H, L, 2): final (max, log-sum) of the forward
  const float* delta;      // (B*H, L): Δ_i
  float* dqk;              // (B*H, L, D) accumulated gradient, zero-initialised
  float* dv;               // (B*H, L, D) accumulated gradient, zero-initialised
};

// Shared memory of both passes: `own_a`, `own_b` hold the CTA's owned rows (queries and their
// dO, or keys and their values), `tile_a`, `tile_b` the streamed tile's (keys and values, or
// queries and their dO); `chunks` the window (dQ) or the chunks seeing the owned one (dK, dV).
template <typename T, int kDim>
struct MmaBackwardShared {
  T *own_a, *own_b, *tile_a, *tile_b;  // kMmaRows / kMmaTile x stride
  float* tile_stats;                   // kMmaTile x 3: key pass (max, log-sum, Δ); dQ pass g_j
  int64_t* chunks;                     // kMaxWindowChunks
  int32_t* own_pos;                    // kMmaRows, -1 when not a valid token
  int32_t* tile_pos;                   // kMmaTile, -1 when not a valid token

  __host__ __device__ static MmaBackwardShared carve(SharedCarver& c) {
    MmaBackwardShared s;
    s.own_a = c.take<T>(kMmaRows * mma_stride<kDim>());
    s.own_b = c.take<T>(kMmaRows * mma_stride<kDim>());
    s.tile_a = c.take<T>(kMmaTile * mma_stride<kDim>());
    s.tile_b = c.take<T>(kMmaTile * mma_stride<kDim>());
    s.tile_stats = c.take<float>(kMmaTile * 3);
    s.chunks = c.take<int64_t>(kMaxWindowChunks);
    s.own_pos = c.take<int32_t>(kMmaRows);
    s.tile_pos = c.take<int32_t>(kMmaTile);
    return s;
  }
};

// The part both passes share before their tile loop: owned positions, the chunk list (`seeing`:
// chunks whose window holds the owned chunk; otherwise the owned chunk's window), the owned rows
// of `own_a_src`, `own_b_src`. Returns the number of chunks listed, or -1 when the CTA owns no
// valid token (then it has nothing to do).
template <typename T, int kDim>
__device__ __forceinline__ int load_owned(const AttentionParams& p, const OwnedTile& tile,
                                          const MmaBackwardShared<T, kDim>& sh, bool seeing,
                                          const T* own_a_src, const T* own_b_src) {
  const int count = load_owned_positions(p, tile, kMmaRows, seeing, sh.own_pos, sh.chunks);
  if (count < 0) return -1;
  gather_rows<T, kDim>(sh.own_a, own_a_src, sh.own_pos, kMmaRows);
  gather_rows<T, kDim>(sh.own_b, own_b_src, sh.own_pos, kMmaRows);
  return count;
}

// ----------------------------------------------------------------------------------- dQ pass

template <typename T, int kDim>
__global__ void __launch_bounds__(kMmaThreads)
    lsh_backward_query_mma_kernel(AttentionParams p, MmaBackwardArgs<T> a, int64_t round) {
  constexpr int kStride = mma_stride<kDim>();
  constexpr int kBlocks = kDim / mma::kN;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  SharedCarver carver{shared_bytes};
  const MmaBackwardShared<T, kDim> sh = MmaBackwardShared<T, kDim>::carve(carver);
  const OwnedTile tile = owned_tile(p, round, kMmaRows);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t head_rows = tile.bh * p.length;
  const T* qk_head = a.qk + head_rows * kDim;
  const T* v_head = a.v + head_rows * kDim;
  // own_a: query rows, own_b: their dO; tile_a: key rows, tile_b: their values
  const int n_window = load_owned(p, tile, sh, /*seeing=*/false, qk_head,
                                  a.dout + head_rows * kDim);
  if (n_window < 0) return;
  const int64_t n_keys = n_window * p.bucket_size;

  const int row0 = warp * mma::kM, group = lane >> 2;
  int32_t qpos[2];
  float row_max[2], row_log_sum[2], delta[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    qpos[h] = sh.own_pos[row0 + group + 8 * h];
    const int64_t at = head_rows + (qpos[h] >= 0 ? qpos[h] : 0);
    row_max[h] = a.stats[2 * at];
    row_log_sum[h] = a.stats[2 * at + 1];
    delta[h] = a.delta[at];
  }
  const bool warp_has_queries = __any_sync(0xffffffffu, qpos[0] >= 0 || qpos[1] >= 0);
  float dq[kBlocks][4] = {};

  for (int64_t t0 = 0; t0 < n_keys; t0 += kMmaTile) {
    __syncthreads();
    if (tid < kMmaTile) {
      const int32_t pos = streamed_position(p, tile.bh, sh.chunks, n_window, t0 + tid);
      sh.tile_pos[tid] = pos;
      sh.tile_stats[tid] = pos >= 0 ? a.key_scale[head_rows + pos] : 0.f;
    }
    __syncthreads();
    gather_rows<T, kDim>(sh.tile_a, qk_head, sh.tile_pos, kMmaTile);
    gather_rows<T, kDim>(sh.tile_b, v_head, sh.tile_pos, kMmaTile);
    __syncthreads();
    if (!warp_has_queries) continue;

    float s[kMmaTileBlocks][4] = {}, dp[kMmaTileBlocks][4] = {};
    warp_scores<T, kDim>(s, sh.own_a + row0 * kStride, sh.tile_a, lane);
    warp_scores<T, kDim>(dp, sh.own_b + row0 * kStride, sh.tile_b, lane);
#pragma unroll
    for (int nb = 0; nb < kMmaTileBlocks; ++nb) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int h = i >> 1, key = nb * mma::kN + mma::c_coord(lane, i).col;
        const float g = sh.tile_stats[key];
        float weight;
        const float ds = logit_gradient<float>(p, g * s[nb][i], dp[nb][i], qpos[h],
                                               sh.tile_pos[key], row_max[h], row_log_sum[h],
                                               delta[h], weight);
        s[nb][i] = ds * g;  // dQ = scale Σ_j dS_ij g_j x_j
      }
    }
    warp_weighted_sum<T, kDim>(dq, s, sh.tile_a, lane);
  }

  const float scale = static_cast<float>(p.scale);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (qpos[h] < 0) continue;
    float* dst = a.dqk + (head_rows + qpos[h]) * kDim;
#pragma unroll
    for (int nb = 0; nb < kBlocks; ++nb) {
#pragma unroll
      for (int j = 0; j < 2; ++j)
        dst[nb * mma::kN + mma::c_coord(lane, 2 * h + j).col] += scale * dq[nb][2 * h + j];
    }
  }
}

// ------------------------------------------------------------------------------ dK, dV pass

template <typename T, int kDim>
__global__ void __launch_bounds__(kMmaThreads)
    lsh_backward_key_mma_kernel(AttentionParams p, MmaBackwardArgs<T> a, int64_t round) {
  constexpr int kStride = mma_stride<kDim>();
  constexpr int kBlocks = kDim / mma::kN;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  SharedCarver carver{shared_bytes};
  const MmaBackwardShared<T, kDim> sh = MmaBackwardShared<T, kDim>::carve(carver);
  const OwnedTile tile = owned_tile(p, round, kMmaRows);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t head_rows = tile.bh * p.length;
  const T* qk_head = a.qk + head_rows * kDim;
  const T* dout_head = a.dout + head_rows * kDim;
  // own_a: key rows x, own_b: their values; tile_a: query rows, tile_b: their dO
  const int n_seeing = load_owned(p, tile, sh, /*seeing=*/true, qk_head, a.v + head_rows * kDim);
  if (n_seeing < 0) return;
  const int64_t n_queries = n_seeing * p.bucket_size;

  const int row0 = warp * mma::kM, group = lane >> 2;
  int32_t kpos[2];
  float g[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    kpos[h] = sh.own_pos[row0 + group + 8 * h];
    g[h] = a.key_scale[head_rows + (kpos[h] >= 0 ? kpos[h] : 0)];
  }
  const bool warp_has_keys = __any_sync(0xffffffffu, kpos[0] >= 0 || kpos[1] >= 0);
  float dk[kBlocks][4] = {}, dv[kBlocks][4] = {};

  for (int64_t t0 = 0; t0 < n_queries; t0 += kMmaTile) {
    __syncthreads();
    if (tid < kMmaTile) {
      const int32_t pos = streamed_position(p, tile.bh, sh.chunks, n_seeing, t0 + tid);
      sh.tile_pos[tid] = pos;
      const int64_t at = head_rows + (pos >= 0 ? pos : 0);
      sh.tile_stats[3 * tid] = a.stats[2 * at];
      sh.tile_stats[3 * tid + 1] = a.stats[2 * at + 1];
      sh.tile_stats[3 * tid + 2] = a.delta[at];
    }
    __syncthreads();
    gather_rows<T, kDim>(sh.tile_a, qk_head, sh.tile_pos, kMmaTile);
    gather_rows<T, kDim>(sh.tile_b, dout_head, sh.tile_pos, kMmaTile);
    __syncthreads();
    if (!warp_has_keys) continue;

    float st[kMmaTileBlocks][4] = {}, dpt[kMmaTileBlocks][4] = {};
    warp_scores<T, kDim>(st, sh.own_a + row0 * kStride, sh.tile_a, lane);   // x_j · x_i
    warp_scores<T, kDim>(dpt, sh.own_b + row0 * kStride, sh.tile_b, lane);  // v_j · dO_i
#pragma unroll
    for (int nb = 0; nb < kMmaTileBlocks; ++nb) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int h = i >> 1, query = nb * mma::kN + mma::c_coord(lane, i).col;
        const float* q_stats = sh.tile_stats + 3 * query;
        float weight;
        dpt[nb][i] = logit_gradient<float>(p, g[h] * st[nb][i], dpt[nb][i],
                                           sh.tile_pos[query], kpos[h], q_stats[0], q_stats[1],
                                           q_stats[2], weight);
        st[nb][i] = weight;
      }
    }
    warp_weighted_sum<T, kDim>(dv, st, sh.tile_b, lane);   // dV += P^T dO
    warp_weighted_sum<T, kDim>(dk, dpt, sh.tile_a, lane);  // dK̂ += dS^T Q
  }

  // dx_j = scale (g dk̂ - g³ (x · dk̂) x), added to the owned rows together with dv.
  const float scale = static_cast<float>(p.scale);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const T* x = sh.own_a + (row0 + group + 8 * h) * kStride;
    float partial = 0.f;
#pragma unroll
    for (int nb = 0; nb < kBlocks; ++nb) {
#pragma unroll
      for (int j = 0; j < 2; ++j)
        partial += to_float(x[nb * mma::kN + mma::c_coord(lane, 2 * h + j).col]) *
                   dk[nb][2 * h + j];
    }
    const float x_dot_dk = group_sum(partial);
    if (kpos[h] < 0) continue;
    const float ga = scale * g[h], gb = scale * g[h] * g[h] * g[h] * x_dot_dk;
    float* dx = a.dqk + (head_rows + kpos[h]) * kDim;
    float* dv_row = a.dv + (head_rows + kpos[h]) * kDim;
#pragma unroll
    for (int nb = 0; nb < kBlocks; ++nb) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int d = nb * mma::kN + mma::c_coord(lane, 2 * h + j).col;
        dx[d] += ga * dk[nb][2 * h + j] - gb * to_float(x[d]);
        dv_row[d] += dv[nb][2 * h + j];
      }
    }
  }
}

#if !defined(REFORMER_CUDA_SIM)  // CPU simulation (tests/cuda_sim): no host launches
// Runs the whole backward on `stream`: the dQ pass of every round, then the dK/dV pass of every
// round (the order of launch_lsh_backward). dqk and dv must be zero initially.
template <typename T, int kDim>
cudaError_t launch_lsh_backward_mma(const AttentionParams& p, const MmaBackwardArgs<T>& a,
                                    int64_t n_hashes, cudaStream_t stream) {
  const int64_t ctas = ctas_per_round(p, kMmaRows);
  if (ctas == 0) return cudaSuccess;
  if (ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;  // see launch_lsh_forward
  SharedCarver carver{nullptr};
  MmaBackwardShared<T, kDim>::carve(carver);
  const auto query_kernel = lsh_backward_query_mma_kernel<T, kDim>;
  const auto key_kernel = lsh_backward_key_mma_kernel<T, kDim>;
  cudaError_t status = allow_shared_memory(query_kernel, carver.used);
  if (status == cudaSuccess) status = allow_shared_memory(key_kernel, carver.used);
  if (status != cudaSuccess) return status;
  for (int64_t r = 0; r < n_hashes; ++r) {
    query_kernel<<<static_cast<unsigned>(ctas), kMmaThreads, carver.used, stream>>>(p, a, r);
    if ((status = cudaGetLastError()) != cudaSuccess) return status;
  }
  for (int64_t r = 0; r < n_hashes; ++r) {
    key_kernel<<<static_cast<unsigned>(ctas), kMmaThreads, carver.used, stream>>>(p, a, r);
    if ((status = cudaGetLastError()) != cudaSuccess) return status;
  }
  return cudaSuccess;
}
#endif  // !REFORMER_CUDA_SIM

}  // namespace reformer::cuda

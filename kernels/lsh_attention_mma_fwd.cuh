// LSH attention forward on tensor cores (fp16/bf16, D == Dv in {32, 64, 128}), one hash round
// per launch: the algorithm of lsh_attention_fwd.cuh with the two products on mma.sync.
//
// A CTA owns kMmaRows query items of one chunk; warp w owns rows 16w..16w+15. For each tile of
// kMmaTile window keys: S = Q X^T on tensor cores (X: the keys as stored; the key normalisation
// g_j and the scale multiply the columns of S in fp32), masks on original positions, an online
// softmax in fp32 on the accumulator fragments, then O += P V with P rounded to the input type
// (as FlashAttention does). The round's (output, max, log-sum) is merged into the running output
// of each query position with merge_round, rounds one launch after another: deterministic.
#pragma once

#include "lsh_attention_mma.cuh"

namespace reformer::cuda {

template <typename T>
struct MmaForwardArgs {
  const T* qk;             // (B*H, L, D), 16-byte aligned
  const T* v;              // (B*H, L, D), 16-byte aligned
  const float* key_scale;  // (B*H, L): g_j
  float* out;              // (B*H, L, D) running output, zero-initialised
  float* stats;            // (B*H, L, 2) running (max, log-sum); max = -inf before any round
};

template <typename T, int kDim>
struct MmaForwardShared {
  T* q;              // kMmaRows x stride, query rows
  T* k;              // kMmaTile x stride, key rows (unnormalised)
  T* v;              // kMmaTile x stride
  float* key_scale;  // kMmaTile: g_j of the tile's keys
  int64_t* window;   // kMaxWindowChunks chunk indices
  int32_t* qpos;     // kMmaRows, -1 when not a valid query
  int32_t* kpos;     // kMmaTile, -1 when not a valid key

  __host__ __device__ static MmaForwardShared carve(SharedCarver& c) {
    MmaForwardShared s;
    s.q = c.take<T>(kMmaRows * mma_stride<kDim>());
    s.k = c.take<T>(kMmaTile * mma_stride<kDim>());
    s.v = c.take<T>(kMmaTile * mma_stride<kDim>());
    s.key_scale = c.take<float>(kMmaTile);
    s.window = c.take<int64_t>(kMaxWindowChunks);
    s.qpos = c.take<int32_t>(kMmaRows);
    s.kpos = c.take<int32_t>(kMmaTile);
    return s;
  }
};

template <typename T, int kDim>
__global__ void __launch_bounds__(kMmaThreads)
    lsh_forward_round_mma_kernel(AttentionParams p, MmaForwardArgs<T> a, int64_t round) {
  constexpr int kStride = mma_stride<kDim>();
  constexpr int kBlocks = kDim / mma::kN;  // output column blocks
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  SharedCarver carver{shared_bytes};
  const MmaForwardShared<T, kDim> sh = MmaForwardShared<T, kDim>::carve(carver);
  const OwnedTile tile = owned_tile(p, round, kMmaRows);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t head_rows = tile.bh * p.length;
  const T* qk_head = a.qk + head_rows * kDim;
  const T* v_head = a.v + head_rows * kDim;

  const int n_window = load_owned_positions(p, tile, kMmaRows, /*seeing=*/false, sh.qpos,
                                            sh.window);
  if (n_window < 0) return;  // padding-only rows
  gather_rows<T, kDim>(sh.q, qk_head, sh.qpos, kMmaRows);
  const int64_t n_keys = n_window * p.bucket_size;

  // This lane's two rows (fragment rows group and group + 8 of the warp's 16), index h.
  const int row0 = warp * mma::kM, group = lane >> 2;
  const int32_t qpos[2] = {sh.qpos[row0 + group], sh.qpos[row0 + group + 8]};
  const bool warp_has_queries = __any_sync(0xffffffffu, qpos[0] >= 0 || qpos[1] >= 0);
  float o[kBlocks][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  const float scale = static_cast<float>(p.scale);

  for (int64_t t0 = 0; t0 < n_keys; t0 += kMmaTile) {
    __syncthreads();  // the previous tile is no longer read
    if (tid < kMmaTile) {
      const int32_t pos = streamed_position(p, tile.bh, sh.window, n_window, t0 + tid);
      sh.kpos[tid] = pos;
      sh.key_scale[tid] = pos >= 0 ? a.key_scale[head_rows + pos] : 0.f;
    }
    __syncthreads();
    gather_rows<T, kDim>(sh.k, qk_head, sh.kpos, kMmaTile);
    gather_rows<T, kDim>(sh.v, v_head, sh.kpos, kMmaTile);
    __syncthreads();
    if (!warp_has_queries) continue;  // warp-uniform; the CTA still meets every barrier

    float s[kMmaTileBlocks][4] = {};
    warp_scores<T, kDim>(s, sh.q + row0 * kStride, sh.k, lane);

    // Masked logits, then the tile's row maxima.
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nb = 0; nb < kMmaTileBlocks; ++nb) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int h = i >> 1, key = nb * mma::kN + mma::c_coord(lane, i).col;
        const int32_t key_pos = sh.kpos[key];
        s[nb][i] = (key_pos >= 0 && qpos[h] >= 0)
                       ? masked_logit<float, int32_t>(scale * sh.key_scale[key] * s[nb][i],
                                                      qpos[h], key_pos, p.causal)
                       : -INFINITY;
        tile_max[h] = fmaxf(tile_max[h], s[nb][i]);
      }
    }
    float new_max[2], rescale[2], tile_sum[2] = {0.f, 0.f};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      new_max[h] = fmaxf(row_max[h], group_max(tile_max[h]));
      // no valid key yet: nothing to rescale (o and row_sum are still 0)
      rescale[h] = new_max[h] == -INFINITY ? 1.f : expf(row_max[h] - new_max[h]);
    }
#pragma unroll
    for (int nb = 0; nb < kMmaTileBlocks; ++nb) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int h = i >> 1;
        s[nb][i] = new_max[h] == -INFINITY ? 0.f : expf(s[nb][i] - new_max[h]);
        tile_sum[h] += s[nb][i];
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_sum[h] = row_sum[h] * rescale[h] + group_sum(tile_sum[h]);
      row_max[h] = new_max[h];
    }
#pragma unroll
    for (int nb = 0; nb < kBlocks; ++nb) {
#pragma unroll
      for (int i = 0; i < 4; ++i) o[nb][i] *= rescale[i >> 1];
    }
    warp_weighted_sum<T, kDim>(o, s, sh.v, lane);
  }

  // Merge this round into the running output and stats of each of the lane's two rows.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int32_t pos = qpos[h];
    RoundMerge<float> m{};
    float* st = a.stats + 2 * (head_rows + (pos >= 0 ? pos : 0));
    // Every valid query sees itself (its own chunk is in its window), so row_sum >= 1 here.
    if (pos >= 0) m = merge_round(st[0], st[1], row_max[h], logf(row_sum[h]));
    __syncwarp();  // the row's 4 lanes have read the stats before one overwrites them
    if (pos < 0) continue;
    const float inv = 1.f / row_sum[h];
    float* dst = a.out + (head_rows + pos) * kDim;
#pragma unroll
    for (int nb = 0; nb < kBlocks; ++nb) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int d = nb * mma::kN + mma::c_coord(lane, 2 * h + j).col;
        dst[d] = (dst[d] * m.old_weight + o[nb][2 * h + j] * inv * m.new_weight) / m.total;
      }
    }
    if ((lane & 3) == 0) st[0] = m.max, st[1] = m.log_sum;
  }
}

#if !defined(REFORMER_CUDA_SIM)  // CPU simulation (tests/cuda_sim): no host launches
// Runs every round of the forward on `stream`. out must be zero and stats (max) -inf initially.
template <typename T, int kDim>
cudaError_t launch_lsh_forward_mma(const AttentionParams& p, const MmaForwardArgs<T>& a,
                                   int64_t n_hashes, cudaStream_t stream) {
  SharedCarver carver{nullptr};
  MmaForwardShared<T, kDim>::carve(carver);
  const auto kernel = lsh_forward_round_mma_kernel<T, kDim>;
  cudaError_t status = allow_shared_memory(kernel, carver.used);
  if (status != cudaSuccess) return status;
  const int64_t ctas = ctas_per_round(p, kMmaRows);
  if (ctas == 0) return cudaSuccess;
  if (ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;  // see launch_lsh_forward
  for (int64_t r = 0; r < n_hashes; ++r) {
    kernel<<<static_cast<unsigned>(ctas), kMmaThreads, carver.used, stream>>>(p, a, r);
    if ((status = cudaGetLastError()) != cudaSuccess) return status;
  }
  return cudaSuccess;
}
#endif  // !REFORMER_CUDA_SIM

}  // namespace reformer::cuda

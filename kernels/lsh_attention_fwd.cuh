// LSH attention forward on the GPU (docs/semantics.md §1 steps 3-6), one hash round per launch.
//
// A CTA owns kRowsPerCta query items of one chunk of the round (lsh_attention_tile.cuh). It
// gathers their qk rows by the sorted positions, then streams the keys of the chunk's window
// (window_chunks of lsh_common.h, cyclic over all rounds) in tiles of 32: normalised keys
// g_j * x_j and values, masks on original positions, and an online softmax in the accumulation
// type. At the end it merges the round's (normalised output, max, log-sum) into the running
// output and softmax stats of each query's original position.
//
// Rounds are launched one after another: inside a round every position is exactly one item, so
// a CTA owns the output rows it merges into, rounds merge in a fixed order, and the result is
// deterministic without atomics. With attention dropout (AttentionParams::dropout) the value
// average uses z_ij · weight (z = keep / (1 - p), kernels/attention_dropout.h) while the softmax
// stats keep the undropped weights. The merge (merge_round) is the one of the CPU kernel:
//   stats = (max m, log Σ exp(s - m)), out = the weighted mean of the two partial outputs.
#pragma once

#include "lsh_attention_tile.cuh"

namespace reformer::cuda {

template <typename scalar_t, typename acc_t>
struct ForwardArgs {
  const scalar_t* qk;       // (B*H, L, D): queries
  const scalar_t* v;        // (B*H, L, Dv)
  const acc_t* key_scale;   // (B*H, L): g_j = rsqrt(mean(x_j^2) + eps) / sqrt(D), or null
                            // for unit key scale (local attention)
  acc_t* out;               // (B*H, L, Dv) running output, zero-initialised
  acc_t* stats;             // (B*H, L, 2) running (max, log-sum); max = -inf before any round
  const scalar_t* k = nullptr;  // (B*H, L, D): keys, or null for qk (LSH)
};

// Shared memory of one forward CTA; the device and the host carve it the same way.
template <typename acc_t>
struct ForwardShared {
  acc_t* q;          // kRowsPerCta x D, query rows
  acc_t* k;          // kTileItems x (D + 1), normalised keys (+1: lanes read rows, no conflicts)
  acc_t* v;          // kTileItems x Dv
  int64_t* window;   // kMaxWindowChunks chunk indices
  int32_t* qpos;     // kRowsPerCta query positions, -1 when the row is not a valid query
  int32_t* kpos;     // kTileItems key positions, -1 when not a valid key
  int* slots;        // kMaxWindowChunks window slots of the chunks (attention dropout)

  __host__ __device__ static ForwardShared carve(SharedCarver& c, int64_t D, int64_t Dv) {
    ForwardShared s;
    s.q = c.take<acc_t>(kRowsPerCta * D);
    s.k = c.take<acc_t>(kTileItems * (D + 1));
    s.v = c.take<acc_t>(kTileItems * Dv);
    s.window = c.take<int64_t>(kMaxWindowChunks);
    s.qpos = c.take<int32_t>(kRowsPerCta);
    s.kpos = c.take<int32_t>(kTileItems);
    s.slots = c.take<int>(kMaxWindowChunks);
    return s;
  }
};

template <typename scalar_t, typename acc_t, int kSlots>
__global__ void __launch_bounds__(kThreads)
    lsh_forward_round_kernel(AttentionParams p, ForwardArgs<scalar_t, acc_t> a, int64_t round) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  SharedCarver carver{shared_bytes};
  const int64_t D = p.dim, Dv = p.value_dim;
  const ForwardShared<acc_t> sh = ForwardShared<acc_t>::carve(carver, D, Dv);
  const OwnedTile tile = owned_tile(p, round);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t head_rows = tile.bh * p.length;  // first row of this head in (B*H, L, .)

  // Query rows of this CTA, and the window's chunks.
  const int n_window = load_owned_positions(p, tile, kRowsPerCta, /*seeing=*/false, sh.qpos,
                                            sh.window, sh.slots);
  if (n_window < 0) return;  // padding-only rows: nothing to write
  gather_rows_as(sh.q, D, a.qk + head_rows * D, sh.qpos, kRowsPerCta, D);
  const int64_t n_keys = n_window * p.bucket_size;

  // Online softmax state of this warp's rows (identical in every lane).
  acc_t row_max[kRowsPerWarp], row_sum[kRowsPerWarp], o[kRowsPerWarp][kSlots];
  int32_t my_qpos[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    row_max[r] = negative_infinity<acc_t>();
    row_sum[r] = 0;
    my_qpos[r] = sh.qpos[warp * kRowsPerWarp + r];
#pragma unroll
    for (int s = 0; s < kSlots; ++s) o[r][s] = 0;
  }
  const acc_t scale = static_cast<acc_t>(p.scale);

  for (int64_t t0 = 0; t0 < n_keys; t0 += kTileItems) {
    __syncthreads();  // the previous tile is no longer read
    if (tid < kTileItems) {
      const int32_t pos = streamed_position(p, tile.bh, sh.window, n_window, t0 + tid);
      sh.kpos[tid] = pos;
    }
    __syncthreads();
    gather_rows_as(sh.k, D + 1, (a.k ? a.k : a.qk) + head_rows * D, sh.kpos, kTileItems, D,
                   a.key_scale ? a.key_scale + head_rows : nullptr);  // keys g_j x_j
    gather_rows_as(sh.v, Dv, a.v + head_rows * Dv, sh.kpos, kTileItems, Dv);
    __syncthreads();

    const int32_t key_pos = sh.kpos[lane];
    const acc_t* k_row = sh.k + lane * (D + 1);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      if (my_qpos[r] < 0) continue;  // warp-uniform
      const acc_t* q_row = sh.q + (warp * kRowsPerWarp + r) * D;
      acc_t dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += q_row[d] * k_row[d];
      const acc_t logit = key_pos >= 0
                              ? masked_logit<acc_t, int32_t>(scale * dot, my_qpos[r], key_pos,
                                                             p.causal, p.self_mask)
                              : negative_infinity<acc_t>();
      const acc_t new_max = fmax(row_max[r], warp_max(logit));
      if (new_max == negative_infinity<acc_t>()) continue;  // no valid key yet (warp-uniform)
      const acc_t rescale = acc_exp(row_max[r] - new_max);  // 0 on the first valid tile
      const acc_t weight = acc_exp(logit - new_max);         // 0 for invalid keys
      row_sum[r] = row_sum[r] * rescale + warp_sum(weight);
      row_max[r] = new_max;
      // Attention dropout: the value average uses z · weight, the softmax stats the weight.
      acc_t pv_weight = weight;
      if (p.dropout && key_pos >= 0)
        pv_weight = weight * keep_factor<acc_t>(p, dropout_row(p, tile.bh, tile.chunk, my_qpos[r]),
                                                sh.slots[(t0 + lane) / p.bucket_size], key_pos);
#pragma unroll
      for (int s = 0; s < kSlots; ++s) o[r][s] *= rescale;
      for (int j = 0; j < kTileItems; ++j) {
        const acc_t w = __shfl_sync(0xffffffffu, pv_weight, j);
#pragma unroll
        for (int s = 0; s < kSlots; ++s) {
          const int64_t d = lane + 32 * s;
          if (d < Dv) o[r][s] += w * sh.v[j * Dv + d];
        }
      }
    }
  }

  // Merge this round into the running output and stats of each query position.
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int32_t pos = my_qpos[r];
    if (pos < 0) continue;
    // Every valid query sees itself (its own chunk is in its window), so row_sum >= 1 here.
    const acc_t cur_max = row_max[r], cur_log_sum = acc_log(row_sum[r]);
    const acc_t inv = acc_t(1) / row_sum[r];
    acc_t* st = a.stats + 2 * (head_rows + pos);
    acc_t* dst = a.out + (head_rows + pos) * Dv;
    const RoundMerge<acc_t> m = merge_round(st[0], st[1], cur_max, cur_log_sum);
    __syncwarp();  // every lane has read the stats before lane 0 overwrites them
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int64_t d = lane + 32 * s;
      if (d < Dv) dst[d] = (dst[d] * m.old_weight + o[r][s] * inv * m.new_weight) / m.total;
    }
    if (lane == 0) st[0] = m.max, st[1] = m.log_sum;
  }
}

#if !defined(REFORMER_CUDA_SIM)  // CPU simulation (tests/cuda_sim): no host launches
// Runs every round of the forward on `stream`. out must be zero and stats (max) -inf initially.
template <typename scalar_t, typename acc_t, int kSlots>
cudaError_t launch_lsh_forward(const AttentionParams& p, const ForwardArgs<scalar_t, acc_t>& a,
                               int64_t n_hashes, cudaStream_t stream) {
  SharedCarver carver{nullptr};
  ForwardShared<acc_t>::carve(carver, p.dim, p.value_dim);
  const size_t shared = carver.used;
  const auto kernel = lsh_forward_round_kernel<scalar_t, acc_t, kSlots>;
  cudaError_t status = allow_shared_memory(kernel, shared);
  if (status != cudaSuccess) return status;
  const int64_t ctas = ctas_per_round(p);
  if (ctas == 0) return cudaSuccess;
  // one CTA per grid.x index: more than 2^31 - 1 cannot be launched (tiny bucket_size at huge
  // B·H·L'); fail the launch rather than wrap the count and leave rows uncomputed
  if (ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;
  for (int64_t r = 0; r < n_hashes; ++r) {
    kernel<<<static_cast<unsigned>(ctas), kThreads, shared, stream>>>(p, a, r);
    status = cudaGetLastError();
    if (status != cudaSuccess) return status;
  }
  return cudaSuccess;
}
#endif  // !REFORMER_CUDA_SIM

}  // namespace reformer::cuda

// LSH attention backward on the GPU: flash-style recompute, deterministic without atomics.
//
// With the final softmax stats (max m_i, log-sum l_i) of the forward, for a query item i and a
// key item j of its window:
//   P_ij = exp((s_ij - m_i) - l_i),  dP_ij = dO_i · v_j,  dS_ij = P_ij (dP_ij - Δ_i)
// (dS = 0 where the logit was replaced by a mask constant), Δ_i = dO_i · O_i - dlse_i, and
//   dq_i  = scale Σ_j dS_ij k_j          with k_j = g_j x_j (normalised key)
//   dv_j  = Σ_i P_ij dO_i
//   dk̂_j = Σ_i dS_ij x_i                 (k̂: the unnormalised key gradient, before scale)
//   dx_j += scale (g_j dk̂_j - g_j³ (x_j · dk̂_j) x_j)   (through k_j = g_j x_j)
//
// Attention dropout (docs/semantics.md §1 "Dropout"; AttentionParams::dropout), with the keep
// factor z_ij = keep_ij / (1 - p) of the pair: dS_ij = P_ij (z_ij dP_ij - Δ_i) and
// dv_j = Σ_i z_ij P_ij dO_i. The key-major pass finds each streamed query's round and the
// owned chunk's slot in its window through chunks_seeing's window_slot.
//
// Two kernels, each launched once per hash round, all on one stream in a fixed order:
//   - query-major (dQ): a CTA owns query items of one chunk and streams its window's keys;
//   - key-major (dK, dV): a CTA owns key items of one chunk and streams the queries of the
//     chunks whose window contains it (chunks_seeing of lsh_common.h, a fixed order).
// Inside a round every position is exactly one item, so each CTA owns the gradient rows it adds
// to; rounds and the two passes follow each other in a fixed order. No floating-point atomics.
#pragma once

#include "lsh_attention_tile.cuh"

namespace reformer::cuda {

template <typename scalar_t, typename acc_t>
struct BackwardArgs {
  const scalar_t* qk;      // (B*H, L, D)
  const scalar_t* v;       // (B*H, L, Dv)
  const scalar_t* dout;    // (B*H, L, Dv)
  const acc_t* key_scale;  // (B*H, L): g_j
  const acc_t* stats;      // (B*H, L, 2): final (max, log-sum) of the forward
  const acc_t* delta;      // (B*H, L): Δ_i
  acc_t* dqk;              // (B*H, L, D) accumulated gradient, zero-initialised
  acc_t* dv;               // (B*H, L, Dv) accumulated gradient, zero-initialised
  // Local attention (docs/semantics.md §9): separate keys and their gradient, with key_scale
  // null (unit). LSH leaves both null: keys are qk, their gradient goes to dqk.
  const scalar_t* k = nullptr;  // (B*H, L, D)
  acc_t* dk = nullptr;          // (B*H, L, D) accumulated gradient, zero-initialised
};

// Logit gradient of one (query, key) pair given both dot products; 0 when either is not a valid
// token or the logit was replaced by a mask constant. `weight` receives P_ij.
template <typename acc_t>
__device__ __forceinline__ acc_t logit_gradient(const AttentionParams& p, acc_t qk_dot,
                                                acc_t dp, int32_t qpos, int32_t kpos,
                                                acc_t row_max, acc_t row_log_sum, acc_t delta,
                                                acc_t& weight) {
  if (qpos < 0 || kpos < 0) {
    weight = 0;
    return 0;
  }
  const acc_t logit = masked_logit<acc_t, int32_t>(static_cast<acc_t>(p.scale) * qk_dot, qpos,
                                                   kpos, p.causal, p.self_mask);
  weight = acc_exp((logit - row_max) - row_log_sum);
  return logit_is_replaced<int32_t>(qpos, kpos, p.causal, p.self_mask) ? acc_t(0)
                                                                       : weight * (dp - delta);
}

// ----------------------------------------------------------------------------------- dQ pass

template <typename acc_t>
struct QueryPassShared {
  acc_t* q;         // kRowsPerCta x D, owned query rows
  acc_t* dout;      // kRowsPerCta x Dv
  acc_t* k;         // kTileItems x (D + 1), normalised keys
  acc_t* v;         // kTileItems x (Dv + 1)
  int64_t* window;  // kMaxWindowChunks
  int32_t* qpos;    // kRowsPerCta, -1 when not a valid query
  int32_t* kpos;    // kTileItems, -1 when not a valid key
  int* slots;       // kMaxWindowChunks window slots (attention dropout)

  __host__ __device__ static QueryPassShared carve(SharedCarver& c, int64_t D, int64_t Dv) {
    QueryPassShared s;
    s.q = c.take<acc_t>(kRowsPerCta * D);
    s.dout = c.take<acc_t>(kRowsPerCta * Dv);
    s.k = c.take<acc_t>(kTileItems * (D + 1));
    s.v = c.take<acc_t>(kTileItems * (Dv + 1));
    s.window = c.take<int64_t>(kMaxWindowChunks);
    s.qpos = c.take<int32_t>(kRowsPerCta);
    s.kpos = c.take<int32_t>(kTileItems);
    s.slots = c.take<int>(kMaxWindowChunks);
    return s;
  }
};

template <typename scalar_t, typename acc_t, int kSlots>
__global__ void __launch_bounds__(kThreads)
    lsh_backward_query_kernel(AttentionParams p, BackwardArgs<scalar_t, acc_t> a, int64_t round) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  SharedCarver carver{shared_bytes};
  const int64_t D = p.dim, Dv = p.value_dim;
  const QueryPassShared<acc_t> sh = QueryPassShared<acc_t>::carve(carver, D, Dv);
  const OwnedTile tile = owned_tile(p, round);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t head_rows = tile.bh * p.length;

  const int n_window = load_owned_positions(p, tile, kRowsPerCta, /*seeing=*/false, sh.qpos,
                                            sh.window, sh.slots);
  if (n_window < 0) return;
  gather_rows_as(sh.q, D, a.qk + head_rows * D, sh.qpos, kRowsPerCta, D);
  gather_rows_as(sh.dout, Dv, a.dout + head_rows * Dv, sh.qpos, kRowsPerCta, Dv);
  const int64_t n_keys = n_window * p.bucket_size;

  acc_t dq[kRowsPerWarp][kSlots], row_max[kRowsPerWarp], row_log_sum[kRowsPerWarp],
      delta[kRowsPerWarp];
  int32_t my_qpos[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    my_qpos[r] = sh.qpos[warp * kRowsPerWarp + r];
    const int64_t at = head_rows + (my_qpos[r] >= 0 ? my_qpos[r] : 0);
    row_max[r] = a.stats[2 * at];
    row_log_sum[r] = a.stats[2 * at + 1];
    delta[r] = a.delta[at];
#pragma unroll
    for (int s = 0; s < kSlots; ++s) dq[r][s] = 0;
  }

  for (int64_t t0 = 0; t0 < n_keys; t0 += kTileItems) {
    __syncthreads();
    if (tid < kTileItems) {
      const int32_t pos = streamed_position(p, tile.bh, sh.window, n_window, t0 + tid);
      sh.kpos[tid] = pos;
    }
    __syncthreads();
    gather_rows_as(sh.k, D + 1, (a.k ? a.k : a.qk) + head_rows * D, sh.kpos, kTileItems, D,
                   a.key_scale ? a.key_scale + head_rows : nullptr);  // keys g_j x_j
    gather_rows_as(sh.v, Dv + 1, a.v + head_rows * Dv, sh.kpos, kTileItems, Dv);
    __syncthreads();

    const int32_t key_pos = sh.kpos[lane];
    const acc_t* k_row = sh.k + lane * (D + 1);
    const acc_t* v_row = sh.v + lane * (Dv + 1);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      if (my_qpos[r] < 0) continue;  // warp-uniform
      const int row = warp * kRowsPerWarp + r;
      acc_t qk_dot = 0, dp = 0;
      for (int64_t d = 0; d < D; ++d) qk_dot += sh.q[row * D + d] * k_row[d];
      for (int64_t d = 0; d < Dv; ++d) dp += sh.dout[row * Dv + d] * v_row[d];
      // Attention dropout: dS = P (z dP - Δ)
      if (p.dropout && key_pos >= 0)
        dp *= keep_factor<acc_t>(p, dropout_row(p, tile.bh, tile.chunk, my_qpos[r]),
                                 sh.slots[(t0 + lane) / p.bucket_size], key_pos);
      acc_t weight;
      const acc_t ds = logit_gradient(p, qk_dot, dp, my_qpos[r], key_pos, row_max[r],
                                      row_log_sum[r], delta[r], weight);
      for (int j = 0; j < kTileItems; ++j) {
        const acc_t ds_j = __shfl_sync(0xffffffffu, ds, j);
#pragma unroll
        for (int s = 0; s < kSlots; ++s) {
          const int64_t d = lane + 32 * s;
          if (d < D) dq[r][s] += ds_j * sh.k[j * (D + 1) + d];
        }
      }
    }
  }

  const acc_t scale = static_cast<acc_t>(p.scale);
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    if (my_qpos[r] < 0) continue;
    acc_t* dst = a.dqk + (head_rows + my_qpos[r]) * D;
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int64_t d = lane + 32 * s;
      if (d < D) dst[d] += scale * dq[r][s];
    }
  }
}

// ------------------------------------------------------------------------------ dK, dV pass

template <typename acc_t>
struct KeyPassShared {
  acc_t* x;          // kRowsPerCta x D, owned key rows (unnormalised)
  acc_t* v;          // kRowsPerCta x Dv
  acc_t* q;          // kTileItems x (D + 1), streamed query rows
  acc_t* dout;       // kTileItems x (Dv + 1)
  acc_t* qstats;     // kTileItems x 3: max, log-sum, Δ
  int64_t* seeing;   // kMaxWindowChunks query chunks whose window holds the owned chunk
  int32_t* kpos;     // kRowsPerCta, -1 when not a valid key
  int32_t* qpos;     // kTileItems, -1 when not a valid query
  int* slots;        // kMaxWindowChunks: the slot of the owned chunk in each seeing window

  __host__ __device__ static KeyPassShared carve(SharedCarver& c, int64_t D, int64_t Dv) {
    KeyPassShared s;
    s.x = c.take<acc_t>(kRowsPerCta * D);
    s.v = c.take<acc_t>(kRowsPerCta * Dv);
    s.q = c.take<acc_t>(kTileItems * (D + 1));
    s.dout = c.take<acc_t>(kTileItems * (Dv + 1));
    s.qstats = c.take<acc_t>(kTileItems * 3);
    s.seeing = c.take<int64_t>(kMaxWindowChunks);
    s.kpos = c.take<int32_t>(kRowsPerCta);
    s.qpos = c.take<int32_t>(kTileItems);
    s.slots = c.take<int>(kMaxWindowChunks);
    return s;
  }
};

template <typename scalar_t, typename acc_t, int kSlots>
__global__ void __launch_bounds__(kThreads)
    lsh_backward_key_kernel(AttentionParams p, BackwardArgs<scalar_t, acc_t> a, int64_t round) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  SharedCarver carver{shared_bytes};
  const int64_t D = p.dim, Dv = p.value_dim;
  const KeyPassShared<acc_t> sh = KeyPassShared<acc_t>::carve(carver, D, Dv);
  const OwnedTile tile = owned_tile(p, round);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t head_rows = tile.bh * p.length;

  const int n_seeing = load_owned_positions(p, tile, kRowsPerCta, /*seeing=*/true, sh.kpos,
                                            sh.seeing, sh.slots);
  if (n_seeing < 0) return;  // padding keys
  gather_rows_as(sh.x, D, (a.k ? a.k : a.qk) + head_rows * D, sh.kpos, kRowsPerCta, D);
  gather_rows_as(sh.v, Dv, a.v + head_rows * Dv, sh.kpos, kRowsPerCta, Dv);
  const int64_t n_queries = n_seeing * p.bucket_size;

  acc_t dk[kRowsPerWarp][kSlots], dv[kRowsPerWarp][kSlots], g[kRowsPerWarp];
  int32_t my_kpos[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    my_kpos[r] = sh.kpos[warp * kRowsPerWarp + r];
    g[r] = a.key_scale ? a.key_scale[head_rows + (my_kpos[r] >= 0 ? my_kpos[r] : 0)] : acc_t(1);
#pragma unroll
    for (int s = 0; s < kSlots; ++s) dk[r][s] = 0, dv[r][s] = 0;
  }

  for (int64_t t0 = 0; t0 < n_queries; t0 += kTileItems) {
    __syncthreads();
    if (tid < kTileItems) {
      const int32_t pos = streamed_position(p, tile.bh, sh.seeing, n_seeing, t0 + tid);
      sh.qpos[tid] = pos;
      const int64_t at = head_rows + (pos >= 0 ? pos : 0);
      sh.qstats[3 * tid] = a.stats[2 * at];
      sh.qstats[3 * tid + 1] = a.stats[2 * at + 1];
      sh.qstats[3 * tid + 2] = a.delta[at];
    }
    __syncthreads();
    gather_rows_as(sh.q, D + 1, a.qk + head_rows * D, sh.qpos, kTileItems, D);
    gather_rows_as(sh.dout, Dv + 1, a.dout + head_rows * Dv, sh.qpos, kTileItems, Dv);
    __syncthreads();

    const int32_t query_pos = sh.qpos[lane];
    const acc_t* q_row = sh.q + lane * (D + 1);
    const acc_t* dout_row = sh.dout + lane * (Dv + 1);
    const acc_t q_max = sh.qstats[3 * lane], q_log_sum = sh.qstats[3 * lane + 1],
                q_delta = sh.qstats[3 * lane + 2];
    // Attention dropout: this lane's query item (its chunk's round, the owned chunk's slot in
    // that chunk's window).
    uint64_t q_drop_row = 0;
    int q_slot = 0;
    if (p.dropout && query_pos >= 0) {
      const int w = static_cast<int>((t0 + lane) / p.bucket_size);
      q_drop_row = dropout_row(p, tile.bh, sh.seeing[w], query_pos);
      q_slot = sh.slots[w];
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      if (my_kpos[r] < 0) continue;  // warp-uniform
      const int row = warp * kRowsPerWarp + r;
      acc_t xq = 0, dp = 0;
      for (int64_t d = 0; d < D; ++d) xq += sh.x[row * D + d] * q_row[d];
      for (int64_t d = 0; d < Dv; ++d) dp += sh.v[row * Dv + d] * dout_row[d];
      acc_t z = 1;
      if (p.dropout && query_pos >= 0) {
        z = keep_factor<acc_t>(p, q_drop_row, q_slot, my_kpos[r]);
        dp *= z;  // dS = P (z dP - Δ)
      }
      acc_t weight;
      const acc_t ds = logit_gradient(p, g[r] * xq, dp, query_pos, my_kpos[r], q_max,
                                      q_log_sum, q_delta, weight);
      if (p.dropout) weight *= z;  // dV = (z P)ᵀ dO
      for (int j = 0; j < kTileItems; ++j) {
        const acc_t w_j = __shfl_sync(0xffffffffu, weight, j);
        const acc_t ds_j = __shfl_sync(0xffffffffu, ds, j);
#pragma unroll
        for (int s = 0; s < kSlots; ++s) {
          const int64_t d = lane + 32 * s;
          if (d < Dv) dv[r][s] += w_j * sh.dout[j * (Dv + 1) + d];
          if (d < D) dk[r][s] += ds_j * sh.q[j * (D + 1) + d];
        }
      }
    }
  }

  // dx_j = scale (g dk̂ - g³ (x · dk̂) x), added to the owned rows together with dv; with unit
  // key scale (local attention) scale · dk̂ into a.dk.
  const acc_t scale = static_cast<acc_t>(p.scale);
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    if (my_kpos[r] < 0) continue;
    const int row = warp * kRowsPerWarp + r;
    if (a.key_scale == nullptr) {
      acc_t* dk_row = a.dk + (head_rows + my_kpos[r]) * D;
      acc_t* dv_row = a.dv + (head_rows + my_kpos[r]) * Dv;
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        const int64_t d = lane + 32 * s;
        if (d < D) dk_row[d] += scale * dk[r][s];
        if (d < Dv) dv_row[d] += dv[r][s];
      }
      continue;
    }
    acc_t partial = 0;
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int64_t d = lane + 32 * s;
      if (d < D) partial += sh.x[row * D + d] * dk[r][s];
    }
    const acc_t x_dot_dk = warp_sum(partial);
    const acc_t ga = scale * g[r], gb = scale * g[r] * g[r] * g[r] * x_dot_dk;
    acc_t* dx = a.dqk + (head_rows + my_kpos[r]) * D;
    acc_t* dv_row = a.dv + (head_rows + my_kpos[r]) * Dv;
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int64_t d = lane + 32 * s;
      if (d < D) dx[d] += ga * dk[r][s] - gb * sh.x[row * D + d];
      if (d < Dv) dv_row[d] += dv[r][s];
    }
  }
}

#if !defined(REFORMER_CUDA_SIM)  // CPU simulation (tests/cuda_sim): no host launches
// Runs the whole backward on `stream`: the dQ pass of every round, then the dK/dV pass of every
// round. dqk and dv must be zero initially.
template <typename scalar_t, typename acc_t, int kSlots>
cudaError_t launch_lsh_backward(const AttentionParams& p, const BackwardArgs<scalar_t, acc_t>& a,
                                int64_t n_hashes, cudaStream_t stream) {
  const int64_t ctas = ctas_per_round(p);
  if (ctas == 0) return cudaSuccess;
  if (ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;  // see launch_lsh_forward
  SharedCarver query_carver{nullptr}, key_carver{nullptr};
  QueryPassShared<acc_t>::carve(query_carver, p.dim, p.value_dim);
  KeyPassShared<acc_t>::carve(key_carver, p.dim, p.value_dim);
  const auto query_kernel = lsh_backward_query_kernel<scalar_t, acc_t, kSlots>;
  const auto key_kernel = lsh_backward_key_kernel<scalar_t, acc_t, kSlots>;
  cudaError_t status = allow_shared_memory(query_kernel, query_carver.used);
  if (status == cudaSuccess) status = allow_shared_memory(key_kernel, key_carver.used);
  if (status != cudaSuccess) return status;
  for (int64_t r = 0; r < n_hashes; ++r) {
    query_kernel<<<static_cast<unsigned>(ctas), kThreads, query_carver.used, stream>>>(p, a, r);
    if ((status = cudaGetLastError()) != cudaSuccess) return status;
  }
  for (int64_t r = 0; r < n_hashes; ++r) {
    key_kernel<<<static_cast<unsigned>(ctas), kThreads, key_carver.used, stream>>>(p, a, r);
    if ((status = cudaGetLastError()) != cudaSuccess) return status;
  }
  return cudaSuccess;
}
#endif  // !REFORMER_CUDA_SIM

}  // namespace reformer::cuda

// The chunked-attention CPU machinery (chunk_attention_cpu.h) shared by the LSH attention
// (docs/semantics.md §1) and local attention (§9) operators.
//
// Work is split by chunk: a task gathers one chunk's queries and the keys of its window into
// cache-sized tiles, computes the logits with a tiled GEMM, the row softmax, and P·V. Forward
// rounds run one after another: inside a round every position occurs exactly once, so a task
// owns the output rows it writes and rounds merge in a fixed order. The backward gives each head
// to one thread, which walks its chunks in order. Results are therefore the same for any number
// of threads, and no tensor of size R·L·window ever exists. The two per-task functions,
// forward_chunk and backward_head, are compiled for the baseline and for AVX2 + FMA and picked
// for the CPU at load time (cpu_dispatch.h).
#include "chunk_attention_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

#include "../../kernels/attention_dropout.h"
#include "../../kernels/lsh_common.h"
#include "../seeded_dropout.h"
#include "cpu_dispatch.h"
#include "tile_math.h"

namespace reformer::cpu {
namespace {

// What every chunk task reads: contiguous tensors of the accumulation type, as raw pointers.
template <typename acc_t>
struct ChunkInputs {
  LshShape s;
  bool causal = false;
  bool self_mask = true;        // LSH: j == i -> kSelfLogit; local attention: no self-mask
  bool distinct_window = true;  // see window_chunks (kernels/lsh_common.h)
  int before = 0, after = 0;
  acc_t scale = 1;
  const acc_t* qk = nullptr;         // (B*H, L, D): queries
  const acc_t* k = nullptr;          // (B*H, L, D): keys (LSH: qk, normalised with key_scale)
  const acc_t* v = nullptr;          // (B*H, L, Dv)
  const acc_t* key_scale = nullptr;  // (B*H, L): key normalisation factor g_j, or null (unit)
  const uint8_t* padding = nullptr;  // (B, L'): 1 for padding positions
  const int32_t* sorted = nullptr;   // (B*H, R*L'): positions in bucket order, per round, or
                                     // null for the identity order (local attention)
  // Attention dropout (kernels/attention_dropout.h); `dropout` false leaves every result as
  // without it.
  bool dropout = false;
  uint64_t dropout_seed = 0;
  int64_t dropout_threshold = 0;
  acc_t keep_scale = 1;  // 1 / (1 - p)

  // The query row part of the dropout element index for query position `query_pos` of chunk
  // `chunk` (its round is chunk / chunks_per_round).
  uint64_t dropout_row(int64_t bh, int64_t chunk, int32_t query_pos) const {
    return attention_dropout_row(bh, chunk / s.chunks_per_round, s.n_hashes, s.length, query_pos,
                                 before + after + 1);
  }

  // row[n] *= keep / (1 - p) for the keys kpos[0..nk) at window slots kslot[0..nk).
  void drop_weights(acc_t* row, int64_t nk, uint64_t drow, const int32_t* kpos,
                    const int32_t* kslot) const {
    for (int64_t n = 0; n < nk; ++n)
      row[n] = attention_weight_dropped(dropout_seed, dropout_threshold, drow, kslot[n], s.length,
                                        kpos[n])
                   ? acc_t(0)
                   : row[n] * keep_scale;
  }

  int64_t max_window() const { return int64_t(before + after + 1) * s.bucket_size; }

  // Appends the non-padding positions of sorted chunk `chunk` of head `bh`; returns the count.
  int64_t gather_positions(int64_t bh, int64_t chunk, int32_t* positions) const {
    const uint8_t* pad = padding + (bh / s.heads) * s.padded_length;
    int64_t count = 0;
    if (sorted == nullptr) {  // identity order: chunk c holds positions c*m .. c*m + m - 1
      const int32_t first = static_cast<int32_t>(chunk * s.bucket_size);
      for (int32_t t = 0; t < static_cast<int32_t>(s.bucket_size); ++t)
        if (!pad[first + t]) positions[count++] = first + t;
      return count;
    }
    const int32_t* items = sorted + bh * s.n_hashes * s.padded_length + chunk * s.bucket_size;
    for (int64_t t = 0; t < s.bucket_size; ++t)
      if (!pad[items[t]]) positions[count++] = items[t];
    return count;
  }

  // Non-padding positions of every chunk in query chunk `chunk`'s window, in window order, and
  // (when `slots` is given) the window slot of each (kernels/attention_dropout.h).
  int64_t gather_window(int64_t bh, int64_t chunk, int32_t* positions,
                        int32_t* slots = nullptr) const {
    int64_t window[kMaxWindowChunks];
    int offset_index[kMaxWindowChunks];
    const int count =
        window_chunks(chunk, s.n_chunks, before, after, window, distinct_window, offset_index);
    int64_t total = 0;
    for (int w = 0; w < count; ++w) {
      const int64_t n = gather_positions(bh, window[w], positions + total);
      if (slots != nullptr)
        for (int64_t t = 0; t < n; ++t) slots[total + t] = offset_index[w];
      total += n;
    }
    return total;
  }

  // rows[i, :cols] = source[bh, positions[i], :cols] * (scaled ? g : 1); the row stride is `ld`.
  void gather_rows(const acc_t* source, int64_t cols, int64_t bh, const int32_t* positions,
                   int64_t n, acc_t* rows, int64_t ld, bool scaled) const {
    for (int64_t i = 0; i < n; ++i) {
      const acc_t* src = source + (bh * s.length + positions[i]) * cols;
      const acc_t g = scaled && key_scale ? key_scale[bh * s.length + positions[i]] : acc_t(1);
      for (int64_t d = 0; d < cols; ++d) rows[i * ld + d] = src[d] * g;
      for (int64_t d = cols; d < ld; ++d) rows[i * ld + d] = 0;
    }
  }

  // cols_t[d, i] = source[bh, positions[i], d] * (scaled ? g : 1): a transposed tile whose
  // `ld` >= n columns are zero-padded, ready to be the right-hand side of tile_gemm. Built in
  // blocks of positions so the strided writes stay in L1.
  void gather_columns(const acc_t* source, int64_t cols, int64_t bh, const int32_t* positions,
                      int64_t n, acc_t* cols_t, int64_t ld, bool scaled) const {
    for (int64_t d = 0; d < cols; ++d)
      for (int64_t i = n; i < ld; ++i) cols_t[d * ld + i] = 0;
    constexpr int64_t kBlock = 16;
    const acc_t* rows[kBlock];
    acc_t g[kBlock];
    for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
      const int64_t count = std::min(kBlock, n - i0);
      for (int64_t i = 0; i < count; ++i) {
        const int64_t at = bh * s.length + positions[i0 + i];
        rows[i] = source + at * cols;
        g[i] = scaled && key_scale ? key_scale[at] : acc_t(1);
      }
      for (int64_t d = 0; d < cols; ++d)
        for (int64_t i = 0; i < count; ++i) cols_t[d * ld + i0 + i] = rows[i][d] * g[i];
    }
  }

  // row[n] = scale * row[n] with the masks of docs/semantics.md §1 step 5 (§9 step 3 without
  // the self-mask), for the keys kpos[0..nk) of the query at query_pos.
  void mask_logits(acc_t* row, int64_t nk, int32_t query_pos, const int32_t* kpos) const {
    const acc_t sc = scale;
    const bool is_causal = causal;
    if (self_mask) {
      for (int64_t n = 0; n < nk; ++n)
        row[n] = masked_logit<acc_t, int32_t>(sc * row[n], query_pos, kpos[n], is_causal);
    } else {
      for (int64_t n = 0; n < nk; ++n)
        row[n] = masked_logit<acc_t, int32_t>(sc * row[n], query_pos, kpos[n], is_causal, false);
    }
  }
};

// g_j = rsqrt(mean(x_j^2) + eps) / sqrt(D) for every position of every head.
template <typename acc_t>
at::Tensor key_scales(const at::Tensor& qk_acc, const LshShape& s) {
  auto g = at::empty({s.batch * s.heads, s.length}, qk_acc.options());
  const acc_t* x = qk_acc.data_ptr<acc_t>();
  acc_t* out = g.data_ptr<acc_t>();
  at::parallel_for(0, g.numel(), 1024, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      acc_t sum = 0;
      for (int64_t d = 0; d < s.dim; ++d) sum += x[row * s.dim + d] * x[row * s.dim + d];
      out[row] = acc_t(1) / std::sqrt((sum / acc_t(s.dim) + acc_t(kKeyNormEps)) * acc_t(s.dim));
    }
  });
  return g;
}

// Δ_i = dout_i · out_i - dlse_i, the row term of the softmax gradient (lse's own gradient enters
// as dS_ij += P_ij · dlse_i). `dlse` may be undefined.
template <typename acc_t>
at::Tensor softmax_row_terms(const at::Tensor& dout, const at::Tensor& out, const at::Tensor& dlse,
                             const LshShape& s) {
  auto delta = at::empty({s.batch * s.heads, s.length}, dout.options());
  const acc_t* dy = dout.data_ptr<acc_t>();
  const acc_t* y = out.data_ptr<acc_t>();
  const acc_t* dl = dlse.defined() ? dlse.data_ptr<acc_t>() : nullptr;
  acc_t* dst = delta.data_ptr<acc_t>();
  const int64_t Dv = s.value_dim;
  at::parallel_for(0, delta.numel(), 1024, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      acc_t sum = 0;
      for (int64_t d = 0; d < Dv; ++d) sum += dy[row * Dv + d] * y[row * Dv + d];
      dst[row] = dl ? sum - dl[row] : sum;
    }
  });
  return delta;
}

// Multiply-adds of one chunk task (its logits and P·V), and how many tasks to give a thread at
// least: small problems run on fewer threads rather than paying to wake them.
inline int64_t chunk_work(const LshShape& s, int64_t window_chunks) {
  return s.bucket_size * s.bucket_size * window_chunks * (s.dim + s.value_dim);
}
inline int64_t grain_for(int64_t work_per_task) {
  constexpr int64_t kMinWorkPerThread = int64_t(1) << 18;
  return std::max<int64_t>(1, kMinWorkPerThread / std::max<int64_t>(1, work_per_task));
}

// Runs task(bh, chunk) for every chunk of round r of every head, in parallel.
template <typename Task>
void for_each_chunk_of_round(const LshShape& s, int64_t r, int64_t grain, const Task& task) {
  const int64_t per_round = s.chunks_per_round;
  at::parallel_for(0, s.batch * s.heads * per_round, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) task(t / per_round, r * per_round + t % per_round);
  });
}

// One query chunk of the forward: softmax over its window, merged into the running softmax of its
// positions: stats = (max logit m, log Σ exp(s - m)) and out = the matching weighted mean.
template <typename acc_t>
REFORMER_MULTIARCH void forward_chunk(const ChunkInputs<acc_t>& in, int64_t bh, int64_t chunk, acc_t* out,
                   acc_t* stats) {
  const LshShape& s = in.s;
  constexpr int64_t NR = kTileCols<acc_t>;
  const int64_t m = s.bucket_size, W = in.max_window();
  // Positions fit int32 (L' < 2^31 is checked), which keeps the mask loops vector-friendly.
  int32_t* positions = thread_scratch<int32_t>(m + 2 * W);
  int32_t *qpos = positions, *kpos = positions + m, *kslot = kpos + W;
  const int64_t nq = in.gather_positions(bh, chunk, qpos);
  if (nq == 0) return;
  const int64_t nk = in.gather_window(bh, chunk, kpos, in.dropout ? kslot : nullptr);
  const int64_t nkp = round_up(nk, NR), dvp = round_up(s.value_dim, NR);

  acc_t* q = thread_scratch<acc_t>(nq * s.dim + s.dim * nkp + nk * dvp + nq * nkp + nq * dvp);
  acc_t* kt = q + nq * s.dim;
  acc_t* vt = kt + s.dim * nkp;
  acc_t* scores = vt + nk * dvp;
  acc_t* o = scores + nq * nkp;
  in.gather_rows(in.qk, s.dim, bh, qpos, nq, q, s.dim, false);
  in.gather_columns(in.k, s.dim, bh, kpos, nk, kt, nkp, true);
  in.gather_rows(in.v, s.value_dim, bh, kpos, nk, vt, dvp, false);
  tile_gemm<acc_t>(nq, nkp, s.dim, q, s.dim, kt, nkp, scores, nkp, false);

  acc_t row_max_logit[kTileRows * 64], row_log_sum[kTileRows * 64];  // per block of rows
  for (int64_t i0 = 0; i0 < nq; i0 += kTileRows * 64) {
    const int64_t rows = std::min<int64_t>(kTileRows * 64, nq - i0);
    for (int64_t i = i0; i < i0 + rows; ++i) {
      acc_t* row = scores + i * nkp;
      in.mask_logits(row, nk, qpos[i], kpos);
      const acc_t mx = row_max(row, nk);
      const acc_t sum = exp_shift_sum(row, nk, mx);
      const acc_t inv = acc_t(1) / sum;
      for (int64_t n = 0; n < nk; ++n) row[n] *= inv;
      // Dropout acts on the weights of the value average only: the stats stay undropped.
      if (in.dropout) in.drop_weights(row, nk, in.dropout_row(bh, chunk, qpos[i]), kpos, kslot);
      row_max_logit[i - i0] = mx;
      row_log_sum[i - i0] = std::log(sum);
    }
    tile_gemm<acc_t>(rows, dvp, nk, scores + i0 * nkp, nkp, vt, dvp, o, dvp, false);
    for (int64_t i = i0; i < i0 + rows; ++i) {
      const int64_t at = bh * s.length + qpos[i];
      acc_t* st = stats + 2 * at;
      const acc_t cur_max = row_max_logit[i - i0], cur_log_sum = row_log_sum[i - i0];
      acc_t* dst = out + at * s.value_dim;
      const acc_t* src = o + (i - i0) * dvp;
      if (st[0] == -std::numeric_limits<acc_t>::infinity()) {  // first round of this query
        st[0] = cur_max;
        st[1] = cur_log_sum;
        for (int64_t d = 0; d < s.value_dim; ++d) dst[d] = src[d];
      } else {
        const acc_t mx = std::max(st[0], cur_max);
        const acc_t a = std::exp(st[0] - mx + st[1]), b = std::exp(cur_max - mx + cur_log_sum);
        const acc_t total = a + b;
        st[0] = mx;
        st[1] = std::log(total);
        for (int64_t d = 0; d < s.value_dim; ++d) dst[d] = (dst[d] * a + src[d] * b) / total;
      }
    }
  }
}

// Gradient tile of one (query chunk, key set) pair: recomputes P = exp((S - m) - log Σ) with the
// final softmax stats, dP = dO·Vᵀ and dS = P ∘ (dP - Δ) (zero where the logit was replaced).
// On return `p` and `ds` hold P and dS (nq x nkp); both are also needed transposed in pass B.
// With dropout (keep factor z_ij = keep / (1 - p)): dS = P ∘ (z ∘ dP - Δ), and `p` returns the
// dropped weights z ∘ P that the value gradient uses.
template <typename acc_t>
void probabilities_and_logit_grads(const ChunkInputs<acc_t>& in, int64_t bh, int64_t chunk,
                                   const int32_t* qpos, int64_t nq, const int32_t* kpos,
                                   const int32_t* kslot, int64_t nk, int64_t nkp,
                                   const acc_t* stats_q, const acc_t* delta_q, acc_t* p,
                                   acc_t* ds) {
  const bool causal = in.causal, self_mask = in.self_mask;
  for (int64_t i = 0; i < nq; ++i) {
    acc_t* prow = p + i * nkp;
    acc_t* dsrow = ds + i * nkp;
    const int32_t query_pos = qpos[i];
    const acc_t row_max = stats_q[2 * i], log_sum = stats_q[2 * i + 1], delta = delta_q[i];
    in.mask_logits(prow, nk, query_pos, kpos);
    for (int64_t n = 0; n < nk; ++n) prow[n] = fast_exp((prow[n] - row_max) - log_sum);
    if (in.dropout) {
      const uint64_t drow = in.dropout_row(bh, chunk, query_pos);
      for (int64_t n = 0; n < nk; ++n) {
        const bool dropped = attention_weight_dropped(in.dropout_seed, in.dropout_threshold, drow,
                                                      kslot[n], in.s.length, kpos[n]);
        const acc_t z = dropped ? acc_t(0) : in.keep_scale;
        const bool replaced = logit_is_replaced<int32_t>(query_pos, kpos[n], causal, self_mask);
        dsrow[n] = replaced ? acc_t(0) : prow[n] * (z * dsrow[n] - delta);
        prow[n] *= z;
      }
      continue;
    }
    for (int64_t n = 0; n < nk; ++n) {
      // A replaced logit is a constant: it has no gradient (docs/semantics.md §1 step 5).
      const bool replaced = logit_is_replaced<int32_t>(query_pos, kpos[n], causal, self_mask);
      dsrow[n] = replaced ? acc_t(0) : prow[n] * (dsrow[n] - delta);
    }
  }
}

// The backward of one head, one query chunk after another in a fixed order: for each chunk,
// recompute P and dS over its whole window once, then add dq to the query rows, and Pᵀ·dO and
// dSᵀ·Q (through the key normalisation) to the key rows. One thread owns a head,
// so there are no races, no atomics, and the summation order does not depend on threading.
template <typename acc_t>
REFORMER_MULTIARCH void backward_head(const ChunkInputs<acc_t>& in, int64_t bh, const acc_t* dout,
                   const acc_t* stats, const acc_t* delta, acc_t* dqk, acc_t* dkey,
                   acc_t* dv) {
  const LshShape& s = in.s;
  constexpr int64_t NR = kTileCols<acc_t>;
  const int64_t m = s.bucket_size, W = in.max_window();
  const int64_t D = s.dim, Dv = s.value_dim;
  const int64_t dp = round_up(D, NR), dvp = round_up(Dv, NR), wp = round_up(W, NR);
  // Positions fit int32 (L' < 2^31 is checked), which keeps the mask loops vector-friendly.
  int32_t* positions = thread_scratch<int32_t>(m + 2 * W);
  int32_t *qpos = positions, *kpos = positions + m, *kslot = kpos + W;
  // Tiles sized for the largest window; each chunk uses the leading part.
  acc_t* q = thread_scratch<acc_t>(m * dp + m * dvp + D * wp + W * dp + Dv * wp + 2 * m * wp +
                                   2 * W * m + m * dp + W * dp + W * dvp + 3 * m);
  acc_t* dout_q = q + m * dp;      // dO (nq x dvp)
  acc_t* kt = dout_q + m * dvp;    // Kᵀ (D x nkp), normalised keys
  acc_t* k = kt + D * wp;          // K (nk x dp)
  acc_t* vt = k + W * dp;          // Vᵀ (Dv x nkp)
  acc_t* p = vt + Dv * wp;         // P (nq x nkp)
  acc_t* ds = p + m * wp;          // dP, then dS (nq x nkp)
  acc_t* p_t = ds + m * wp;        // Pᵀ (nk x nq)
  acc_t* ds_t = p_t + W * m;       // dSᵀ (nk x nq)
  acc_t* dq = ds_t + W * m;        // dS·K (nq x dp)
  acc_t* dk = dq + m * dp;         // dSᵀ·Q (nk x dp)
  acc_t* dvk = dk + W * dp;        // Pᵀ·dO (nk x dvp)
  acc_t* stats_q = dvk + W * dvp;
  acc_t* delta_q = stats_q + 2 * m;

  for (int64_t chunk = 0; chunk < s.n_chunks; ++chunk) {
    const int64_t nq = in.gather_positions(bh, chunk, qpos);
    if (nq == 0) continue;
    const int64_t nk = in.gather_window(bh, chunk, kpos, in.dropout ? kslot : nullptr);
    const int64_t nkp = round_up(nk, NR);
    in.gather_rows(in.qk, D, bh, qpos, nq, q, dp, false);
    in.gather_rows(dout, Dv, bh, qpos, nq, dout_q, dvp, false);
    in.gather_columns(in.k, D, bh, kpos, nk, kt, nkp, true);
    in.gather_rows(in.k, D, bh, kpos, nk, k, dp, true);
    in.gather_columns(in.v, Dv, bh, kpos, nk, vt, nkp, false);
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t at = bh * s.length + qpos[i];
      stats_q[2 * i] = stats[2 * at];
      stats_q[2 * i + 1] = stats[2 * at + 1];
      delta_q[i] = delta[at];
    }
    tile_gemm<acc_t>(nq, nkp, D, q, dp, kt, nkp, p, nkp, false);
    tile_gemm<acc_t>(nq, nkp, Dv, dout_q, dvp, vt, nkp, ds, nkp, false);
    probabilities_and_logit_grads(in, bh, chunk, qpos, nq, kpos, kslot, nk, nkp, stats_q,
                                  delta_q, p, ds);
    transpose_tile(p, nq, nk, nkp, p_t, nq);
    transpose_tile(ds, nq, nk, nkp, ds_t, nq);
    tile_gemm<acc_t>(nq, dp, nk, ds, nkp, k, dp, dq, dp, false);       // dS·K
    tile_gemm<acc_t>(nk, dp, nq, ds_t, nq, q, dp, dk, dp, false);      // dSᵀ·Q
    tile_gemm<acc_t>(nk, dvp, nq, p_t, nq, dout_q, dvp, dvk, dvp, false);  // Pᵀ·dO
    for (int64_t i = 0; i < nq; ++i) {
      acc_t* dst = dqk + (bh * s.length + qpos[i]) * D;
      for (int64_t d = 0; d < D; ++d) dst[d] += in.scale * dq[i * dp + d];
    }
    // Keys: dv, and through the key normalisation k = g x: dx = g (dk - g^2 x (x . dk)) with
    // dk = scale · dSᵀ·Q (applied per window, so no per-position key-gradient buffer exists).
    // Unit key scale (local attention): dk itself. A key listed twice in the window (local
    // attention's repeated chunks) is added once per listing.
    if (in.key_scale == nullptr) {
      for (int64_t n = 0; n < nk; ++n) {
        const int64_t at = bh * s.length + kpos[n];
        const acc_t* dk_row = dk + n * dp;
        acc_t* dx = dkey + at * D;
        for (int64_t d = 0; d < D; ++d) dx[d] += in.scale * dk_row[d];
        acc_t* dv_row = dv + at * Dv;
        for (int64_t d = 0; d < Dv; ++d) dv_row[d] += dvk[n * dvp + d];
      }
      continue;
    }
    for (int64_t n = 0; n < nk; ++n) {
      const int64_t at = bh * s.length + kpos[n];
      const acc_t* x = in.k + at * D;
      const acc_t* dk_row = dk + n * dp;
      const acc_t g = in.key_scale[at];
      acc_t dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += x[d] * dk_row[d];
      const acc_t a = g * in.scale, b = g * g * g * in.scale * dot;
      acc_t* dx = dkey + at * D;
      for (int64_t d = 0; d < D; ++d) dx[d] += a * dk_row[d] - b * x[d];
      acc_t* dv_row = dv + at * Dv;
      for (int64_t d = 0; d < Dv; ++d) dv_row[d] += dvk[n * dvp + d];
    }
  }
}

template <typename acc_t>
ChunkInputs<acc_t> make_inputs(const ChunkAttentionProblem& p, const at::Tensor& key_scale) {
  ChunkInputs<acc_t> in;
  in.s = p.s;
  in.causal = p.causal;
  in.self_mask = p.self_mask;
  in.distinct_window = p.distinct_window;
  in.before = static_cast<int>(p.before);
  in.after = static_cast<int>(p.after);
  in.scale = static_cast<acc_t>(p.scale);
  in.qk = p.q.data_ptr<acc_t>();
  in.k = p.k.data_ptr<acc_t>();
  in.v = p.v.data_ptr<acc_t>();
  in.key_scale = key_scale.defined() ? key_scale.data_ptr<acc_t>() : nullptr;
  in.padding = p.padding.data_ptr<uint8_t>();
  in.sorted = p.sorted.defined() ? p.sorted.data_ptr<int32_t>() : nullptr;
  if (p.dropout_p > 0) {
    in.dropout = true;
    in.dropout_seed = static_cast<uint64_t>(p.dropout_seed);
    in.dropout_threshold = dropout_hash::threshold(p.dropout_p);
    in.keep_scale = static_cast<acc_t>(1.0 / (1.0 - p.dropout_p));
  }
  return in;
}

}  // namespace

void chunk_attention_forward(const ChunkAttentionProblem& p, at::Tensor& out_acc,
                             at::Tensor& stats) {
  if (out_acc.numel() == 0) return;
  const LshShape& s = p.s;
  AT_DISPATCH_FLOATING_TYPES(out_acc.scalar_type(), "chunk_attention_cpu", [&] {
    const auto g = p.normalised_keys ? key_scales<scalar_t>(p.k, s) : at::Tensor();
    const auto in = make_inputs<scalar_t>(p, g);
    scalar_t* out_ptr = out_acc.data_ptr<scalar_t>();
    scalar_t* stats_ptr = stats.data_ptr<scalar_t>();
    const int64_t grain = grain_for(chunk_work(s, p.before + p.after + 1));
    for (int64_t r = 0; r < s.n_hashes; ++r)
      for_each_chunk_of_round(s, r, grain, [&](int64_t bh, int64_t chunk) {
        forward_chunk<scalar_t>(in, bh, chunk, out_ptr, stats_ptr);
      });
  });
}

void chunk_attention_backward(const ChunkAttentionProblem& p, const at::Tensor& dout,
                              const at::Tensor& out_acc, const at::Tensor& dlse,
                              const at::Tensor& stats, at::Tensor& dq, at::Tensor& dk,
                              at::Tensor& dv) {
  if (dq.numel() == 0) return;
  const LshShape& s = p.s;
  AT_DISPATCH_FLOATING_TYPES(dq.scalar_type(), "chunk_attention_backward_cpu", [&] {
    const auto g = p.normalised_keys ? key_scales<scalar_t>(p.k, s) : at::Tensor();
    const auto delta = softmax_row_terms<scalar_t>(dout, out_acc, dlse, s);
    const auto in = make_inputs<scalar_t>(p, g);
    const scalar_t* dout_ptr = dout.data_ptr<scalar_t>();
    const scalar_t* stats_ptr = stats.data_ptr<scalar_t>();
    const scalar_t* delta_ptr = delta.data_ptr<scalar_t>();
    scalar_t* dq_ptr = dq.data_ptr<scalar_t>();
    scalar_t* dk_ptr = dk.data_ptr<scalar_t>();
    scalar_t* dv_ptr = dv.data_ptr<scalar_t>();
    const int64_t head_work = 3 * s.n_chunks * chunk_work(s, p.before + p.after + 1);
    at::parallel_for(0, s.batch * s.heads, grain_for(head_work), [&](int64_t begin,
                                                                     int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh)
        backward_head<scalar_t>(in, bh, dout_ptr, stats_ptr, delta_ptr, dq_ptr, dk_ptr, dv_ptr);
    });
  });
}

}  // namespace reformer::cpu

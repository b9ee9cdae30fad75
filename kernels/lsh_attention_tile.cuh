// Device building blocks shared by the LSH attention forward and backward kernels
// (lsh_attention_fwd.cuh, lsh_attention_bwd.cuh): the launch parameters, the mapping from sorted
// items to original positions, warp reductions and the float/double math overloads. The FFMA
// kernels also serve local attention (docs/semantics.md §9): the identity order (sorted null),
// one round, separate keys of unit scale, no self-mask and windows that repeat chunks.
// Torch-free: raw pointers and plain structs only.
//
// Thread layout of every attention kernel: a CTA of kWarps warps owns kRowsPerCta "owned" rows
// (query items in the forward and the dQ pass, key items in the dK/dV pass), kRowsPerWarp rows
// per warp. It streams the other side (keys, or queries) in tiles of 32 items, one item per
// lane, so a lane computes one logit per owned row, and the per-row sums over the tile are warp
// shuffles. Feature dimensions (D, Dv) are spread over the lanes in kSlots slots of 32
// (d = lane + 32 * slot), so D and Dv must be <= 32 * kSlots.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "attention_dropout.h"
#include "lsh_common.h"

namespace reformer::cuda {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerCta = kWarps * kRowsPerWarp;  // owned rows of one CTA
constexpr int kTileItems = 32;                        // streamed items per tile: one per lane

// Sizes and options of one call; every kernel of the attention gets a copy by value.
struct AttentionParams {
  int64_t batch, heads, length, padded_length;  // length L, padded to a multiple of bucket_size
  int64_t dim, value_dim;                       // D, Dv
  int64_t bucket_size, chunks_per_round, n_chunks;
  int before, after;  // window: n_chunks_before, n_chunks_after
  bool causal;
  double scale;
  const bool* padding;     // (B, L) key padding mask (true = padding), or null
  const int32_t* sorted;   // (B*H, R*L') original positions in bucket order, per round, or
                           // null for the identity order (local attention, one round)
  bool self_mask = true;        // j == i -> kSelfLogit (LSH); false for local attention
  bool distinct_window = true;  // window_chunks / chunks_seeing (lsh_common.h): LSH true
  // Attention dropout (docs/semantics.md §1 "Dropout", kernels/attention_dropout.h); off by
  // default, and then every result is as without it.
  bool dropout = false;
  uint64_t dropout_seed = 0;
  int64_t dropout_threshold = 0;
  double keep_scale = 1;  // 1 / (1 - p)
};

// The query part of the dropout element index of query position `query_pos` in chunk `chunk`.
__device__ __forceinline__ uint64_t dropout_row(const AttentionParams& p, int64_t bh,
                                                int64_t chunk, int32_t query_pos) {
  return attention_dropout_row(bh, chunk / p.chunks_per_round, p.n_chunks / p.chunks_per_round,
                               p.length, query_pos, p.before + p.after + 1);
}

// The keep factor z = keep / (1 - p) (0 when dropped) of key position `key_pos` (valid) listed
// at window slot `slot`, for the query whose dropout_row is `row`.
template <typename acc_t>
__device__ __forceinline__ acc_t keep_factor(const AttentionParams& p, uint64_t row, int slot,
                                             int32_t key_pos) {
  return attention_weight_dropped(p.dropout_seed, p.dropout_threshold, row, slot, p.length,
                                  key_pos)
             ? acc_t(0)
             : static_cast<acc_t>(p.keep_scale);
}

// Number of items (one per position and round) of one head: R * L'.
__device__ __forceinline__ int64_t items_per_head(const AttentionParams& p) {
  return p.n_chunks * p.bucket_size;
}

// Original position of sorted item `item` of head `bh`.
__device__ __forceinline__ int32_t item_position(const AttentionParams& p, int64_t bh,
                                                 int64_t item) {
  if (p.sorted == nullptr) return static_cast<int32_t>(item % p.padded_length);
  return p.sorted[bh * items_per_head(p) + item];
}

// Whether original position `pos` of head `bh` is a real token (not masked, not the tail L..L').
__device__ __forceinline__ bool position_is_valid(const AttentionParams& p, int64_t bh,
                                                  int32_t pos) {
  if (pos < 0 || pos >= p.length) return false;
  const int64_t b = bh / p.heads;
  return p.padding == nullptr || !p.padding[b * p.length + pos];
}

// The t-th item (0 <= t < count * bucket_size) of the concatenation of `count` chunks.
__device__ __forceinline__ int64_t item_of_chunk_list(const AttentionParams& p,
                                                      const int64_t* chunks, int64_t t) {
  return chunks[t / p.bucket_size] * p.bucket_size + t % p.bucket_size;
}

// CTA-index decomposition shared by all kernels: a CTA owns kRowsPerCta consecutive items of
// chunk `chunk` (a chunk of round `round`) of head `bh`, starting at offset `first` in the chunk.
struct OwnedTile {
  int64_t bh, chunk, first;
};

// `rows` is the kernel family's owned rows per CTA (kRowsPerCta, or kMmaRows for tensor cores).
__device__ __forceinline__ OwnedTile owned_tile(const AttentionParams& p, int64_t round,
                                                int rows = kRowsPerCta) {
  const int64_t tiles_per_chunk = (p.bucket_size + rows - 1) / rows;
  const int64_t cta = blockIdx.x;
  OwnedTile t;
  t.first = (cta % tiles_per_chunk) * rows;
  t.chunk = round * p.chunks_per_round + (cta / tiles_per_chunk) % p.chunks_per_round;
  t.bh = cta / (tiles_per_chunk * p.chunks_per_round);
  return t;
}

// CTAs of one round's launch.
inline int64_t ctas_per_round(const AttentionParams& p, int rows = kRowsPerCta) {
  const int64_t tiles_per_chunk = (p.bucket_size + rows - 1) / rows;
  return p.batch * p.heads * p.chunks_per_round * tiles_per_chunk;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_max(acc_t x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    x = fmax(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

// Accurate exp/log in the accumulation type (expf/logf for float, exp/log for double).
__device__ __forceinline__ float acc_exp(float x) { return expf(x); }
__device__ __forceinline__ double acc_exp(double x) { return exp(x); }
__device__ __forceinline__ float acc_log(float x) { return logf(x); }
__device__ __forceinline__ double acc_log(double x) { return log(x); }

template <typename acc_t>
__device__ __forceinline__ acc_t negative_infinity() {
  return -static_cast<acc_t>(INFINITY);
}

// Original position of owned row `offset` of a tile, or -1 when the row is past the chunk's end
// or is not a valid token.
__device__ __forceinline__ int32_t owned_position(const AttentionParams& p, const OwnedTile& tile,
                                                  int64_t offset) {
  offset += tile.first;
  if (offset >= p.bucket_size) return -1;
  const int32_t pos = item_position(p, tile.bh, tile.chunk * p.bucket_size + offset);
  return position_is_valid(p, tile.bh, pos) ? pos : -1;
}

// Original position of the t-th streamed item of the `count` chunks listed in `chunks` (a window,
// or the chunks seeing one), or -1 past their end or for a non-token.
__device__ __forceinline__ int32_t streamed_position(const AttentionParams& p, int64_t bh,
                                                     const int64_t* chunks, int count,
                                                     int64_t t) {
  if (t >= count * p.bucket_size) return -1;
  const int32_t pos = item_position(p, bh, item_of_chunk_list(p, chunks, t));
  return position_is_valid(p, bh, pos) ? pos : -1;
}

// The prologue every attention kernel shares: the owned rows' positions (owned_position) into
// own_pos[0..rows), and the chunk list into chunks[0..kMaxWindowChunks) (-1 after its end): the
// owned chunk's window, or with `seeing` the chunks whose window holds the owned chunk. Whole
// CTA. Returns the number of chunks listed, or -1 when no owned row is a valid token (the CTA
// has nothing to do; uniform over the CTA).
// `slots`, when given (attention dropout), receives each listed chunk's window slot
// (window_chunks' offset_index, or chunks_seeing's window_slot).
__device__ __forceinline__ int load_owned_positions(const AttentionParams& p,
                                                    const OwnedTile& tile, int rows, bool seeing,
                                                    int32_t* own_pos, int64_t* chunks,
                                                    int* slots = nullptr) {
  const int tid = threadIdx.x;
  if (tid < rows) own_pos[tid] = owned_position(p, tile, tid);
  if (tid == 0) {
    const int count =
        seeing ? chunks_seeing(tile.chunk, p.n_chunks, p.before, p.after, chunks,
                               p.distinct_window, slots)
               : window_chunks(tile.chunk, p.n_chunks, p.before, p.after, chunks,
                               p.distinct_window, slots);
    for (int w = count; w < kMaxWindowChunks; ++w) chunks[w] = -1;
  }
  __syncthreads();
  if (!__syncthreads_or(tid < rows && own_pos[tid] >= 0)) return -1;
  int count = 0;
  while (count < kMaxWindowChunks && chunks[count] >= 0) ++count;
  return count;
}

// Rows pos[r] (r < rows) of `head` (rows of `cols` elements) converted to acc_t, times
// row_scale[pos[r]] when given, into dst with row stride `stride`; zero rows where pos[r] < 0.
// Whole CTA (the FFMA kernels' tiles; the tensor-core kernels copy with gather_rows).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void gather_rows_as(acc_t* dst, int64_t stride, const scalar_t* head,
                                               const int32_t* pos, int rows, int64_t cols,
                                               const acc_t* row_scale = nullptr) {
  for (int64_t e = threadIdx.x; e < rows * cols; e += blockDim.x) {
    const int64_t r = e / cols, c = e % cols;
    const int32_t at = pos[r];
    acc_t value = 0;
    if (at >= 0) {
      value = static_cast<acc_t>(head[int64_t{at} * cols + c]);
      if (row_scale != nullptr) value = value * row_scale[at];
    }
    dst[r * stride + c] = value;
  }
}

// Merging one round's softmax (max, log-sum) into a query's running (max, log-sum): the running
// output becomes (out * old_weight + round_out * new_weight) / total. The first round
// (old_max = -inf) gives weights (0, 1) and total 1, which copies the round's output exactly.
template <typename acc_t>
struct RoundMerge {
  acc_t old_weight, new_weight, total, max, log_sum;
};

template <typename acc_t>
__device__ __forceinline__ RoundMerge<acc_t> merge_round(acc_t old_max, acc_t old_log_sum,
                                                         acc_t cur_max, acc_t cur_log_sum) {
  if (old_max == negative_infinity<acc_t>())
    return {acc_t(0), acc_t(1), acc_t(1), cur_max, cur_log_sum};
  const acc_t mx = fmax(old_max, cur_max);
  const acc_t wa = acc_exp(old_max - mx + old_log_sum);
  const acc_t wb = acc_exp(cur_max - mx + cur_log_sum);
  return {wa, wb, wa + wb, mx, acc_log(wa + wb)};
}

// Slots of 32 lanes needed for a feature dimension; the kernels are instantiated for 1, 2, 4.
inline int slots_for(int64_t dim) {
  return dim <= 32 ? 1 : dim <= 64 ? 2 : dim <= 128 ? 4 : 0;
}

// Bump allocator over a CTA's dynamic shared memory; the same sequence of take() calls on the
// host (with base = nullptr) gives the byte count to launch with. Sub-buffers are 16-byte aligned.
struct SharedCarver {
  unsigned char* base;
  size_t used = 0;
  template <typename T>
  __host__ __device__ T* take(int64_t count) {
    used = (used + 15) / 16 * 16;
    T* at = reinterpret_cast<T*>(base + used);
    used += static_cast<size_t>(count) * sizeof(T);
    return at;
  }
};

#if !defined(REFORMER_CUDA_SIM)  // CPU simulation (tests/cuda_sim): no host launches
// Raises a kernel's dynamic shared memory limit when it needs more than the default 48 KiB.
template <typename Kernel>
cudaError_t allow_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}
#endif  // !REFORMER_CUDA_SIM

}  // namespace reformer::cuda

// The chunked-attention CPU machinery shared by LSH attention (docs/semantics.md §1) and local
// attention (§9): the forward and the flash-style backward over a sequence cut into chunks of
// `bucket_size` items, each chunk attending to a cyclic window of chunks. LSH attention runs it
// over the bucket-sorted order (R rounds), with normalised keys taken from the queries and the
// self-mask; local attention over the identity order (one round), with a separate key tensor,
// unit key scale and no self-mask. Implemented in chunk_attention_cpu.cpp; results are the same
// for any thread count.
#pragma once

#include <ATen/core/Tensor.h>

#include "../lsh_attention_common.h"

namespace reformer::cpu {

// One chunked-attention problem: contiguous tensors of the accumulation type.
struct ChunkAttentionProblem {
  LshShape s;  // n_hashes rounds of chunks_per_round chunks (local attention: one round)
  bool causal = false;
  int64_t before = 0, after = 0;
  double scale = 1;
  bool self_mask = true;        // j == i gets kSelfLogit (LSH) or is left alone (local)
  bool distinct_window = true;  // a chunk reached by several offsets counts once (LSH) or per
                                // offset (local; see window_chunks in kernels/lsh_common.h)
  bool normalised_keys = true;  // keys k_j = g_j q_j from the queries (LSH), else `k` as given
  at::Tensor q;                 // (B, H, L, D)
  at::Tensor k;                 // (B, H, L, D); may be `q` itself (LSH: the same tensor)
  at::Tensor v;                 // (B, H, L, Dv)
  at::Tensor padding;           // (B, L') uint8: 1 for padding positions and the tail
  at::Tensor sorted;            // (B, H, R * L') int32 positions per round, or undefined for
                                // the identity order
  // Dropout on the attention probabilities (docs/semantics.md §1 "Dropout"): 0 = none (the
  // results are then bitwise those without dropout); the mask is kernels/attention_dropout.h.
  double dropout_p = 0;
  int64_t dropout_seed = 0;
};

// The fields LSH and local attention fill alike; the rest keep LSH's defaults (self-mask,
// distinct windows, normalised keys). `sorted` undefined: the identity order.
inline ChunkAttentionProblem chunk_problem(const LshShape& s, const at::Tensor& q,
                                           const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& padding, const at::Tensor& sorted,
                                           bool causal, int64_t before, int64_t after,
                                           double scale, double dropout_p,
                                           int64_t dropout_seed) {
  return {.s = s, .causal = causal, .before = before, .after = after, .scale = scale, .q = q,
          .k = k, .v = v, .padding = padding, .sorted = sorted, .dropout_p = dropout_p,
          .dropout_seed = dropout_seed};
}

// Fills `out_acc` (B, H, L, Dv), zero on entry, and `stats` (B, H, L, 2), -inf on entry, with
// the merged softmax over every round (queries never met keep -inf stats and zero output).
void chunk_attention_forward(const ChunkAttentionProblem& p, at::Tensor& out_acc,
                             at::Tensor& stats);

// Adds the gradients to `dq`, `dk` (B, H, L, D) and `dv` (B, H, L, Dv), zero on entry, all in the
// accumulation type; `dq` and `dk` may be the same tensor (LSH: grad_qk). `dlse` may be
// undefined.
void chunk_attention_backward(const ChunkAttentionProblem& p, const at::Tensor& dout,
                              const at::Tensor& out_acc, const at::Tensor& dlse,
                              const at::Tensor& stats, at::Tensor& dq, at::Tensor& dk,
                              at::Tensor& dv);

}  // namespace reformer::cpu

// What every backend of the local attention operators (docs/semantics.md §9) shares: the argument
// checks (local_attention_common.cpp) and the sizes they derive. csrc/cpu/local_attention_cpu.cpp
// and csrc/cuda/local_attention_cuda.cu include this header, not local_attention.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

#include "lsh_attention_common.h"

namespace reformer {

// Sizes of one local attention call, in the chunked-attention shape LSH attention uses: one
// round (n_hashes = 1) over the identity order, bucket_size = min(chunk_length, L) (a
// chunk_length >= L is one chunk of full attention either way), and
// n_chunks = chunks_per_round = L' / bucket_size.
using LocalShape = LshShape;

// Whether a chunk reached by several window offsets counts once per offset (docs/semantics.md
// §9 step 2): always, except with a single chunk (L <= chunk_length), which is plain full
// attention as in HF's LocalSelfAttention.
inline bool local_window_repeats_chunks(const LocalShape& s) { return s.n_chunks > 1; }

// The forward's (out, lse, softmax_stats) from the kernels' output and stats in the
// accumulation type: padding queries (max still -inf) get stats and lse 0.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> local_forward_outputs(
    const at::Tensor& out_acc, at::Tensor& stats, at::ScalarType out_dtype) {
  stats.masked_fill_(stats.isneginf(), 0);
  auto lse = stats.select(3, 0).add(stats.select(3, 1));
  return {out_acc.to(out_dtype), lse, stats};
}

// Validates q, k, v, the mask, chunk_length and the window, and returns the sizes. Every
// message names the argument, what was expected and what was given.
LocalShape check_local_attention_args(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v,
                                      const c10::optional<at::Tensor>& key_padding_mask,
                                      int64_t chunk_length, int64_t n_chunks_before,
                                      int64_t n_chunks_after);

// The forward's checks plus grad_out, grad_lse, out and softmax_stats.
LocalShape check_local_attention_backward_args(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& softmax_stats, const c10::optional<at::Tensor>& key_padding_mask,
    int64_t chunk_length, int64_t n_chunks_before, int64_t n_chunks_after);

}  // namespace reformer

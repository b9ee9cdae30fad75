// What every backend of the LSH attention operators (docs/semantics.md §1) shares: the argument
// checks (lsh_attention_common.cpp, built on arg_checks.h), the sizes they derive, the
// accumulation type and the forward's outputs. csrc/cpu/lsh_attention_cpu.cpp and
// csrc/cuda/lsh_attention_cuda.cu include this header, not the operator header lsh_attention.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <string>
#include <tuple>
#include <utility>

#include "../kernels/lsh_common.h"

namespace reformer {

// Sizes of one LSH attention call, derived once from checked arguments.
struct LshShape {
  int64_t batch = 0, heads = 0, length = 0, dim = 0, value_dim = 0;
  int64_t rotation_heads = 0, n_hashes = 0;
  int64_t n_buckets = 0;         // prod of the factors: buckets per round (padding: n_buckets)
  int64_t rotation_cols = 0;     // rotations.shape[3] = sum of the factors / 2
  BucketFactors factors;         // one factor 2 * rotation_cols unless bucket_factors was given
  int64_t bucket_size = 0, padded_length = 0;
  int64_t chunks_per_round = 0, n_chunks = 0;  // n_chunks = n_hashes * chunks_per_round
};

// fp64 inputs accumulate in fp64, every other dtype in fp32 (the kernels' acc_t).
inline at::ScalarType accumulation_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The forward's running output (B, H, L, Dv), zero, and its running softmax per query (B, H, L,
// 2) = (max logit, log-sum), -inf marking "no round merged yet": both with `options` (the
// accumulation type), for every backend of LSH and local attention.
std::pair<at::Tensor, at::Tensor> forward_buffers(const LshShape& s,
                                                  const at::TensorOptions& options);

// The forward's (out, lse, sorted_positions, softmax_stats) from the kernels' running output and
// stats in the accumulation type, for every backend. Padding queries were never merged (max
// still -inf): their stats and lse are defined as 0, and their output is 0 already.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_outputs(
    const at::Tensor& out_acc, at::Tensor& stats, const at::Tensor& sorted,
    at::ScalarType out_dtype) {
  stats.masked_fill_(stats.isneginf(), 0);
  auto lse = stats.select(3, 0).add(stats.select(3, 1));
  return {out_acc.to(out_dtype), lse, sorted, stats};
}

// Checks the queries `t` (qk, or q of local attention; `name` in messages): (batch, heads,
// length, dim) with length, dim >= 1 and a floating-point dtype. Fills those four sizes.
LshShape check_query_shape(const at::Tensor& t, const char* name);

// The bucket factors of docs/semantics.md §1 step 1 for rotations with `rotation_cols` columns
// per round: empty -> the one factor 2 * rotation_cols; else every factor even and >= 2, at
// most kMaxBucketFactors of them, sum / 2 == rotation_cols and prod < 2^31. `what` names the
// rotations in messages (e.g. "rotations" or "rotations[2]").
BucketFactors check_bucket_factors(at::IntArrayRef bucket_factors, int64_t rotation_cols,
                                   const std::string& what);

// Validates qk, rotations, the mask and bucket_factors (and bucket_size when > 0) and returns
// the sizes. Every message names the argument, what was expected and what was given.
LshShape check_hash_args(const at::Tensor& qk, const at::Tensor& rotations,
                         const c10::optional<at::Tensor>& key_padding_mask, int64_t bucket_size,
                         at::IntArrayRef bucket_factors);

// check_hash_args plus v and the window options.
LshShape check_attention_args(const at::Tensor& qk, const at::Tensor& v,
                              const at::Tensor& rotations,
                              const c10::optional<at::Tensor>& key_padding_mask,
                              int64_t bucket_size, int64_t n_chunks_before,
                              int64_t n_chunks_after, at::IntArrayRef bucket_factors);

// Checks the backward's arguments (sorted_positions' values too: in [0, L'), one device sync
// on CUDA) and returns the sizes; n_hashes is read off sorted_positions.
LshShape check_backward_args(const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse,
                             const at::Tensor& qk, const at::Tensor& v, const at::Tensor& out,
                             const at::Tensor& softmax_stats, const at::Tensor& sorted_positions,
                             const c10::optional<at::Tensor>& key_padding_mask,
                             int64_t bucket_size, int64_t n_chunks_before,
                             int64_t n_chunks_after);

}  // namespace reformer

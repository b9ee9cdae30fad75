// The LSH attention operators (docs/semantics.md §1) as C++ functions: reformer::lsh_buckets,
// reformer::lsh_attention and reformer::lsh_attention_backward, each a call through the
// dispatcher (lsh_attention.cpp), which runs the kernel of the inputs' device:
// csrc/cpu/lsh_attention_cpu.cpp or csrc/cuda/lsh_attention_cuda.cu. Schemas and the meaning of
// the arguments and outputs: csrc/registration.cpp. For C++ callers such as the reversible stack.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace reformer {

// Buckets (B, H, R, L) int64 of docs/semantics.md §1 step 1. bucket_factors: empty for
// n_buckets = 2 * rotations.shape[3], else the factors (sum / 2 == rotations.shape[3]).
at::Tensor lsh_buckets(const at::Tensor& qk, const at::Tensor& rotations,
                       const c10::optional<at::Tensor>& key_padding_mask,
                       at::IntArrayRef bucket_factors = {});

// (out, lse, sorted_positions, softmax_stats): sorted_positions (B, H, R * L') int32 lists, per
// round, the original positions ordered by (bucket, position); softmax_stats (B, H, L, 2) holds
// (max logit, log-sum-exp relative to it) per query. The backward reuses both. dropout_p > 0
// drops attention weights (docs/semantics.md §1 "Dropout") with the mask of dropout_seed, a
// one-element int64 CPU tensor (required then); the backward must get the same rate and seed.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lsh_attention(
    const at::Tensor& qk, const at::Tensor& v, const at::Tensor& rotations,
    const c10::optional<at::Tensor>& key_padding_mask, int64_t bucket_size, bool causal,
    int64_t n_chunks_before, int64_t n_chunks_after, double scale,
    at::IntArrayRef bucket_factors = {}, double dropout_p = 0.0,
    const c10::optional<at::Tensor>& dropout_seed = c10::nullopt);

// (grad_qk, grad_v).
std::tuple<at::Tensor, at::Tensor> lsh_attention_backward(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& qk,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& softmax_stats,
    const at::Tensor& sorted_positions, const c10::optional<at::Tensor>& key_padding_mask,
    int64_t bucket_size, bool causal, int64_t n_chunks_before, int64_t n_chunks_after,
    double scale, double dropout_p = 0.0,
    const c10::optional<at::Tensor>& dropout_seed = c10::nullopt);

}  // namespace reformer

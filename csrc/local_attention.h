// The local attention operators (docs/semantics.md §9) as C++ functions:
// reformer::local_attention and reformer::local_attention_backward, each a call through the
// dispatcher (local_attention.cpp), which runs the kernel of the inputs' device:
// csrc/cpu/local_attention_cpu.cpp or csrc/cuda/local_attention_cuda.cu. Schemas:
// csrc/registration.cpp. For C++ callers such as the reversible stack.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace reformer {

// (out, lse, softmax_stats): q, k (B, H, L, D), v (B, H, L, Dv); key_padding_mask (B, L) bool,
// True = padding. out (B, H, L, Dv) in q's dtype, lse (B, H, L) and softmax_stats (B, H, L, 2)
// (max logit, log-sum-exp relative to it) in the accumulation type; the backward reuses them.
// dropout_p > 0 drops attention weights (docs/semantics.md §9 "Dropout") with the mask of
// dropout_seed (a one-element int64 CPU tensor, required then), the same in the backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> local_attention(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& key_padding_mask, int64_t chunk_length, bool causal,
    int64_t n_chunks_before, int64_t n_chunks_after, double scale, double dropout_p = 0.0,
    const c10::optional<at::Tensor>& dropout_seed = c10::nullopt);

// (grad_q, grad_k, grad_v) in the dtypes of q, k, v; grad_lse may be absent (counts as 0).
std::tuple<at::Tensor, at::Tensor, at::Tensor> local_attention_backward(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& softmax_stats, const c10::optional<at::Tensor>& key_padding_mask,
    int64_t chunk_length, bool causal, int64_t n_chunks_before, int64_t n_chunks_after,
    double scale, double dropout_p = 0.0,
    const c10::optional<at::Tensor>& dropout_seed = c10::nullopt);

}  // namespace reformer

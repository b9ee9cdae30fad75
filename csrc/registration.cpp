// The operator schemas of the `reformer` namespace: the one TORCH_LIBRARY of the project.
// Kernels are registered (TORCH_LIBRARY_IMPL) at the bottom of the file that implements them:
// csrc/cpu/<op>_cpu.cpp and csrc/cuda/<op>_cuda.cu for device-specific kernels (lsh_attention),
// csrc/<op>.cpp, for CPU and CUDA, for one device-generic implementation (chunked_ffn,
// reformer_stack, gemm). The fake (meta) kernels and autograd formulas are registered from
// Python, in the modules named by set_python_module below.
//
// lsh_attention's softmax_stats (B, H, L, 2) holds, per query, the largest logit m and
// log Σ exp(s - m): lse = m + that, but kept apart so the backward's exp(s - lse) stays exact in
// float32 when lse is large (a query that only sees itself has lse near -1e5).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "../include/reformer_ext/reformer_ext.h"

TORCH_LIBRARY(reformer, m) {
  // Where the fake kernels live, so torch can import them when it meets these ops
  // (set_python_module applies to the defs that follow it, up to the next set_python_module).
  m.set_python_module("reformer_ext.ops.lsh_attention");
  // bucket_factors: empty for n_buckets = 2 * rotations.shape[3], else the even factors of a
  // factorised bucket count (HF/trax num_buckets as a list; docs/semantics.md §1 step 1).
  m.def("lsh_buckets(Tensor qk, Tensor rotations, Tensor? key_padding_mask=None, "
        "int[] bucket_factors=[]) -> Tensor");
  m.def(
      "lsh_attention(Tensor qk, Tensor v, Tensor rotations, Tensor? key_padding_mask, "
      "int bucket_size, bool causal, int n_chunks_before, int n_chunks_after, float scale, "
      "int[] bucket_factors=[], float dropout_p=0.0, Tensor? dropout_seed=None) "
      "-> (Tensor out, Tensor lse, Tensor sorted_positions, Tensor softmax_stats)");
  m.def(
      "lsh_attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor qk, Tensor v, "
      "Tensor out, Tensor softmax_stats, Tensor sorted_positions, Tensor? key_padding_mask, "
      "int bucket_size, bool causal, int n_chunks_before, int n_chunks_after, float scale, "
      "float dropout_p=0.0, Tensor? dropout_seed=None) -> (Tensor grad_qk, Tensor grad_v)");
  // Local attention (docs/semantics.md §9), csrc/local_attention.{h,cpp}: chunked attention over
  // the identity order with separate q, k (B, H, L, D) and v (B, H, L, Dv), no self-mask, chunk c
  // attending chunks c - n_chunks_before .. c + n_chunks_after cyclically (a chunk reached by
  // several offsets counts once per offset, except with a single chunk); softmax_stats as for
  // lsh_attention.
  m.set_python_module("reformer_ext.ops.local_attention");
  m.def(
      "local_attention(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, int chunk_length, "
      "bool causal, int n_chunks_before, int n_chunks_after, float scale, "
      "float dropout_p=0.0, Tensor? dropout_seed=None) "
      "-> (Tensor out, Tensor lse, Tensor softmax_stats)");
  m.def(
      "local_attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, "
      "Tensor out, Tensor softmax_stats, Tensor? key_padding_mask, int chunk_length, bool causal, "
      "int n_chunks_before, int n_chunks_after, float scale, float dropout_p=0.0, "
      "Tensor? dropout_seed=None) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
  // Chunked feed-forward (docs/semantics.md §2), csrc/chunked_ffn.{h,cpp}:
  // y = W2 · dropout(act(W1 · x + b1)) + b2 on x (..., d_model), chunk_size positions at a time;
  // activation "gelu", "gelu_tanh", "relu" or "silu"; dropout_p in [0, 1) on the hidden activation
  // with a mask that is a pure function of (dropout_seed, element index); dropout_seed is a
  // one-element int64 CPU tensor (a tensor, so that a compiled graph can draw it without leaving
  // the graph), None only when dropout_p is 0. The backward recomputes the hidden activation chunk
  // by chunk; output_mask selects (grad_x, grad_w1, grad_b1, grad_w2, grad_b2), the others (and
  // those of absent biases) come back undefined (None).
  m.set_python_module("reformer_ext.ops.chunked_ffn");
  m.def(
      "chunked_ffn(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, int chunk_size, "
      "str activation, float dropout_p, Tensor? dropout_seed) -> Tensor");
  m.def(
      "chunked_ffn_backward(Tensor grad_out, Tensor x, Tensor w1, Tensor? b1, Tensor w2, "
      "Tensor? b2, int chunk_size, str activation, float dropout_p, Tensor? dropout_seed, "
      "bool[5] output_mask) -> (Tensor grad_x, Tensor grad_w1, Tensor grad_b1, Tensor grad_w2, "
      "Tensor grad_b2)");
  // The reversible Reformer stack (docs/semantics.md §3), csrc/reformer_stack.{h,cpp}: `depth`
  // layers y1 = x1 + F(x2), y2 = x2 + G(y1) with F = LayerNorm -> LSH attention (to_qk, to_v,
  // to_out) or, for the layers listed in local_layers, local attention (to_q and to_k stacked in
  // the qk weight), G = LayerNorm -> chunked feed-forward, weights passed explicitly (12 per
  // layer, order in reformer_stack.h), one rotation tensor per layer (empty for local layers),
  // per-layer dropout seeds (depth, 3) int64 on the CPU. The forward keeps nothing but its
  // outputs; the backward rebuilds every layer's inputs from them.
  m.set_python_module("reformer_ext.ops.reformer_stack");
  m.def(
      "reformer_stack(Tensor x1, Tensor x2, Tensor[] weights, Tensor[] rotations, "
      "Tensor? key_padding_mask, Tensor seeds, int n_heads, int bucket_size, bool causal, "
      "int n_chunks_before, int n_chunks_after, int ff_chunk_size, str activation, "
      "float dropout_p, float layer_norm_eps, int[] bucket_factors=[], int[] local_layers=[], "
      "int local_chunk_length=64, int local_chunks_before=1, int local_chunks_after=0, "
      "float lsh_attention_dropout_p=0.0, float local_attention_dropout_p=0.0) -> "
      "(Tensor y1, Tensor y2)");
  m.def(
      "reformer_stack_backward(Tensor grad_y1, Tensor grad_y2, Tensor y1, Tensor y2, "
      "Tensor[] weights, Tensor[] rotations, Tensor? key_padding_mask, Tensor seeds, "
      "int n_heads, int bucket_size, bool causal, int n_chunks_before, int n_chunks_after, "
      "int ff_chunk_size, str activation, float dropout_p, float layer_norm_eps, "
      "int[] bucket_factors=[], int[] local_layers=[], int local_chunk_length=64, "
      "int local_chunks_before=1, int local_chunks_after=0, float lsh_attention_dropout_p=0.0, "
      "float local_attention_dropout_p=0.0) -> (Tensor grad_x1, Tensor grad_x2, "
      "Tensor[] grad_weights)");
  m.set_python_module("reformer_ext.ops.gemm");
  // The GEMM the operators use (csrc/gemm.h): c + alpha · a · b (c is not modified) or
  // bias + alpha · a · b, for 2-D a (M, K) and b (K, N); on the CPU with a fixed summation order
  // (bitwise independent of the thread count). packed_b: b packed first, as the operators do with
  // a weight every chunk multiplies (same result). For tests and benchmarks.
  m.def("_gemm(Tensor a, Tensor b, Tensor? bias=None, Tensor? c=None, float alpha=1.0, "
        "bool packed_b=False) -> Tensor");
}

namespace reformer {

// A program's call to this keeps libreformer_ops linked (see the header).
void ensure_operators_registered() {
  TORCH_CHECK(c10::Dispatcher::singleton().findSchema({"reformer::lsh_attention", ""}).has_value(),
              "the reformer operators are not registered with the dispatcher");
}

}  // namespace reformer

// The operator schemas of the `reformer` namespace: the one TORCH_LIBRARY of the project.
// Backends register their kernels with TORCH_LIBRARY_IMPL (csrc/cpu, csrc/cuda); the fake
// (meta) kernels and autograd formulas are registered from Python in reformer_ext/ops.py.
//
// lsh_attention's softmax_stats (B, H, L, 2) holds, per query, the largest logit m and
// log Σ exp(s - m): lse = m + that, but kept apart so the backward's exp(s - lse) stays exact in
// float32 when lse is large (a query that only sees itself has lse near -1e5).
#include <torch/library.h>

TORCH_LIBRARY(reformer, m) {
  // Where the fake kernels live, so torch can import them when it meets these ops.
  m.set_python_module("reformer_ext.ops");
  m.def("lsh_buckets(Tensor qk, Tensor rotations, Tensor? key_padding_mask=None) -> Tensor");
  m.def(
      "lsh_attention(Tensor qk, Tensor v, Tensor rotations, Tensor? key_padding_mask, "
      "int bucket_size, bool causal, int n_chunks_before, int n_chunks_after, float scale) "
      "-> (Tensor out, Tensor lse, Tensor sorted_positions, Tensor softmax_stats)");
  m.def(
      "lsh_attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor qk, Tensor v, "
      "Tensor out, Tensor softmax_stats, Tensor sorted_positions, Tensor? key_padding_mask, "
      "int bucket_size, bool causal, int n_chunks_before, int n_chunks_after, float scale) "
      "-> (Tensor grad_qk, Tensor grad_v)");
}

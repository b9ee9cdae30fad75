// CPU kernels of the local attention operators (docs/semantics.md §9): the forward and the
// flash-style backward, registered for the CPU at the bottom of this file. Both run the
// chunked-attention machinery of LSH attention (chunk_attention_cpu.{h,cpp}) over the identity
// order with one round, separate keys of unit scale, no self-mask, and windows that list a chunk
// once per offset reaching it (but once with a single chunk). Same results for any thread count.
#include <ATen/Functions.h>
#include <torch/library.h>

#include "../chunked_ffn.h"  // read_dropout_seed
#include "../local_attention_common.h"
#include "chunk_attention_cpu.h"
#include "lsh_hash_cpu.h"

namespace reformer::cpu {
namespace {

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got ",
                    t.device());
}

ChunkAttentionProblem local_problem(const LocalShape& s, const at::Tensor& q_acc,
                                    const at::Tensor& k_acc, const at::Tensor& v_acc,
                                    const c10::optional<at::Tensor>& key_padding_mask,
                                    bool causal, int64_t before, int64_t after, double scale,
                                    double dropout_p, int64_t dropout_seed) {
  // The tail L..L' is padding too; sorted undefined: the identity order.
  ChunkAttentionProblem p =
      chunk_problem(s, q_acc, k_acc, v_acc, padding_flags(s, key_padding_mask), at::Tensor(),
                    causal, before, after, scale, dropout_p, dropout_seed);
  p.self_mask = false;
  p.distinct_window = !local_window_repeats_chunks(s);
  p.normalised_keys = false;
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_attention(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& key_padding_mask, int64_t chunk_length, bool causal,
    int64_t n_chunks_before, int64_t n_chunks_after, double scale, double dropout_p,
    const c10::optional<at::Tensor>& dropout_seed) {
  const LocalShape s = check_local_attention_args(q, k, v, key_padding_mask, chunk_length,
                                                  n_chunks_before, n_chunks_after);
  const int64_t seed = read_dropout_seed(dropout_seed, dropout_p);
  check_cpu(q, "q");
  const auto acc = accumulation_type(q);
  const auto q_acc = q.to(acc).contiguous();
  const auto k_acc = k.to(acc).contiguous();
  const auto v_acc = v.to(acc).contiguous();
  auto [out_acc, stats] = forward_buffers(s, q_acc.options());
  chunk_attention_forward(local_problem(s, q_acc, k_acc, v_acc, key_padding_mask, causal,
                                        n_chunks_before, n_chunks_after, scale, dropout_p, seed),
                          out_acc, stats);
  return local_forward_outputs(out_acc, stats, q.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_attention_backward(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& softmax_stats, const c10::optional<at::Tensor>& key_padding_mask,
    int64_t chunk_length, bool causal, int64_t n_chunks_before, int64_t n_chunks_after,
    double scale, double dropout_p, const c10::optional<at::Tensor>& dropout_seed) {
  const LocalShape s = check_local_attention_backward_args(
      grad_out, grad_lse, q, k, v, out, softmax_stats, key_padding_mask, chunk_length,
      n_chunks_before, n_chunks_after);
  const int64_t seed = read_dropout_seed(dropout_seed, dropout_p);
  check_cpu(q, "q");
  const auto acc = accumulation_type(q);
  const auto q_acc = q.to(acc).contiguous();
  const auto k_acc = k.to(acc).contiguous();
  const auto v_acc = v.to(acc).contiguous();
  const auto dout = grad_out.to(acc).contiguous();
  const auto out_acc = out.to(acc).contiguous();
  const auto stats = softmax_stats.contiguous();
  const auto dlse = grad_lse.has_value() ? grad_lse->contiguous() : at::Tensor();
  auto dq = at::zeros({s.batch, s.heads, s.length, s.dim}, q_acc.options());
  auto dk = at::zeros({s.batch, s.heads, s.length, s.dim}, q_acc.options());
  auto dv = at::zeros({s.batch, s.heads, s.length, s.value_dim}, q_acc.options());
  chunk_attention_backward(local_problem(s, q_acc, k_acc, v_acc, key_padding_mask, causal,
                                         n_chunks_before, n_chunks_after, scale, dropout_p,
                                         seed),
                           dout, out_acc, dlse, stats, dq, dk, dv);
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type())};
}

}  // namespace
}  // namespace reformer::cpu

TORCH_LIBRARY_IMPL(reformer, CPU, m) {
  m.impl("local_attention", &reformer::cpu::local_attention);
  m.impl("local_attention_backward", &reformer::cpu::local_attention_backward);
}

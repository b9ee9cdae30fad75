// CPU kernels of the LSH attention operators (docs/semantics.md §1): lsh_buckets, the forward
// and the flash-style backward, registered for the CPU at the bottom of this file. The chunked
// attention itself (tasks, tiles, determinism) is chunk_attention_cpu.{h,cpp}, run over the
// bucket-sorted order with normalised keys and the self-mask.
#include <ATen/Functions.h>
#include <torch/library.h>

#include "../../kernels/lsh_common.h"
#include "../chunked_ffn.h"  // read_dropout_seed
#include "../lsh_attention_common.h"
#include "chunk_attention_cpu.h"
#include "lsh_hash_cpu.h"
#include "lsh_sort_cpu.h"

namespace reformer::cpu {
namespace {

// The chunked-attention problem of LSH attention: queries and (normalised) keys are qk.
ChunkAttentionProblem lsh_problem(const LshShape& s, const at::Tensor& qk_acc,
                                  const at::Tensor& v_acc, const at::Tensor& padding,
                                  const at::Tensor& sorted, bool causal, int64_t before,
                                  int64_t after, double scale, double dropout_p,
                                  int64_t dropout_seed) {
  return chunk_problem(s, qk_acc, qk_acc, v_acc, padding, sorted, causal, before, after, scale,
                       dropout_p, dropout_seed);
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got ",
                    t.device());
}

at::Tensor lsh_buckets(const at::Tensor& qk, const at::Tensor& rotations,
                       const c10::optional<at::Tensor>& key_padding_mask,
                       at::IntArrayRef bucket_factors) {
  // Any bucket size gives the same buckets; 1 keeps the padded length equal to L.
  const LshShape s = check_hash_args(qk, rotations, key_padding_mask, /*bucket_size=*/1,
                                       bucket_factors);
  const auto acc = qk.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto buckets = hash_buckets(qk.to(acc).contiguous(), rotations.to(acc),
                              padding_flags(s, key_padding_mask), s);
  return buckets.to(at::kLong);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lsh_attention(
    const at::Tensor& qk, const at::Tensor& v, const at::Tensor& rotations,
    const c10::optional<at::Tensor>& key_padding_mask, int64_t bucket_size, bool causal,
    int64_t n_chunks_before, int64_t n_chunks_after, double scale,
    at::IntArrayRef bucket_factors, double dropout_p,
    const c10::optional<at::Tensor>& dropout_seed) {
  const LshShape s = check_attention_args(qk, v, rotations, key_padding_mask, bucket_size,
                                          n_chunks_before, n_chunks_after, bucket_factors);
  const int64_t seed = read_dropout_seed(dropout_seed, dropout_p);
  check_cpu(qk, "qk");
  const auto acc = accumulation_type(qk);
  const auto qk_acc = qk.to(acc).contiguous();
  const auto v_acc = v.to(acc).contiguous();
  const auto padding = padding_flags(s, key_padding_mask);
  const auto sorted = sort_by_bucket(hash_buckets(qk_acc, rotations.to(acc), padding, s), s);
  auto [out_acc, stats] = forward_buffers(s, qk_acc.options());
  chunk_attention_forward(lsh_problem(s, qk_acc, v_acc, padding, sorted, causal, n_chunks_before,
                                      n_chunks_after, scale, dropout_p, seed),
                          out_acc, stats);
  return forward_outputs(out_acc, stats, sorted, qk.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> lsh_attention_backward(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& qk,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& softmax_stats,
    const at::Tensor& sorted_positions, const c10::optional<at::Tensor>& key_padding_mask,
    int64_t bucket_size, bool causal, int64_t n_chunks_before, int64_t n_chunks_after,
    double scale, double dropout_p, const c10::optional<at::Tensor>& dropout_seed) {
  const LshShape s =
      check_backward_args(grad_out, grad_lse, qk, v, out, softmax_stats, sorted_positions,
                          key_padding_mask, bucket_size, n_chunks_before, n_chunks_after);
  const int64_t seed = read_dropout_seed(dropout_seed, dropout_p);
  check_cpu(qk, "qk");
  const auto acc = accumulation_type(qk);
  const auto qk_acc = qk.to(acc).contiguous();
  const auto v_acc = v.to(acc).contiguous();
  const auto dout = grad_out.to(acc).contiguous();
  const auto stats = softmax_stats.contiguous();
  const auto sorted = sorted_positions.contiguous();
  const auto padding = padding_flags(s, key_padding_mask);
  const auto out_acc = out.to(acc).contiguous();
  const auto dlse = grad_lse.has_value() ? grad_lse->contiguous() : at::Tensor();

  auto dqk = at::zeros({s.batch, s.heads, s.length, s.dim}, qk_acc.options());
  auto dv = at::zeros({s.batch, s.heads, s.length, s.value_dim}, qk_acc.options());
  chunk_attention_backward(lsh_problem(s, qk_acc, v_acc, padding, sorted, causal,
                                       n_chunks_before, n_chunks_after, scale, dropout_p, seed),
                           dout, out_acc, dlse, stats, dqk, dqk, dv);
  return {dqk.to(qk.scalar_type()), dv.to(v.scalar_type())};
}

}  // namespace
}  // namespace reformer::cpu

TORCH_LIBRARY_IMPL(reformer, CPU, m) {
  m.impl("lsh_buckets", &reformer::cpu::lsh_buckets);
  m.impl("lsh_attention", &reformer::cpu::lsh_attention);
  m.impl("lsh_attention_backward", &reformer::cpu::lsh_attention_backward);
}

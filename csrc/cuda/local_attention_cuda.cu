// CUDA kernels of the local attention operators (docs/semantics.md §9), reformer::local_attention
// and reformer::local_attention_backward, registered for CUDA at the bottom of this file:
// argument checks (shared with the CPU kernels), device guard, current stream, buffers from
// PyTorch's caching allocator, and the launches. The device code is the LSH attention's FFMA
// kernels (kernels/lsh_attention_fwd.cuh, lsh_attention_bwd.cuh) run with one round over the
// identity order (AttentionParams::sorted null), separate keys of unit scale (key_scale null), no
// self-mask, and windows that list a chunk once per offset reaching it (but once with a single
// chunk). No tensor-core form yet: every dtype runs the FFMA kernels. Attention dropout
// (dropout_p > 0) is AttentionParams::dropout.
//
// Outputs have the CPU kernels' meaning and layout: softmax_stats (B, H, L, 2) = (max logit,
// log-sum relative to it), lse = their sum; padding queries get out 0, stats 0 and lse 0.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "../chunked_ffn.h"  // read_dropout_seed

#include "../../kernels/lsh_attention_bwd.cuh"
#include "../../kernels/lsh_attention_fwd.cuh"
#include "../local_attention_common.h"
#include "lsh_attention_cuda.h"

namespace reformer::cuda {
namespace {

void check_local_head_dims(int64_t dim, int64_t value_dim) {
  TORCH_CHECK_VALUE(slots_for(dim > value_dim ? dim : value_dim) > 0,
                    "the CUDA local_attention supports q, k and v head dims up to 128, got dim = ",
                    dim, " and value_dim = ", value_dim);
}

// make_params over the identity order (no sorted positions), with no self-mask and the local
// window's repeated chunks; attention dropout as in docs/semantics.md §9.
AttentionParams make_local_params(const LocalShape& s, const at::Tensor& mask, bool causal,
                                  int64_t before, int64_t after, double scale, double dropout_p,
                                  int64_t dropout_seed) {
  AttentionParams p = make_params(s, mask, /*sorted=*/at::Tensor(), causal, before, after, scale,
                                  dropout_p, dropout_seed);
  p.self_mask = false;
  p.distinct_window = !local_window_repeats_chunks(s);
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_attention_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& key_padding_mask, int64_t chunk_length, bool causal,
    int64_t n_chunks_before, int64_t n_chunks_after, double scale, double dropout_p,
    const c10::optional<at::Tensor>& dropout_seed) {
  const LocalShape s = check_local_attention_args(q, k, v, key_padding_mask, chunk_length,
                                                  n_chunks_before, n_chunks_after);
  const int64_t seed = read_dropout_seed(dropout_seed, dropout_p);
  check_local_head_dims(s.dim, s.value_dim);
  const c10::cuda::CUDAGuard guard(q.device());
  const auto acc = accumulation_type(q);
  const auto queries = q.contiguous();
  const auto keys = k.contiguous();
  const auto values = v.contiguous();
  const auto mask = contiguous_mask(key_padding_mask);
  auto [out_acc, stats] = forward_buffers(s, q.options().dtype(acc));
  if (out_acc.numel() > 0) {
    const AttentionParams p = make_local_params(s, mask, causal, n_chunks_before, n_chunks_after,
                                                scale, dropout_p, seed);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                    "local_attention_cuda", [&] {
      using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
      ForwardArgs<scalar_t, acc_t> args{queries.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
                                        nullptr, out_acc.data_ptr<acc_t>(),
                                        stats.data_ptr<acc_t>()};
      args.k = keys.data_ptr<scalar_t>();
      dispatch_slots(p.dim, p.value_dim, [&](auto slots) {
        C10_CUDA_CHECK((launch_lsh_forward<scalar_t, acc_t, decltype(slots)::value>(
            p, args, /*n_hashes=*/1, c10::cuda::getCurrentCUDAStream())));
      });
    });
  }
  return local_forward_outputs(out_acc, stats, q.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_attention_backward_cuda(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& softmax_stats, const c10::optional<at::Tensor>& key_padding_mask,
    int64_t chunk_length, bool causal, int64_t n_chunks_before, int64_t n_chunks_after,
    double scale, double dropout_p, const c10::optional<at::Tensor>& dropout_seed) {
  const LocalShape s = check_local_attention_backward_args(
      grad_out, grad_lse, q, k, v, out, softmax_stats, key_padding_mask, chunk_length,
      n_chunks_before, n_chunks_after);
  const int64_t seed = read_dropout_seed(dropout_seed, dropout_p);
  check_local_head_dims(s.dim, s.value_dim);
  const c10::cuda::CUDAGuard guard(q.device());
  const auto acc = accumulation_type(q);
  const auto queries = q.contiguous();
  const auto keys = k.contiguous();
  const auto values = v.contiguous();
  const auto dout = grad_out.contiguous();
  const auto stats = softmax_stats.contiguous();
  const auto mask = contiguous_mask(key_padding_mask);
  auto dq = at::zeros({s.batch, s.heads, s.length, s.dim}, q.options().dtype(acc));
  auto dk = at::zeros({s.batch, s.heads, s.length, s.dim}, q.options().dtype(acc));
  auto dv = at::zeros({s.batch, s.heads, s.length, s.value_dim}, q.options().dtype(acc));
  if (dq.numel() > 0) {
    const auto delta = softmax_row_term(dout, out, grad_lse, acc);
    const AttentionParams p = make_local_params(s, mask, causal, n_chunks_before, n_chunks_after,
                                                scale, dropout_p, seed);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                    "local_attention_backward_cuda", [&] {
      using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
      BackwardArgs<scalar_t, acc_t> args{
          queries.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(), dout.data_ptr<scalar_t>(),
          nullptr,                      stats.data_ptr<acc_t>(),    delta.data_ptr<acc_t>(),
          dq.data_ptr<acc_t>(),         dv.data_ptr<acc_t>()};
      args.k = keys.data_ptr<scalar_t>();
      args.dk = dk.data_ptr<acc_t>();
      dispatch_slots(p.dim, p.value_dim, [&](auto slots) {
        C10_CUDA_CHECK((launch_lsh_backward<scalar_t, acc_t, decltype(slots)::value>(
            p, args, /*n_hashes=*/1, c10::cuda::getCurrentCUDAStream())));
      });
    });
  }
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type())};
}

}  // namespace
}  // namespace reformer::cuda

TORCH_LIBRARY_IMPL(reformer, CUDA, m) {
  m.impl("local_attention", &reformer::cuda::local_attention_cuda);
  m.impl("local_attention_backward", &reformer::cuda::local_attention_backward_cuda);
}

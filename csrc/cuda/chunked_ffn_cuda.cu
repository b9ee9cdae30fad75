// CUDA fused element-wise kernels of the chunked feed-forward (chunked_ffn_cuda.h): dtype dispatch,
// device guard and current stream around kernels/chunked_ffn_activation.cuh.
#include "chunked_ffn_cuda.h"

#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../../kernels/chunked_ffn_activation.cuh"
#include "chunked_ffn_kernel_args.h"

namespace reformer::cuda {
namespace {

// out = act(h + bias) ⊙ keep, and deriv = act'(h + bias) ⊙ keep when defined.
void bias_activation(const at::Tensor& h, const at::Tensor& bias,
                     const ChunkedFfnHiddenDropoutRows& dropout, ChunkedFfnActivation act,
                     const at::Tensor& out, const at::Tensor& deriv) {
  TORCH_CHECK(chunked_ffn_fused_supported(h) && out.is_contiguous() &&
                  (!deriv.defined() || deriv.is_contiguous()),
              "chunked_ffn CUDA kernels need contiguous CUDA tensors");
  const c10::cuda::CUDAGuard guard(h.device());
  const auto b = bias.defined() ? bias.contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(),
                                  "chunked_ffn_bias_activation_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    C10_CUDA_CHECK((launch_chunked_ffn_bias_activation<scalar_t, acc_t>(
        kernel_activation(act), h.data_ptr<scalar_t>(),
        b.defined() ? b.data_ptr<scalar_t>() : nullptr, h.size(0), h.size(1),
        kernel_dropout(dropout), out.data_ptr<scalar_t>(),
        deriv.defined() ? deriv.data_ptr<scalar_t>() : nullptr,
        c10::cuda::getCurrentCUDAStream())));
  });
}

}  // namespace

bool chunked_ffn_fused_supported(const at::Tensor& h) {
  return h.is_cuda() && h.dim() == 2 && h.is_contiguous() &&
         (h.scalar_type() == at::kFloat || h.scalar_type() == at::kDouble ||
          h.scalar_type() == at::kHalf || h.scalar_type() == at::kBFloat16);
}

void chunked_ffn_bias_activation_(const at::Tensor& h, const at::Tensor& bias,
                                  const ChunkedFfnHiddenDropoutRows& dropout,
                                  ChunkedFfnActivation act) {
  bias_activation(h, bias, dropout, act, h, at::Tensor());
}

void chunked_ffn_bias_activation_grad_(const at::Tensor& h, const at::Tensor& act_out,
                                       const at::Tensor& bias,
                                       const ChunkedFfnHiddenDropoutRows& dropout,
                                       ChunkedFfnActivation act) {
  bias_activation(h, bias, dropout, act, act_out, h);
}

void chunked_ffn_mul_colsum_(const at::Tensor& grad, const at::Tensor& deriv,
                             const at::Tensor& col_sums) {
  grad.mul_(deriv);
  if (col_sums.defined())
    col_sums.add_(at::sum(grad, {0}, /*keepdim=*/false, col_sums.scalar_type()));
}

}  // namespace reformer::cuda

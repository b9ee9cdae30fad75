// run_lsh_forward (lsh_attention_cuda.h): dtype and head-dim dispatch of the forward kernel.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "../../kernels/lsh_attention_fwd.cuh"
#include "lsh_attention_cuda.h"

namespace reformer::cuda {

void run_lsh_forward(const AttentionParams& p, int64_t n_hashes, const at::Tensor& qk,
                     const at::Tensor& v, const at::Tensor& key_scale, at::Tensor& out_acc,
                     at::Tensor& stats) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qk.scalar_type(),
                                  "lsh_attention_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    const ForwardArgs<scalar_t, acc_t> args{qk.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                            key_scale.data_ptr<acc_t>(),
                                            out_acc.data_ptr<acc_t>(), stats.data_ptr<acc_t>()};
    dispatch_slots(p.dim, p.value_dim, [&](auto slots) {
      C10_CUDA_CHECK((launch_lsh_forward<scalar_t, acc_t, decltype(slots)::value>(
          p, args, n_hashes, c10::cuda::getCurrentCUDAStream())));
    });
  });
}

}  // namespace reformer::cuda

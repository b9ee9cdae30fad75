// run_lsh_forward_mma (lsh_attention_cuda.h): dtype and head-dim dispatch of the tensor-core
// forward kernel (kernels/lsh_attention_mma_fwd.cuh).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "../../kernels/lsh_attention_mma_fwd.cuh"
#include "lsh_attention_cuda.h"

namespace reformer::cuda {
namespace {

template <typename T>
void forward_for(const AttentionParams& p, int64_t n_hashes, const at::Tensor& qk,
                 const at::Tensor& v, const at::Tensor& key_scale, at::Tensor& out_acc,
                 at::Tensor& stats) {
  const MmaForwardArgs<T> args{reinterpret_cast<const T*>(qk.const_data_ptr()),
                               reinterpret_cast<const T*>(v.const_data_ptr()),
                               key_scale.const_data_ptr<float>(), out_acc.data_ptr<float>(),
                               stats.data_ptr<float>()};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  switch (p.dim) {
    case 32: C10_CUDA_CHECK((launch_lsh_forward_mma<T, 32>(p, args, n_hashes, stream))); break;
    case 64: C10_CUDA_CHECK((launch_lsh_forward_mma<T, 64>(p, args, n_hashes, stream))); break;
    default: C10_CUDA_CHECK((launch_lsh_forward_mma<T, 128>(p, args, n_hashes, stream))); break;
  }
}

}  // namespace

void run_lsh_forward_mma(const AttentionParams& p, int64_t n_hashes, const at::Tensor& qk,
                         const at::Tensor& v, const at::Tensor& key_scale, at::Tensor& out_acc,
                         at::Tensor& stats) {
  if (qk.scalar_type() == at::kHalf)
    forward_for<__half>(p, n_hashes, qk, v, key_scale, out_acc, stats);
  else
    forward_for<__nv_bfloat16>(p, n_hashes, qk, v, key_scale, out_acc, stats);
}

}  // namespace reformer::cuda

// run_lsh_backward_mma (lsh_attention_cuda.h): dtype and head-dim dispatch of the tensor-core
// backward kernels (kernels/lsh_attention_mma_bwd.cuh).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "../../kernels/lsh_attention_mma_bwd.cuh"
#include "lsh_attention_cuda.h"

namespace reformer::cuda {
namespace {

template <typename T>
void backward_for(const AttentionParams& p, int64_t n_hashes, const at::Tensor& qk,
                  const at::Tensor& v, const at::Tensor& dout, const at::Tensor& key_scale,
                  const at::Tensor& stats, const at::Tensor& delta, at::Tensor& dqk,
                  at::Tensor& dv) {
  const MmaBackwardArgs<T> args{reinterpret_cast<const T*>(qk.const_data_ptr()),
                                reinterpret_cast<const T*>(v.const_data_ptr()),
                                reinterpret_cast<const T*>(dout.const_data_ptr()),
                                key_scale.const_data_ptr<float>(),
                                stats.const_data_ptr<float>(),
                                delta.const_data_ptr<float>(),
                                dqk.data_ptr<float>(),
                                dv.data_ptr<float>()};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  switch (p.dim) {
    case 32: C10_CUDA_CHECK((launch_lsh_backward_mma<T, 32>(p, args, n_hashes, stream))); break;
    case 64: C10_CUDA_CHECK((launch_lsh_backward_mma<T, 64>(p, args, n_hashes, stream))); break;
    default: C10_CUDA_CHECK((launch_lsh_backward_mma<T, 128>(p, args, n_hashes, stream))); break;
  }
}

}  // namespace

void run_lsh_backward_mma(const AttentionParams& p, int64_t n_hashes, const at::Tensor& qk,
                          const at::Tensor& v, const at::Tensor& dout,
                          const at::Tensor& key_scale, const at::Tensor& stats,
                          const at::Tensor& delta, at::Tensor& dqk, at::Tensor& dv) {
  if (qk.scalar_type() == at::kHalf)
    backward_for<__half>(p, n_hashes, qk, v, dout, key_scale, stats, delta, dqk, dv);
  else
    backward_for<__nv_bfloat16>(p, n_hashes, qk, v, dout, key_scale, stats, delta, dqk, dv);
}

}  // namespace reformer::cuda

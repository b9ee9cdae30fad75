// run_lsh_forward_mma (lsh_attention_cuda.h): dtype and head-dim dispatch of the tensor-core
// forward kernel (kernels/lsh_attention_mma_fwd.cuh).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <mutex>
#include <unordered_map>

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

bool tensor_core_kernels_run_on(int device) {
  static std::mutex lock;
  static std::unordered_map<int, bool> known;
  const std::lock_guard<std::mutex> hold(lock);
  const auto found = known.find(device);
  if (found != known.end()) return found->second;
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  bool usable = false;
  if (major >= 8) {
    // The code the driver loads for this device must come from a compute_80+ target: built for
    // older targets only (e.g. "7.5+PTX", compiled just in time here), the kernels hold a trap
    // where mma.sync would be. The caller's device guard makes `device` current.
    cudaFuncAttributes attributes{};
    const cudaError_t status =
        cudaFuncGetAttributes(&attributes, lsh_forward_round_mma_kernel<__half, 64>);
    if (status == cudaSuccess)
      usable = attributes.ptxVersion >= 80;
    else
      (void)cudaGetLastError();  // no image for this device: the FFMA path reports it
  }
  known.emplace(device, usable);
  return usable;
}

void run_lsh_forward_mma(const AttentionParams& p, int64_t n_hashes, const at::Tensor& qk,
                         const at::Tensor& v, const at::Tensor& key_scale, at::Tensor& out_acc,
                         at::Tensor& stats) {
  if (qk.scalar_type() == at::kHalf)
    forward_for<__half>(p, n_hashes, qk, v, key_scale, out_acc, stats);
  else
    forward_for<__nv_bfloat16>(p, n_hashes, qk, v, key_scale, out_acc, stats);
}

}  // namespace reformer::cuda

// The tensor-core capability probe and the choice between the tensor-core and the FFMA kernels
// (tensor_cores_cuda.h).
#include "tensor_cores_cuda.h"

#include <c10/cuda/CUDAException.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>

#include "../../kernels/lsh_attention_mma_fwd.cuh"

namespace reformer::cuda {

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
    // where mma.sync would be. The caller's device guard makes `device` current. Every
    // translation unit is compiled for the same targets, so one tensor-core kernel answers
    // for all of them.
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

bool use_tensor_cores(const at::Tensor& qk, const at::Tensor& v, const at::Tensor* dout) {
  if (qk.scalar_type() != at::kHalf && qk.scalar_type() != at::kBFloat16) return false;
  if (!mma_head_dims_supported(qk.size(-1), v.size(-1))) return false;
  const auto aligned = [](const at::Tensor& t) {
    return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
  };
  if (!aligned(qk) || !aligned(v) || (dout != nullptr && !aligned(*dout))) return false;
  const char* setting = std::getenv("REFORMER_EXT_TENSOR_CORES");
  if (setting != nullptr && std::string(setting) == "0") return false;
  return tensor_core_kernels_run_on(qk.get_device());
}

}  // namespace reformer::cuda

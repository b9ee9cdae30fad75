// CUDA hashing (lsh_hash_cuda.h) for lsh_buckets and the attention forward: current stream,
// dtype dispatch and launch of the torch-free kernels: tensor cores (kernels/lsh_hash_mma.cuh)
// where use_tensor_cores accepts the call, else FFMA (kernels/lsh_hash.cuh).
#include "lsh_hash_cuda.h"

#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "../../kernels/lsh_hash_mma.cuh"
#include "rotation_pieces.h"
#include "tensor_cores_cuda.h"

namespace reformer::cuda {
namespace {

template <typename T>
void hash_on_tensor_cores(const at::Tensor& qk, const at::Tensor& rotations,
                          const at::Tensor& mask, const HashParams& params, at::Tensor& buckets) {
  const auto pieces = rotation_pieces(rotations, params.factors, qk.scalar_type());
  const T* x = reinterpret_cast<const T*>(qk.const_data_ptr());
  const T* rot = reinterpret_cast<const T*>(pieces.const_data_ptr());
  const bool* padding = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
  int64_t* out = buckets.data_ptr<int64_t>();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  switch (params.dim) {
    case 32: C10_CUDA_CHECK((launch_lsh_hash_mma<T, 32>(x, rot, padding, params, out, stream))); break;
    case 64: C10_CUDA_CHECK((launch_lsh_hash_mma<T, 64>(x, rot, padding, params, out, stream))); break;
    default: C10_CUDA_CHECK((launch_lsh_hash_mma<T, 128>(x, rot, padding, params, out, stream))); break;
  }
}

}  // namespace

at::Tensor hash_buckets(const at::Tensor& qk, const at::Tensor& rotations, const at::Tensor& mask,
                        const LshShape& s) {
  auto buckets = at::empty({s.batch, s.heads, s.n_hashes, s.length}, qk.options().dtype(at::kLong));
  const HashParams params{s.batch,          s.heads,    s.length,        s.dim,
                          s.rotation_heads, s.n_hashes, s.rotation_cols, s.factors};
  if (buckets.numel() == 0) return buckets;
  if (use_tensor_cores(qk, qk)) {  // fp16/bf16, D in {32, 64, 128}
    if (qk.scalar_type() == at::kHalf)
      hash_on_tensor_cores<__half>(qk, rotations, mask, params, buckets);
    else
      hash_on_tensor_cores<__nv_bfloat16>(qk, rotations, mask, params, buckets);
    return buckets;
  }
  const auto acc = qk.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto rot = rotations.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qk.scalar_type(), "lsh_hash_cuda",
                                  [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    C10_CUDA_CHECK((launch_lsh_hash<scalar_t, acc_t>(
        qk.data_ptr<scalar_t>(), rot.data_ptr<acc_t>(),
        mask.defined() ? mask.data_ptr<bool>() : nullptr, params, buckets.data_ptr<int64_t>(),
        c10::cuda::getCurrentCUDAStream())));
  });
  return buckets;
}

}  // namespace reformer::cuda

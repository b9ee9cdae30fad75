// CUDA bucket sort (lsh_sort_cuda.h): key width, CUB scratch from PyTorch's caching allocator
// and the current stream around kernels/lsh_sort.cuh.
#include "lsh_sort_cuda.h"

#include <ATen/Functions.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

#include "../../kernels/lsh_sort.cuh"

namespace reformer::cuda {
namespace {

template <typename key_t>
void sort_with_keys(const at::Tensor& buckets, const SortShape& shape, at::Tensor& sorted) {
  const auto key_dtype = sizeof(key_t) == 4 ? at::kInt : at::kLong;
  auto options = buckets.options();
  auto keys_in = at::empty({shape.items()}, options.dtype(key_dtype));
  auto keys_out = at::empty({shape.items()}, options.dtype(key_dtype));
  auto values_in = at::empty({shape.items()}, options.dtype(at::kInt));
  size_t cub_bytes = 0;
  C10_CUDA_CHECK(lsh_sort_temp_bytes<key_t>(shape, cub_bytes));
  // CUB's scratch comes from the caching allocator, on the current stream.
  auto cub_temp = at::empty({static_cast<int64_t>(std::max<size_t>(cub_bytes, 1))},
                            options.dtype(at::kByte));
  C10_CUDA_CHECK(launch_lsh_sort<key_t>(
      buckets.data_ptr<int64_t>(), shape, reinterpret_cast<key_t*>(keys_in.data_ptr()),
      reinterpret_cast<key_t*>(keys_out.data_ptr()), values_in.data_ptr<int32_t>(),
      sorted.data_ptr<int32_t>(), cub_temp.data_ptr(), cub_bytes,
      c10::cuda::getCurrentCUDAStream()));
}

}  // namespace

at::Tensor sort_by_bucket(const at::Tensor& buckets, const LshShape& s) {
  auto sorted = at::empty({s.batch, s.heads, s.n_hashes * s.padded_length},
                          buckets.options().dtype(at::kInt));
  const SortShape shape{s.batch * s.heads * s.n_hashes, s.length, s.padded_length, s.n_buckets};
  if (shape.items() == 0) return sorted;
  TORCH_CHECK(shape.key_bits() <= 64, "lsh_attention: too many (batch, head, round) segments ",
              "and buckets to sort with 64-bit keys");
  if (shape.key_bits() <= 32)
    sort_with_keys<uint32_t>(buckets, shape, sorted);
  else
    sort_with_keys<uint64_t>(buckets, shape, sorted);
  return sorted;
}

}  // namespace reformer::cuda

// Bucket sort of docs/semantics.md §1 step 2 on the GPU: one stable CUB radix sort over all (batch,
// head, round) segments at once. The key of position i in segment seg is (seg << bucket_bits) |
// bucket, so sorting only the low segment_bits + bucket_bits bits orders by (segment, bucket) and,
// the sort being stable, keeps original positions in order inside a bucket. The values are the
// positions 0..L'-1; the sorted values, segment after segment, are exactly the (B, H, R * L')
// sorted_positions of the operator. Torch-free: the caller provides CUB's temporary storage.
#pragma once

#include <cub/device/device_radix_sort.cuh>
#include <cuda_runtime.h>

#include <cstdint>

namespace reformer::cuda {

// Bits needed to store the values 0..count-1.
__host__ __device__ inline int bits_for(int64_t count) {
  int bits = 0;
  while ((int64_t(1) << bits) < count) ++bits;
  return bits;
}

struct SortShape {
  int64_t segments;       // B * H * R
  int64_t length;         // L: positions with a hashed bucket
  int64_t padded_length;  // L': positions L..L'-1 get the padding bucket
  int64_t n_buckets;      // nb; the padding bucket is nb itself
  __host__ __device__ int bucket_bits() const { return bits_for(n_buckets + 1); }
  __host__ __device__ int key_bits() const { return bits_for(segments) + bucket_bits(); }
  __host__ __device__ int64_t items() const { return segments * padded_length; }
};

// keys[seg, i] = seg << bucket_bits | bucket (the padding bucket for the tail), values[seg, i] = i.
template <typename key_t>
__global__ void lsh_sort_keys_kernel(const int64_t* __restrict__ buckets, SortShape s,
                                     key_t* __restrict__ keys, int32_t* __restrict__ values) {
  const int64_t total = s.items();
  const int bucket_bits = s.bucket_bits();
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t seg = idx / s.padded_length, pos = idx % s.padded_length;
    const int64_t bucket = pos < s.length ? buckets[seg * s.length + pos] : s.n_buckets;
    keys[idx] = (static_cast<key_t>(seg) << bucket_bits) | static_cast<key_t>(bucket);
    values[idx] = static_cast<int32_t>(pos);
  }
}

// Bytes of CUB's temporary storage for launch_lsh_sort (the keys and values are allocated
// separately by the caller). items() is passed as int64: CUB 2.x (CUDA 12+) takes 64-bit counts.
template <typename key_t>
cudaError_t lsh_sort_temp_bytes(const SortShape& s, size_t& cub_bytes) {
  cub_bytes = 0;
  return cub::DeviceRadixSort::SortPairs(nullptr, cub_bytes, static_cast<const key_t*>(nullptr),
                                         static_cast<key_t*>(nullptr),
                                         static_cast<const int32_t*>(nullptr),
                                         static_cast<int32_t*>(nullptr), s.items(), 0,
                                         s.key_bits());
}

// buckets (B*H*R, L) int64 -> sorted_positions (B*H*R*L') int32. keys_in/keys_out hold items()
// keys, values_in items() int32, cub_temp lsh_sort_temp_bytes bytes.
template <typename key_t>
cudaError_t launch_lsh_sort(const int64_t* buckets, const SortShape& s, key_t* keys_in,
                            key_t* keys_out, int32_t* values_in, int32_t* sorted_positions,
                            void* cub_temp, size_t cub_bytes, cudaStream_t stream) {
  const int64_t total = s.items();
  if (total == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32);
  lsh_sort_keys_kernel<key_t><<<grid, kThreads, 0, stream>>>(buckets, s, keys_in, values_in);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  return cub::DeviceRadixSort::SortPairs(cub_temp, cub_bytes, keys_in, keys_out, values_in,
                                         sorted_positions, total, 0, s.key_bits(), stream);
}

}  // namespace reformer::cuda

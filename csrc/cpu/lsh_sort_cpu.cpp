// CPU bucket sort (lsh_sort_cpu.h): one counting sort per (batch, head, round) row (a stable
// comparison sort when there are many more buckets than positions), rows in parallel; stable,
// so positions stay in order inside a bucket.
#include "lsh_sort_cpu.h"

#include <ATen/Functions.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "tile_math.h"

namespace reformer::cpu {

at::Tensor sort_by_bucket(const at::Tensor& buckets, const LshShape& s) {
  const int64_t Lp = s.padded_length, bins = s.n_buckets + 1;
  auto sorted = at::empty({s.batch, s.heads, s.n_hashes * Lp}, at::dtype(at::kInt));
  const int32_t* bucket = buckets.data_ptr<int32_t>();
  int32_t* out = sorted.data_ptr<int32_t>();
  // Factorised bucket counts can far exceed L' (prod of the factors up to 2^31): then a
  // comparison sort of (bucket, position) replaces the counting sort (same order).
  const bool counting = bins <= 4 * Lp + 4096;
  at::parallel_for(0, s.batch * s.heads * s.n_hashes, 1, [&](int64_t begin, int64_t end) {
    int64_t* next = counting ? thread_scratch<int64_t>(bins) : nullptr;
    for (int64_t row = begin; row < end; ++row) {
      const int32_t* key = bucket + row * Lp;
      int32_t* dst = out + row * Lp;
      if (!counting) {
        for (int64_t p = 0; p < Lp; ++p) dst[p] = static_cast<int32_t>(p);
        std::stable_sort(dst, dst + Lp, [key](int32_t a, int32_t b) { return key[a] < key[b]; });
        continue;
      }
      std::fill(next, next + bins, 0);
      for (int64_t p = 0; p < Lp; ++p) ++next[key[p]];
      int64_t offset = 0;  // exclusive scan: first slot of each bucket
      for (int64_t k = 0; k < bins; ++k) {
        const int64_t count = next[k];
        next[k] = offset;
        offset += count;
      }
      for (int64_t p = 0; p < Lp; ++p) dst[next[key[p]]++] = static_cast<int32_t>(p);
    }
  });
  return sorted;
}

}  // namespace reformer::cpu

// CUDA bucket sort of docs/semantics.md §1 step 2 (kernels/lsh_sort.cuh), used by the attention
// forward.
#pragma once

#include <ATen/core/Tensor.h>

#include "../lsh_attention_common.h"

namespace reformer::cuda {

// sorted_positions (B, H, R * L') int32 on the current stream: per (batch, head, round), the
// positions 0..L'-1 ordered by (bucket, position). `buckets` (B, H, R, L) int64, contiguous.
at::Tensor sort_by_bucket(const at::Tensor& buckets, const LshShape& s);

}  // namespace reformer::cuda

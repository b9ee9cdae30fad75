// CPU bucket sort of docs/semantics.md §1 step 2, used by the attention forward.
#pragma once

#include <ATen/core/Tensor.h>

#include "../lsh_attention_common.h"

namespace reformer::cpu {

// Stable counting sort of every (batch, head, round) row of `buckets` (B, H, R, L') int32:
// returns (B, H, R * L') int32 positions ordered by (bucket, position) within each round.
at::Tensor sort_by_bucket(const at::Tensor& buckets, const LshShape& s);

}  // namespace reformer::cpu

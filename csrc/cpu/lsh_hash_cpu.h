// CPU hashing (docs/semantics.md §1 step 1), used by lsh_buckets and the attention forward.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "../lsh_attention_common.h"

namespace reformer::cpu {

// (B, L') uint8: 1 where a position is padding (masked, or in the tail L..L'-1).
at::Tensor padding_flags(const LshShape& s, const c10::optional<at::Tensor>& key_padding_mask);

// Buckets (B, H, R, L') int32 of positions 0..L'-1; padding positions get bucket n_buckets.
// `qk_acc` is qk as a contiguous tensor of the accumulation type (float or double).
at::Tensor hash_buckets(const at::Tensor& qk_acc, const at::Tensor& rotations,
                        const at::Tensor& padding, const LshShape& s);

}  // namespace reformer::cpu

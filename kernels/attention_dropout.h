// Dropout on the attention probabilities of LSH attention (docs/semantics.md §1 "Dropout") and
// local attention (§9): which (query item, key listing) weights are dropped, as a pure function
// of (seed, element index), so the backward regenerates the forward's mask. The rule is the
// seeded dropout of kernels/dropout_hash.h (SplitMix64) over this element index:
//
//   e = (((bh · R + r) · L + i) · K + k) · L + j          (arithmetic mod 2^64)
//
// bh = b · H + h; r the query's round (0 for local attention), R the rounds; i the query's
// position and j the key's (both < L, the unpadded length); K = n_chunks_before + 1 +
// n_chunks_after and k in [0, K) the window slot: the index o + n_chunks_before of the offset o
// that listed the key's chunk (LSH: a chunk reached by several offsets is listed once, at its
// first; local attention: once per offset, so a repeated key gets one draw per listing).
// Torch-free and __host__ __device__: the CPU and CUDA kernels evaluate it inline;
// reformer_ext/ops/seeded_random.py (attention_dropout_keep_mask) mirrors it for the reference.
#pragma once

#include <cstdint>

#include "dropout_hash.h"
#include "host_device.h"

namespace reformer {

// The query part of the element index: ((bh · R + r) · L + i) · K.
RX_HOST_DEVICE uint64_t attention_dropout_row(int64_t bh, int64_t round, int64_t n_hashes,
                                              int64_t length, int64_t query_pos,
                                              int64_t window_slots) {
  return ((static_cast<uint64_t>(bh) * static_cast<uint64_t>(n_hashes) +
           static_cast<uint64_t>(round)) *
              static_cast<uint64_t>(length) +
          static_cast<uint64_t>(query_pos)) *
         static_cast<uint64_t>(window_slots);
}

// Whether the weight of key position `key_pos`, listed at window slot `slot`, is dropped for the
// query whose attention_dropout_row is `row`.
RX_HOST_DEVICE bool attention_weight_dropped(uint64_t seed, int64_t threshold, uint64_t row,
                                             int64_t slot, int64_t length, int64_t key_pos) {
  const uint64_t e = (row + static_cast<uint64_t>(slot)) * static_cast<uint64_t>(length) +
                     static_cast<uint64_t>(key_pos);
  return dropout_hash::dropped(seed, e, threshold);
}

}  // namespace reformer

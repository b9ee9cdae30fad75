// Index math and constants of LSH attention (docs/semantics.md §1) shared by the CPU kernel, the
// CUDA kernels and the C++ tests. Torch-free and __host__ __device__, so the logic the GPU runs is
// exercised by every CPU test run.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace reformer {

// Logit replacements of docs/semantics.md §1 step 5, applied in the accumulator type.
constexpr float kMaskedLogit = -1e9f;  // padding key, or causal and key after query
constexpr float kSelfLogit = -1e5f;    // key == query: used only when nothing else is valid
// Epsilon of the key normalisation k = x * rsqrt(mean(x^2) + eps) / sqrt(D).
constexpr double kKeyNormEps = 1e-6;

// Largest window: n_chunks_before + 1 + n_chunks_after chunks. Bounded so windows fit in
// fixed-size arrays on the device; checked at the operator boundary.
constexpr int kMaxWindowChunks = 64;

// Sequence length after padding to a multiple of the bucket size.
RX_HOST_DEVICE int64_t padded_length(int64_t length, int64_t bucket_size) {
  return (length + bucket_size - 1) / bucket_size * bucket_size;
}

// Positive modulo for cyclic chunk indices.
RX_HOST_DEVICE int64_t wrap_chunk(int64_t chunk, int64_t n_chunks) {
  const int64_t r = chunk % n_chunks;
  return r < 0 ? r + n_chunks : r;
}

// The chunks that query chunk `chunk` attends to, in the fixed order of offsets -before..+after.
// With few chunks, offsets wrap onto the same chunk: with `distinct` (LSH attention,
// docs/semantics.md §1 step 3) each chunk is kept once, at its first offset; without it (local
// attention, docs/semantics.md §9 step 2) a chunk is listed once per offset that reaches it, so
// its keys count that many times. Returns the count written to `out` (<= before+after+1).
// `offset_index`, when given, receives for each listed chunk the index offset + before (in
// 0..before+after) of the offset that listed it: the window slot of the attention dropout's
// element index (docs/semantics.md §1 "Dropout").
RX_HOST_DEVICE int window_chunks(int64_t chunk, int64_t n_chunks, int before, int after,
                                 int64_t* out, bool distinct = true,
                                 int* offset_index = nullptr) {
  int count = 0;
  for (int offset = -before; offset <= after; ++offset) {
    const int64_t c = wrap_chunk(chunk + offset, n_chunks);
    bool seen = false;
    for (int k = 0; distinct && k < count; ++k) seen = seen || (out[k] == c);
    if (!seen) {
      if (offset_index != nullptr) offset_index[count] = offset + before;
      out[count++] = c;
    }
  }
  return count;
}

// The query chunks whose window contains key chunk `chunk`: the mirror image of window_chunks
// (offsets +before..-after, distinct or once per offset alike), so a key chunk's gradient is
// summed in a fixed order. `window_slot`, when given, receives for each listed query chunk the
// window slot (offset_index of window_chunks) at which that chunk's window lists `chunk`.
RX_HOST_DEVICE int chunks_seeing(int64_t chunk, int64_t n_chunks, int before, int after,
                                 int64_t* out, bool distinct = true,
                                 int* window_slot = nullptr) {
  int count = 0;
  for (int offset = before; offset >= -after; --offset) {
    const int64_t c = wrap_chunk(chunk + offset, n_chunks);
    bool seen = false;
    for (int k = 0; distinct && k < count; ++k) seen = seen || (out[k] == c);
    if (!seen) {
      if (window_slot != nullptr) {
        // once per offset: c's window lists `chunk` at offset -offset; distinct: at the first
        // offset of c's window that reaches it
        int slot = before - offset;
        for (int o = -before; distinct && o <= after; ++o)
          if (wrap_chunk(c + o, n_chunks) == chunk) {
            slot = o + before;
            break;
          }
        window_slot[count] = slot;
      }
      out[count++] = c;
    }
  }
  return count;
}

// A logit after the masks of docs/semantics.md §1 step 5 (padding keys are never passed here: their
// weight exp(-1e9 - lse) is exactly zero, since the query always sees itself at >= -1e5).
// Selects instead of branches, so loops over keys vectorise.
// `self_mask` false (local attention, docs/semantics.md §9) leaves j == i unmasked.
template <typename acc_t, typename pos_t>
RX_HOST_DEVICE acc_t masked_logit(acc_t logit, pos_t query_pos, pos_t key_pos, bool causal,
                                  bool self_mask = true) {
  const acc_t value =
      (self_mask && key_pos == query_pos) ? static_cast<acc_t>(kSelfLogit) : logit;
  return (causal && key_pos > query_pos) ? static_cast<acc_t>(kMaskedLogit) : value;
}

// True when the logit was replaced by a constant, so it has no gradient.
template <typename pos_t>
RX_HOST_DEVICE bool logit_is_replaced(pos_t query_pos, pos_t key_pos, bool causal,
                                      bool self_mask = true) {
  return (self_mask && key_pos == query_pos) || (causal && key_pos > query_pos);
}

// Bucket of one hash round: the argmax over [p, -p] (length 2 * half) with ties to the lowest
// index (docs/semantics.md §1 step 1), from the first index of the largest and of the smallest
// projection. Every index of +p is below every index of -p, so a tie between max(p) and -min(p)
// goes to +p.
template <typename acc_t>
RX_HOST_DEVICE int64_t bucket_from_extremes(acc_t max_p, int64_t arg_max, acc_t min_p,
                                            int64_t arg_min, int64_t half) {
  return max_p >= -min_p ? arg_max : half + arg_min;
}

// Factorised bucket counts (docs/semantics.md §1 step 1, HF/trax `num_buckets` as a list): a
// round's nb/2 rotation columns are cut into consecutive slices of f_j / 2 columns, each slice
// hashed on its own (argmax over [p_slice, -p_slice]) to a digit b_j in [0, f_j), and the
// bucket is the mixed-radix number b_1 + f_1 b_2 + f_1 f_2 b_3 + ... in [0, prod f_j). One
// factor f is the plain nb = f. Fixed capacity, so the struct travels by value to the kernels.
constexpr int kMaxBucketFactors = 8;

struct BucketFactors {
  int count = 0;                           // 1..kMaxBucketFactors once set
  int64_t half[kMaxBucketFactors] = {};    // f_j / 2: rotation columns of factor j

  RX_HOST_DEVICE int64_t columns() const {  // sum f_j / 2: rotation columns per round
    int64_t c = 0;
    for (int j = 0; j < count; ++j) c += half[j];
    return c;
  }
  RX_HOST_DEVICE int64_t n_buckets() const {  // prod f_j
    int64_t n = 1;
    for (int j = 0; j < count; ++j) n *= 2 * half[j];
    return n;
  }
};

// The one factor of an unfactorised round with `half` columns (nb = 2 * half).
RX_HOST_DEVICE BucketFactors single_factor(int64_t half) {
  BucketFactors f;
  f.count = 1;
  f.half[0] = half;
  return f;
}

}  // namespace reformer

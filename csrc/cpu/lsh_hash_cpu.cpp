// CPU hashing of docs/semantics.md §1 step 1: projections of each position onto the random
// rotations (a tiled GEMM per block of rows) and the argmax over [p, -p].
#include "lsh_hash_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>

#include "../../kernels/lsh_common.h"
#include "cpu_dispatch.h"
#include "tile_math.h"

namespace reformer::cpu {
namespace {

constexpr int64_t kHashRows = 32;  // rows per GEMM block: the projections stay in L2

// Buckets of rows [row0, row0 + kHashRows) of head bh: the projections of the block as one GEMM,
// then each round's argmax over [xR, -xR], per factor when the bucket count is factorised
// (docs/semantics.md §1 step 1). Compiled per instruction set (cpu_dispatch.h).
template <typename acc_t>
REFORMER_MULTIARCH void hash_block(const acc_t* qk, const acc_t* rotations, const uint8_t* padding,
                                   const LshShape& s, int64_t padded_cols, int64_t bh,
                                   int64_t row0, acc_t* proj, int32_t* buckets) {
  const int64_t half = s.rotation_cols;
  const int64_t Lp = s.padded_length;
  const int64_t b = bh / s.heads, h = bh % s.heads;
  const int64_t rows = std::max<int64_t>(0, std::min(s.length, row0 + kHashRows) - row0);
  const acc_t* rot = rotations + (s.rotation_heads == 1 ? 0 : h) * s.dim * padded_cols;
  if (rows > 0)
    tile_gemm<acc_t>(rows, padded_cols, s.dim, qk + (bh * s.length + row0) * s.dim, s.dim, rot,
                     kTileCols<acc_t>, proj, padded_cols, false, s.dim * kTileCols<acc_t>);
  for (int64_t i = 0; i < std::min(kHashRows, Lp - row0); ++i) {
    const int64_t pos = row0 + i;
    const bool pad = padding[b * Lp + pos] != 0;
    for (int64_t r = 0; r < s.n_hashes; ++r) {
      const acc_t* p = proj + i * padded_cols + r * half;
      int64_t bucket = s.n_buckets, radix = 1;
      if (!pad) {
        bucket = 0;
        for (int j = 0; j < s.factors.count; ++j) {  // digit b_j of factor j, mixed radix
          const int64_t f_half = s.factors.half[j];
          int64_t arg_max = 0, arg_min = 0;
          row_argmax_argmin(p, f_half, arg_max, arg_min);
          bucket += radix * bucket_from_extremes(p[arg_max], arg_max, p[arg_min], arg_min, f_half);
          radix *= 2 * f_half;
          p += f_half;
        }
      }
      buckets[(bh * s.n_hashes + r) * Lp + pos] = static_cast<int32_t>(bucket);
    }
  }
}

template <typename acc_t>
void hash_rows(const acc_t* qk, const acc_t* rotations, const uint8_t* padding, const LshShape& s,
               int64_t padded_cols, int32_t* buckets) {
  const int64_t blocks = (s.padded_length + kHashRows - 1) / kHashRows;
  at::parallel_for(0, s.batch * s.heads * blocks, 1, [&](int64_t begin, int64_t end) {
    acc_t* proj = thread_scratch<acc_t>(kHashRows * padded_cols);
    for (int64_t task = begin; task < end; ++task)
      hash_block(qk, rotations, padding, s, padded_cols, task / blocks,
                 (task % blocks) * kHashRows, proj, buckets);
  });
}

}  // namespace

at::Tensor padding_flags(const LshShape& s, const c10::optional<at::Tensor>& key_padding_mask) {
  auto flags = at::zeros({s.batch, s.padded_length}, at::dtype(at::kByte));
  if (s.padded_length > s.length) flags.narrow(1, s.length, s.padded_length - s.length).fill_(1);
  if (key_padding_mask.has_value())
    flags.narrow(1, 0, s.length).copy_(key_padding_mask->to(at::kByte));
  return flags;
}

at::Tensor hash_buckets(const at::Tensor& qk_acc, const at::Tensor& rotations,
                        const at::Tensor& padding, const LshShape& s) {
  auto buckets = at::empty({s.batch, s.heads, s.n_hashes, s.padded_length}, at::dtype(at::kInt));
  if (buckets.numel() == 0) return buckets;
  AT_DISPATCH_FLOATING_TYPES(qk_acc.scalar_type(), "lsh_hash_cpu", [&] {
    // Rotations as a (Hr, D, R * cols) matrix, columns zero-padded to the GEMM tile width.
    const int64_t cols = s.n_hashes * s.rotation_cols;
    const int64_t padded_cols = round_up(cols, kTileCols<scalar_t>);
    auto rot = at::zeros({s.rotation_heads, s.dim, padded_cols}, qk_acc.options());
    rot.narrow(2, 0, cols).copy_(rotations.reshape({s.rotation_heads, s.dim, cols}));
    auto packed = at::empty_like(rot);
    for (int64_t h = 0; h < s.rotation_heads; ++h)
      pack_panels(rot[h].data_ptr<scalar_t>(), s.dim, padded_cols, packed[h].data_ptr<scalar_t>());
    hash_rows<scalar_t>(qk_acc.data_ptr<scalar_t>(), packed.data_ptr<scalar_t>(),
                        padding.data_ptr<uint8_t>(), s, padded_cols, buckets.data_ptr<int32_t>());
  });
  return buckets;
}

}  // namespace reformer::cpu

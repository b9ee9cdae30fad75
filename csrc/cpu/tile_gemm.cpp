// tile_gemm (declared in tile_math.h): the register-blocked GEMM on cache-resident tiles that
// the attention, the hash and the feed-forward's CPU kernels share, compiled once per
// instruction set (cpu_dispatch.h).
#include "cpu_dispatch.h"
#include "tile_math.h"

namespace reformer::cpu {
namespace {

// C[MR x NR] (+)= A[MR x K] * B[K x NR], with the MR x NR accumulator kept in registers.
template <typename T, int64_t MR>
inline void gemm_micro(int64_t K, const T* __restrict__ A, int64_t lda, const T* __restrict__ B,
                       int64_t ldb, T* __restrict__ C, int64_t ldc, bool accumulate) {
  constexpr int64_t NR = kTileCols<T>;
  T acc[MR][NR];
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t j = 0; j < NR; ++j) acc[i][j] = accumulate ? C[i * ldc + j] : T(0);
  for (int64_t k = 0; k < K; ++k) {
    const T* __restrict__ b = B + k * ldb;
    for (int64_t i = 0; i < MR; ++i) {
      const T a = A[i * lda + k];
      for (int64_t j = 0; j < NR; ++j) acc[i][j] += a * b[j];
    }
  }
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t j = 0; j < NR; ++j) C[i * ldc + j] = acc[i][j];
}

}  // namespace

template <typename T>
REFORMER_MULTIARCH void tile_gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                                  const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate,
                                  int64_t b_panel_stride) {
  constexpr int64_t NR = kTileCols<T>;
  for (int64_t j0 = 0; j0 < N; j0 += NR) {
    const T* panel = B + (j0 / NR) * b_panel_stride;
    int64_t i0 = 0;
    for (; i0 + kTileRows <= M; i0 += kTileRows)
      gemm_micro<T, kTileRows>(K, A + i0 * lda, lda, panel, ldb, C + i0 * ldc + j0, ldc,
                               accumulate);
    for (; i0 < M; ++i0)
      gemm_micro<T, 1>(K, A + i0 * lda, lda, panel, ldb, C + i0 * ldc + j0, ldc, accumulate);
  }
}

template void tile_gemm<float>(int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                               int64_t, float*, int64_t, bool, int64_t);
template void tile_gemm<double>(int64_t, int64_t, int64_t, const double*, int64_t,
                                const double*, int64_t, double*, int64_t, bool, int64_t);

}  // namespace reformer::cpu

// The fixed-order CPU GEMM and column sums (see fixed_order_gemm.h).
//
// Layout, as in the classic packed GEMMs: B is packed into panels of kNr columns (each a
// contiguous K x kNr block, zero-padded past N), once per call and shared by the threads; the
// output is cut into tiles of at most kMc x kNc, one task each; a task walks K in blocks of kKc,
// packs its rows of A for that block into k-major slivers of kMr rows (zero-padded past M) and
// runs the register-blocked micro-kernel over every (sliver, panel) pair, accumulating into a
// tile of sums in thread-local memory; the epilogue writes C = init + α · sum. Padding means every
// element goes through the same micro-kernel code, whatever its position in the matrix. When B
// is much wider than A is tall, the same sums are computed as Cᵀ = Bᵀ · Aᵀ (packing the smaller
// operand whole); a · b = b · a exactly, so that changes no bit.
//
// The micro-kernel is the loop of gemm_micro (tile_math.h) with its kMr x kNr accumulator
// written as vectors: in plain scalar loops GCC spills or shuffles the accumulator, depending on
// how the function is inlined (3-6x slower on AVX2); with vector types it stays in registers.
#include "fixed_order_gemm.h"

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>

#include "cpu_dispatch.h"
#include "tile_math.h"

namespace reformer::cpu {
namespace {

// Register tile: kMicroRows x two vectors. 16 vector registers (SSE, AVX2) hold 6 x 2
// accumulators, two B vectors and a broadcast A value; AVX-512's 32 registers hold 8 x 2.
#if defined(__AVX512F__)
constexpr int64_t kVectorBytes = 64;
constexpr int64_t kMicroRows = 8;
#elif defined(__AVX__) || REFORMER_MULTIARCH_VECTOR_BYTES == 32
constexpr int64_t kVectorBytes = 32;
constexpr int64_t kMicroRows = 6;
#else
constexpr int64_t kVectorBytes = 16;
constexpr int64_t kMicroRows = 6;
#endif

template <typename T>
struct Blocking {
  static constexpr int64_t kLanes = kVectorBytes / static_cast<int64_t>(sizeof(T));
  static constexpr int64_t kVectors = 2;  // per row of the register tile
  static constexpr int64_t kMr = kMicroRows;
  static constexpr int64_t kNr = kVectors * kLanes;
  // A block (kMc x kKc) and the task's sums (kMc x kNc) stay in L2; one panel's k block
  // (kKc x kNr, 16 KiB) in L1. A is packed once per task: wide tasks pack it less often.
  static constexpr int64_t kKc = 256;
  static constexpr int64_t kMc = 16 * kMr;
  static constexpr int64_t kNc = 2048 / static_cast<int64_t>(sizeof(T));
  // Elements of B packed at once (16 MiB of float32): wider B is done in column ranges.
  static constexpr int64_t kPackBudget = int64_t{1} << 22;
  static_assert(kNc % kNr == 0, "a task's columns are whole panels");
};

// sums[kMr x kNr] (+)= sliver · panel over kc steps: sliver[k * kMr + i], panel[k * kNr + j].
// Each sum is one multiply-add per k, k ascending, in registers.
template <typename T>
inline void micro_kernel(int64_t kc, const T* __restrict__ sliver, const T* __restrict__ panel,
                         T* __restrict__ sums, int64_t ld, bool accumulate) {
  using B = Blocking<T>;
  typedef T Vec __attribute__((vector_size(kVectorBytes)));
  Vec acc[B::kMr][B::kVectors];
  for (int64_t i = 0; i < B::kMr; ++i)
    for (int64_t v = 0; v < B::kVectors; ++v) {
      if (accumulate) {
        std::memcpy(&acc[i][v], sums + i * ld + v * B::kLanes, sizeof(Vec));
      } else {
        acc[i][v] = Vec{};
      }
    }
  for (int64_t k = 0; k < kc; ++k) {
    Vec b[B::kVectors];
    for (int64_t v = 0; v < B::kVectors; ++v)
      std::memcpy(&b[v], panel + k * B::kNr + v * B::kLanes, sizeof(Vec));
    for (int64_t i = 0; i < B::kMr; ++i) {
      const T a = sliver[k * B::kMr + i];
      for (int64_t v = 0; v < B::kVectors; ++v) acc[i][v] += b[v] * a;
    }
  }
  for (int64_t i = 0; i < B::kMr; ++i)
    for (int64_t v = 0; v < B::kVectors; ++v)
      std::memcpy(sums + i * ld + v * B::kLanes, &acc[i][v], sizeof(Vec));
}

// Rows [0, rows) and columns [0, kc) of A, from `a` (the element (row0, k0)), as k-major
// slivers of kMr rows: sliver s holds dst[s * kc * kMr + k * kMr + i] = A(s * kMr + i, k); rows
// past `rows` (up to a whole sliver) are zero.
template <typename T>
void pack_a_block(const T* a, int64_t rs, int64_t cs, int64_t rows, int64_t kc, T* dst) {
  constexpr int64_t kMr = Blocking<T>::kMr;
  const int64_t slivers = (rows + kMr - 1) / kMr;
  if (rows % kMr != 0) {
    T* last = dst + (slivers - 1) * kc * kMr;
    std::fill(last, last + kc * kMr, T(0));
  }
  if (cs == 1) {  // rows of A are contiguous: one transpose in cache-sized blocks per sliver
    for (int64_t s = 0; s < slivers; ++s)
      transpose_tile(a + s * kMr * rs, std::min(kMr, rows - s * kMr), kc, rs, dst + s * kc * kMr,
                     kMr);
    return;
  }
  // Per sliver, k outer: with rs == 1 (a transposed operand) each k copies kMr contiguous values.
  for (int64_t s = 0; s < slivers; ++s) {
    const T* src = a + s * kMr * rs;
    T* out = dst + s * kc * kMr;
    const int64_t r = std::min(kMr, rows - s * kMr);
    if (r == kMr) {
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t i = 0; i < kMr; ++i) out[k * kMr + i] = src[i * rs + k * cs];
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t i = 0; i < r; ++i) out[k * kMr + i] = src[i * rs + k * cs];
    }
  }
}

// Panels [0, panels) of columns of all k_total rows of B, from `b` (the element (0, j0)): panel p
// holds dst[p * k_total * kNr + k * kNr + j] = B(k, p * kNr + j); columns past `cols` are zero.
template <typename T>
void pack_b_panels(const T* b, int64_t rs, int64_t cs, int64_t k_total, int64_t cols,
                   int64_t panels, T* dst) {
  constexpr int64_t kNr = Blocking<T>::kNr;
  if (cols < panels * kNr) {
    T* last = dst + (panels - 1) * k_total * kNr;
    std::fill(last, last + k_total * kNr, T(0));
  }
  if (rs == 1 && cs != 1) {  // columns of B are contiguous (a transposed weight)
    for (int64_t p = 0; p < panels; ++p)
      transpose_tile(b + p * kNr * cs, std::min(kNr, cols - p * kNr), k_total, cs,
                     dst + p * k_total * kNr, kNr);
    return;
  }
  // Blocks of rows, panels inside: B is read row by row, not one panel's columns at a time
  // down rows that are far apart.
  constexpr int64_t kRowBlock = 32;
  for (int64_t k0 = 0; k0 < k_total; k0 += kRowBlock) {
    const int64_t k1 = std::min(k_total, k0 + kRowBlock);
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t width = std::min(kNr, cols - p * kNr);
      T* panel = dst + p * k_total * kNr;
      const T* src = b + p * kNr * cs;
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t j = 0; j < width; ++j) panel[k * kNr + j] = src[k * rs + j * cs];
    }
  }
}

// C(i, j) for rows [i0, i0 + rows) and columns [j0, j0 + cols) from their sums.
template <typename T>
void write_tile(const GemmArgs<T>& g, int64_t i0, int64_t rows, int64_t j0, int64_t cols,
                const T* sums, int64_t ld) {
  const T alpha = g.alpha;
  if (g.c_rs == 1 && g.c_cs != 1 && g.bias == nullptr) {  // C's columns are contiguous
    for (int64_t j = 0; j < cols; ++j) {
      T* __restrict__ c = g.c + i0 + (j0 + j) * g.c_cs;
      if (g.accumulate) {
        for (int64_t i = 0; i < rows; ++i) c[i] = c[i] + alpha * sums[i * ld + j];
      } else {
        for (int64_t i = 0; i < rows; ++i) c[i] = alpha * sums[i * ld + j];
      }
    }
    return;
  }
  for (int64_t i = 0; i < rows; ++i) {
    const T* __restrict__ s = sums + i * ld;
    T* __restrict__ c = g.c + (i0 + i) * g.c_rs + j0 * g.c_cs;
    const int64_t cs = g.c_cs;
    if (g.accumulate) {
      for (int64_t j = 0; j < cols; ++j) c[j * cs] = c[j * cs] + alpha * s[j];
    } else if (g.bias != nullptr) {
      const T* __restrict__ bias = g.bias + j0 * g.bias_stride;
      const int64_t bs = g.bias_stride;
      for (int64_t j = 0; j < cols; ++j) c[j * cs] = bias[j * bs] + alpha * s[j];
    } else {
      for (int64_t j = 0; j < cols; ++j) c[j * cs] = alpha * s[j];
    }
  }
}

// Packs panels [p0, p0 + np) of g's B (all K rows) into dst, in parallel over panels: packing
// copies values (no arithmetic), so how it is split does not matter.
template <typename T>
void pack_b_range(const GemmArgs<T>& g, int64_t p0, int64_t np, T* dst) {
  using B = Blocking<T>;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, g.k * B::kNr));
  at::parallel_for(0, np, grain, [&](int64_t begin, int64_t end) {
    const int64_t j0 = (p0 + begin) * B::kNr;
    pack_b_panels(g.b + j0 * g.b_cs, g.b_rs, g.b_cs, g.k,
                  std::min((end - begin) * B::kNr, g.n - j0), end - begin,
                  dst + begin * g.k * B::kNr);
  });
}

// One output tile (rows [i0, i0 + rows <= kMc), panels [p0 + q0, p0 + q0 + nq)): every sum
// from k = 0 to K - 1, then C. Compiled per instruction set (cpu_dispatch.h).
template <typename T>
REFORMER_MULTIARCH void compute_tile(const GemmArgs<T>& g, const T* packed, int64_t p0,
                                     int64_t i0, int64_t rows, int64_t q0, int64_t nq,
                                     T* sliver_buf, T* sums) {
  using B = Blocking<T>;
  const int64_t N = g.n, K = g.k;
  const int64_t slivers = (rows + B::kMr - 1) / B::kMr;
  const int64_t ld = nq * B::kNr;
  for (int64_t k0 = 0; k0 < K; k0 += B::kKc) {
    const int64_t kc = std::min(B::kKc, K - k0);
    pack_a_block(g.a + i0 * g.a_rs + k0 * g.a_cs, g.a_rs, g.a_cs, rows, kc, sliver_buf);
    for (int64_t q = 0; q < nq; ++q) {
      const T* panel = packed + (q0 + q) * K * B::kNr + k0 * B::kNr;
      for (int64_t s = 0; s < slivers; ++s)
        micro_kernel(kc, sliver_buf + s * kc * B::kMr, panel,
                     sums + s * B::kMr * ld + q * B::kNr, ld, /*accumulate=*/k0 > 0);
    }
  }
  const int64_t j0 = (p0 + q0) * B::kNr;
  write_tile(g, i0, rows, j0, std::min(ld, N - j0), sums, ld);
}

// C's columns of panels [p0, p0 + np), from those panels packed in `packed`. Output tiles: a
// task owns its tile's every sum from k = 0 to K - 1.
template <typename T>
void run_tiles(const GemmArgs<T>& g, const T* packed, int64_t p0, int64_t np) {
  using B = Blocking<T>;
  const int64_t M = g.m;
  constexpr int64_t kTaskPanels = B::kNc / B::kNr;
  const int64_t col_tasks = (np + kTaskPanels - 1) / kTaskPanels;
  // Rows per task: kMc, or fewer (whole slivers) so that there are a few tasks per thread. Every
  // element's sum is the same whatever the tiling, so this balances the load without changing
  // any result.
  const int64_t min_tasks = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t want_row_tasks = (min_tasks + col_tasks - 1) / col_tasks;
  const int64_t mc = std::clamp(round_up((M + want_row_tasks - 1) / want_row_tasks, B::kMr),
                                B::kMr, B::kMc);
  const int64_t row_tasks = (M + mc - 1) / mc;
  at::parallel_for(0, row_tasks * col_tasks, 1, [&](int64_t begin, int64_t end) {
    T* sliver_buf = thread_scratch<T>(B::kMc * B::kKc + B::kMc * B::kNc);
    T* sums = sliver_buf + B::kMc * B::kKc;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i0 = (task / col_tasks) * mc;
      const int64_t q0 = (task % col_tasks) * kTaskPanels;
      compute_tile(g, packed, p0, i0, std::min(mc, M - i0), q0, std::min(kTaskPanels, np - q0),
                   sliver_buf, sums);
    }
  });
}

template <typename T>
at::TensorOptions options_of() {
  return at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
}

}  // namespace

template <typename T>
void fixed_order_gemm(const GemmArgs<T>& g, const T* packed_b) {
  using B = Blocking<T>;
  const int64_t M = g.m, N = g.n, K = g.k;
  TORCH_CHECK(M >= 0 && N >= 0 && K >= 0, "fixed_order_gemm: negative size");
  TORCH_CHECK(!(g.accumulate && g.bias != nullptr),
              "fixed_order_gemm: accumulate and bias are exclusive");
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum: C = init
    if (g.accumulate) return;
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j)
        g.c[i * g.c_rs + j * g.c_cs] = g.bias != nullptr ? g.bias[j * g.bias_stride] : T(0);
    return;
  }
  const int64_t panels = (N + B::kNr - 1) / B::kNr;
  if (packed_b != nullptr) {
    run_tiles(g, packed_b, 0, panels);
    return;
  }
  if (N > 2 * M && g.bias == nullptr) {
    // B is packed whole and read once per row block: when it is much larger than A, compute
    // Cᵀ = Bᵀ · Aᵀ instead (every element is the same sum, a · b being b · a exactly).
    GemmArgs<T> t = g;
    t.m = N;
    t.n = M;
    t.a = g.b;
    t.a_rs = g.b_cs;
    t.a_cs = g.b_rs;
    t.b = g.a;
    t.b_rs = g.a_cs;
    t.b_cs = g.a_rs;
    t.c_rs = g.c_cs;
    t.c_cs = g.c_rs;
    return fixed_order_gemm(t);
  }

  constexpr int64_t kTaskPanels = B::kNc / B::kNr;
  // Panels packed at once: whole tasks' worth, within the budget (at least one task's).
  const int64_t fit = std::max<int64_t>(1, B::kPackBudget / (K * B::kNr) / kTaskPanels);
  const int64_t batch_panels = std::min(panels, fit * kTaskPanels);
  auto storage = at::empty({batch_panels * K * B::kNr}, options_of<T>());
  T* packed = storage.template data_ptr<T>();
  for (int64_t p0 = 0; p0 < panels; p0 += batch_panels) {
    const int64_t np = std::min(batch_panels, panels - p0);
    pack_b_range(g, p0, np, packed);
    run_tiles(g, packed, p0, np);
  }
}

template void fixed_order_gemm<float>(const GemmArgs<float>&, const float*);
template void fixed_order_gemm<double>(const GemmArgs<double>&, const double*);

namespace {

void check_float_cpu(const at::Tensor& t, at::ScalarType dtype, const char* what) {
  TORCH_CHECK(t.is_cpu() && t.scalar_type() == dtype, "fixed_order_gemm: ", what,
              " must be a CPU tensor of ", dtype, ", got ", t.scalar_type(), " on ", t.device());
}

// out = init + alpha · a · b, b packed in `panels` when defined.
void gemm_out_impl(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                   const at::Tensor& panels, const at::Tensor& bias, double alpha,
                   bool accumulate) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && out.dim() == 2 && a.size(1) == b.size(0) &&
                  out.size(0) == a.size(0) && out.size(1) == b.size(1),
              "fixed_order_gemm: shapes ", out.sizes(), " = ", a.sizes(), " x ", b.sizes());
  const auto dtype = out.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "fixed_order_gemm: float32 or float64 expected, got ", dtype);
  check_float_cpu(out, dtype, "out");
  check_float_cpu(a, dtype, "a");
  check_float_cpu(b, dtype, "b");
  TORCH_CHECK(!(accumulate && bias.defined()), "fixed_order_gemm: accumulate and bias are exclusive");
  if (bias.defined()) {
    check_float_cpu(bias, dtype, "bias");
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == out.size(1),
                "fixed_order_gemm: bias must have shape (", out.size(1), "), got ", bias.sizes());
    at::assert_no_overlap(out, bias);
  }
  at::assert_no_internal_overlap(out);
  at::assert_no_overlap(out, a);
  if (panels.defined()) {
    at::assert_no_overlap(out, panels);
  } else {
    at::assert_no_overlap(out, b);
  }
  AT_DISPATCH_FLOATING_TYPES(dtype, "fixed_order_gemm", [&] {
    GemmArgs<scalar_t> g;
    g.m = out.size(0);
    g.n = out.size(1);
    g.k = a.size(1);
    g.a = a.data_ptr<scalar_t>();
    g.a_rs = a.stride(0);
    g.a_cs = a.stride(1);
    if (!panels.defined()) {
      g.b = b.data_ptr<scalar_t>();
      g.b_rs = b.stride(0);
      g.b_cs = b.stride(1);
    }
    g.c = out.data_ptr<scalar_t>();
    g.c_rs = out.stride(0);
    g.c_cs = out.stride(1);
    if (bias.defined()) {
      g.bias = bias.data_ptr<scalar_t>();
      g.bias_stride = bias.stride(0);
    }
    g.alpha = static_cast<scalar_t>(alpha);
    g.accumulate = accumulate;
    fixed_order_gemm(g, panels.defined() ? panels.data_ptr<scalar_t>() : nullptr);
  });
}

}  // namespace

void fixed_order_gemm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                          const at::Tensor& bias, double alpha, bool accumulate) {
  gemm_out_impl(out, a, b, at::Tensor(), bias, alpha, accumulate);
}

void fixed_order_gemm_out(const at::Tensor& out, const at::Tensor& a, const PackedRhs& b,
                          const at::Tensor& bias, double alpha, bool accumulate) {
  TORCH_CHECK(b.panels.defined(), "fixed_order_gemm: an empty PackedRhs");
  gemm_out_impl(out, a, b.b, b.panels, bias, alpha, accumulate);
}

PackedRhs pack_rhs(const at::Tensor& b) {
  TORCH_CHECK(b.dim() == 2, "pack_rhs: a 2-D operand expected, got ", b.sizes());
  TORCH_CHECK(b.scalar_type() == at::kFloat || b.scalar_type() == at::kDouble,
              "pack_rhs: float32 or float64 expected, got ", b.scalar_type());
  check_float_cpu(b, b.scalar_type(), "b");
  PackedRhs packed;
  packed.b = b;
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "pack_rhs", [&] {
    using B = Blocking<scalar_t>;
    GemmArgs<scalar_t> g;
    g.k = b.size(0);
    g.n = b.size(1);
    g.b = b.data_ptr<scalar_t>();
    g.b_rs = b.stride(0);
    g.b_cs = b.stride(1);
    const int64_t panels = (g.n + B::kNr - 1) / B::kNr;
    packed.panels = at::empty({panels * g.k * B::kNr}, b.options());
    if (panels > 0 && g.k > 0) pack_b_range(g, 0, panels, packed.panels.data_ptr<scalar_t>());
  });
  return packed;
}

namespace {

// Column blocks of kBlock: one thread sums a block's columns over all rows, in order.
template <typename In, typename Acc>
void column_sums_loop(Acc* acc, int64_t acc_stride, const In* m, int64_t rows, int64_t cols,
                      int64_t rs, int64_t cs) {
  constexpr int64_t kBlock = 64;
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, rows * kBlock));
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * kBlock;
      const int64_t width = std::min(kBlock, cols - c0);
      Acc sums[kBlock] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const In* __restrict__ row = m + r * rs + c0 * cs;
        for (int64_t j = 0; j < width; ++j) sums[j] += static_cast<Acc>(row[j * cs]);
      }
      for (int64_t j = 0; j < width; ++j) acc[(c0 + j) * acc_stride] += sums[j];
    }
  });
}

template <typename Acc>
void column_sums_dispatch(const at::Tensor& acc, const at::Tensor& m) {
  Acc* out = acc.data_ptr<Acc>();
  const int64_t rows = m.size(0), cols = m.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, m.scalar_type(), "column_sums", [&] {
    column_sums_loop<scalar_t, Acc>(out, acc.stride(0), m.data_ptr<scalar_t>(), rows, cols,
                                    m.stride(0), m.stride(1));
  });
}

}  // namespace

void fixed_order_column_sums_(const at::Tensor& acc, const at::Tensor& m) {
  TORCH_CHECK(m.dim() == 2 && acc.dim() == 1 && acc.size(0) == m.size(1),
              "fixed_order_column_sums_: acc ", acc.sizes(), " for a matrix ", m.sizes());
  TORCH_CHECK(acc.is_cpu() && m.is_cpu(), "fixed_order_column_sums_: CPU tensors expected");
  at::assert_no_overlap(acc, m);
  if (acc.scalar_type() == at::kFloat) {
    column_sums_dispatch<float>(acc, m);
  } else {
    TORCH_CHECK(acc.scalar_type() == at::kDouble,
                "fixed_order_column_sums_: acc must be float32 or float64, got ",
                acc.scalar_type());
    column_sums_dispatch<double>(acc, m);
  }
}

}  // namespace reformer::cpu

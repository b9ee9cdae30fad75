// The repository's CUDA kernels (kernels/*.cuh, unmodified but for their REFORMER_CUDA_SIM
// hooks) run on the CPU under the simulated runtime of cuda_sim_runtime.h, driven the way
// csrc/cuda/*.cu drives them, and compared with the CPU operators (reformer::lsh_attention,
// lsh_attention_backward, lsh_buckets through the dispatcher):
//   - attention forward + backward: FFMA kernels (float, double, and fp16/bf16 inputs with fp32
//     accumulation) and tensor-core kernels (fp16/bf16, D = Dv in {32, 64, 128});
//   - local attention (the FFMA kernels with local parameters) against reformer::local_attention
//     and local_attention_backward (csrc/local_attention.h);
//   - hashing: lsh_hash.cuh (FFMA) and lsh_hash_mma.cuh (tensor cores, with the three rotation
//     pieces built as csrc/cuda/lsh_hash_cuda.cu builds them), bucket for bucket;
//   - the simulator itself: fp16/bf16 conversions, its mma emulation against the kernels'
//     fragment loaders (two independent transcriptions of the PTX table), collectives, and the
//     errors it reports.
// What this cannot show: anything about the hardware beyond the documented semantics the
// simulator implements (timing, memory ordering between CTAs, the real mma rounding).
// CUDA_SIM_REPORT=1 in the environment prints each comparison's error against its bound.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <stdexcept>
#include <tuple>
#include <utility>
#include <vector>

// The simulated runtime first: the kernels below see its threadIdx, __syncthreads, ... and hooks.
#include "cuda_sim_runtime.h"

#include "kernels/lsh_attention_bwd.cuh"
#include "kernels/lsh_attention_fwd.cuh"
#include "kernels/lsh_attention_mma_bwd.cuh"
#include "kernels/lsh_attention_mma_fwd.cuh"
#include "kernels/lsh_hash.cuh"
#include "kernels/lsh_hash_mma.cuh"

#include "csrc/cuda/rotation_pieces.h"
#include "csrc/local_attention.h"
#include "csrc/seeded_dropout.h"
#include "sim_checks.h"
#include "tests/cpp/reformer_ops.h"

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using namespace reformer::cuda;

// ------------------------------------------------------------------ the CPU operators

using reformer_test::lsh_attention;
using reformer_test::lsh_attention_backward;
using reformer_test::lsh_buckets;

using cuda_sim_checks::close;
using cuda_sim_checks::data;

// ------------------------------------------------------------------ attention problems

struct AttentionCase {
  const char* name;
  int64_t B, H, L, bucket, R, half, Hr;  // half = n_buckets / 2; Hr rotation heads (1 or H)
  int before, after;
  bool causal, masked;
  double scale;
  uint64_t seed;
  double dropout_p = 0;  // attention dropout (docs/semantics.md §1 "Dropout"), seed 77 + seed
};

// Bucket sizes not multiples of 16 and above one CTA's rows (16 FFMA, 64 tensor cores), L not a
// multiple of the bucket size, one chunk per round, windows (1, 0), (1, 1), (2, 1), causal and
// not, padding (with an all-padding batch row where B > 1), rotations shared or per head.
const AttentionCase kAttentionCases[] = {
    {"L45_bucket20_R2", 1, 2, 45, 20, 2, 3, 1, 1, 0, false, false, 0.8, 1},
    {"L70_bucket48_R3_causal_masked_window11", 2, 1, 70, 48, 3, 2, 1, 1, 1, true, true, 1.0, 2},
    {"L150_bucket64_window21_masked", 1, 1, 150, 64, 2, 3, 1, 2, 1, false, true, 0.9, 3},
    {"L100_bucket128_one_chunk_per_round_causal_masked", 1, 2, 100, 128, 3, 1, 2, 1, 0, true,
     true, 1.1, 4},
    {"L77_bucket20_window11_causal", 1, 1, 77, 20, 2, 4, 1, 1, 1, true, false, 0.7, 5},
};

// Inputs in the kernel dtype (exactly representable, so both sides see the same numbers) and the
// CPU operator's results on them in double precision.
struct AttentionProblem {
  Tensor qk, v, dout, dlse, mask;                       // mask: undefined when unmasked
  Tensor out, lse, sorted, stats, grad_qk, grad_v;      // reference (double)
};

AttentionProblem make_attention_problem(const AttentionCase& c, int64_t D, int64_t Dv,
                                        at::ScalarType dtype) {
  at::manual_seed(c.seed * 1000 + D * 7 + Dv);
  AttentionProblem pr;
  pr.qk = at::randn({c.B, c.H, c.L, D}, at::kDouble).to(dtype);
  pr.v = at::randn({c.B, c.H, c.L, Dv}, at::kDouble).to(dtype);
  pr.dout = at::randn({c.B, c.H, c.L, Dv}, at::kDouble).to(dtype);
  const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  pr.dlse = at::randn({c.B, c.H, c.L}, at::kDouble).to(acc);
  const Tensor rot = at::randn({c.Hr, D, c.R, c.half}, at::kDouble);
  OptTensor mask;
  if (c.masked) {
    pr.mask = at::rand({c.B, c.L}, at::kDouble) < 0.25;
    if (c.B > 1) pr.mask[c.B - 1].fill_(true);  // a batch row of padding only
    mask = pr.mask;
  }
  const Tensor qk = pr.qk.to(at::kDouble), v = pr.v.to(at::kDouble);
  OptTensor dropout_seed;
  if (c.dropout_p > 0) dropout_seed = at::scalar_tensor(int64_t(77 + c.seed), at::kLong);
  std::tie(pr.out, pr.lse, pr.sorted, pr.stats) =
      lsh_attention(qk, v, rot, mask, c.bucket, c.causal, c.before, c.after, c.scale, {},
                    c.dropout_p, dropout_seed);
  std::tie(pr.grad_qk, pr.grad_v) = lsh_attention_backward(
      pr.dout.to(at::kDouble), pr.dlse.to(at::kDouble), qk, v, pr.out, pr.stats, pr.sorted, mask,
      c.bucket, c.causal, c.before, c.after, c.scale, c.dropout_p, dropout_seed);
  return pr;
}

// AttentionParams as make_params of csrc/cuda/lsh_attention_cuda.cu fills them.
AttentionParams make_params(const AttentionCase& c, int64_t D, int64_t Dv,
                            const AttentionProblem& pr) {
  AttentionParams p{};
  p.batch = c.B;
  p.heads = c.H;
  p.length = c.L;
  p.padded_length = reformer::padded_length(c.L, c.bucket);
  p.dim = D;
  p.value_dim = Dv;
  p.bucket_size = c.bucket;
  p.chunks_per_round = p.padded_length / c.bucket;
  p.n_chunks = c.R * p.chunks_per_round;
  p.before = c.before;
  p.after = c.after;
  p.causal = c.causal;
  p.scale = c.scale;
  p.padding = pr.mask.defined() ? pr.mask.data_ptr<bool>() : nullptr;
  p.sorted = pr.sorted.data_ptr<int32_t>();
  if (c.dropout_p > 0) {  // set_dropout of csrc/cuda/lsh_attention_cuda.cu
    p.dropout = true;
    p.dropout_seed = 77 + c.seed;
    p.dropout_threshold = reformer::dropout_hash::threshold(c.dropout_p);
    p.keep_scale = 1.0 / (1.0 - c.dropout_p);
  }
  return p;
}

// ------------------------------------------------------------------ the two kernel families

// FFMA kernels (lsh_attention_{fwd,bwd}.cuh), launched like launch_lsh_forward/backward.
template <typename scalar_t, typename acc_type, int kSlots>
struct FfmaKernels {
  using acc_t = acc_type;
  static void forward(const AttentionParams& p, int64_t R, const Tensor& x, const Tensor& v,
                      const Tensor& g, Tensor& out, Tensor& stats) {
    const ForwardArgs<scalar_t, acc_t> a{data<scalar_t>(x), data<scalar_t>(v), data<acc_t>(g),
                                         data<acc_t>(out), data<acc_t>(stats)};
    SharedCarver carver{nullptr};
    ForwardShared<acc_t>::carve(carver, p.dim, p.value_dim);
    for (int64_t r = 0; r < R; ++r)
      cuda_sim::launch(ctas_per_round(p), kThreads, carver.used,
                       [&] { lsh_forward_round_kernel<scalar_t, acc_t, kSlots>(p, a, r); });
  }
  static void backward(const AttentionParams& p, int64_t R, const Tensor& x, const Tensor& v,
                       const Tensor& dout, const Tensor& g, const Tensor& stats,
                       const Tensor& delta, Tensor& dqk, Tensor& dv) {
    const BackwardArgs<scalar_t, acc_t> a{data<scalar_t>(x),  data<scalar_t>(v),
                                          data<scalar_t>(dout), data<acc_t>(g),
                                          data<acc_t>(stats), data<acc_t>(delta),
                                          data<acc_t>(dqk),   data<acc_t>(dv)};
    SharedCarver query_carver{nullptr}, key_carver{nullptr};
    QueryPassShared<acc_t>::carve(query_carver, p.dim, p.value_dim);
    KeyPassShared<acc_t>::carve(key_carver, p.dim, p.value_dim);
    for (int64_t r = 0; r < R; ++r)
      cuda_sim::launch(ctas_per_round(p), kThreads, query_carver.used,
                       [&] { lsh_backward_query_kernel<scalar_t, acc_t, kSlots>(p, a, r); });
    for (int64_t r = 0; r < R; ++r)
      cuda_sim::launch(ctas_per_round(p), kThreads, key_carver.used,
                       [&] { lsh_backward_key_kernel<scalar_t, acc_t, kSlots>(p, a, r); });
  }
};

// Tensor-core kernels (lsh_attention_mma_{fwd,bwd}.cuh), launched like launch_lsh_*_mma.
template <typename T, int kDim>
struct MmaKernels {
  using acc_t = float;
  static void forward(const AttentionParams& p, int64_t R, const Tensor& x, const Tensor& v,
                      const Tensor& g, Tensor& out, Tensor& stats) {
    const MmaForwardArgs<T> a{data<T>(x), data<T>(v), data<float>(g), data<float>(out),
                              data<float>(stats)};
    SharedCarver carver{nullptr};
    MmaForwardShared<T, kDim>::carve(carver);
    for (int64_t r = 0; r < R; ++r)
      cuda_sim::launch(ctas_per_round(p, kMmaRows), kMmaThreads, carver.used,
                       [&] { lsh_forward_round_mma_kernel<T, kDim>(p, a, r); });
  }
  static void backward(const AttentionParams& p, int64_t R, const Tensor& x, const Tensor& v,
                       const Tensor& dout, const Tensor& g, const Tensor& stats,
                       const Tensor& delta, Tensor& dqk, Tensor& dv) {
    const MmaBackwardArgs<T> a{data<T>(x),         data<T>(v),         data<T>(dout),
                               data<float>(g),     data<float>(stats), data<float>(delta),
                               data<float>(dqk),   data<float>(dv)};
    SharedCarver carver{nullptr};
    MmaBackwardShared<T, kDim>::carve(carver);
    for (int64_t r = 0; r < R; ++r)
      cuda_sim::launch(ctas_per_round(p, kMmaRows), kMmaThreads, carver.used,
                       [&] { lsh_backward_query_mma_kernel<T, kDim>(p, a, r); });
    for (int64_t r = 0; r < R; ++r)
      cuda_sim::launch(ctas_per_round(p, kMmaRows), kMmaThreads, carver.used,
                       [&] { lsh_backward_key_mma_kernel<T, kDim>(p, a, r); });
  }
};

struct SimResult {
  Tensor out, lse, stats, grad_qk, grad_v;
};

// The host side of lsh_attention_cuda and lsh_attention_backward_cuda around the kernels.
template <typename Kernels>
SimResult simulate_attention(const AttentionCase& c, int64_t D, int64_t Dv,
                             const AttentionProblem& pr) {
  using acc_t = typename Kernels::acc_t;
  const auto acc = std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat;
  const auto dtype = pr.qk.scalar_type();
  const Tensor x = pr.qk.contiguous(), values = pr.v.contiguous(), dout = pr.dout.contiguous();
  const AttentionParams p = make_params(c, D, Dv, pr);
  // key_scales: g_j = rsqrt(mean(x_j^2) + eps) / sqrt(D), in the accumulation type
  const Tensor g = x.to(acc).square().mean(-1).add_(reformer::kKeyNormEps).mul_(double(D))
                       .rsqrt_().contiguous();

  Tensor out_acc = at::zeros({c.B, c.H, c.L, Dv}, acc);
  Tensor stats = at::full({c.B, c.H, c.L, 2}, -std::numeric_limits<double>::infinity(), acc);
  Kernels::forward(p, c.R, x, values, g, out_acc, stats);
  stats.masked_fill_(stats.isneginf(), 0);  // padding queries: stats 0, lse 0
  SimResult s;
  s.stats = stats;
  s.lse = at::add(stats.select(3, 0), stats.select(3, 1));
  s.out = out_acc.to(dtype);

  // Δ_i = dO_i · O_i - dlse_i, from the output the forward returned (in the input dtype)
  Tensor delta = at::mul(dout.to(acc), s.out.to(acc)).sum(-1);
  delta.sub_(pr.dlse.to(acc));
  delta = delta.contiguous();
  Tensor dqk = at::zeros({c.B, c.H, c.L, D}, acc), dv = at::zeros({c.B, c.H, c.L, Dv}, acc);
  Kernels::backward(p, c.R, x, values, dout, g, stats, delta, dqk, dv);
  s.grad_qk = dqk.to(dtype);
  s.grad_v = dv.to(dtype);
  return s;
}

struct Tolerance {
  double rtol, atol_of_max;  // outputs and gradients
  double lse_rtol, lse_atol;  // lse (absolute atol: lse is a log)
};

void expect_matches_cpu(const AttentionCase& c, const AttentionProblem& pr, const SimResult& s,
                        const Tolerance& tol) {
  EXPECT_TRUE(close(s.out, pr.out, tol.rtol, tol.atol_of_max, "out"));
  EXPECT_TRUE(close(s.lse, pr.lse, tol.lse_rtol, tol.lse_atol, "lse"));
  EXPECT_TRUE(close(s.grad_qk, pr.grad_qk, tol.rtol, tol.atol_of_max, "grad_qk"));
  EXPECT_TRUE(close(s.grad_v, pr.grad_v, tol.rtol, tol.atol_of_max, "grad_v"));
  if (c.masked) {
    // Padding positions: output and stats exactly 0 (as the CUDA op defines them), and no
    // gradient (never a valid query or key).
    const Tensor pad = pr.mask.view({c.B, 1, c.L, 1}).expand({c.B, c.H, c.L, 1});
    for (const auto& [name, t] : {std::pair{"out", s.out}, {"stats", s.stats},
                                  {"grad_qk", s.grad_qk}, {"grad_v", s.grad_v}}) {
      const Tensor at_padding = t.to(at::kDouble).masked_select(pad);
      EXPECT_TRUE(at_padding.numel() == 0 || at_padding.abs().max().item<double>() == 0.0)
          << name << " is not 0 at padding positions";
    }
  }
}

template <typename Kernels>
void check_case(const AttentionCase& c, int64_t D, int64_t Dv, at::ScalarType dtype,
                const Tolerance& tol) {
  SCOPED_TRACE(std::string(c.name) + " D=" + std::to_string(D) + " Dv=" + std::to_string(Dv) +
               " " + c10::toString(dtype));
  if (std::getenv("CUDA_SIM_REPORT") != nullptr)
    std::printf("%s D=%lld Dv=%lld %s\n", c.name, static_cast<long long>(D),
                static_cast<long long>(Dv), c10::toString(dtype));
  const AttentionProblem pr = make_attention_problem(c, D, Dv, dtype);
  expect_matches_cpu(c, pr, simulate_attention<Kernels>(c, D, Dv, pr), tol);
}

// The FFMA kernels for max(D, Dv) lane slots, as dispatch_slots picks them.
template <typename scalar_t, typename acc_t>
void check_ffma_case(const AttentionCase& c, int64_t D, int64_t Dv, at::ScalarType dtype,
                     const Tolerance& tol) {
  switch (slots_for(std::max(D, Dv))) {
    case 1: check_case<FfmaKernels<scalar_t, acc_t, 1>>(c, D, Dv, dtype, tol); break;
    case 2: check_case<FfmaKernels<scalar_t, acc_t, 2>>(c, D, Dv, dtype, tol); break;
    case 4: check_case<FfmaKernels<scalar_t, acc_t, 4>>(c, D, Dv, dtype, tol); break;
    default: FAIL() << "head dims above 128";
  }
}

// fp32 accumulation of exact inputs against a double reference.
constexpr Tolerance kFloatTolerance{1e-4, 1e-5, 1e-5, 1e-4};
constexpr Tolerance kDoubleTolerance{1e-10, 1e-12, 1e-12, 1e-10};

// Tensor cores round P and dS to the input type before the second product (as FlashAttention
// does), and the outputs are returned in the input type: errors of a few units of the input
// type's epsilon relative to the tensor's magnitude (eps = 2^-10 fp16, 2^-7 bf16).
Tolerance mma_tolerance(at::ScalarType dtype) {
  const double eps = dtype == at::kHalf ? 0x1p-10 : 0x1p-7;
  return {0.0, 2 * eps, 1e-5, 1e-4};
}

TEST(CudaSimAttentionFfma, Float) {
  const int64_t dims[][2] = {{32, 32}, {64, 40}, {128, 128}, {20, 96}, {48, 64}};
  int k = 0;
  for (const AttentionCase& c : kAttentionCases) {
    const int64_t D = dims[k][0], Dv = dims[k][1];
    ++k;
    check_ffma_case<float, float>(c, D, Dv, at::kFloat, kFloatTolerance);
  }
}

TEST(CudaSimAttentionFfma, Double) {
  check_ffma_case<double, double>(kAttentionCases[1], 24, 40, at::kDouble, kDoubleTolerance);
  check_ffma_case<double, double>(kAttentionCases[3], 64, 64, at::kDouble, kDoubleTolerance);
}

// fp16/bf16 inputs on the FFMA kernels (head dims the tensor cores do not take): fp32
// accumulation; the outputs are rounded to the input type.
// Attention dropout (the FFMA kernels; the tensor-core ones fall back to them): every case with
// a rate, against the CPU operators with the same seed.
TEST(CudaSimAttentionFfma, Dropout) {
  for (AttentionCase c : kAttentionCases) {
    c.dropout_p = c.seed % 2 ? 0.3 : 0.6;
    check_ffma_case<double, double>(c, 24, 40, at::kDouble, kDoubleTolerance);
    check_ffma_case<float, float>(c, 16, 16, at::kFloat, kFloatTolerance);
  }
}

TEST(CudaSimAttentionFfma, HalfAndBFloat16Inputs) {
  check_ffma_case<c10::Half, float>(kAttentionCases[2], 48, 24, at::kHalf,
                                    {0.0, 0x1p-10, 1e-5, 1e-4});
  check_ffma_case<c10::BFloat16, float>(kAttentionCases[4], 40, 72, at::kBFloat16,
                                        {0.0, 0x1p-7, 1e-5, 1e-4});
}

template <typename T, int kDim>
void check_mma_all_cases(at::ScalarType dtype) {
  for (const AttentionCase& c : kAttentionCases)
    check_case<MmaKernels<T, kDim>>(c, kDim, kDim, dtype, mma_tolerance(dtype));
}

TEST(CudaSimAttentionMma, Half32) { check_mma_all_cases<__half, 32>(at::kHalf); }
TEST(CudaSimAttentionMma, Half64) { check_mma_all_cases<__half, 64>(at::kHalf); }
TEST(CudaSimAttentionMma, Half128) { check_mma_all_cases<__half, 128>(at::kHalf); }
TEST(CudaSimAttentionMma, BFloat16_32) { check_mma_all_cases<__nv_bfloat16, 32>(at::kBFloat16); }
TEST(CudaSimAttentionMma, BFloat16_64) { check_mma_all_cases<__nv_bfloat16, 64>(at::kBFloat16); }
TEST(CudaSimAttentionMma, BFloat16_128) { check_mma_all_cases<__nv_bfloat16, 128>(at::kBFloat16); }

// ------------------------------------------------------------------ hashing

struct HashCase {
  const char* name;
  int64_t B, H, L, D, Hr, R, half;  // half = n_buckets / 2 (sum of the factors / 2)
  bool masked;
  uint64_t seed;
  std::vector<int64_t> factors = {};  // bucket_factors: empty for n_buckets = 2 * half
};

// half not a multiple of the 64-column tile; L above and below one CTA's 128 rows, not a
// multiple of it; rotations shared (Hr = 1) and per head (Hr = H).
const HashCase kHashCases[] = {
    {"shared_rotations_half37", 2, 2, 150, 32, 1, 2, 37, true, 21},
    {"per_head_rotations_half130", 1, 3, 130, 64, 3, 3, 130, true, 22},
    {"short_L_half37", 1, 2, 40, 128, 1, 1, 37, false, 23},
    {"per_head_half130_D128", 1, 2, 200, 128, 2, 2, 130, true, 24},
};

// Factorised bucket counts: factor slices narrower and wider than the 64-column tile, not
// multiples of it, starting at odd columns; one factor as the unfactorised case.
const HashCase kFactorisedHashCases[] = {
    {"factors_32_64", 2, 2, 150, 32, 1, 2, 48, true, 31, {32, 64}},
    {"factors_6_140_10", 1, 3, 130, 64, 3, 2, 78, true, 32, {6, 140, 10}},
    {"factors_2_4_6", 1, 2, 40, 128, 1, 3, 6, false, 33, {2, 4, 6}},
    {"factor_74_alone", 1, 2, 200, 32, 2, 2, 37, true, 34, {74}},
};

struct HashProblem {
  Tensor qk, rot, mask;  // qk in the kernel dtype; rot fp32 (fp64 for double qk)
  Tensor buckets;        // the CPU operator's, (B, H, R, L) int64
};

// Inputs whose buckets are not decided by rounding: rows where the two largest of [p, -p] of
// any round are within 1e-3 are drawn again.
HashProblem make_hash_problem(const HashCase& c, at::ScalarType dtype) {
  at::manual_seed(c.seed);
  HashProblem pr;
  const auto rot_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  pr.rot = at::randn({c.Hr, c.D, c.R, c.half}, at::kDouble).to(rot_dtype);
  pr.qk = at::randn({c.B, c.H, c.L, c.D}, at::kDouble).to(dtype);
  const Tensor rot = pr.rot.to(at::kDouble).expand({c.H, c.D, c.R, c.half});
  std::vector<int64_t> widths;  // rotation columns of each factor
  for (const int64_t f : c.factors) widths.push_back(f / 2);
  if (widths.empty()) widths.push_back(c.half);
  for (int attempt = 0;; ++attempt) {
    const Tensor p = at::einsum("bhld,hdrk->bhrlk", {pr.qk.to(at::kDouble), rot});
    Tensor near_tie = at::zeros({c.B, c.H, c.L}, at::kBool);
    int64_t col = 0;
    for (const int64_t w : widths) {  // per factor: its digit must not be decided by rounding
      const Tensor pj = p.narrow(-1, col, w);
      const Tensor top = std::get<0>(at::cat({pj, -pj}, -1).topk(2, -1));
      near_tie = near_tie.logical_or((top.select(-1, 0) - top.select(-1, 1) < 1e-3).any(2));
      col += w;
    }
    if (!near_tie.any().item<bool>()) break;
    if (attempt == 50) throw std::runtime_error("could not draw hash inputs without near-ties");
    const Tensor fresh = at::randn({c.B, c.H, c.L, c.D}, at::kDouble).to(dtype);
    pr.qk = at::where(near_tie.unsqueeze(-1), fresh, pr.qk);
  }
  OptTensor mask;
  if (c.masked) {
    pr.mask = at::rand({c.B, c.L}, at::kDouble) < 0.25;
    mask = pr.mask;
  }
  pr.buckets = lsh_buckets(pr.qk, pr.rot, mask, c.factors);
  return pr;
}

HashParams hash_params(const HashCase& c) {
  reformer::BucketFactors factors = reformer::single_factor(c.half);
  if (!c.factors.empty()) {
    factors.count = 0;
    for (const int64_t f : c.factors) factors.half[factors.count++] = f / 2;
  }
  return HashParams{c.B, c.H, c.L, c.D, c.Hr, c.R, c.half, factors};
}

// As launch_lsh_hash: 256-thread blocks, grid-stride loop.
template <typename scalar_t, typename acc_t>
Tensor simulate_ffma_hash(const HashCase& c, const HashProblem& pr) {
  const auto acc = std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat;
  const Tensor qk = pr.qk.contiguous(), rot = pr.rot.to(acc).contiguous();
  const bool* padding = pr.mask.defined() ? pr.mask.data_ptr<bool>() : nullptr;
  Tensor buckets = at::full({c.B, c.H, c.R, c.L}, -7, at::kLong);
  const HashParams p = hash_params(c);
  const int64_t total = p.batch * p.heads * p.n_hashes * p.length;
  constexpr int kHashBlock = 256;
  const int64_t blocks = (total + kHashBlock - 1) / kHashBlock;
  const int64_t grid = blocks < 65535 * 32 ? blocks : 65535 * 32;
  const scalar_t* x = data<scalar_t>(qk);
  const acc_t* r = data<acc_t>(rot);
  int64_t* out = buckets.data_ptr<int64_t>();
  cuda_sim::launch(grid, kHashBlock, 0,
                   [&] { lsh_hash_kernel<scalar_t, acc_t>(x, r, padding, p, out); });
  return buckets;
}

// As launch_lsh_hash_mma.
template <typename T, int kDim>
Tensor simulate_mma_hash(const HashCase& c, const HashProblem& pr) {
  const Tensor qk = pr.qk.contiguous();
  const HashParams p = hash_params(c);
  const Tensor pieces = rotation_pieces(pr.rot, p.factors, qk.scalar_type());
  const bool* padding = pr.mask.defined() ? pr.mask.data_ptr<bool>() : nullptr;
  Tensor buckets = at::full({c.B, c.H, c.R, c.L}, -7, at::kLong);
  const int64_t ctas = p.batch * p.heads * p.n_hashes * ((p.length + kHashRows - 1) / kHashRows);
  SharedCarver carver{nullptr};
  HashShared<T, kDim>::carve(carver);
  const T* x = data<T>(qk);
  const T* rot = data<T>(pieces);
  int64_t* out = buckets.data_ptr<int64_t>();
  const int64_t half_padded = padded_columns(p.factors);
  cuda_sim::launch(ctas, kHashThreads, carver.used, [&] {
    lsh_hash_mma_kernel<T, kDim>(x, rot, padding, p, half_padded, out);
  });
  return buckets;
}

void expect_same_buckets(const Tensor& got, const Tensor& want) {
  ASSERT_EQ(got.sizes(), want.sizes());
  const Tensor differ = got.ne(want);
  const int64_t n = differ.sum().item<int64_t>();
  if (n == 0) return;
  const int64_t i = differ.flatten().nonzero()[0][0].item<int64_t>();
  ADD_FAILURE() << n << " of " << want.numel() << " buckets differ; first at flat index " << i
                << ": got " << got.flatten()[i].item<int64_t>() << ", want "
                << want.flatten()[i].item<int64_t>();
}

TEST(CudaSimHash, Ffma) {
  HashCase odd_dim = kHashCases[0];
  odd_dim.D = 20;  // any head dim on FFMA
  odd_dim.name = "shared_rotations_half37_D20";
  for (const HashCase& c : {odd_dim, kHashCases[1], kHashCases[3]}) {
    SCOPED_TRACE(c.name);
    const HashProblem pr = make_hash_problem(c, at::kFloat);
    expect_same_buckets(simulate_ffma_hash<float, float>(c, pr), pr.buckets);
  }
  {
    SCOPED_TRACE("double");
    const HashProblem pr = make_hash_problem(kHashCases[1], at::kDouble);
    expect_same_buckets(simulate_ffma_hash<double, double>(kHashCases[1], pr), pr.buckets);
  }
  {
    SCOPED_TRACE("half inputs, fp32 rotations");
    const HashProblem pr = make_hash_problem(kHashCases[0], at::kHalf);
    expect_same_buckets(simulate_ffma_hash<c10::Half, float>(kHashCases[0], pr), pr.buckets);
  }
}

TEST(CudaSimHash, FfmaFactorised) {
  for (const HashCase& c : kFactorisedHashCases) {
    SCOPED_TRACE(c.name);
    const HashProblem pr = make_hash_problem(c, at::kFloat);
    expect_same_buckets(simulate_ffma_hash<float, float>(c, pr), pr.buckets);
  }
  {
    SCOPED_TRACE("double, factors 6 140 10");
    const HashProblem pr = make_hash_problem(kFactorisedHashCases[1], at::kDouble);
    expect_same_buckets(simulate_ffma_hash<double, double>(kFactorisedHashCases[1], pr),
                        pr.buckets);
  }
  {
    SCOPED_TRACE("bfloat16 inputs, fp32 rotations, factors 32 64");
    const HashProblem pr = make_hash_problem(kFactorisedHashCases[0], at::kBFloat16);
    expect_same_buckets(simulate_ffma_hash<c10::BFloat16, float>(kFactorisedHashCases[0], pr),
                        pr.buckets);
  }
}

template <typename T>
void check_mma_hash(at::ScalarType dtype, bool factorised = false) {
  std::vector<HashCase> cases(std::begin(kHashCases), std::end(kHashCases));
  if (factorised)
    cases.assign(std::begin(kFactorisedHashCases), std::end(kFactorisedHashCases));
  for (const HashCase& c : cases) {
    SCOPED_TRACE(std::string(c.name) + " D=" + std::to_string(c.D));
    const HashProblem pr = make_hash_problem(c, dtype);
    Tensor got;
    switch (c.D) {
      case 32: got = simulate_mma_hash<T, 32>(c, pr); break;
      case 64: got = simulate_mma_hash<T, 64>(c, pr); break;
      case 128: got = simulate_mma_hash<T, 128>(c, pr); break;
      default: FAIL() << "D " << c.D;
    }
    expect_same_buckets(got, pr.buckets);
  }
}

TEST(CudaSimHash, MmaHalf) { check_mma_hash<__half>(at::kHalf); }
TEST(CudaSimHash, MmaBFloat16) { check_mma_hash<__nv_bfloat16>(at::kBFloat16); }
TEST(CudaSimHash, MmaHalfFactorised) { check_mma_hash<__half>(at::kHalf, true); }
TEST(CudaSimHash, MmaBFloat16Factorised) { check_mma_hash<__nv_bfloat16>(at::kBFloat16, true); }

// ------------------------------------------------------------------ the simulator itself

TEST(CudaSimRuntime, HalfAndBFloat16ConversionsMatchC10) {
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const auto h = static_cast<uint16_t>(bits);
    const float want_half = static_cast<float>(c10::Half(h, c10::Half::from_bits()));
    const float want_bf16 = static_cast<float>(c10::BFloat16(h, c10::BFloat16::from_bits()));
    const float got_half = cuda_sim::half_bits_to_float(h), got_bf16 = cuda_sim::bf16_bits_to_float(h);
    ASSERT_TRUE(std::isnan(want_half) ? std::isnan(got_half) : got_half == want_half) << bits;
    ASSERT_TRUE(std::isnan(want_bf16) ? std::isnan(got_bf16) : got_bf16 == want_bf16) << bits;
    // every value encodes back to its bits, and the tie halfway to the next one (exact in fp32)
    // rounds to even as c10 rounds it
    if (!std::isnan(want_half)) {
      ASSERT_EQ(cuda_sim::float_to_half_bits(want_half), h);
      const float next = static_cast<float>(c10::Half(h + 1, c10::Half::from_bits()));
      if ((h & 0x7fffu) < 0x7c00u && std::isfinite(next)) {
        const float tie = want_half / 2 + next / 2;
        ASSERT_EQ(cuda_sim::float_to_half_bits(tie), c10::Half(tie).x) << bits;
      }
    }
    if (!std::isnan(want_bf16)) {
      ASSERT_EQ(cuda_sim::float_to_bf16_bits(want_bf16), h);
      const float next = static_cast<float>(c10::BFloat16(h + 1, c10::BFloat16::from_bits()));
      if ((h & 0x7fffu) < 0x7f80u && std::isfinite(next)) {
        const float tie = want_bf16 / 2 + next / 2;
        ASSERT_EQ(cuda_sim::float_to_bf16_bits(tie), c10::BFloat16(tie).x) << bits;
      }
    }
  }
  std::mt19937 gen(7);
  for (int i = 0; i < 1000000; ++i) {
    uint32_t u = gen();
    if (i % 2) u = (u & 0x80000000u) | (0x33000000u + u % 0x14800000u);  // around fp16's range
    float f;
    std::memcpy(&f, &u, 4);
    const c10::Half h(f);
    const c10::BFloat16 b(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(cuda_sim::half_bits_to_float(cuda_sim::float_to_half_bits(f))));
      EXPECT_TRUE(std::isnan(cuda_sim::bf16_bits_to_float(cuda_sim::float_to_bf16_bits(f))));
      continue;
    }
    ASSERT_EQ(cuda_sim::float_to_half_bits(f), h.x) << f;
    ASSERT_EQ(cuda_sim::float_to_bf16_bits(f), b.x) << f;
  }
}

// The simulator's mma (its own transcription of the PTX fragment table) composed with the
// kernels' fragment loaders (kernels/mma_fragments.h, the other transcription) is a matrix
// product: S = A B^T (load_a, load_b_n_major) and then O = S C (accumulators_to_a,
// load_b_k_major), as warp_scores and warp_weighted_sum use them. Small integers: exact.
template <typename T>
void check_mma_composition(bool bf16) {
  namespace mma = reformer::mma;
  std::mt19937 gen(bf16 ? 3 : 2);
  std::uniform_int_distribution<int> value(-4, 4);
  const auto encode = [&](float f) {
    const uint16_t bits = bf16 ? cuda_sim::float_to_bf16_bits(f) : cuda_sim::float_to_half_bits(f);
    T t;
    std::memcpy(static_cast<void*>(&t), &bits, 2);
    return t;
  };
  // A: 16 x 16 row-major; Bn: 16 (n) x 16 (k), i.e. B^T row-major; C: 16 (k) x 8 (n) row-major.
  std::vector<float> A(16 * 16), Bn(16 * 16), C(16 * 8);
  for (auto* m : {&A, &Bn, &C})
    for (float& x : *m) x = static_cast<float>(value(gen));
  std::vector<T> a_t, bn_t, c_t;
  for (float x : A) a_t.push_back(encode(x));
  for (float x : Bn) bn_t.push_back(encode(x));
  for (float x : C) c_t.push_back(encode(x));
  std::vector<float> S(16 * 16), O(16 * 8);
  cuda_sim::launch(1, 32, 0, [&] {
    const int lane = threadIdx.x;
    float s[2][4] = {};
    uint32_t a[4];
    mma::load_a(a, a_t.data(), 16, lane);
    for (int nb = 0; nb < 2; ++nb) {
      uint32_t b[2];
      mma::load_b_n_major(b, bn_t.data() + nb * 8 * 16, 16, lane);
      reformer::cuda::mma<T>(s[nb], a, b);
    }
    uint32_t p[4];
    mma::accumulators_to_a<T>(p, s[0], s[1], [](float x) {
      return reformer::cuda::RoundTo<T>{}(x);
    });
    float o[4] = {};
    uint32_t c[2];
    mma::load_b_k_major(c, c_t.data(), 8, lane);
    reformer::cuda::mma<T>(o, p, c);
    for (int i = 0; i < 4; ++i) {
      const mma::Coord at_s = mma::c_coord(lane, i);
      S[at_s.row * 16 + at_s.col] = s[0][i];
      S[at_s.row * 16 + 8 + at_s.col] = s[1][i];
      O[at_s.row * 8 + at_s.col] = o[i];
    }
  });
  for (int m = 0; m < 16; ++m) {
    for (int n = 0; n < 16; ++n) {
      float want = 0;
      for (int k = 0; k < 16; ++k) want += A[m * 16 + k] * Bn[n * 16 + k];
      ASSERT_EQ(S[m * 16 + n], want) << "S(" << m << ", " << n << ")";
    }
    for (int n = 0; n < 8; ++n) {  // |S| <= 256: integers exact in fp16 and bf16
      float want = 0;
      for (int k = 0; k < 16; ++k) want += S[m * 16 + k] * C[k * 8 + n];
      ASSERT_EQ(O[m * 8 + n], want) << "O(" << m << ", " << n << ")";
    }
  }
}

TEST(CudaSimRuntime, MmaWithKernelFragmentLoadersIsAMatrixProduct) {
  check_mma_composition<__half>(false);
  check_mma_composition<__nv_bfloat16>(true);
}

TEST(CudaSimRuntime, CollectivesAndSharedMemory) {
  // 3 CTAs of 64 threads: warp sums by xor shuffles, broadcasts, __any_sync, __syncthreads_or,
  // and shared memory written by one warp and read by the other after __syncthreads.
  std::vector<int> out(3 * 64, -1);
  cuda_sim::launch(3, 64, 64 * sizeof(int), [&] {
    int* sh = reinterpret_cast<int*>(shared_bytes);
    const int t = threadIdx.x;
    int sum = t + 100 * static_cast<int>(blockIdx.x);
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    const int from_lane_5 = __shfl_sync(0xffffffffu, t, 5);
    const int any = __any_sync(0xffffffffu, t == 40);
    const int block_any = __syncthreads_or(t == 63 && blockIdx.x == 1);
    sh[63 - t] = sum + from_lane_5 + 1000 * any + 10000 * block_any;
    __syncthreads();
    out[blockIdx.x * 64 + t] = sh[t];
  });
  for (int b = 0; b < 3; ++b) {
    for (int t = 0; t < 64; ++t) {
      const int writer = 63 - t, warp = writer / 32;
      const int sum = (warp * 32) * 32 + 31 * 32 / 2 + 100 * b * 32;
      const int from_lane_5 = warp * 32 + 5;
      const int any = warp == 1 ? 1 : 0, block_any = b == 1 ? 1 : 0;
      EXPECT_EQ(out[b * 64 + t], sum + from_lane_5 + 1000 * any + 10000 * block_any)
          << "block " << b << " thread " << t;
    }
  }
}

TEST(CudaSimRuntime, ReportsWhatTheHardwareLeavesUndefined) {
  // a thread returns before a __syncthreads the others wait at
  EXPECT_THROW(cuda_sim::launch(2, 64, 0,
                                [] {
                                  if (threadIdx.x == 7) return;
                                  __syncthreads();
                                }),
               std::runtime_error);
  // lanes of one warp at different collectives
  EXPECT_THROW(cuda_sim::launch(1, 32, 0,
                                [] {
                                  if (threadIdx.x < 16) {
                                    __syncwarp();
                                  } else {
                                    (void)__any_sync(0xffffffffu, 1);
                                  }
                                }),
               std::runtime_error);
  // a partial mask
  EXPECT_THROW(cuda_sim::launch(1, 32, 0, [] { (void)__shfl_sync(0xffffu, 1, 0); }),
               std::runtime_error);
  // more shared memory than an sm_90 CTA can have, a block size that is not whole warps
  EXPECT_THROW(cuda_sim::launch(1, 32, 228 * 1024, [] {}), std::runtime_error);
  EXPECT_THROW(cuda_sim::launch(1, 48, 0, [] {}), std::runtime_error);
  // reads of unwritten shared memory see garbage: NaN as fp32 in even blocks
  float seen = 0;
  cuda_sim::launch(1, 32, 16, [&] {
    if (threadIdx.x == 0) seen = reinterpret_cast<float*>(shared_bytes)[1];
  });
  EXPECT_TRUE(std::isnan(seen));
  // and the simulator still works after errors
  int ok = 0;
  cuda_sim::launch(1, 32, 0, [&] { ok = __syncthreads_or(threadIdx.x == 3); });
  EXPECT_EQ(ok, 1);
}

}  // namespace

// ------------------------------------------------------------------ local attention
//
// The FFMA kernels in their local attention form (docs/semantics.md §9: identity order, one
// round, separate keys of unit scale, no self-mask, windows that repeat a chunk reached by
// several offsets), driven as csrc/cuda/local_attention_cuda.cu drives them, against the CPU
// operators reformer::local_attention / local_attention_backward (csrc/local_attention.h).
namespace {

struct LocalCase {
  const char* name;
  int64_t B, H, L, chunk;
  int before, after;
  bool causal, masked;
  uint64_t seed;
  double dropout_p = 0;  // attention dropout (docs/semantics.md §9), seed 55 + seed
};

// Chunks above one CTA's 16 rows and not multiples of it, odd L (a tail), a single chunk
// (full attention), two and three chunks whose windows reach a chunk twice, causal and not,
// padding with an all-padding batch row.
const LocalCase kLocalCases[] = {
    {"L45_chunk20_b1a0", 1, 2, 45, 20, 1, 0, false, false, 1},
    {"L70_chunk35_b1a1_two_chunks_causal_masked", 2, 1, 70, 35, 1, 1, true, true, 2},
    {"L50_chunk18_b2a1_three_chunks_masked", 2, 2, 50, 18, 2, 1, false, true, 3},
    {"L30_chunk40_single_chunk_causal", 1, 2, 30, 40, 1, 2, true, false, 4},
    {"L77_chunk8_b0a2", 1, 1, 77, 8, 0, 2, false, true, 5},
};

template <typename scalar_t, typename acc_t, int kSlots>
void check_local(const LocalCase& c, int64_t D, int64_t Dv, at::ScalarType dtype, double rtol,
           double atol_of_max) {
  SCOPED_TRACE(std::string(c.name) + " D=" + std::to_string(D) + " Dv=" + std::to_string(Dv));
  at::manual_seed(c.seed * 1000 + D);
  const Tensor q = at::randn({c.B, c.H, c.L, D}, at::kDouble).to(dtype);
  const Tensor k = at::randn({c.B, c.H, c.L, D}, at::kDouble).to(dtype);
  const Tensor v = at::randn({c.B, c.H, c.L, Dv}, at::kDouble).to(dtype);
  const Tensor dout = at::randn({c.B, c.H, c.L, Dv}, at::kDouble).to(dtype);
  const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor dlse = at::randn({c.B, c.H, c.L}, at::kDouble).to(acc);
  Tensor mask;
  std::optional<Tensor> opt_mask;
  if (c.masked) {
    mask = at::rand({c.B, c.L}, at::kDouble) < 0.25;
    if (c.B > 1) mask[c.B - 1].fill_(true);
    opt_mask = mask;
  }
  const double scale = 1.0 / std::sqrt(double(D));
  // The CPU operators in double precision on the same (exactly representable) inputs.
  const Tensor q64 = q.to(at::kDouble), k64 = k.to(at::kDouble), v64 = v.to(at::kDouble);
  std::optional<Tensor> dropout_seed;
  if (c.dropout_p > 0) dropout_seed = at::scalar_tensor(int64_t(55 + c.seed), at::kLong);
  auto [ref_out, ref_lse, ref_stats] = reformer::local_attention(
      q64, k64, v64, opt_mask, c.chunk, c.causal, c.before, c.after, scale, c.dropout_p,
      dropout_seed);
  auto [ref_dq, ref_dk, ref_dv] = reformer::local_attention_backward(
      dout.to(at::kDouble), dlse.to(at::kDouble), q64, k64, v64, ref_out, ref_stats, opt_mask,
      c.chunk, c.causal, c.before, c.after, scale, c.dropout_p, dropout_seed);

  // make_local_params of csrc/cuda/local_attention_cuda.cu
  AttentionParams p{};
  p.batch = c.B;
  p.heads = c.H;
  p.length = c.L;
  p.padded_length = reformer::padded_length(c.L, c.chunk);
  p.dim = D;
  p.value_dim = Dv;
  p.bucket_size = c.chunk;
  p.chunks_per_round = p.padded_length / c.chunk;
  p.n_chunks = p.chunks_per_round;
  p.before = c.before;
  p.after = c.after;
  p.causal = c.causal;
  p.scale = scale;
  p.padding = c.masked ? mask.data_ptr<bool>() : nullptr;
  p.sorted = nullptr;
  p.self_mask = false;
  p.distinct_window = p.n_chunks == 1;
  if (c.dropout_p > 0) {  // make_local_params of csrc/cuda/local_attention_cuda.cu
    p.dropout = true;
    p.dropout_seed = 55 + c.seed;
    p.dropout_threshold = reformer::dropout_hash::threshold(c.dropout_p);
    p.keep_scale = 1.0 / (1.0 - c.dropout_p);
  }

  Tensor out_acc = at::zeros({c.B, c.H, c.L, Dv}, acc);
  Tensor stats = at::full({c.B, c.H, c.L, 2}, -std::numeric_limits<double>::infinity(), acc);
  ForwardArgs<scalar_t, acc_t> fa{data<scalar_t>(q), data<scalar_t>(v), nullptr,
                                  data<acc_t>(out_acc), data<acc_t>(stats)};
  fa.k = data<scalar_t>(k);
  SharedCarver fwd_carver{nullptr};
  ForwardShared<acc_t>::carve(fwd_carver, D, Dv);
  cuda_sim::launch(ctas_per_round(p), kThreads, fwd_carver.used,
                   [&] { lsh_forward_round_kernel<scalar_t, acc_t, kSlots>(p, fa, 0); });
  stats.masked_fill_(stats.isneginf(), 0);
  const Tensor lse = at::add(stats.select(3, 0), stats.select(3, 1));
  const Tensor out = out_acc.to(dtype);

  Tensor delta = at::mul(dout.to(acc), out.to(acc)).sum(-1);
  delta.sub_(dlse);
  delta = delta.contiguous();
  Tensor dq = at::zeros({c.B, c.H, c.L, D}, acc), dk = at::zeros({c.B, c.H, c.L, D}, acc);
  Tensor dv = at::zeros({c.B, c.H, c.L, Dv}, acc);
  BackwardArgs<scalar_t, acc_t> ba{data<scalar_t>(q),  data<scalar_t>(v),   data<scalar_t>(dout),
                                   nullptr,            data<acc_t>(stats),  data<acc_t>(delta),
                                   data<acc_t>(dq),    data<acc_t>(dv)};
  ba.k = data<scalar_t>(k);
  ba.dk = data<acc_t>(dk);
  SharedCarver query_carver{nullptr}, key_carver{nullptr};
  QueryPassShared<acc_t>::carve(query_carver, D, Dv);
  KeyPassShared<acc_t>::carve(key_carver, D, Dv);
  cuda_sim::launch(ctas_per_round(p), kThreads, query_carver.used,
                   [&] { lsh_backward_query_kernel<scalar_t, acc_t, kSlots>(p, ba, 0); });
  cuda_sim::launch(ctas_per_round(p), kThreads, key_carver.used,
                   [&] { lsh_backward_key_kernel<scalar_t, acc_t, kSlots>(p, ba, 0); });

  EXPECT_TRUE(close(out, ref_out, rtol, atol_of_max, "out"));
  EXPECT_TRUE(close(lse, ref_lse, rtol, atol_of_max, "lse"));
  EXPECT_TRUE(close(dq.to(dtype), ref_dq, rtol, atol_of_max, "grad_q"));
  EXPECT_TRUE(close(dk.to(dtype), ref_dk, rtol, atol_of_max, "grad_k"));
  EXPECT_TRUE(close(dv.to(dtype), ref_dv, rtol, atol_of_max, "grad_v"));
  if (c.masked) {
    const Tensor pad = mask.view({c.B, 1, c.L, 1}).expand({c.B, c.H, c.L, 1});
    for (const auto& [name, t] : {std::pair{"out", out}, {"stats", stats}, {"grad_q", dq},
                                  {"grad_k", dk}, {"grad_v", dv}}) {
      const Tensor at_padding = t.to(at::kDouble).masked_select(pad);
      EXPECT_TRUE(at_padding.numel() == 0 || at_padding.abs().max().item<double>() == 0.0)
          << name << " is not 0 at padding positions";
    }
  }
}

TEST(CudaSimLocalAttentionFfma, Float) {
  const int64_t dims[][2] = {{32, 32}, {64, 40}, {16, 24}, {128, 96}, {20, 8}};
  int i = 0;
  for (const LocalCase& c : kLocalCases) {
    const int64_t D = dims[i][0], Dv = dims[i][1];
    ++i;
    switch (slots_for(std::max(D, Dv))) {
      case 1: check_local<float, float, 1>(c, D, Dv, at::kFloat, 1e-4, 1e-5); break;
      case 2: check_local<float, float, 2>(c, D, Dv, at::kFloat, 1e-4, 1e-5); break;
      default: check_local<float, float, 4>(c, D, Dv, at::kFloat, 1e-4, 1e-5); break;
    }
  }
}

TEST(CudaSimLocalAttentionFfma, Double) {
  check_local<double, double, 2>(kLocalCases[1], 24, 40, at::kDouble, 1e-10, 1e-12);
  check_local<double, double, 1>(kLocalCases[2], 16, 16, at::kDouble, 1e-10, 1e-12);
}

TEST(CudaSimLocalAttentionFfma, Dropout) {
  for (LocalCase c : kLocalCases) {
    c.dropout_p = c.seed % 2 ? 0.25 : 0.5;
    check_local<double, double, 2>(c, 24, 40, at::kDouble, 1e-10, 1e-12);
    check_local<float, float, 1>(c, 16, 16, at::kFloat, 1e-4, 1e-5);
  }
}

TEST(CudaSimLocalAttentionFfma, BFloat16Inputs) {
  check_local<c10::BFloat16, float, 2>(kLocalCases[2], 40, 64, at::kBFloat16, 0.0, 0x1p-7);
}

}  // namespace

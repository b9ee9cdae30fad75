// The chunked feed-forward's CUDA kernel (kernels/chunked_ffn_activation.cuh: bias + activation +
// seeded dropout in one pass, forward and backward form) run on the CPU under the simulated runtime
// of cuda_sim_runtime.h, launched the way csrc/cuda/chunked_ffn_cuda.cu launches it (256 threads,
// the same grid, the same aliasing: the forward writes h in place, the backward writes the
// derivative over h), for float64, float32, float16 and bfloat16 (acc_type float), every
// activation, with and without bias, dropout p = 0 and p > 0, and compared with
//   - the CPU fused kernels of csrc/cpu/chunked_ffn_cpu.h
//   (reformer::cpu::chunked_ffn_bias_activation_ and
//     chunked_ffn_bias_activation_grad_ in float64, the same computation): values to a dtype
//     tolerance;
//   - the ATen form of the dropout mask (reformer::SeededDropoutMask, csrc/seeded_dropout.h):
//     bit for bit: with dropout every output equals, bit for bit, the output without dropout
//     where the CPU mask keeps the element and +0 where it drops it;
//   - the operators reformer::chunked_ffn / chunked_ffn_backward on the CPU (through the
//     dispatcher, float64): the forward and backward chunk loops of csrc/chunked_ffn.cpp's fused
//     path composed from ATen GEMMs and the simulated kernel, chunk sizes that do not divide N.
// Sizes include ones that are not multiples of the block (256), a single element, and a launch
// with a grid smaller than the element count needs (the kernel's grid-stride loop, which the real
// launcher reaches only past 65535 · 32 blocks); NaN inputs (propagated, relu's as torch.relu).
// CUDA_SIM_REPORT=1 in the environment prints each comparison's error against its bound.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <tuple>

// The simulated runtime first: the kernel below sees its threadIdx, blockIdx, gridDim, ...
#include "cuda_sim_runtime.h"

#include "kernels/chunked_ffn_activation.cuh"

#include "csrc/chunked_ffn.h"
#include "csrc/cuda/chunked_ffn_kernel_args.h"
#include "csrc/cpu/chunked_ffn_cpu.h"
#include "csrc/seeded_dropout.h"
#include "sim_checks.h"
#include "tests/cpp/reformer_ops.h"

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using reformer::ChunkedFfnActivation;
using reformer::cuda::chunked_ffn_bias_activation_kernel;
using reformer::cuda::ChunkedFfnAct;
using reformer::cuda::ChunkedFfnDropoutRows;
using reformer::cuda::kernel_activation;
using reformer::cuda::kernel_dropout;

using cuda_sim_checks::close;
using cuda_sim_checks::data;

// Bit patterns of a floating tensor, as the signed integer type of its width.
Tensor bits(const Tensor& t) {
  switch (t.element_size()) {
    case 2: return t.view(at::kShort);
    case 4: return t.view(at::kInt);
    default: return t.view(at::kLong);
  }
}

// Whether got and want hold the same bits everywhere; names the first difference otherwise.
::testing::AssertionResult same_bits(const Tensor& got, const Tensor& want,
                                     const std::string& what) {
  const Tensor differ = bits(got.contiguous()) != bits(want.contiguous());
  if (!differ.any().item<bool>()) return ::testing::AssertionSuccess();
  const int64_t i = differ.flatten().nonzero()[0][0].item<int64_t>();
  return ::testing::AssertionFailure()
         << what << ": " << differ.sum().item<int64_t>() << " of " << got.numel()
         << " elements differ in their bits; first at flat index " << i << ": got "
         << got.flatten()[i].item<double>() << ", want " << want.flatten()[i].item<double>();
}

// ------------------------------------------------------------------ the kernel, as
// chunked_ffn_cuda.cu

constexpr ChunkedFfnActivation kActivations[] = {
    ChunkedFfnActivation::Gelu, ChunkedFfnActivation::GeluTanh, ChunkedFfnActivation::Relu,
    ChunkedFfnActivation::Silu};

const char* activation_name(ChunkedFfnActivation act) {
  switch (act) {
    case ChunkedFfnActivation::Gelu:
      return "gelu";
    case ChunkedFfnActivation::GeluTanh:
      return "gelu_tanh";
    case ChunkedFfnActivation::Relu:
      return "relu";
    case ChunkedFfnActivation::Silu:
      return "silu";
  }
  return "?";
}

// launch_chunked_ffn_bias_activation's host side (256 threads, grid capped at 65535 · 32) with the
// simulated launch; max_grid < the cap forces the kernel's grid-stride loop.
template <typename scalar_t, typename acc_t>
void launch_sim(ChunkedFfnAct act, const scalar_t* h, const scalar_t* bias, int64_t rows,
                int64_t cols, const ChunkedFfnDropoutRows& drop, scalar_t* out, scalar_t* deriv,
                int64_t max_grid = int64_t{65535} * 32) {
  const int64_t total = rows * cols;
  if (total == 0) return;
  constexpr int kThreads = 256;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const int64_t grid = std::min(blocks, max_grid);
  const auto run = [&](auto kernel) { cuda_sim::launch(grid, kThreads, 0, kernel); };
  switch (act) {
    case ChunkedFfnAct::Gelu:
      run([&] {
        chunked_ffn_bias_activation_kernel<ChunkedFfnAct::Gelu, scalar_t, acc_t>(
            h, bias, rows, cols, drop, out, deriv);
      });
      break;
    case ChunkedFfnAct::GeluTanh:
      run([&] {
        chunked_ffn_bias_activation_kernel<ChunkedFfnAct::GeluTanh, scalar_t, acc_t>(
            h, bias, rows, cols, drop, out, deriv);
      });
      break;
    case ChunkedFfnAct::Relu:
      run([&] {
        chunked_ffn_bias_activation_kernel<ChunkedFfnAct::Relu, scalar_t, acc_t>(
            h, bias, rows, cols, drop, out, deriv);
      });
      break;
    case ChunkedFfnAct::Silu:
      run([&] {
        chunked_ffn_bias_activation_kernel<ChunkedFfnAct::Silu, scalar_t, acc_t>(
            h, bias, rows, cols, drop, out, deriv);
      });
      break;
  }
}

// chunked_ffn_cuda.cu's bias_activation: the dtype dispatch (AT_DISPATCH_FLOATING_TYPES_AND2 with
// acc_type<scalar_t, /*is_cuda=*/true>: float for half types) around the launch.
void bias_activation(const Tensor& h, const Tensor& bias,
                     const reformer::ChunkedFfnHiddenDropoutRows& d, ChunkedFfnActivation act,
                     const Tensor& out, const Tensor& deriv,
                     int64_t max_grid = int64_t{65535} * 32) {
  const auto go = [&](auto scalar_tag, auto acc_tag) {
    using scalar_t = decltype(scalar_tag);
    using acc_t = decltype(acc_tag);
    launch_sim<scalar_t, acc_t>(kernel_activation(act), data<scalar_t>(h),
                                bias.defined() ? data<scalar_t>(bias) : nullptr, h.size(0),
                                h.size(1), kernel_dropout(d), data<scalar_t>(out),
                                deriv.defined() ? data<scalar_t>(deriv) : nullptr, max_grid);
  };
  switch (h.scalar_type()) {
    case at::kDouble: go(double{}, double{}); break;
    case at::kFloat: go(float{}, float{}); break;
    case at::kHalf: go(c10::Half{}, float{}); break;
    case at::kBFloat16: go(c10::BFloat16{}, float{}); break;
    default: FAIL() << "unsupported dtype";
  }
}

// chunked_ffn_bias_activation_ (in place: out = h) and chunked_ffn_bias_activation_grad_ (act_out,
// deriv = h).
void sim_forward(const Tensor& h, const Tensor& bias,
                 const reformer::ChunkedFfnHiddenDropoutRows& d, ChunkedFfnActivation act,
                 int64_t max_grid = int64_t{65535} * 32) {
  bias_activation(h, bias, d, act, h, Tensor(), max_grid);
}
void sim_backward(const Tensor& h, const Tensor& act_out, const Tensor& bias,
                  const reformer::ChunkedFfnHiddenDropoutRows& d, ChunkedFfnActivation act,
                  int64_t max_grid = int64_t{65535} * 32) {
  bias_activation(h, bias, d, act, act_out, h, max_grid);
}

// Value tolerances (rtol, atol as a fraction of max|want|) of the kernel in `dtype` against the
// CPU kernel in float64 on the same inputs: the output is rounded to dtype once (half: 2^-11,
// bf16: 2^-8 relative) after float math (a few ulp of float, and float's cancellation, absolute:
// in 1 + erf(z/√2) and, for tanh-GELU's derivative, in 1 + tanh(u) and 1 - tanh²(u), which are 0
// for z below ~-5 where the float64 derivative is ~-5e-7).
std::pair<double, double> tolerance(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return {1e-12, 1e-14};
    case at::kFloat: return {2e-6, 1e-6};
    case at::kHalf: return {1.0 / 1024, 2e-6};
    default: return {1.0 / 128, 2e-6};
  }
}

// ------------------------------------------------------------------ element-wise checks

struct ElementCase {
  int64_t rows, cols, first_row, seed;
};

// Single element; sizes below, at and above one block; widths not multiples of 256, 4 or 8; a
// nonzero first row (the chunk's offset into the (N, d_ff) activation); negative seed.
const ElementCase kElementCases[] = {
    {1, 1, 0, 42},           {3, 7, 0, 7},           {1, 256, 4, -3},
    {5, 257, 2, 123456789},  {13, 255, 11, -8754321987654321}, {37, 300, 1000, 2024},
};

// Inputs in dtype: h ~ 3 N(0, 1) (tails of every activation); in row 0 every 5th element is
// -bias (z exactly 0: relu's derivative there is 0, as in torch).
std::pair<Tensor, Tensor> make_inputs(int64_t rows, int64_t cols, at::ScalarType dtype,
                                      bool with_bias, uint64_t seed) {
  at::manual_seed(seed);
  Tensor h = (at::randn({rows, cols}, at::kDouble) * 3).to(dtype);
  Tensor bias;
  if (with_bias) {
    bias = (at::randn({cols}, at::kDouble) * 0.5).to(dtype);
    h[0].slice(0, 0, cols, 5).copy_(-bias.slice(0, 0, cols, 5));
  } else {
    h[0].slice(0, 0, cols, 5).zero_();
  }
  return {h, bias};
}

void check_elementwise(at::ScalarType dtype) {
  const auto [rtol, atol] = tolerance(dtype);
  const double p = 0.3;
  int64_t visible_drops = 0;  // dropped elements whose value without dropout is nonzero
  for (const ElementCase& c : kElementCases) {
    for (const bool with_bias : {true, false}) {
      const auto [h, bias] = make_inputs(c.rows, c.cols, dtype, with_bias, c.rows * 131 + c.cols);
      const Tensor hd = h.to(at::kDouble);
      const Tensor bd = bias.defined() ? bias.to(at::kDouble) : Tensor();
      // The CPU mask (ATen form), true where dropped.
      reformer::SeededDropoutMask mask(p, c.seed, c.cols, c.rows, at::TensorOptions(at::kDouble));
      const Tensor dropped = mask.dropped(c.first_row, c.rows).clone();
      if (c.rows * c.cols >= 10000) {  // the rate, as a sanity check of the mask itself
        const double rate = dropped.to(at::kDouble).mean().item<double>();
        EXPECT_NEAR(rate, p, 0.02);
      }
      for (const ChunkedFfnActivation act : kActivations) {
        const std::string tag = std::string(activation_name(act)) + " " +
                                c10::toString(dtype) + " " + std::to_string(c.rows) + "x" +
                                std::to_string(c.cols) + (with_bias ? " bias" : " no bias");
        SCOPED_TRACE(tag);
        Tensor fwd[2], act_out[2], deriv[2];  // [0]: p = 0, [1]: p
        for (int k = 0; k < 2; ++k) {
          const reformer::ChunkedFfnHiddenDropoutRows d{k == 0 ? 0.0 : p, c.seed, c.first_row};
          // Forward, in place.
          fwd[k] = h.clone();
          sim_forward(fwd[k], bias, d, act);
          // Backward: act_out and, over h, the derivative. act_out starts as garbage.
          deriv[k] = h.clone();
          act_out[k] = at::full_like(h, std::numeric_limits<double>::quiet_NaN());
          sim_backward(deriv[k], act_out[k], bias, d, act);
          // The CPU fused kernels in float64 on the same inputs, with the same dropout rows.
          Tensor want_fwd = hd.clone(), want_deriv = hd.clone(), want_act = at::empty_like(hd);
          reformer::cpu::chunked_ffn_bias_activation_(want_fwd, bd, d, act);
          reformer::cpu::chunked_ffn_bias_activation_grad_(want_deriv, want_act, bd, d, act);
          const std::string pk = k == 0 ? " p=0" : " p=0.3";
          EXPECT_TRUE(close(fwd[k], want_fwd, rtol, atol, tag + pk + " forward"));
          EXPECT_TRUE(close(act_out[k], want_act, rtol, atol, tag + pk + " backward act"));
          EXPECT_TRUE(close(deriv[k], want_deriv, rtol, atol, tag + pk + " backward deriv"));
          // The backward's activation is the forward's, bit for bit.
          EXPECT_TRUE(same_bits(act_out[k], fwd[k], tag + pk + " backward act vs forward"));
        }
        // The mask, bit for bit: with dropout = without dropout where kept, +0 where dropped.
        const Tensor zero = at::zeros_like(h);
        EXPECT_TRUE(same_bits(fwd[1], at::where(dropped, zero, fwd[0]), tag + " forward mask"));
        EXPECT_TRUE(same_bits(act_out[1], at::where(dropped, zero, act_out[0]),
                              tag + " backward act mask"));
        EXPECT_TRUE(same_bits(deriv[1], at::where(dropped, zero, deriv[0]),
                              tag + " backward deriv mask"));
        visible_drops += (dropped & (fwd[0] != 0)).sum().item<int64_t>();

        // The grid-stride loop: 3 CTAs for the whole tensor give the same bits.
        if (c.rows * c.cols > 3 * 256) {
          const reformer::ChunkedFfnHiddenDropoutRows d{p, c.seed, c.first_row};
          Tensor f = h.clone(), g = h.clone(), a = at::empty_like(h);
          sim_forward(f, bias, d, act, /*max_grid=*/3);
          sim_backward(g, a, bias, d, act, /*max_grid=*/3);
          EXPECT_TRUE(same_bits(f, fwd[1], tag + " forward, grid-stride"));
          EXPECT_TRUE(same_bits(a, act_out[1], tag + " backward act, grid-stride"));
          EXPECT_TRUE(same_bits(g, deriv[1], tag + " backward deriv, grid-stride"));
        }
      }
    }
  }
  EXPECT_GT(visible_drops, 1000);  // the mask comparisons saw dropped nonzero values
}

// NaN inputs: NaN where the CPU kernel gives NaN (every activation propagates it; relu keeps it,
// as torch.relu does, with derivative 0), +0 where dropout drops it; other elements unaffected.
void check_nan_inputs(at::ScalarType dtype) {
  const auto [rtol, atol] = tolerance(dtype);
  const auto [h, bias] = make_inputs(4, 67, dtype, /*with_bias=*/true, 99);
  h.view(-1).slice(0, 1, h.numel(), 9).fill_(std::numeric_limits<double>::quiet_NaN());
  for (const ChunkedFfnActivation act : kActivations) {
    for (const double p : {0.0, 0.3}) {
      const std::string tag = std::string(activation_name(act)) + " " + c10::toString(dtype) +
                              (p > 0 ? " p=0.3" : " p=0") + " with NaN inputs";
      const reformer::ChunkedFfnHiddenDropoutRows d{p, 5, 3};
      Tensor fwd = h.clone(), deriv = h.clone(), act_out = at::empty_like(h);
      sim_forward(fwd, bias, d, act);
      sim_backward(deriv, act_out, bias, d, act);
      Tensor want_fwd = h.to(at::kDouble).clone(), want_deriv = h.to(at::kDouble).clone();
      Tensor want_act = at::empty_like(want_fwd);
      const Tensor bd = bias.to(at::kDouble);
      reformer::cpu::chunked_ffn_bias_activation_(want_fwd, bd, d, act);
      reformer::cpu::chunked_ffn_bias_activation_grad_(want_deriv, want_act, bd, d, act);
      const std::pair<Tensor, Tensor> pairs[] = {
          {fwd, want_fwd}, {act_out, want_act}, {deriv, want_deriv}};
      for (const auto& [got, want] : pairs) {
        const Tensor nan = at::isnan(want);
        EXPECT_TRUE(at::equal(at::isnan(got), nan)) << tag;
        EXPECT_GT(nan.sum().item<int64_t>() + (act == ChunkedFfnActivation::Relu), 0) << tag;
        EXPECT_TRUE(close(got.to(at::kDouble).masked_fill(nan, 0), want.masked_fill(nan, 0),
                          rtol, atol, tag));
      }
    }
  }
}

TEST(CudaSimChunkedFfnActivation, NanInputs) {
  for (const auto dtype : {at::kDouble, at::kFloat, at::kHalf, at::kBFloat16})
    check_nan_inputs(dtype);
}

TEST(CudaSimChunkedFfnActivation, Double) { check_elementwise(at::kDouble); }
TEST(CudaSimChunkedFfnActivation, Float) { check_elementwise(at::kFloat); }
TEST(CudaSimChunkedFfnActivation, Half) { check_elementwise(at::kHalf); }
TEST(CudaSimChunkedFfnActivation, BFloat16) { check_elementwise(at::kBFloat16); }

// ------------------------------------------------------------------ the operators

using Grads = reformer_test::ChunkedFfnGrads;

struct OpCase {
  int64_t batch, length, d_model, d_ff, chunk;
  bool biases;
  double p;
  int64_t seed;
};

// N = batch · length rows in chunks that do not divide N (the last chunk is short), d_ff · chunk
// not a multiple of 256.
const OpCase kOpCases[] = {
    {2, 11, 24, 72, 5, true, 0.0, 0},
    {1, 23, 16, 40, 8, true, 0.25, 987654321},
    {3, 7, 12, 33, 4, false, 0.4, -17},
};

// csrc/chunked_ffn.cpp's fused forward and backward chunk loops (CUDA build: the kernels of
// chunked_ffn_cuda.cu; chunked_ffn_mul_colsum_ is grad.mul_(deriv) and an ATen column sum there),
// with ATen GEMMs on the CPU and the simulated kernel. Weight gradients accumulate in float32 for
// float16 / bfloat16.
Tensor sim_chunked_ffn(const Tensor& x, const Tensor& w1, const OptTensor& b1, const Tensor& w2,
                       const OptTensor& b2, const OpCase& c, ChunkedFfnActivation act) {
  const Tensor x2d = x.reshape({-1, c.d_model}).contiguous();
  const int64_t rows = x2d.size(0);
  const double scale = c.p > 0 ? 1.0 / (1.0 - c.p) : 1.0;
  Tensor out = at::empty({rows, c.d_model}, x.options());
  Tensor hidden = at::empty({c.chunk, c.d_ff}, x.options());
  for (int64_t row0 = 0; row0 < rows; row0 += c.chunk) {
    const int64_t n = std::min(c.chunk, rows - row0);
    Tensor h = hidden.narrow(0, 0, n);
    at::mm_out(h, x2d.narrow(0, row0, n), w1.t());
    sim_forward(h, b1.value_or(Tensor()), {c.p, c.seed, row0}, act);
    Tensor y = at::mm(h, w2.t()).mul_(scale);
    if (b2) y.add_(*b2);
    out.narrow(0, row0, n).copy_(y);
  }
  return out.view(x.sizes());
}

Grads sim_chunked_ffn_backward(const Tensor& g, const Tensor& x, const Tensor& w1,
                               const OptTensor& b1, const Tensor& w2, const OptTensor& b2,
                               const OpCase& c, ChunkedFfnActivation act) {
  const Tensor x2d = x.reshape({-1, c.d_model}).contiguous();
  const Tensor g2d = g.reshape({-1, c.d_model}).contiguous();
  const int64_t rows = x2d.size(0);
  const double scale = c.p > 0 ? 1.0 / (1.0 - c.p) : 1.0;
  const bool reduced = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  const auto acc = reduced ? at::kFloat : x.scalar_type();
  Tensor gx = at::empty({rows, c.d_model}, x.options());
  Tensor gw1 = at::zeros({c.d_ff, c.d_model}, x.options().dtype(acc));
  Tensor gw2 = at::zeros({c.d_model, c.d_ff}, x.options().dtype(acc));
  Tensor gb1 = b1 ? at::zeros({c.d_ff}, x.options().dtype(acc)) : Tensor();
  Tensor gb2 = b2 ? at::sum(g2d, {0}, false, acc) : Tensor();
  Tensor pre_buf = at::empty({c.chunk, c.d_ff}, x.options());
  Tensor a_buf = at::empty({c.chunk, c.d_ff}, x.options());
  for (int64_t row0 = 0; row0 < rows; row0 += c.chunk) {
    const int64_t n = std::min(c.chunk, rows - row0);
    const Tensor x_c = x2d.narrow(0, row0, n), g_c = g2d.narrow(0, row0, n);
    Tensor pre = pre_buf.narrow(0, 0, n), a = a_buf.narrow(0, 0, n);
    at::mm_out(pre, x_c, w1.t());
    sim_backward(pre, a, b1.value_or(Tensor()), {c.p, c.seed, row0}, act);  // a, pre = act'
    gw2.add_(at::mm(g_c.t(), a).to(acc), scale);
    at::mm_out(a, g_c, w2);
    a.mul_(scale).mul_(pre);  // d(loss)/d(pre)
    if (b1) gb1.add_(at::sum(a, {0}, false, acc));
    gw1.add_(at::mm(a.t(), x_c).to(acc));
    gx.narrow(0, row0, n).copy_(at::mm(a, w1));
  }
  const auto finish = [&](const Tensor& t) { return t.defined() ? t.to(x.scalar_type()) : t; };
  return {gx.view(x.sizes()), finish(gw1), finish(gb1), finish(gw2), finish(gb2)};
}

// Against the CPU operators in float64 on the same (dtype-representable) inputs. Tolerances
// cover the GEMMs' and the activations' rounding in dtype (float16 / bfloat16 hidden
// activations are rounded before the second GEMM); a wrong mask or row offset changes whole
// terms of the sums, far above them.
void check_operators(at::ScalarType dtype, double rtol, double atol) {
  for (const OpCase& c : kOpCases) {
    at::manual_seed(c.d_ff * 7 + c.chunk);
    const auto make = [&](at::IntArrayRef shape, double s) {
      return (at::randn(shape, at::kDouble) * s).to(dtype);
    };
    const Tensor x = make({c.batch, c.length, c.d_model}, 1.0);
    const Tensor g = make({c.batch, c.length, c.d_model}, 1.0);
    const Tensor w1 = make({c.d_ff, c.d_model}, 1.0 / std::sqrt(double(c.d_model)));
    const Tensor w2 = make({c.d_model, c.d_ff}, 1.0 / std::sqrt(double(c.d_ff)));
    OptTensor b1, b2, b1d, b2d;
    if (c.biases) {
      b1 = make({c.d_ff}, 0.3);
      b2 = make({c.d_model}, 0.3);
      b1d = b1->to(at::kDouble);
      b2d = b2->to(at::kDouble);
    }
    const Tensor xd = x.to(at::kDouble), gd = g.to(at::kDouble);
    const Tensor w1d = w1.to(at::kDouble), w2d = w2.to(at::kDouble);
    for (const ChunkedFfnActivation act : kActivations) {
      const std::string name = activation_name(act);
      const std::string tag = name + " " + c10::toString(dtype) + " d_ff " +
                              std::to_string(c.d_ff) + " chunk " + std::to_string(c.chunk) +
                              " p " + std::to_string(c.p);
      SCOPED_TRACE(tag);
      const Tensor want_y = reformer_test::chunked_ffn(xd, w1d, b1d, w2d, b2d, c.chunk, name, c.p, c.seed);
      EXPECT_TRUE(close(sim_chunked_ffn(x, w1, b1, w2, b2, c, act), want_y, rtol, atol,
                        tag + " y"));
      const Grads want =
          reformer_test::chunked_ffn_backward(gd, xd, w1d, b1d, w2d, b2d, c.chunk, name, c.p, c.seed,
                                             {true, true, true, true, true});
      const Grads got = sim_chunked_ffn_backward(g, x, w1, b1, w2, b2, c, act);
      EXPECT_TRUE(close(std::get<0>(got), std::get<0>(want), rtol, atol, tag + " grad_x"));
      EXPECT_TRUE(close(std::get<1>(got), std::get<1>(want), rtol, atol, tag + " grad_w1"));
      EXPECT_TRUE(close(std::get<3>(got), std::get<3>(want), rtol, atol, tag + " grad_w2"));
      if (c.biases) {
        EXPECT_TRUE(close(std::get<2>(got), std::get<2>(want), rtol, atol, tag + " grad_b1"));
        EXPECT_TRUE(close(std::get<4>(got), std::get<4>(want), rtol, atol, tag + " grad_b2"));
      }
    }
  }
}

TEST(CudaSimChunkedFfnOperator, Double) { check_operators(at::kDouble, 1e-10, 1e-12); }
TEST(CudaSimChunkedFfnOperator, Float) { check_operators(at::kFloat, 1e-5, 2e-6); }
TEST(CudaSimChunkedFfnOperator, Half) { check_operators(at::kHalf, 4e-3, 2e-3); }
TEST(CudaSimChunkedFfnOperator, BFloat16) { check_operators(at::kBFloat16, 3e-2, 1.5e-2); }

}  // namespace

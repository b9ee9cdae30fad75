// reformer::chunked_ffn and reformer::chunked_ffn_backward called through the dispatcher from
// C++ (LibTorch, no Python), checked against a naive unchunked ATen computation whose dropout
// mask comes from a scalar SplitMix64 loop (the rule documented in csrc/chunked_ffn.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <tuple>

#include "reformer_ops.h"

namespace {

using reformer_test::chunked_ffn;
using reformer_test::chunked_ffn_backward;
using reformer_test::ChunkedFfnGrads;
using reformer_test::OptTensor;
using reformer_test::seed_tensor;
using reformer_test::Tensor;
using Grads = ChunkedFfnGrads;

// The (e + 1)-th output of SplitMix64 seeded with `seed`.
uint64_t splitmix64_word(uint64_t seed, uint64_t e) {
  uint64_t z = seed + (e + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Keep mask (rows, d_ff) as float64 0/1: kept iff signed(word) >= -2^63 + p 2^64.
Tensor naive_keep(int64_t rows, int64_t d_ff, double p, int64_t seed) {
  auto keep = at::empty({rows, d_ff}, at::kDouble);
  auto k = keep.accessor<double, 2>();
  const uint64_t threshold = static_cast<uint64_t>(std::ldexp(p, 64));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < d_ff; ++c) {
      const uint64_t word = splitmix64_word(static_cast<uint64_t>(seed),
                                            static_cast<uint64_t>(r * d_ff + c));
      // signed(word) >= -2^63 + threshold  <=>  word + 2^63 >= threshold (mod 2^64, unsigned)
      k[r][c] = (word + (uint64_t{1} << 63)) >= threshold ? 1.0 : 0.0;
    }
  }
  return keep;
}

Tensor act_value(const Tensor& z, const std::string& act) {
  if (act == "gelu") return at::gelu(z);
  if (act == "gelu_tanh") return at::gelu(z, "tanh");
  if (act == "relu") return at::relu(z);
  return at::silu(z);
}

Tensor act_derivative(const Tensor& z, const std::string& act) {
  const auto ones = at::ones_like(z);
  if (act == "gelu") return at::gelu_backward(ones, z);
  if (act == "gelu_tanh") return at::gelu_backward(ones, z, "tanh");
  if (act == "relu") return (z > 0).to(z.scalar_type());
  return at::silu_backward(ones, z);
}

struct Naive {
  Tensor y;
  Grads grads;
};

// Unchunked forward and hand-derived backward on x viewed as (N, d_model).
Naive naive_ffn(const Tensor& x, const Tensor& w1, const OptTensor& b1, const Tensor& w2,
                const OptTensor& b2, const Tensor& grad_out, const std::string& act, double p,
                int64_t seed) {
  const int64_t d_model = x.size(-1), d_ff = w1.size(0);
  const auto x2 = x.reshape({-1, d_model});
  const auto g2 = grad_out.reshape({-1, d_model});
  auto z = at::matmul(x2, w1.t());
  if (b1) z = z + *b1;
  auto mult = at::ones({x2.size(0), d_ff}, x.options());
  if (p > 0) mult = naive_keep(x2.size(0), d_ff, p, seed).to(x.scalar_type()) / (1.0 - p);
  const auto h = act_value(z, act) * mult;
  auto y = at::matmul(h, w2.t());
  if (b2) y = y + *b2;
  const auto gz = at::matmul(g2, w2) * mult * act_derivative(z, act);
  Grads grads{at::matmul(gz, w1).view(x.sizes()), at::matmul(gz.t(), x2),
              b1 ? gz.sum(0) : Tensor(), at::matmul(g2.t(), h), b2 ? g2.sum(0) : Tensor()};
  return {y.view(x.sizes()), grads};
}

void expect_close(const Tensor& actual, const Tensor& expected, double tol, const std::string& what) {
  ASSERT_TRUE(actual.defined()) << what;
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  ASSERT_EQ(actual.scalar_type(), expected.scalar_type()) << what;
  const double scale = std::max(expected.abs().max().item<double>(), 1e-30);
  const double err = (actual - expected).abs().max().item<double>();
  EXPECT_LE(err, tol * scale) << what << ": max error " << err << ", scale " << scale;
}

struct Case {
  std::string activation;
  int64_t chunk_size;
  bool bias;
  double p;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.activation << ", chunk_size " << c.chunk_size << (c.bias ? ", bias" : ", no bias")
      << ", dropout " << c.p;
}

class ChunkedFfnTest : public ::testing::TestWithParam<Case> {};

TEST_P(ChunkedFfnTest, MatchesNaiveFloat64) {
  const Case c = GetParam();
  at::manual_seed(1);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const auto x = at::randn({3, 5, 6}, opts);  // N = 15 positions
  const auto w1 = at::randn({10, 6}, opts) / std::sqrt(6.0);
  const auto w2 = at::randn({6, 10}, opts) / std::sqrt(10.0);
  const OptTensor b1 = c.bias ? OptTensor(at::randn({10}, opts)) : std::nullopt;
  const OptTensor b2 = c.bias ? OptTensor(at::randn({6}, opts)) : std::nullopt;
  const auto grad_out = at::randn({3, 5, 6}, opts);
  const int64_t seed = -1234567;

  const auto ref = naive_ffn(x, w1, b1, w2, b2, grad_out, c.activation, c.p, seed);
  const auto y = chunked_ffn(x, w1, b1, w2, b2, c.chunk_size, c.activation, c.p, seed);
  expect_close(y, ref.y, 1e-10, "y");
  const auto grads = chunked_ffn_backward(grad_out, x, w1, b1, w2, b2, c.chunk_size, c.activation,
                                          c.p, seed, {true, true, true, true, true});
  expect_close(std::get<0>(grads), std::get<0>(ref.grads), 1e-10, "grad_x");
  expect_close(std::get<1>(grads), std::get<1>(ref.grads), 1e-10, "grad_w1");
  expect_close(std::get<3>(grads), std::get<3>(ref.grads), 1e-10, "grad_w2");
  if (c.bias) {
    expect_close(std::get<2>(grads), std::get<2>(ref.grads), 1e-10, "grad_b1");
    expect_close(std::get<4>(grads), std::get<4>(ref.grads), 1e-10, "grad_b2");
  } else {
    EXPECT_FALSE(std::get<2>(grads).defined());
    EXPECT_FALSE(std::get<4>(grads).defined());
  }
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  return c.activation + "_chunk" + std::to_string(c.chunk_size) + (c.bias ? "_bias" : "_nobias") +
         (c.p > 0 ? "_dropout" : "");
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ChunkedFfnTest,
    ::testing::Values(Case{"gelu", 4, true, 0.0}, Case{"gelu", 1, false, 0.0},
                      Case{"gelu", 15, true, 0.3}, Case{"gelu", 100, false, 0.0},
                      Case{"gelu_tanh", 4, true, 0.0}, Case{"gelu_tanh", 7, false, 0.5},
                      Case{"relu", 4, true, 0.0}, Case{"relu", 2, true, 0.25},
                      Case{"silu", 6, false, 0.0}, Case{"silu", 4, true, 0.4}),
    case_name);

TEST(ChunkedFfn, Float32AndOutputMask) {
  at::manual_seed(2);
  const auto x = at::randn({40, 16});
  const auto w1 = at::randn({48, 16}) / 4.0;
  const auto w2 = at::randn({16, 48}) / 7.0;
  const auto b1 = at::randn({48});
  const auto b2 = at::randn({16});
  const auto g = at::randn({40, 16});
  const auto ref = naive_ffn(x, w1, b1, w2, b2, g, "gelu", 0.0, 0);
  expect_close(chunked_ffn(x, w1, b1, w2, b2, 9, "gelu", 0.0, 0), ref.y, 1e-5, "y");
  const auto grads = chunked_ffn_backward(g, x, w1, b1, w2, b2, 9, "gelu", 0.0, 0,
                                          {false, true, false, false, true});
  EXPECT_FALSE(std::get<0>(grads).defined());
  expect_close(std::get<1>(grads), std::get<1>(ref.grads), 1e-5, "grad_w1");
  EXPECT_FALSE(std::get<2>(grads).defined());
  EXPECT_FALSE(std::get<3>(grads).defined());
  expect_close(std::get<4>(grads), std::get<4>(ref.grads), 1e-5, "grad_b2");
}

TEST(ChunkedFfn, DropoutMaskIsSplitMix64AndIndependentOfChunking) {
  // x = 1, W1 = 1/d_ff, ReLU: the hidden activation is 1; W2 = I: y = keep / (1 - p).
  const int64_t rows = 29, d_ff = 12;
  const double p = 0.45;
  const int64_t seed = 0x5eed;
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const auto x = at::ones({rows, d_ff}, opts);
  const auto w1 = at::full({d_ff, d_ff}, 1.0 / d_ff, opts);
  const auto w2 = at::eye(d_ff, opts);
  const auto expected = naive_keep(rows, d_ff, p, seed);
  for (int64_t chunk : {1, 5, 29, 64}) {
    const auto y = chunked_ffn(x, w1, std::nullopt, w2, std::nullopt, chunk, "relu", p, seed);
    const auto keep = (y * (1.0 - p) > 0.5).to(at::kDouble);
    EXPECT_TRUE(at::equal(keep, expected)) << "chunk_size " << chunk;
  }
}

// The CPU result does not depend on the thread count: 1034 rows in chunks of 256 (the last of
// 10 rows, which MKL splits between 2 threads on some CPUs, with different results).
TEST(ChunkedFfn, BitwiseIdenticalAtOneTwoAndThreeThreads) {
  at::manual_seed(3);
  const auto x = at::randn({1034, 256});
  const auto w1 = at::randn({1024, 256}) / 16.0;
  const auto w2 = at::randn({256, 1024}) / 32.0;
  const auto b1 = at::randn({1024});
  const auto b2 = at::randn({256});
  const auto g = at::randn({1034, 256});
  const int threads = at::get_num_threads();
  const auto run = [&](int n) {
    at::set_num_threads(n);
    auto y = chunked_ffn(x, w1, b1, w2, b2, 256, "silu", 0.3, 11);
    auto grads = chunked_ffn_backward(g, x, w1, b1, w2, b2, 256, "silu", 0.3, 11,
                                      {true, true, true, true, true});
    return std::array<Tensor, 6>{y, std::get<0>(grads), std::get<1>(grads), std::get<2>(grads),
                                 std::get<3>(grads), std::get<4>(grads)};
  };
  const auto one = run(1);
  const std::array<const char*, 6> names = {"y", "grad_x", "grad_w1", "grad_b1", "grad_w2",
                                            "grad_b2"};
  for (int n : {2, 3}) {
    const auto other = run(n);
    for (size_t i = 0; i < names.size(); ++i)
      EXPECT_TRUE(at::equal(one[i], other[i])) << names[i] << " differs at 1 and " << n
                                               << " threads";
  }
  at::set_num_threads(threads);
}

template <typename F>
void expect_value_error(F call, const std::string& fragment) {
  try {
    call();
    ADD_FAILURE() << "no error; expected one mentioning '" << fragment << "'";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(ChunkedFfn, BadArgumentsRaiseValueErrors) {
  const auto x = at::randn({4, 8});
  const auto w1 = at::randn({12, 8});
  const auto w2 = at::randn({8, 12});
  const auto b1 = at::randn({12});
  expect_value_error([&] { chunked_ffn(x, w1, b1, w2, std::nullopt, 0, "gelu", 0.0, 0); },
                     "chunk_size must be >= 1");
  expect_value_error([&] { chunked_ffn(x, w1, b1, w2, std::nullopt, 4, "tanh", 0.0, 0); },
                     "activation must be one of");
  expect_value_error([&] { chunked_ffn(x, w1.narrow(1, 0, 7), b1, w2, std::nullopt, 4, "gelu",
                                       0.0, 0); },
                     "w1 must have shape");
  expect_value_error([&] { chunked_ffn(x, w1, b1, w2.t(), std::nullopt, 4, "gelu", 0.0, 0); },
                     "w2 must have shape");
  expect_value_error([&] { chunked_ffn(x, w1, b1.narrow(0, 0, 5), w2, std::nullopt, 4, "gelu",
                                       0.0, 0); },
                     "b1 must have shape");
  expect_value_error([&] { chunked_ffn(x, w1.to(at::kDouble), b1, w2, std::nullopt, 4, "gelu",
                                       0.0, 0); },
                     "w1 must have the dtype of x");
  expect_value_error([&] { chunked_ffn(x, w1, b1, w2, std::nullopt, 4, "gelu", 1.0, 0); },
                     "dropout_p must be in [0, 1)");
}

}  // namespace

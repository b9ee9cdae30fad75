// The reformer operators called through the dispatcher from C++ (LibTorch, no Python), checked
// against the naive reference in naive_lsh.h and against finite differences.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

#include <optional>
#include <random>
#include <tuple>

#include "kernels/lsh_common.h"
#include "naive_lsh.h"
#include "reformer_ops.h"

namespace {

using reformer_test::lsh_attention;
using reformer_test::lsh_attention_backward;
using reformer_test::lsh_buckets;
using reformer_test::OptTensor;
using reformer_test::Tensor;

std::vector<double> to_vector(const Tensor& t) {
  auto c = t.to(at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

Tensor from_vector(const std::vector<double>& values, at::IntArrayRef shape) {
  return at::tensor(values, at::dtype(at::kDouble)).reshape(shape);
}

struct Config {
  int64_t B, H, L, D, Dv, Hr, R, nb, m;
  bool causal;
  int64_t before, after;
  bool masked;
};

// A random problem for `c`: tensors for the operators and the same data for the naive code.
struct Case {
  naive::Problem problem;
  Tensor qk, v, rot;
  OptTensor mask;
};

Case make_case(const Config& c, uint64_t seed) {
  at::manual_seed(seed);
  Case k;
  k.qk = at::randn({c.B, c.H, c.L, c.D}, at::kDouble);
  k.v = at::randn({c.B, c.H, c.L, c.Dv}, at::kDouble);
  k.rot = at::randn({c.Hr, c.D, c.R, c.nb / 2}, at::kDouble);
  naive::Problem& p = k.problem;
  p = {c.B, c.H, c.L, c.D, c.Dv, c.Hr, c.R, c.nb, c.m, c.causal, c.before, c.after, 0.7,
       to_vector(k.qk), to_vector(k.v), to_vector(k.rot), {}};
  if (c.masked) {
    auto mask = at::rand({c.B, c.L}, at::kDouble) < 0.3;
    mask[c.B - 1].fill_(true);  // one batch row that is all padding
    k.mask = mask;
    auto m8 = mask.to(at::kByte).contiguous();
    p.padding.assign(m8.data_ptr<uint8_t>(), m8.data_ptr<uint8_t>() + m8.numel());
  }
  return k;
}

const std::vector<Config> kConfigs = {
    {1, 1, 1, 4, 4, 1, 1, 2, 4, false, 1, 0, false},    // L = 1
    {2, 2, 7, 8, 5, 2, 2, 4, 8, false, 1, 0, false},    // L = m - 1, one chunk per round
    {2, 3, 16, 6, 6, 1, 4, 4, 4, true, 1, 0, true},     // shared rotations, causal, padding
    {1, 2, 37, 8, 3, 2, 3, 8, 4, false, 2, 1, true},    // L not a multiple of m, wide window
    {2, 2, 29, 5, 7, 2, 8, 6, 4, true, 0, 0, false},    // no neighbours, many rounds
};

TEST(LshIndexMath, WindowChunksAreDistinctAndCyclic) {
  int64_t out[reformer::kMaxWindowChunks];
  ASSERT_EQ(reformer::window_chunks(0, 10, 1, 0, out), 2);
  EXPECT_EQ(out[0], 9);
  EXPECT_EQ(out[1], 0);
  ASSERT_EQ(reformer::window_chunks(0, 1, 2, 1, out), 1);  // everything wraps onto chunk 0
  EXPECT_EQ(out[0], 0);
  ASSERT_EQ(reformer::window_chunks(1, 3, 2, 1, out), 3);  // offsets -2..1 on 3 chunks
  EXPECT_EQ(out[0], 2);
  EXPECT_EQ(out[1], 0);
  EXPECT_EQ(out[2], 1);
}

TEST(LshIndexMath, ChunksSeeingIsTheInverseOfWindows) {
  for (int64_t n : {1, 2, 3, 5, 16})
    for (int before : {0, 1, 2})
      for (int after : {0, 1, 3}) {
        std::vector<std::vector<int64_t>> seen_by(n);
        int64_t w[reformer::kMaxWindowChunks];
        for (int64_t c = 0; c < n; ++c) {
          const int count = reformer::window_chunks(c, n, before, after, w);
          for (int k = 0; k < count; ++k) seen_by[w[k]].push_back(c);
        }
        for (int64_t key = 0; key < n; ++key) {
          const int count = reformer::chunks_seeing(key, n, before, after, w);
          std::vector<int64_t> got(w, w + count);
          std::sort(got.begin(), got.end());
          std::sort(seen_by[key].begin(), seen_by[key].end());
          EXPECT_EQ(got, seen_by[key]) << "n=" << n << " before=" << before << " after=" << after;
        }
      }
}

TEST(LshBuckets, MatchNaiveArgmax) {
  for (const auto& c : kConfigs) {
    auto k = make_case(c, 1);
    auto got = lsh_buckets(k.qk, k.rot, k.mask);
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{c.B, c.H, c.R, c.L}));
    auto want = naive::buckets(k.problem);
    const int64_t Lp = naive::padded_length(k.problem);
    auto g = got.contiguous();
    for (int64_t row = 0; row < c.B * c.H * c.R; ++row)
      for (int64_t i = 0; i < c.L; ++i)
        ASSERT_EQ(g.data_ptr<int64_t>()[row * c.L + i], want[row * Lp + i]);
  }
}

TEST(LshAttention, ForwardMatchesNaive) {
  for (const auto& c : kConfigs) {
    auto k = make_case(c, 2);
    auto [out, lse, sorted, stats] =
        lsh_attention(k.qk, k.v, k.rot, k.mask, c.m, c.causal, c.before, c.after, 0.7);
    std::vector<double> want_out, want_lse;
    naive::attention(k.problem, want_out, want_lse);
    auto got_out = to_vector(out), got_lse = to_vector(lse);
    ASSERT_EQ(got_out.size(), want_out.size());
    for (size_t i = 0; i < want_out.size(); ++i) ASSERT_NEAR(got_out[i], want_out[i], 1e-10);
    for (size_t i = 0; i < want_lse.size(); ++i)
      ASSERT_NEAR(got_lse[i], want_lse[i], 1e-9 * (1 + std::abs(want_lse[i])));
    EXPECT_EQ(sorted.scalar_type(), at::kInt);
    EXPECT_EQ(sorted.size(2), c.R * naive::padded_length(k.problem));
  }
}

// <grad, direction> against a central difference of <out, w_out> + <lse, w_lse>.
TEST(LshAttention, BackwardMatchesFiniteDifferences) {
  for (const auto& c : kConfigs) {
    auto k = make_case(c, 3);
    auto [out, lse, sorted, stats] =
        lsh_attention(k.qk, k.v, k.rot, k.mask, c.m, c.causal, c.before, c.after, 0.7);
    auto w_out = at::randn_like(out), w_lse = at::randn_like(lse);
    auto [dqk, dv] = lsh_attention_backward(w_out, w_lse, k.qk, k.v, out, stats, sorted, k.mask,
                                            c.m, c.causal, c.before, c.after, 0.7);
    auto dir_qk = at::randn_like(k.qk), dir_v = at::randn_like(k.v);
    const double eps = 1e-6;
    auto objective = [&](double t) {
      auto [o, l, s, st] = lsh_attention(k.qk + t * dir_qk, k.v + t * dir_v, k.rot, k.mask, c.m,
                                     c.causal, c.before, c.after, 0.7);
      return ((o * w_out).sum() + (l * w_lse).sum()).item<double>();
    };
    const double numeric = (objective(eps) - objective(-eps)) / (2 * eps);
    const double analytic = ((dqk * dir_qk).sum() + (dv * dir_v).sum()).item<double>();
    EXPECT_NEAR(analytic, numeric, 1e-5 * (1 + std::abs(numeric)))
        << "L=" << c.L << " R=" << c.R << " causal=" << c.causal;
  }
}

TEST(LshAttention, RunsAreBitwiseIdentical) {
  auto k = make_case(kConfigs[3], 4);
  auto qk = k.qk.to(at::kFloat), v = k.v.to(at::kFloat);
  auto a = lsh_attention(qk, v, k.rot, k.mask, 4, false, 2, 1, 1.0);
  auto b = lsh_attention(qk, v, k.rot, k.mask, 4, false, 2, 1, 1.0);
  EXPECT_TRUE(at::equal(std::get<0>(a), std::get<0>(b)));
  EXPECT_TRUE(at::equal(std::get<1>(a), std::get<1>(b)));
  auto g = at::ones_like(std::get<0>(a));
  auto ga = lsh_attention_backward(g, std::nullopt, qk, v, std::get<0>(a), std::get<3>(a),
                                   std::get<2>(a), k.mask, 4, false, 2, 1, 1.0);
  auto gb = lsh_attention_backward(g, std::nullopt, qk, v, std::get<0>(a), std::get<3>(a),
                                   std::get<2>(a), k.mask, 4, false, 2, 1, 1.0);
  EXPECT_TRUE(at::equal(std::get<0>(ga), std::get<0>(gb)));
  EXPECT_TRUE(at::equal(std::get<1>(ga), std::get<1>(gb)));
}

// Expects a c10::ValueError whose message mentions `name`.
template <typename F>
void expect_value_error(F&& call, const std::string& name) {
  try {
    call();
    ADD_FAILURE() << "expected an error naming " << name;
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
}

TEST(LshAttention, BadInputNamesTheArgument) {
  auto qk = at::randn({1, 2, 8, 4}), v = at::randn({1, 2, 8, 4}), rot = at::randn({2, 4, 1, 2});
  expect_value_error([&] { lsh_attention(qk[0], v, rot, {}, 4, false, 1, 0, 1); }, "qk");
  expect_value_error([&] { lsh_attention(qk, v.narrow(2, 0, 7), rot, {}, 4, false, 1, 0, 1); },
                     "v");
  expect_value_error([&] { lsh_attention(qk, v.to(at::kDouble), rot, {}, 4, false, 1, 0, 1); },
                     "v");
  expect_value_error([&] { lsh_attention(qk, v, at::randn({2, 3, 1, 2}), {}, 4, false, 1, 0, 1); },
                     "rotations");
  expect_value_error([&] { lsh_attention(qk, v, at::randn({3, 4, 1, 2}), {}, 4, false, 1, 0, 1); },
                     "rotations");
  expect_value_error([&] { lsh_attention(qk, v, rot, {}, 0, false, 1, 0, 1); }, "bucket_size");
  expect_value_error([&] { lsh_attention(qk, v, rot, {}, 4, false, -1, 0, 1); },
                     "n_chunks_before");
  expect_value_error(
      [&] { lsh_attention(qk, v, rot, at::zeros({1, 8}), 4, false, 1, 0, 1); }, "key_padding_mask");
  expect_value_error(
      [&] { lsh_attention(qk, v, rot, at::zeros({1, 7}, at::kBool), 4, false, 1, 0, 1); },
      "key_padding_mask");
  expect_value_error([&] { lsh_buckets(qk, at::randn({2, 4, 0, 2}), {}); }, "n_hashes");
  // factorised bucket counts: even factors >= 2, sum / 2 == rotations.shape[3], at most 8
  const auto rot6 = at::randn({2, 4, 1, 6});
  for (const std::vector<int64_t>& bad :
       {std::vector<int64_t>{4, 6}, {3, 9}, {0, 12}, {2, 2, 2, 2}, {12, 0}, {-2, 14}}) {
    expect_value_error([&] { lsh_buckets(qk, rot6, {}, bad); }, "bucket_factors");
    expect_value_error([&] { lsh_attention(qk, v, rot6, {}, 4, false, 1, 0, 1, bad); },
                       "bucket_factors");
  }
  const std::vector<int64_t> nine(9, 2);  // more than kMaxBucketFactors
  expect_value_error([&] { lsh_buckets(qk, at::randn({2, 4, 1, 9}), {}, nine); },
                     "bucket_factors");
}

// Factorised buckets (docs/semantics.md §1 step 1): the digit of factor j is the plain bucket
// of the rotations' j-th slice of columns, so the factorised bucket is the mixed-radix sum of
// single-factor buckets (checked against the naive argmax above), padding -> prod(factors).
TEST(LshBuckets, FactorisedAreMixedRadixOfPerFactorBuckets) {
  at::manual_seed(11);
  for (const std::vector<int64_t>& factors :
       {std::vector<int64_t>{8}, {2, 4}, {6, 2, 4}, {4, 4, 2, 6}}) {
    for (const auto dtype : {at::kFloat, at::kDouble}) {
      int64_t cols = 0, n_buckets = 1;
      for (const int64_t f : factors) cols += f / 2, n_buckets *= f;
      const auto qk = at::randn({2, 3, 37, 8}, dtype), rot = at::randn({1, 8, 3, cols}, dtype);
      const Tensor mask = at::rand({2, 37}) < 0.3;
      const auto got = lsh_buckets(qk, rot, mask, factors);
      Tensor want = at::zeros_like(got);
      int64_t radix = 1, col = 0;
      for (const int64_t f : factors) {
        const auto digit = lsh_buckets(qk, rot.narrow(3, col, f / 2).contiguous(), std::nullopt);
        want.add_(digit * radix);
        radix *= f;
        col += f / 2;
      }
      want.masked_fill_(mask.view({2, 1, 1, 37}), n_buckets);
      EXPECT_TRUE(at::equal(got, want)) << "factors " << at::IntArrayRef(factors);
      // the attention's sort orders by these buckets: sorted_positions follow (bucket, pos)
      const auto v = at::randn({2, 3, 37, 4}, dtype);
      const auto sorted = std::get<2>(lsh_attention(qk, v, rot, mask, 37, false, 0, 0, 1.0,
                                                    factors));
      const auto keys = at::gather(got, 3, sorted.view({2, 3, 3, 37}).to(at::kLong));
      EXPECT_TRUE((keys.narrow(3, 1, 36) >= keys.narrow(3, 0, 36)).all().item<bool>());
    }
  }
}

}  // namespace

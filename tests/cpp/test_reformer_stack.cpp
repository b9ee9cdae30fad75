// reformer::reformer_stack and reformer::reformer_stack_backward called through the dispatcher
// from C++ (LibTorch, no Python): a two-layer stack equals two one-layer stacks chained (forward
// and backward), the backward's gradients agree with central finite differences of the forward
// in float64, and bad arguments are rejected with a message naming them.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace {

using Tensor = at::Tensor;
using OptTensor = std::optional<Tensor>;
constexpr int64_t kWeightsPerLayer = 12;

struct Problem {
  Tensor x1, x2, seeds;
  std::vector<Tensor> weights, rotations;
  OptTensor mask;
  int64_t n_heads = 2, bucket_size = 4;
  double dropout_p = 0.25;
};

// depth layers over (B=2, L=11, d=8) streams, 2 heads of 4, d_ff 12, 2 rounds of 4 buckets.
Problem make_problem(int64_t depth) {
  at::manual_seed(7);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const int64_t d = 8, inner = 8, ff = 12;
  Problem p;
  p.x1 = at::randn({2, 11, d}, f64);
  p.x2 = at::randn({2, 11, d}, f64);
  for (int64_t l = 0; l < depth; ++l) {
    const std::vector<std::vector<int64_t>> shapes = {
        {d}, {d}, {inner, d}, {inner, d}, {d, inner}, {d}, {d}, {d}, {ff, d}, {ff}, {d, ff}, {d}};
    for (size_t i = 0; i < shapes.size(); ++i) {
      auto w = at::randn(shapes[i], f64) * 0.5;
      if (i == 0 || i == 6) w = w * 0.2 + 1.0;  // LayerNorm weights near 1
      p.weights.push_back(w);
    }
    p.rotations.push_back(at::randn({2, 4, 2, 2}, f64));
  }
  p.seeds = at::randint(0, int64_t{1} << 62, {depth, 3}, at::TensorOptions().dtype(at::kLong));
  auto mask = at::zeros({2, 11}, at::TensorOptions().dtype(at::kBool));
  mask.narrow(1, 9, 2).select(0, 1).fill_(true);
  p.mask = mask;
  return p;
}

std::tuple<Tensor, Tensor> stack(const Problem& p, const Tensor& x1, const Tensor& x2,
                                 const std::vector<Tensor>& weights,
                                 const std::vector<Tensor>& rotations, const Tensor& seeds) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("reformer::reformer_stack", "")
          .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, at::TensorList,
                                            at::TensorList, const OptTensor&, const Tensor&,
                                            int64_t, int64_t, bool, int64_t, int64_t, int64_t,
                                            c10::string_view, double, double, at::IntArrayRef,
                                            at::IntArrayRef, int64_t, int64_t, int64_t, double,
                                            double)>();
  return op.call(x1, x2, weights, rotations, p.mask, seeds, p.n_heads, p.bucket_size,
                 /*causal=*/true, 1, 0, /*ff_chunk_size=*/5, "gelu", p.dropout_p, 1e-5,
                 /*bucket_factors=*/at::IntArrayRef{}, /*local_layers=*/at::IntArrayRef{},
                 64, 1, 0, /*lsh_attention_dropout_p=*/0.0, /*local_attention_dropout_p=*/0.0);
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> stack_backward(
    const Problem& p, const Tensor& g1, const Tensor& g2, const Tensor& y1, const Tensor& y2,
    const std::vector<Tensor>& weights, const std::vector<Tensor>& rotations,
    const Tensor& seeds) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("reformer::reformer_stack_backward", "")
          .typed<std::tuple<Tensor, Tensor, std::vector<Tensor>>(
              const Tensor&, const Tensor&, const Tensor&, const Tensor&, at::TensorList,
              at::TensorList, const OptTensor&, const Tensor&, int64_t, int64_t, bool, int64_t,
              int64_t, int64_t, c10::string_view, double, double, at::IntArrayRef,
              at::IntArrayRef, int64_t, int64_t, int64_t, double, double)>();
  return op.call(g1, g2, y1, y2, weights, rotations, p.mask, seeds, p.n_heads, p.bucket_size,
                 true, 1, 0, 5, "gelu", p.dropout_p, 1e-5, at::IntArrayRef{}, at::IntArrayRef{},
                 64, 1, 0, 0.0, 0.0);
}

std::vector<Tensor> layer_weights(const Problem& p, int64_t l) {
  return {p.weights.begin() + l * kWeightsPerLayer, p.weights.begin() + (l + 1) * kWeightsPerLayer};
}

double rel_err(const Tensor& a, const Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(b.abs().max().item<double>(), 1e-30);
}

TEST(ReformerStack, TwoLayersEqualTwoChainedSingleLayers) {
  const auto p = make_problem(2);
  const auto [y1, y2] = stack(p, p.x1, p.x2, p.weights, p.rotations, p.seeds);
  const auto [a1, a2] = stack(p, p.x1, p.x2, layer_weights(p, 0), {p.rotations[0]},
                              p.seeds.narrow(0, 0, 1));
  const auto [b1, b2] = stack(p, a1, a2, layer_weights(p, 1), {p.rotations[1]},
                              p.seeds.narrow(0, 1, 1));
  EXPECT_TRUE(at::equal(y1, b1));
  EXPECT_TRUE(at::equal(y2, b2));

  const auto g1 = at::randn_like(y1), g2 = at::randn_like(y2);
  const auto [dx1, dx2, dw] = stack_backward(p, g1, g2, y1, y2, p.weights, p.rotations, p.seeds);
  const auto [da1, da2, dw1] = stack_backward(p, g1, g2, b1, b2, layer_weights(p, 1),
                                              {p.rotations[1]}, p.seeds.narrow(0, 1, 1));
  const auto [dz1, dz2, dw0] = stack_backward(p, da1, da2, a1, a2, layer_weights(p, 0),
                                              {p.rotations[0]}, p.seeds.narrow(0, 0, 1));
  // The two-layer backward rebuilds layer 0's outputs (a1, a2) from (y1, y2): equal up to the
  // rounding of that reconstruction.
  EXPECT_LT(rel_err(dx1, dz1), 1e-10);
  EXPECT_LT(rel_err(dx2, dz2), 1e-10);
  ASSERT_EQ(dw.size(), 24u);
  for (int64_t i = 0; i < kWeightsPerLayer; ++i) {
    EXPECT_LT(rel_err(dw[i], dw0[i]), 1e-10) << "layer 0 weight " << i;
    EXPECT_LT(rel_err(dw[kWeightsPerLayer + i], dw1[i]), 1e-10) << "layer 1 weight " << i;
  }
}

TEST(ReformerStack, GradientsMatchFiniteDifferences) {
  const auto p = make_problem(2);
  const auto [y1, y2] = stack(p, p.x1, p.x2, p.weights, p.rotations, p.seeds);
  const auto r1 = at::randn_like(y1), r2 = at::randn_like(y2);
  const auto loss = [&](const Tensor& x1, const Tensor& x2, const std::vector<Tensor>& w) {
    const auto [z1, z2] = stack(p, x1, x2, w, p.rotations, p.seeds);
    return ((z1 * r1).sum() + (z2 * r2).sum()).item<double>();
  };
  const auto [dx1, dx2, dw] = stack_backward(p, r1, r2, y1, y2, p.weights, p.rotations, p.seeds);
  const double eps = 1e-6;
  // Directional derivatives along random directions: for x1, x2 and three weights.
  const auto d1 = at::randn_like(p.x1), d2 = at::randn_like(p.x2);
  const double fd_x = (loss(p.x1 + eps * d1, p.x2 + eps * d2, p.weights) -
                       loss(p.x1 - eps * d1, p.x2 - eps * d2, p.weights)) /
                      (2 * eps);
  const double an_x = (dx1 * d1).sum().item<double>() + (dx2 * d2).sum().item<double>();
  EXPECT_NEAR(fd_x, an_x, 1e-5 * std::max(1.0, std::abs(an_x)));
  for (int64_t index : {int64_t{2}, int64_t{4}, 8 + kWeightsPerLayer}) {  // qk, out, layer 1 w1
    const auto dir = at::randn_like(p.weights[index]);
    auto plus = p.weights, minus = p.weights;
    plus[index] = p.weights[index] + eps * dir;
    minus[index] = p.weights[index] - eps * dir;
    const double fd = (loss(p.x1, p.x2, plus) - loss(p.x1, p.x2, minus)) / (2 * eps);
    const double an = (dw[index] * dir).sum().item<double>();
    EXPECT_NEAR(fd, an, 1e-5 * std::max(1.0, std::abs(an))) << "weight " << index;
  }
}

TEST(ReformerStack, BadArgumentsNameTheArgument) {
  auto p = make_problem(2);
  const auto expect_error = [&](const std::vector<Tensor>& w, const Tensor& seeds,
                                const std::string& needle) {
    try {
      stack(p, p.x1, p.x2, w, p.rotations, seeds);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto wrong = p.weights;
  wrong[kWeightsPerLayer + 9] = at::zeros({5}, p.x1.options());
  expect_error(wrong, p.seeds, "weights[21] (layer 1, ffn_b1)");
  expect_error({p.weights.begin(), p.weights.begin() + 13}, p.seeds, "weights must hold 12");
  expect_error(p.weights, p.seeds.to(at::kInt), "seeds");
}

// Every weight, at every index of a two-layer stack, that has a wrong shape (one row more, or one
// dimension more) or a wrong dtype is reported by its index, layer and name, in the per-layer
// order of csrc/reformer_stack.h (the order of the Python weight list).
TEST(ReformerStack, EveryBadWeightIsNamed) {
  const char* const kNames[kWeightsPerLayer] = {
      "norm1_weight", "norm1_bias", "qk_weight", "v_weight", "out_weight", "out_bias",
      "norm2_weight", "norm2_bias", "ffn_w1",    "ffn_b1",   "ffn_w2",     "ffn_b2"};
  const auto p = make_problem(2);
  for (size_t i = 0; i < p.weights.size(); ++i) {
    const std::string needle = "weights[" + std::to_string(i) + "] (layer " +
                               std::to_string(i / kWeightsPerLayer) + ", " +
                               kNames[i % kWeightsPerLayer] + ")";
    const auto& w = p.weights[i];
    auto longer = w.sizes().vec();
    longer[0] += 1;
    auto deeper = w.sizes().vec();
    deeper.push_back(1);
    for (const auto& bad : {at::zeros(longer, w.options()), at::zeros(deeper, w.options()),
                            w.to(at::kFloat)}) {
      auto weights = p.weights;
      weights[i] = bad;
      try {
        stack(p, p.x1, p.x2, weights, p.rotations, p.seeds);
        ADD_FAILURE() << "no error for " << needle << " " << bad.sizes();
      } catch (const c10::Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
            << needle << " " << bad.sizes() << " " << bad.scalar_type() << ": " << e.what();
      }
    }
  }
}

}  // namespace

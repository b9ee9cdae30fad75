// GoogleTest of the local attention operators (docs/semantics.md §9) through the C++ entry points
// of csrc/local_attention.h, as the reversible stack will call them, against a naive loop
// reference written from the spec: one query at a time, the window listed offset by offset
// (a chunk reached twice counted twice; a single chunk once), masks by replacement.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "csrc/local_attention.h"

namespace {

using at::Tensor;

struct Naive {
  Tensor out, lse, dq, dk, dv;
};

// Everything in double, on (B, H, L, *) double tensors; padding (B, L) bool or undefined.
Naive naive_local(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& padding,
                  const Tensor& go, const Tensor& gl, int64_t m, bool causal, int64_t before,
                  int64_t after, double scale) {
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3), Dv = v.size(3);
  const int64_t n = (L + m - 1) / m;
  auto pad = [&](int64_t b, int64_t j) {
    return j >= L || (padding.defined() && padding[b][j].item<bool>());
  };
  Naive r{at::zeros({B, H, L, Dv}, at::kDouble), at::zeros({B, H, L}, at::kDouble),
          at::zeros_like(q), at::zeros_like(k), at::zeros_like(v)};
  auto qa = q.accessor<double, 4>(), ka = k.accessor<double, 4>(), va = v.accessor<double, 4>();
  auto goa = go.accessor<double, 4>();
  auto gla = gl.accessor<double, 3>();
  auto oa = r.out.accessor<double, 4>();
  auto la = r.lse.accessor<double, 3>();
  auto dqa = r.dq.accessor<double, 4>(), dka = r.dk.accessor<double, 4>(),
       dva = r.dv.accessor<double, 4>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < L; ++i) {
        if (pad(b, i)) continue;
        const int64_t c = i / m;
        std::vector<int64_t> keys;
        std::vector<int64_t> offsets;
        if (n == 1) offsets = {0};
        else
          for (int64_t o = -before; o <= after; ++o) offsets.push_back(o);
        for (const int64_t o : offsets) {
          const int64_t kc = ((c + o) % n + n) % n;
          for (int64_t j = kc * m; j < kc * m + m; ++j) keys.push_back(j);
        }
        std::vector<double> s(keys.size());
        std::vector<bool> replaced(keys.size());
        double mx = -INFINITY;
        for (size_t t = 0; t < keys.size(); ++t) {
          const int64_t j = keys[t];
          replaced[t] = pad(b, j) || (causal && j > i);
          double dot = 0;
          if (!replaced[t])
            for (int64_t d = 0; d < D; ++d) dot += qa[b][h][i][d] * ka[b][h][j][d];
          s[t] = replaced[t] ? -1e9 : scale * dot;
          mx = std::max(mx, s[t]);
        }
        double sum = 0;
        for (const double x : s) sum += std::exp(x - mx);
        const double lse = mx + std::log(sum);
        la[b][h][i] = lse;
        std::vector<double> p(keys.size());
        for (size_t t = 0; t < keys.size(); ++t) {
          p[t] = std::exp(s[t] - lse);
          if (pad(b, keys[t])) continue;
          for (int64_t d = 0; d < Dv; ++d) oa[b][h][i][d] += p[t] * va[b][h][keys[t]][d];
        }
        double delta = -gla[b][h][i];
        for (int64_t d = 0; d < Dv; ++d) delta += goa[b][h][i][d] * oa[b][h][i][d];
        for (size_t t = 0; t < keys.size(); ++t) {
          const int64_t j = keys[t];
          if (pad(b, j)) continue;
          double dp = 0;
          for (int64_t d = 0; d < Dv; ++d) dp += goa[b][h][i][d] * va[b][h][j][d];
          for (int64_t d = 0; d < Dv; ++d) dva[b][h][j][d] += p[t] * goa[b][h][i][d];
          if (replaced[t]) continue;
          const double ds = p[t] * (dp - delta);
          for (int64_t d = 0; d < D; ++d) {
            dqa[b][h][i][d] += scale * ds * ka[b][h][j][d];
            dka[b][h][j][d] += scale * ds * qa[b][h][i][d];
          }
        }
      }
  return r;
}

void expect_close(const Tensor& got, const Tensor& want, const char* what) {
  EXPECT_TRUE(at::allclose(got, want, 1e-10, 1e-10))
      << what << ": max |err| " << (got - want).abs().max().item<double>();
}

struct Case {
  int64_t B, H, L, D, Dv, m, before, after;
  bool causal, masked;
};

TEST(LocalAttention, MatchesNaiveReference) {
  const Case cases[] = {
      {2, 2, 13, 4, 3, 4, 1, 0, false, true},  // odd L, look back
      {1, 2, 12, 4, 4, 6, 1, 1, true, false},  // two chunks: the neighbour counted twice
      {2, 1, 17, 3, 5, 6, 2, 1, false, true},  // three chunks, offsets -2 and +1 coincide
      {1, 1, 5, 4, 4, 8, 2, 2, true, true},    // a single chunk: full attention
  };
  for (const Case& c : cases) {
    at::manual_seed(c.L * 10 + c.m);
    const Tensor q = at::randn({c.B, c.H, c.L, c.D}, at::kDouble);
    const Tensor k = at::randn({c.B, c.H, c.L, c.D}, at::kDouble);
    const Tensor v = at::randn({c.B, c.H, c.L, c.Dv}, at::kDouble);
    const Tensor go = at::randn({c.B, c.H, c.L, c.Dv}, at::kDouble);
    const Tensor gl = at::randn({c.B, c.H, c.L}, at::kDouble);
    Tensor padding;
    std::optional<Tensor> mask;
    if (c.masked) {
      padding = at::rand({c.B, c.L}, at::kDouble) < 0.3;
      if (c.B > 1) padding[c.B - 1].fill_(true);
      mask = padding;
    }
    const double scale = 1.0 / std::sqrt(double(c.D));
    const auto [out, lse, stats] = reformer::local_attention(q, k, v, mask, c.m, c.causal,
                                                             c.before, c.after, scale);
    const auto [dq, dk, dv] = reformer::local_attention_backward(
        go, gl, q, k, v, out, stats, mask, c.m, c.causal, c.before, c.after, scale);
    const Naive want = naive_local(q, k, v, padding, go, gl, c.m, c.causal, c.before, c.after,
                                   scale);
    SCOPED_TRACE("L=" + std::to_string(c.L) + " m=" + std::to_string(c.m));
    expect_close(out, want.out, "out");
    expect_close(lse, want.lse, "lse");
    expect_close(dq, want.dq, "grad_q");
    expect_close(dk, want.dk, "grad_k");
    expect_close(dv, want.dv, "grad_v");
  }
}

TEST(LocalAttention, ErrorsNameTheArgument) {
  const Tensor q = at::randn({1, 1, 8, 4});
  try {
    reformer::local_attention(q, q.narrow(3, 0, 3), q, std::nullopt, 4, false, 1, 0, 0.5);
    FAIL() << "expected an error";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("k must have the shape of q"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(reformer::local_attention(q, q, q, std::nullopt, 0, false, 1, 0, 0.5),
               c10::ValueError);
}

}  // namespace

// A LibTorch program (no Python) that uses reformer_ext's LSH attention: it calls the forward and
// backward operators through the PyTorch dispatcher with fixed rotations, and checks them, in
// float64, against a plain-loop implementation of the same attention written below (forward)
// and against finite differences of that implementation (backward). Exits non-zero on a mismatch.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <reformer_ext/reformer_ext.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <numeric>
#include <optional>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

using at::Tensor;
using OptTensor = std::optional<Tensor>;

struct Options {
  int64_t bucket_size;    // chunk length m
  bool causal;            // a query never attends to a later position
  int64_t chunks_before;  // the window: chunks c - before .. c + after
  int64_t chunks_after;
  double scale;           // logits are scale * q . k
};

// ---- The operators, looked up by their schemas (csrc/registration.cpp of reformer_ext). -------

// (out, lse, sorted_positions, softmax_stats); the last two only feed the backward.
std::tuple<Tensor, Tensor, Tensor, Tensor> lsh_attention(const Tensor& qk, const Tensor& v,
                                                         const Tensor& rotations,
                                                         const Options& o) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("reformer::lsh_attention", "")
                       .typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(
                           const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                           int64_t, bool, int64_t, int64_t, double, at::IntArrayRef, double,
                           const OptTensor&)>();
  const OptTensor no_padding_mask;
  const at::IntArrayRef one_bucket_factor;  // empty: n_buckets = 2 * rotations.size(3)
  const double no_dropout = 0.0;            // attention dropout rate (then no seed)
  return op.call(qk, v, rotations, no_padding_mask, o.bucket_size, o.causal, o.chunks_before,
                 o.chunks_after, o.scale, one_bucket_factor, no_dropout, OptTensor());
}

// (grad_qk, grad_v) from the gradients of out and lse and what the forward returned.
std::tuple<Tensor, Tensor> lsh_attention_backward(const Tensor& grad_out, const Tensor& grad_lse,
                                                  const Tensor& qk, const Tensor& v,
                                                  const Tensor& out, const Tensor& stats,
                                                  const Tensor& sorted, const Options& o) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("reformer::lsh_attention_backward", "")
                       .typed<std::tuple<Tensor, Tensor>(
                           const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
                           const Tensor&, const Tensor&, const Tensor&, const OptTensor&, int64_t,
                           bool, int64_t, int64_t, double, double, const OptTensor&)>();
  const OptTensor no_padding_mask;
  return op.call(grad_out, grad_lse, qk, v, out, stats, sorted, no_padding_mask, o.bucket_size,
                 o.causal, o.chunks_before, o.chunks_after, o.scale, 0.0, OptTensor());
}

// ---- The same attention with plain loops. ----------------------------------------------------

constexpr double kMaskValue = -1e9;      // logit of a padding key, or of a causal j > i
constexpr double kSelfMaskValue = -1e5;  // logit of j == i: attended only if nothing else is
constexpr double kKeyNormEps = 1e-6;

// qk (B, H, L, D), v (B, H, L, Dv), rotations (1 or H, D, R, n_buckets / 2), all float64.
// Returns out (B, H, L, Dv) and lse (B, H, L).
std::pair<Tensor, Tensor> naive_lsh_attention(const Tensor& qk_in, const Tensor& v_in,
                                              const Tensor& rot_in, const Options& o) {
  const Tensor qk_t = qk_in.contiguous(), v_t = v_in.contiguous(), rot_t = rot_in.contiguous();
  const auto qk = qk_t.accessor<double, 4>();
  const auto v = v_t.accessor<double, 4>();
  const auto rot = rot_t.accessor<double, 4>();
  const int64_t B = qk.size(0), H = qk.size(1), L = qk.size(2), D = qk.size(3), Dv = v.size(3);
  const int64_t R = rot.size(2), half = rot.size(3), n_buckets = 2 * half;
  // Positions L .. Lp-1 pad the sequence to whole chunks: never attended, no output.
  const int64_t m = o.bucket_size, Lp = (L + m - 1) / m * m, n_chunks = R * Lp / m;

  Tensor out_t = at::zeros({B, H, L, Dv}, at::kDouble), lse_t = at::zeros({B, H, L}, at::kDouble);
  auto out = out_t.accessor<double, 4>();
  auto lse = lse_t.accessor<double, 3>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t hr = rot.size(0) == 1 ? 0 : h;  // rotations shared by the heads, or per head

      // Hash and sort. Round r's bucket of position i is the index of the first maximum of
      // [p, -p], p = qk[i] . rotations[:, r, :]; the padding goes to bucket n_buckets.
      // Each round's positions are sorted stably by bucket, i.e. by (bucket, position), and the
      // rounds laid one after another: item g = r * Lp + t sits at position item_pos[g].
      std::vector<int64_t> item_pos(R * Lp);
      for (int64_t r = 0; r < R; ++r) {
        std::vector<int64_t> bucket(Lp, n_buckets);
        for (int64_t i = 0; i < L; ++i) {
          double best = -INFINITY;
          for (int64_t k = 0; k < n_buckets; ++k) {
            double dot = 0;
            for (int64_t d = 0; d < D; ++d) dot += qk[b][h][i][d] * rot[hr][d][r][k % half];
            const double score = k < half ? dot : -dot;
            if (score > best) {
              best = score;
              bucket[i] = k;
            }
          }
        }
        auto round = item_pos.begin() + r * Lp;
        std::iota(round, round + Lp, 0);
        std::stable_sort(round, round + Lp,
                         [&](int64_t x, int64_t y) { return bucket[x] < bucket[y]; });
      }

      // Keys are the shared query/keys scaled to unit root mean square, then divided by sqrt(D).
      std::vector<std::vector<double>> key(L, std::vector<double>(D));
      for (int64_t j = 0; j < L; ++j) {
        double mean_square = 0;
        for (int64_t d = 0; d < D; ++d) mean_square += qk[b][h][j][d] * qk[b][h][j][d] / D;
        for (int64_t d = 0; d < D; ++d)
          key[j][d] = qk[b][h][j][d] / std::sqrt(mean_square + kKeyNormEps) / std::sqrt(double(D));
      }

      // Every item of chunk c (m items) attends to the items of chunks c - before .. c + after,
      // counted cyclically over the chunks of all rounds, each distinct chunk once. A softmax
      // over that window gives the item's round output out_r and log-sum-exp lse_r.
      std::vector<std::vector<double>> lse_r(R, std::vector<double>(L));
      std::vector<std::vector<std::vector<double>>> out_r(
          R, std::vector<std::vector<double>>(L, std::vector<double>(Dv, 0.0)));
      for (int64_t g = 0; g < R * Lp; ++g) {
        const int64_t i = item_pos[g], r = g / Lp, c = g / m;
        if (i >= L) continue;
        std::set<int64_t> window;
        for (int64_t off = -o.chunks_before; off <= o.chunks_after; ++off)
          window.insert(((c + off) % n_chunks + n_chunks) % n_chunks);
        std::vector<std::pair<int64_t, double>> logits;  // (key position, logit)
        for (int64_t w : window)
          for (int64_t u = w * m; u < (w + 1) * m; ++u) {
            const int64_t j = item_pos[u];
            double s;
            if (j >= L || (o.causal && j > i)) {
              s = kMaskValue;
            } else if (j == i) {
              s = kSelfMaskValue;
            } else {
              s = 0;
              for (int64_t d = 0; d < D; ++d) s += qk[b][h][i][d] * key[j][d];
              s *= o.scale;
            }
            logits.push_back({j, s});
          }
        double max = -INFINITY, sum = 0;
        for (const auto& [j, s] : logits) max = std::max(max, s);
        for (const auto& [j, s] : logits) sum += std::exp(s - max);
        lse_r[r][i] = max + std::log(sum);
        for (const auto& [j, s] : logits)
          if (j < L)
            for (int64_t d = 0; d < Dv; ++d)
              out_r[r][i][d] += std::exp(s - lse_r[r][i]) * v[b][h][j][d];
      }

      // Combine the rounds by their log-sum-exp: lse = logsumexp_r lse_r, and round r
      // contributes its output with weight exp(lse_r - lse).
      for (int64_t i = 0; i < L; ++i) {
        double max = -INFINITY, sum = 0;
        for (int64_t r = 0; r < R; ++r) max = std::max(max, lse_r[r][i]);
        for (int64_t r = 0; r < R; ++r) sum += std::exp(lse_r[r][i] - max);
        lse[b][h][i] = max + std::log(sum);
        for (int64_t r = 0; r < R; ++r)
          for (int64_t d = 0; d < Dv; ++d)
            out[b][h][i][d] += std::exp(lse_r[r][i] - lse[b][h][i]) * out_r[r][i][d];
      }
    }
  return {out_t, lse_t};
}

// ---- The checks. -----------------------------------------------------------------------------

double max_abs_diff(const Tensor& a, const Tensor& b) { return (a - b).abs().max().item<double>(); }

struct Case {
  int64_t L, n_hashes, rotation_heads;
  Options options;
};

// Runs one case; prints a line and returns whether every check passed.
bool check(const Case& c) {
  const int64_t B = 1, H = 2, D = 16, Dv = 16, L = c.L, m = c.options.bucket_size;
  const int64_t n_buckets = 2 * ((L + m - 1) / m);  // the Python API's default
  const Tensor qk = at::randn({B, H, L, D}, at::kDouble);
  const Tensor v = at::randn({B, H, L, Dv}, at::kDouble);
  const Tensor rotations = at::randn({c.rotation_heads, D, c.n_hashes, n_buckets / 2}, at::kDouble);

  // Forward: the operator against the plain loops.
  auto [out, lse, sorted, stats] = lsh_attention(qk, v, rotations, c.options);
  auto [want_out, want_lse] = naive_lsh_attention(qk, v, rotations, c.options);
  const double out_err = max_abs_diff(out, want_out);
  const double lse_err = ((lse - want_lse).abs() / (1 + want_lse.abs())).max().item<double>();
  bool ok = out_err < 1e-10 && lse_err < 1e-10;

  // Backward of the objective <out, w_out> + <lse, w_lse>: the directional derivative of the
  // operator's gradients against a central difference of the plain loops along random
  // directions, qk and v separately. The differences are taken per element, so a query whose lse
  // is the self-mask value (~ -1e5) adds no rounding error.
  const Tensor w_out = at::randn_like(out), w_lse = at::randn_like(lse);
  auto [grad_qk, grad_v] =
      lsh_attention_backward(w_out, w_lse, qk, v, out, stats, sorted, c.options);
  const double eps = 1e-6;
  auto directional = [&](const Tensor& dqk, const Tensor& dv) {
    auto [out_p, lse_p] = naive_lsh_attention(qk + eps * dqk, v + eps * dv, rotations, c.options);
    auto [out_m, lse_m] = naive_lsh_attention(qk - eps * dqk, v - eps * dv, rotations, c.options);
    return (((out_p - out_m) * w_out).sum() + ((lse_p - lse_m) * w_lse).sum()).item<double>() /
           (2 * eps);
  };
  double grad_err = 0;
  auto compare = [&](const Tensor& grad, const Tensor& direction, double numeric) {
    const double analytic = (grad * direction).sum().item<double>();
    grad_err = std::max(grad_err, std::abs(analytic - numeric) / (1 + std::abs(numeric)));
  };
  for (int trial = 0; trial < 2; ++trial) {
    const Tensor dqk = at::randn_like(qk), dv = at::randn_like(v);
    compare(grad_qk, dqk, directional(dqk, at::zeros_like(v)));
    compare(grad_v, dv, directional(at::zeros_like(qk), dv));
  }
  ok = ok && grad_err < 1e-6;

  const Options& o = c.options;
  std::printf("L=%3d n_hashes=%d n_buckets=%2d causal=%d window=-%d..+%d:  "
              "out %.1e  lse %.1e  grad %.1e  %s\n",
              int(L), int(c.n_hashes), int(n_buckets), int(o.causal), int(o.chunks_before),
              int(o.chunks_after), out_err, lse_err, grad_err, ok ? "ok" : "MISMATCH");
  return ok;
}

int main() {
  try {
    reformer::ensure_operators_registered();
    at::manual_seed(0);
    const Case cases[] = {
        // L, n_hashes, rotation heads (1: shared), {bucket_size, causal, before, after, scale}
        {64, 2, 2, {16, false, 1, 0, 1.0}},
        {131, 3, 2, {16, true, 1, 0, 1.0}},  // L not a multiple of the bucket size
        {200, 2, 1, {16, false, 1, 1, 0.5}},
    };
    bool ok = true;
    for (const Case& c : cases) ok = check(c) && ok;
    std::printf(ok ? "all checks passed\n" : "FAILED\n");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

// A deliberately naive C++ reference of docs/semantics.md §1 for the GoogleTest suite: plain loops
// over std::vector<double>, one query at a time, written from the spec and sharing no code with the
// kernels except the constants.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <set>
#include <vector>

namespace naive {

struct Problem {
  int64_t B, H, L, D, Dv, Hr, R, nb, m;
  bool causal;
  int64_t before, after;
  double scale;
  std::vector<double> qk, v, rotations;  // (B,H,L,D), (B,H,L,Dv), (Hr,D,R,nb/2)
  std::vector<uint8_t> padding;          // (B, L): 1 = padding; empty = none
};

inline int64_t padded_length(const Problem& p) { return (p.L + p.m - 1) / p.m * p.m; }

inline bool is_padding(const Problem& p, int64_t b, int64_t pos) {
  return pos >= p.L || (!p.padding.empty() && p.padding[b * p.L + pos]);
}

// bucket[(b, h, r, pos)] for pos < L' (the tail is padding).
inline std::vector<int64_t> buckets(const Problem& p) {
  const int64_t Lp = padded_length(p), half = p.nb / 2;
  std::vector<int64_t> out(p.B * p.H * p.R * Lp);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.H; ++h)
      for (int64_t r = 0; r < p.R; ++r)
        for (int64_t i = 0; i < Lp; ++i) {
          int64_t best = p.nb;
          if (!is_padding(p, b, i)) {
            std::vector<double> scores(p.nb);
            for (int64_t k = 0; k < half; ++k) {
              double dot = 0;
              for (int64_t d = 0; d < p.D; ++d)
                dot += p.qk[((b * p.H + h) * p.L + i) * p.D + d] *
                       p.rotations[(((p.Hr == 1 ? 0 : h) * p.D + d) * p.R + r) * half + k];
              scores[k] = dot;
              scores[half + k] = -dot;
            }
            best = std::max_element(scores.begin(), scores.end()) - scores.begin();
          }
          out[((b * p.H + h) * p.R + r) * Lp + i] = best;
        }
  return out;
}

// out (B,H,L,Dv) and lse (B,H,L).
inline void attention(const Problem& p, std::vector<double>& out, std::vector<double>& lse) {
  const int64_t Lp = padded_length(p), n_items = p.R * Lp, n_chunks = n_items / p.m;
  const auto bucket = buckets(p);
  out.assign(p.B * p.H * p.L * p.Dv, 0.0);
  lse.assign(p.B * p.H * p.L, 0.0);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.H; ++h) {
      const int64_t bh = b * p.H + h;
      // Items (r, i) sorted by (r, bucket, i).
      std::vector<std::pair<int64_t, int64_t>> items;
      for (int64_t r = 0; r < p.R; ++r)
        for (int64_t i = 0; i < Lp; ++i) items.push_back({r, i});
      std::stable_sort(items.begin(), items.end(), [&](auto x, auto y) {
        const int64_t bx = bucket[(bh * p.R + x.first) * Lp + x.second];
        const int64_t by = bucket[(bh * p.R + y.first) * Lp + y.second];
        return std::tie(x.first, bx, x.second) < std::tie(y.first, by, y.second);
      });
      auto key = [&](int64_t j, int64_t d) {
        double ms = 0;
        for (int64_t e = 0; e < p.D; ++e) {
          const double x = p.qk[(bh * p.L + j) * p.D + e];
          ms += x * x / p.D;
        }
        return p.qk[(bh * p.L + j) * p.D + d] / std::sqrt(ms + 1e-6) / std::sqrt(double(p.D));
      };
      for (int64_t i = 0; i < p.L; ++i) {
        if (is_padding(p, b, i)) continue;
        std::vector<std::pair<int64_t, double>> seen;  // (key position, logit), a multiset
        for (int64_t t = 0; t < n_items; ++t) {
          if (items[t].second != i) continue;
          const int64_t c = t / p.m;
          std::set<int64_t> window;
          for (int64_t o = -p.before; o <= p.after; ++o)
            window.insert(((c + o) % n_chunks + n_chunks) % n_chunks);
          for (int64_t w : window)
            for (int64_t u = w * p.m; u < (w + 1) * p.m; ++u) {
              const int64_t j = items[u].second;
              // Masked keys first: tail padding (j >= L) has no qk row to read.
              if (is_padding(p, b, j) || (p.causal && j > i)) {
                seen.push_back({j, -1e9});
                continue;
              }
              double s = 0;
              for (int64_t d = 0; d < p.D; ++d) s += p.qk[(bh * p.L + i) * p.D + d] * key(j, d);
              s *= p.scale;
              if (j == i) s = -1e5;
              seen.push_back({j, s});
            }
        }
        double mx = -INFINITY;
        for (auto& e : seen) mx = std::max(mx, e.second);
        double sum = 0;
        for (auto& e : seen) sum += std::exp(e.second - mx);
        lse[bh * p.L + i] = mx + std::log(sum);
        for (auto& e : seen) {
          const double w = std::exp(e.second - lse[bh * p.L + i]);
          const int64_t j = e.first;
          if (j >= p.L) continue;  // tail padding has no value row; its weight is 0
          for (int64_t d = 0; d < p.Dv; ++d)
            out[(bh * p.L + i) * p.Dv + d] += w * p.v[(bh * p.L + j) * p.Dv + d];
        }
      }
    }
}

}  // namespace naive

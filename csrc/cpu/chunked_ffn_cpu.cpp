// Fused element-wise CPU kernels of the chunked feed-forward (see chunked_ffn_cpu.h).
//
// Each activation is evaluated once per element together with its derivative, sharing the
// transcendental: exact GELU uses one exp(-z²/2) for both erf(z/√2) and the normal density,
// tanh-GELU one exp for tanh, SiLU one exp for the sigmoid. float32 uses branch-free exp / erf
// approximations that the compiler vectorises (exp: ~1 ulp; erf: Abramowitz & Stegun 7.1.26, abs.
// error < 1.5e-7, the formula ATen's own vectorised float GELU uses); float64 uses <cmath>.
// The dropout mask is evaluated inline from (seed, element index) (kernels/dropout_hash.h),
// so no mask tensor exists. Loops are parallel over rows (element-wise kernels) or column blocks
// (the column sum), so every result is independent of the thread count.
#include "chunked_ffn_cpu.h"
#include "tile_math.h"
#include "../seeded_dropout.h"  // dropout_hash

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace reformer::cpu {
namespace {

constexpr int64_t kGrainElements = 1 << 15;  // elements per parallel task, at least

// ---------------------------------------------------------------------------------- scalar math

// exp with ~1 ulp error that vectorises: shared with the attention kernel.
inline float exp_approx(float x) { return fast_exp(x); }

// erf(x) given e = exp(-x²) (Abramowitz & Stegun 7.1.26).
inline float erf_approx(float x, float e) {
  const float t = 1.0f / (1.0f + 0.3275911f * std::fabs(x));
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  return std::copysign(1.0f - p * t * e, x);
}

inline float exp_of(float x) { return exp_approx(x); }
inline double exp_of(double x) { return std::exp(x); }
inline float erf_of(float x, float exp_minus_x2) { return erf_approx(x, exp_minus_x2); }
inline double erf_of(double x, double) { return std::erf(x); }

// ---------------------------------------------------------------------------------- activations
// value(z) -> act(z); both(z, a, d) -> a = act(z), d = act'(z).

struct Gelu {
  template <typename T>
  static T value(T z) {
    const T x = z * T(M_SQRT1_2);
    return T(0.5) * z * (T(1) + erf_of(x, exp_of(-x * x)));
  }
  template <typename T>
  static void both(T z, T& a, T& d) {
    const T x = z * T(M_SQRT1_2);
    const T e = exp_of(-x * x);  // exp(-z²/2)
    const T cdf = T(0.5) * (T(1) + erf_of(x, e));
    a = z * cdf;
    d = cdf + z * e * T(0.5 * M_2_SQRTPI * M_SQRT1_2);  // Φ(z) + z φ(z)
  }
};

struct GeluTanh {
  static constexpr double kBeta = M_SQRT2 * M_2_SQRTPI * 0.5;  // sqrt(2 / pi)
  static constexpr double kKappa = 0.044715;
  template <typename T>
  static T tanh_of(T u) {
    if constexpr (std::is_same_v<T, float>) {
      return 1.0f - 2.0f / (exp_approx(2.0f * u) + 1.0f);
    } else {
      return std::tanh(u);
    }
  }
  template <typename T>
  static T value(T z) {
    const T t = tanh_of(T(kBeta) * (z + T(kKappa) * z * z * z));
    return T(0.5) * z * (T(1) + t);
  }
  template <typename T>
  static void both(T z, T& a, T& d) {
    const T z2 = z * z;
    const T t = tanh_of(T(kBeta) * (z + T(kKappa) * z2 * z));
    a = T(0.5) * z * (T(1) + t);
    d = T(0.5) * (T(1) + t) +
        T(0.5) * z * (T(1) - t * t) * T(kBeta) * (T(1) + T(3 * kKappa) * z2);
  }
};

struct Relu {
  template <typename T>
  static T value(T z) {
    return std::max(z, T(0));  // NaN stays NaN, as in torch.relu
  }
  template <typename T>
  static void both(T z, T& a, T& d) {
    a = std::max(z, T(0));
    d = z > T(0) ? T(1) : T(0);  // torch's relu backward: gradient where the input is > 0
  }
};

struct Silu {
  template <typename T>
  static T value(T z) {
    return z / (T(1) + exp_of(-z));
  }
  template <typename T>
  static void both(T z, T& a, T& d) {
    const T s = T(1) / (T(1) + exp_of(-z));
    a = z * s;
    d = s * (T(1) + z * (T(1) - s));
  }
};

// ---------------------------------------------------------------------------------- loops

template <typename F>
void parallel_rows(int64_t rows, int64_t cols, const F& f) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r);
  });
}

// Inline dropout mask of row r: element j is dropped iff signed(mix(base + j·γ)) < threshold,
// base = seed + ((first_row + r) · d_ff + 1) · γ (mod 2^64).
struct RowDropout {
  uint64_t seed;
  int64_t threshold;
  int64_t first_row;

  uint64_t base(int64_t r, int64_t cols) const {
    return seed + (static_cast<uint64_t>(first_row + r) * static_cast<uint64_t>(cols) + 1) *
                      dropout_hash::kGamma;
  }
  static bool dropped(uint64_t base, int64_t j, int64_t threshold) {
    const uint64_t z = dropout_hash::mix(base + static_cast<uint64_t>(j) * dropout_hash::kGamma);
    return static_cast<int64_t>(z) < threshold;
  }
};

template <typename T, typename Act, bool kDropout>
void bias_activation_loop(T* h, const T* bias, const RowDropout& drop, int64_t rows,
                          int64_t cols) {
  parallel_rows(rows, cols, [&](int64_t r) {
    T* __restrict__ hr = h + r * cols;
    const uint64_t base = kDropout ? drop.base(r, cols) : 0;
    const int64_t threshold = drop.threshold;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) {
      const T a = Act::value(hr[j] + bias[j]);
      if constexpr (kDropout) {
        hr[j] = RowDropout::dropped(base, j, threshold) ? T(0) : a;
      } else {
        hr[j] = a;
      }
    }
  });
}

template <typename T, typename Act, bool kDropout>
void bias_activation_grad_loop(T* h, T* act_out, const T* bias, const RowDropout& drop,
                               int64_t rows, int64_t cols) {
  parallel_rows(rows, cols, [&](int64_t r) {
    T* __restrict__ hr = h + r * cols;
    T* __restrict__ ar = act_out + r * cols;
    const uint64_t base = kDropout ? drop.base(r, cols) : 0;
    const int64_t threshold = drop.threshold;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) {
      T a, d;
      Act::both(hr[j] + bias[j], a, d);
      if constexpr (kDropout) {
        const bool dropped = RowDropout::dropped(base, j, threshold);
        ar[j] = dropped ? T(0) : a;
        hr[j] = dropped ? T(0) : d;
      } else {
        ar[j] = a;
        hr[j] = d;
      }
    }
  });
}

template <typename T, bool kDropout>
void dispatch_bias_activation(const at::Tensor& h, const at::Tensor& bias, const RowDropout& drop,
                              ChunkedFfnActivation act, bool with_grad, const at::Tensor& act_out) {
  const int64_t cols = h.size(-1);
  const int64_t rows = cols > 0 ? h.numel() / cols : 0;
  T* hp = h.data_ptr<T>();
  const T* bp = bias.data_ptr<T>();
  T* ap = with_grad ? act_out.data_ptr<T>() : nullptr;
  const auto run = [&](auto act_tag) {
    using Act = decltype(act_tag);
    if (with_grad) {
      bias_activation_grad_loop<T, Act, kDropout>(hp, ap, bp, drop, rows, cols);
    } else {
      bias_activation_loop<T, Act, kDropout>(hp, bp, drop, rows, cols);
    }
  };
  switch (act) {
    case ChunkedFfnActivation::Gelu:
      run(Gelu{});
      break;
    case ChunkedFfnActivation::GeluTanh:
      run(GeluTanh{});
      break;
    case ChunkedFfnActivation::Relu:
      run(Relu{});
      break;
    case ChunkedFfnActivation::Silu:
      run(Silu{});
      break;
  }
}

void bias_activation_impl(const at::Tensor& h, const at::Tensor& bias,
                          const ChunkedFfnHiddenDropoutRows& dropout, ChunkedFfnActivation act,
                          bool with_grad, const at::Tensor& act_out) {
  TORCH_CHECK(chunked_ffn_fused_supported(h), "ffn fused kernel: unsupported hidden tensor");
  const int64_t cols = h.size(-1);
  // An absent bias is a zero bias (d_ff elements: negligible next to the chunk).
  const at::Tensor b = bias.defined() ? bias.contiguous() : at::zeros({cols}, h.options());
  TORCH_CHECK(b.numel() == cols && b.scalar_type() == h.scalar_type(), "ffn fused kernel: bias");
  if (with_grad) {
    TORCH_CHECK(act_out.sizes() == h.sizes() && act_out.is_contiguous() &&
                    act_out.scalar_type() == h.scalar_type(),
                "ffn fused kernel: act_out");
  }
  const bool enabled = dropout.p > 0.0;
  const RowDropout drop{static_cast<uint64_t>(dropout.seed),
                        enabled ? dropout_hash::threshold(dropout.p) : 0, dropout.first_row};
  if (h.scalar_type() == at::kFloat) {
    enabled ? dispatch_bias_activation<float, true>(h, b, drop, act, with_grad, act_out)
            : dispatch_bias_activation<float, false>(h, b, drop, act, with_grad, act_out);
  } else {
    enabled ? dispatch_bias_activation<double, true>(h, b, drop, act, with_grad, act_out)
            : dispatch_bias_activation<double, false>(h, b, drop, act, with_grad, act_out);
  }
}

template <typename T>
void mul_colsum_loop(T* grad, const T* deriv, T* col_sums, int64_t rows, int64_t cols) {
  if (col_sums == nullptr) {
    parallel_rows(rows, cols, [&](int64_t r) {
      T* __restrict__ g = grad + r * cols;
      const T* __restrict__ d = deriv + r * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) g[j] *= d[j];
    });
    return;
  }
  // Column blocks: every column is summed over the rows in order by one thread.
  constexpr int64_t kBlock = 64;
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(rows * kBlock, 1));
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * kBlock;
      const int64_t width = std::min(kBlock, cols - c0);
      T acc[kBlock] = {};
      for (int64_t r = 0; r < rows; ++r) {
        T* __restrict__ g = grad + r * cols + c0;
        const T* __restrict__ d = deriv + r * cols + c0;
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) {
          const T v = g[j] * d[j];
          g[j] = v;
          acc[j] += v;
        }
      }
      for (int64_t j = 0; j < width; ++j) col_sums[c0 + j] += acc[j];
    }
  });
}

}  // namespace

bool chunked_ffn_fused_supported(const at::Tensor& h) {
  return h.device().is_cpu() && h.is_contiguous() &&
         (h.scalar_type() == at::kFloat || h.scalar_type() == at::kDouble);
}

void chunked_ffn_bias_activation_(const at::Tensor& h, const at::Tensor& bias,
                                  const ChunkedFfnHiddenDropoutRows& dropout,
                                  ChunkedFfnActivation act) {
  bias_activation_impl(h, bias, dropout, act, /*with_grad=*/false, at::Tensor());
}

void chunked_ffn_bias_activation_grad_(const at::Tensor& h, const at::Tensor& act_out,
                                       const at::Tensor& bias,
                                       const ChunkedFfnHiddenDropoutRows& dropout,
                                       ChunkedFfnActivation act) {
  bias_activation_impl(h, bias, dropout, act, /*with_grad=*/true, act_out);
}

void chunked_ffn_mul_colsum_(const at::Tensor& grad, const at::Tensor& deriv,
                             const at::Tensor& col_sums) {
  TORCH_CHECK(chunked_ffn_fused_supported(grad) && deriv.sizes() == grad.sizes() &&
                  deriv.is_contiguous() && deriv.scalar_type() == grad.scalar_type(),
              "ffn fused kernel: grad / deriv");
  const int64_t cols = grad.size(-1);
  const int64_t rows = cols > 0 ? grad.numel() / cols : 0;
  if (col_sums.defined()) {
    TORCH_CHECK(col_sums.numel() == cols && col_sums.is_contiguous() &&
                    col_sums.scalar_type() == grad.scalar_type(),
                "ffn fused kernel: col_sums");
  }
  if (grad.scalar_type() == at::kFloat) {
    mul_colsum_loop<float>(grad.data_ptr<float>(), deriv.data_ptr<float>(),
                           col_sums.defined() ? col_sums.data_ptr<float>() : nullptr, rows, cols);
  } else {
    mul_colsum_loop<double>(grad.data_ptr<double>(), deriv.data_ptr<double>(),
                            col_sums.defined() ? col_sums.data_ptr<double>() : nullptr, rows,
                            cols);
  }
}

}  // namespace reformer::cpu

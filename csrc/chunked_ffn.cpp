// reformer::chunked_ffn and reformer::chunked_ffn_backward (docs/semantics.md §2): one
// device-generic implementation, registered below for both the CPU and the CUDA dispatch keys.
//
// Forward, per chunk of at most chunk_size rows of x viewed as (N, d_model):
//   h = x_c · W1ᵀ                 (GEMM into a (chunk, d_ff) buffer reused by every chunk)
//   h = act(h + b1) ⊙ keep        (bias, activation and dropout mask in one pass; the CPU
//                                  kernel evaluates the mask inline, elsewhere it is a tensor)
//   y_c = b2 + s · h · W2ᵀ        (GEMM straight into the output rows; s = 1 / (1 - p))
// Backward, per chunk, with two reused (chunk, d_ff) buffers `pre` and `a`:
//   z = x_c · W1ᵀ + b1            (recomputed)
//   a = act(z) ⊙ keep;  pre = act'(z) ⊙ keep      (one pass: the transcendental is shared)
//   gW2 += s · g_cᵀ · a
//   a = s · g_c · W2;  a = a ⊙ pre;  gb1 += Σ_rows a   (one pass)
//   gW1 += aᵀ · x_c;  gx_c = a · W1
// gb2 = Σ_rows g. GEMMs and column sums go through gemm.h: on the CPU the project's fixed-order
// kernels, on CUDA ATen (cuBLAS). The fused passes are the CPU kernels of cpu/chunked_ffn_cpu.cpp
// (float32, float64) and, in a CUDA build, the CUDA kernels of cuda/chunked_ffn_cuda.cu (every
// dtype). CPU float16 / bfloat16 inputs are computed in float32 chunk by chunk (weights converted
// once); the hidden pre-activation (with b1), the activation and the outputs y and gx are rounded
// to the input dtype, as buffers of it would be; the backward's intermediate gradients stay
// float32. Where no fused kernel applies (not on the CPU), the same steps are composed from ATen
// operators (GEMM with the bias, in-place activation, masked_fill_, activation backward, column
// sum).
// Weight gradients are accumulated in a fixed chunk order, in float32 for float16 / bfloat16
// inputs. Nothing of size (N, d_ff) is ever allocated.
//
// Determinism on the CPU: every reduction has a fixed order (GEMM sums over k in increasing
// order, column sums over rows in order, chunks in order) and threads only split independent
// outputs, so outputs and gradients are bitwise identical across runs and thread counts on one
// machine and build. They are not across CPUs of different instruction sets (FMA contraction
// and vector width change rounding) nor across builds for different -march.
//
// Dropout: the hidden activation, viewed as (N, d_ff), gets the seeded mask of seeded_dropout.h
// (a pure function of (dropout_seed, element index)): the CPU kernels evaluate it inline, other
// backends as int64 tensors (SeededDropoutMask), so the mask is the same on every device, for
// every chunk_size, and in forward and backward.
#include "chunked_ffn.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "arg_checks.h"
#include "cpu/chunked_ffn_cpu.h"
#include "gemm.h"
#include "seeded_dropout.h"
#ifdef REFORMER_WITH_CUDA
#include "cuda/chunked_ffn_cuda.h"
#endif

namespace reformer {
namespace {

void check_operand(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.scalar_type() == x.scalar_type(), name, " must have the dtype of x (",
                    x.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " must be on the same device as x (",
                    x.device(), "), got ", t.device());
}

// Everything a chunk loop needs, derived once per call.
struct ChunkedFfnProblem {
  ChunkedFfnShape shape;
  int64_t chunk = 1;  // rows per chunk, <= max(N, 1)
  at::Tensor x2d;     // (N, d_model), contiguous, x's dtype
  // CPU float16 / bfloat16: every chunk is computed in float32 (the fused CPU kernels, whose
  // results do not depend on the thread count, unlike ATen's element-wise CPU kernels); the
  // weights and biases below are then float32 copies. The hidden pre-activation and activation
  // are rounded to x's dtype (the values a buffer of x's dtype holds, as on CUDA and in
  // PyTorch's own low-precision layers), outputs once each.
  bool upcast = false;
  at::ScalarType dtype;  // x's
  at::TensorOptions compute;  // options of the chunk buffers
  at::Tensor w1, w2, w1t, w2t;
  c10::optional<at::Tensor> b1, b2;
  double dropout_p = 0.0;
  double scale = 1.0;  // 1 / (1 - dropout_p)
  int64_t seed = 0;

  ChunkedFfnProblem(const at::Tensor& x, const at::Tensor& w1_,
                    const c10::optional<at::Tensor>& b1_, const at::Tensor& w2_,
                    const c10::optional<at::Tensor>& b2_, int64_t chunk_size,
                    std::string_view activation, double p, int64_t seed_)
      : shape(check_chunked_ffn_args(x, w1_, b1_, w2_, b2_, chunk_size, activation, p)),
        dropout_p(p),
        scale(p > 0.0 ? 1.0 / (1.0 - p) : 1.0),
        seed(seed_) {
    chunk = std::max<int64_t>(1, std::min(chunk_size, shape.rows));
    x2d = x.contiguous().view({shape.rows, shape.d_model});
    dtype = x.scalar_type();
    upcast = x.is_cpu() && (dtype == at::kHalf || dtype == at::kBFloat16);
    compute = upcast ? x.options().dtype(at::kFloat) : x.options();
    const auto convert = [&](const at::Tensor& t) { return upcast ? t.to(at::kFloat) : t; };
    w1 = convert(w1_);
    w2 = convert(w2_);
    if (b1_.has_value()) b1 = convert(*b1_);
    if (b2_.has_value()) b2 = convert(*b2_);
    w1t = w1.t();
    w2t = w2.t();
  }

  // Rows [row0, row0 + n) of a (N, d) tensor of x's dtype, in the compute dtype.
  at::Tensor rows(const at::Tensor& t2d, int64_t row0, int64_t n) const {
    auto r = t2d.narrow(0, row0, n);
    return upcast ? r.to(at::kFloat) : r;
  }
  // A (chunk, d) buffer for output rows computed in float32 before their one rounding to x's
  // dtype; undefined (the rows are computed in place) without upcast.
  at::Tensor staging(int64_t d) const {
    return upcast ? at::empty({chunk, d}, compute) : at::Tensor();
  }
  // With upcast, t's values rounded to x's dtype (in place, t stays float32).
  void round_(const at::Tensor& t) const {
    if (upcast) t.copy_(t.to(dtype));
  }
  // The weights as right-hand GEMM operands: on the CPU packed once per call, at first use, for
  // every chunk's product with them.
  const GemmRhs& rhs_w1t() const { return rhs(w1t_rhs_, w1t); }
  const GemmRhs& rhs_w2t() const { return rhs(w2t_rhs_, w2t); }
  const GemmRhs& rhs_w1() const { return rhs(w1_rhs_, w1); }
  const GemmRhs& rhs_w2() const { return rhs(w2_rhs_, w2); }
  // b1 for the first GEMM (with upcast: its output x_c · W1ᵀ + b1 is rounded as a whole) and for
  // the fused bias/activation kernel (otherwise). Undefined: none.
  at::Tensor gemm_bias1() const { return upcast && b1.has_value() ? *b1 : at::Tensor(); }
  at::Tensor kernel_bias1() const { return !upcast && b1.has_value() ? *b1 : at::Tensor(); }

  bool has_dropout() const { return dropout_p > 0.0; }
  ChunkedFfnHiddenDropoutRows dropout_rows(int64_t first_row) const {
    return {dropout_p, seed, first_row};
  }

  // pre = x_c · W1ᵀ + b1, fused with the activation when `activate` and a fused kernel exists
  // (cuBLASLt epilogue for relu / gelu_tanh on CUDA). Returns whether it was activated.
  bool first_linear(at::Tensor& pre, const at::Tensor& x_c, bool activate) const {
    const bool fused = activate && b1.has_value() && x_c.is_cuda() &&
                       (shape.activation == ChunkedFfnActivation::Relu ||
                        shape.activation == ChunkedFfnActivation::GeluTanh);
    if (fused) {
      at::_addmm_activation_out(pre, *b1, x_c, w1t, 1, 1,
                                /*use_gelu=*/shape.activation == ChunkedFfnActivation::GeluTanh);
    } else {
      gemm_out(pre, x_c, rhs_w1t(), b1.value_or(at::Tensor()));
    }
    return fused;
  }

 private:
  mutable c10::optional<GemmRhs> w1t_rhs_, w2t_rhs_, w1_rhs_, w2_rhs_;
  static const GemmRhs& rhs(c10::optional<GemmRhs>& slot, const at::Tensor& w) {
    if (!slot.has_value()) slot = gemm_rhs(w);
    return *slot;
  }
};

void activation_inplace(at::Tensor& h, ChunkedFfnActivation act) {
  switch (act) {
    case ChunkedFfnActivation::Gelu:
      at::gelu_(h, "none");
      break;
    case ChunkedFfnActivation::GeluTanh:
      at::gelu_(h, "tanh");
      break;
    case ChunkedFfnActivation::Relu:
      at::relu_(h);
      break;
    case ChunkedFfnActivation::Silu:
      at::silu_(h);
      break;
  }
}

void activation_out(at::Tensor& out, const at::Tensor& pre, ChunkedFfnActivation act) {
  switch (act) {
    case ChunkedFfnActivation::Gelu:
      at::gelu_out(out, pre, "none");
      break;
    case ChunkedFfnActivation::GeluTanh:
      at::gelu_out(out, pre, "tanh");
      break;
    case ChunkedFfnActivation::Relu:
      at::clamp_min_out(out, pre, 0);
      break;
    case ChunkedFfnActivation::Silu:
      at::silu_out(out, pre);
      break;
  }
}

// grad = act'(pre) ⊙ grad, in place.
void activation_backward_inplace(at::Tensor& grad, const at::Tensor& pre,
                                 ChunkedFfnActivation act) {
  switch (act) {
    case ChunkedFfnActivation::Gelu:
      at::gelu_backward_out(grad, grad, pre, "none");
      break;
    case ChunkedFfnActivation::GeluTanh:
      at::gelu_backward_out(grad, grad, pre, "tanh");
      break;
    case ChunkedFfnActivation::Relu:
      at::threshold_backward_out(grad, grad, pre, 0);
      break;
    case ChunkedFfnActivation::Silu:
      at::silu_backward_out(grad, grad, pre);
      break;
  }
}

// Accumulates alpha · a · b into acc (float32 for reduced-precision inputs).
void accumulate_mm(const at::Tensor& acc, const at::Tensor& a, const at::Tensor& b, double alpha) {
  gemm_out(acc, a, b, {}, alpha, /*accumulate=*/true);
}

// fill(rows) for the rows [row0, row0 + n) of dst: dst's own rows, or (staging defined) rows of
// staging copied into dst afterwards, one rounding per element.
template <typename Fill>
void fill_rows(const at::Tensor& dst, const at::Tensor& staging, int64_t row0, int64_t n,
               const Fill& fill) {
  auto rows = dst.narrow(0, row0, n);
  if (!staging.defined()) {
    fill(rows);
    return;
  }
  auto tmp = staging.narrow(0, 0, n);
  fill(tmp);
  rows.copy_(tmp);
}

// The fused element-wise kernels of a chunk, on the hidden buffer's device: the CPU ones
// (float32/float64) or, in a CUDA build, the CUDA ones (every dtype). Where none applies, the
// callers compose the same steps from ATen operators.
bool fused_supported(const at::Tensor& h) {
#ifdef REFORMER_WITH_CUDA
  if (h.is_cuda()) return cuda::chunked_ffn_fused_supported(h);
#endif
  return cpu::chunked_ffn_fused_supported(h);
}

void fused_bias_activation_(const at::Tensor& h, const at::Tensor& bias,
                            const ChunkedFfnHiddenDropoutRows& dropout, ChunkedFfnActivation act) {
#ifdef REFORMER_WITH_CUDA
  if (h.is_cuda()) return cuda::chunked_ffn_bias_activation_(h, bias, dropout, act);
#endif
  cpu::chunked_ffn_bias_activation_(h, bias, dropout, act);
}

void fused_bias_activation_grad_(const at::Tensor& h, const at::Tensor& act_out,
                                 const at::Tensor& bias, const ChunkedFfnHiddenDropoutRows& dropout,
                                 ChunkedFfnActivation act) {
#ifdef REFORMER_WITH_CUDA
  if (h.is_cuda()) return cuda::chunked_ffn_bias_activation_grad_(h, act_out, bias, dropout, act);
#endif
  cpu::chunked_ffn_bias_activation_grad_(h, act_out, bias, dropout, act);
}

void fused_mul_colsum_(const at::Tensor& grad, const at::Tensor& deriv,
                       const at::Tensor& col_sums) {
#ifdef REFORMER_WITH_CUDA
  if (grad.is_cuda()) return cuda::chunked_ffn_mul_colsum_(grad, deriv, col_sums);
#endif
  cpu::chunked_ffn_mul_colsum_(grad, deriv, col_sums);
}

// The forward's output rows y_c = b2 + s · a · W2ᵀ from the dropped-out activation a.
void second_linear(const at::Tensor& y_c, const at::Tensor& a, const ChunkedFfnProblem& P) {
  gemm_out(y_c, a, P.rhs_w2t(), P.b2.value_or(at::Tensor()), /*alpha=*/P.scale);
}

}  // namespace

ChunkedFfnActivation parse_chunked_ffn_activation(std::string_view activation) {
  if (activation == "gelu") return ChunkedFfnActivation::Gelu;
  if (activation == "gelu_tanh") return ChunkedFfnActivation::GeluTanh;
  if (activation == "relu") return ChunkedFfnActivation::Relu;
  if (activation == "silu") return ChunkedFfnActivation::Silu;
  TORCH_CHECK_VALUE(false, "activation must be one of 'gelu', 'gelu_tanh', 'relu', 'silu', got '",
                    activation, "'");
  return ChunkedFfnActivation::Gelu;  // unreachable
}

ChunkedFfnShape check_chunked_ffn_args(const at::Tensor& x, const at::Tensor& w1,
                                       const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                                       const c10::optional<at::Tensor>& b2, int64_t chunk_size,
                                       std::string_view activation, double dropout_p) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have shape (..., d_model), got a 0-dimensional tensor");
  TORCH_CHECK_VALUE(is_supported_float(x.scalar_type()),
                    "x must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  ChunkedFfnShape s;
  s.d_model = x.size(-1);
  s.rows = c10::multiply_integers(x.sizes().slice(0, x.dim() - 1));
  TORCH_CHECK_VALUE(w1.dim() == 2 && w1.size(1) == s.d_model,
                    "w1 must have shape (d_ff, d_model) with d_model = ", s.d_model,
                    " (x's last dimension), got ", w1.sizes());
  s.d_ff = w1.size(0);
  TORCH_CHECK_VALUE(w2.dim() == 2 && w2.size(0) == s.d_model && w2.size(1) == s.d_ff,
                    "w2 must have shape (d_model, d_ff) = (", s.d_model, ", ", s.d_ff,
                    ") (d_model from x, d_ff from w1), got ", w2.sizes());
  check_operand(w1, "w1", x);
  check_operand(w2, "w2", x);
  if (b1.has_value()) {
    TORCH_CHECK_VALUE(b1->dim() == 1 && b1->size(0) == s.d_ff, "b1 must have shape (d_ff,) = (",
                      s.d_ff, ",), got ", b1->sizes());
    check_operand(*b1, "b1", x);
  }
  if (b2.has_value()) {
    TORCH_CHECK_VALUE(b2->dim() == 1 && b2->size(0) == s.d_model,
                      "b2 must have shape (d_model,) = (", s.d_model, ",), got ", b2->sizes());
    check_operand(*b2, "b2", x);
  }
  TORCH_CHECK_VALUE(chunk_size >= 1, "chunk_size must be >= 1, got ", chunk_size);
  s.activation = parse_chunked_ffn_activation(activation);
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, "dropout_p must be in [0, 1), got ",
                    dropout_p);
  return s;
}

at::Tensor chunked_ffn(const at::Tensor& x, const at::Tensor& w1,
                       const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                       const c10::optional<at::Tensor>& b2, int64_t chunk_size,
                       c10::string_view activation, double dropout_p, int64_t dropout_seed) {
  const ChunkedFfnProblem P(x, w1, b1, w2, b2, chunk_size, activation, dropout_p, dropout_seed);
  const ChunkedFfnShape& s = P.shape;
  auto out = at::empty({s.rows, s.d_model}, x.options());
  if (s.rows == 0) return out.view(x.sizes());
  auto hidden = at::empty({P.chunk, s.d_ff}, P.compute);
  const auto y_staging = P.staging(s.d_model);
  const bool fused = fused_supported(hidden);
  c10::optional<SeededDropoutMask> dropout;  // the mask as tensors, where no fused kernel exists
  if (P.has_dropout() && !fused) {
    dropout.emplace(P.dropout_p, P.seed, s.d_ff, P.chunk, x.options());
  }

  for (int64_t row0 = 0; row0 < s.rows; row0 += P.chunk) {
    const int64_t n = std::min(P.chunk, s.rows - row0);
    const auto x_c = P.rows(P.x2d, row0, n);
    auto h = hidden.narrow(0, 0, n);
    if (fused) {  // h = act(x_c W1ᵀ + b1) ⊙ keep, one pass after the GEMM
      gemm_out(h, x_c, P.rhs_w1t(), P.gemm_bias1());
      P.round_(h);
      fused_bias_activation_(h, P.kernel_bias1(), P.dropout_rows(row0), s.activation);
      P.round_(h);
    } else {
      if (!P.first_linear(h, x_c, /*activate=*/true)) activation_inplace(h, s.activation);
      if (dropout) h.masked_fill_(dropout->dropped(row0, n), 0);
    }
    fill_rows(out, y_staging, row0, n, [&](const at::Tensor& y_c) { second_linear(y_c, h, P); });
  }
  return out.view(x.sizes());
}

namespace {

// The backward; with `forward_out` it also writes the forward's output there (one more GEMM per
// chunk on the activation it recomputes anyway), for callers that need both.
ChunkedFfnGradients backward_impl(const ChunkedFfnProblem& P, const at::Tensor& grad_out,
                                  const at::Tensor& x, std::array<bool, 5> output_mask,
                                  at::Tensor* forward_out) {
  const auto& b1 = P.b1;
  const auto& b2 = P.b2;
  const ChunkedFfnShape& s = P.shape;
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes(), "grad_out must have the shape of x ",
                    x.sizes(), ", got ", grad_out.sizes());
  check_operand(grad_out, "grad_out", x);

  const bool need_gx = output_mask[0], need_gw1 = output_mask[1];
  const bool need_gb1 = output_mask[2] && b1.has_value();
  const bool need_gw2 = output_mask[3];
  const bool need_gb2 = output_mask[4] && b2.has_value();
  const bool need_dpre = need_gx || need_gw1 || need_gb1;
  // the activation a (not just its derivative) is needed for gW2 and for the forward's output
  const bool need_act = need_gw2 || forward_out != nullptr;

  const auto g2d = grad_out.contiguous().view({s.rows, s.d_model});
  // Weight and bias gradients accumulate in float32 for float16 / bfloat16 inputs.
  const bool reduced = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  const auto acc_opts = reduced ? x.options().dtype(at::kFloat) : x.options();
  at::Tensor gx, gw1, gb1, gw2, gb2;
  if (need_gx) gx = at::empty({s.rows, s.d_model}, x.options());
  if (need_gw1) gw1 = at::zeros({s.d_ff, s.d_model}, acc_opts);
  if (need_gb1) gb1 = at::zeros({s.d_ff}, acc_opts);
  if (need_gw2) gw2 = at::zeros({s.d_model, s.d_ff}, acc_opts);
  if (need_gb2) gb2 = column_sums(g2d, acc_opts.dtype().toScalarType());

  at::Tensor out2d;
  if (forward_out != nullptr) out2d = at::empty({s.rows, s.d_model}, x.options());
  if (s.rows > 0 && (need_dpre || need_act)) {
    auto pre_buf = at::empty({P.chunk, s.d_ff}, P.compute);
    auto a_buf = at::empty({P.chunk, s.d_ff}, P.compute);
    const auto gx_staging = need_gx ? P.staging(s.d_model) : at::Tensor();
    const auto y_staging = forward_out != nullptr ? P.staging(s.d_model) : at::Tensor();
    const bool fused = fused_supported(pre_buf);
    c10::optional<SeededDropoutMask> dropout;  // the mask as tensors, where no fused kernel exists
    if (P.has_dropout() && !fused) {
      dropout.emplace(P.dropout_p, P.seed, s.d_ff, P.chunk, x.options());
    }
    // relu's derivative can be read off its output, so relu needs no separate pre-activation.
    const bool relu = s.activation == ChunkedFfnActivation::Relu;

    for (int64_t row0 = 0; row0 < s.rows; row0 += P.chunk) {
      const int64_t n = std::min(P.chunk, s.rows - row0);
      const auto x_c = P.rows(P.x2d, row0, n);
      const auto g_c = P.rows(g2d, row0, n);
      auto pre = pre_buf.narrow(0, 0, n);
      auto a = a_buf.narrow(0, 0, n);
      at::Tensor dropped;
      if (dropout) dropped = dropout->dropped(row0, n);
      // What the dropped-out activation `act` is needed for: gW2 += s · g_cᵀ · act, and the
      // forward's output rows when asked for.
      const auto use_activation = [&](const at::Tensor& act) {
        if (need_gw2) accumulate_mm(gw2, g_c.t(), act, P.scale);
        if (forward_out != nullptr) {
          fill_rows(out2d, y_staging, row0, n,
                    [&](const at::Tensor& y_c) { second_linear(y_c, act, P); });
        }
      };
      // a = s · g_c · W2: the gradient reaching the dropped-out activation
      const auto grad_of_activation = [&] { gemm_out(a, g_c, P.rhs_w2(), {}, /*alpha=*/P.scale); };
      // gx_c = d(loss)/d(pre) · W1
      const auto grad_of_input = [&](const at::Tensor& dpre) {
        fill_rows(gx, gx_staging, row0, n,
                  [&](const at::Tensor& gx_c) { gemm_out(gx_c, dpre, P.rhs_w1()); });
      };

      if (fused) {
        // One pass gives a = act(z) ⊙ keep and pre = act'(z) ⊙ keep, z the
        // recomputed pre-activation; a second fuses the product with it and b1's column sums.
        gemm_out(pre, x_c, P.rhs_w1t(), P.gemm_bias1());
        P.round_(pre);
        fused_bias_activation_grad_(pre, a, P.kernel_bias1(), P.dropout_rows(row0),
                                    s.activation);
        P.round_(a);  // the activation as the forward has it
        use_activation(a);
        if (!need_dpre) continue;
        grad_of_activation();
        fused_mul_colsum_(a, pre, need_gb1 ? gb1 : at::Tensor());  // a = d(loss)/d(pre)
        if (need_gw1) accumulate_mm(gw1, a.t(), x_c, 1.0);
        if (need_gx) grad_of_input(a);
        continue;
      }

      const bool activated = P.first_linear(pre, x_c, /*activate=*/relu);
      if (relu) {
        // pre becomes the dropped-out activation itself: relu'(z) = [relu(z) > 0], and where an
        // element is dropped its incoming gradient is zero whatever pre holds there.
        if (!activated) at::relu_(pre);
        if (dropout) pre.masked_fill_(dropped, 0);
        use_activation(pre);
      } else if (need_act) {
        activation_out(a, pre, s.activation);
        if (dropout) a.masked_fill_(dropped, 0);
        use_activation(a);
      }
      if (!need_dpre) continue;
      grad_of_activation();
      if (dropout) a.masked_fill_(dropped, 0);
      activation_backward_inplace(a, pre, s.activation);  // a = d(loss)/d(pre)
      if (need_gb1) add_column_sums_(gb1, a);
      if (need_gw1) accumulate_mm(gw1, a.t(), x_c, 1.0);
      if (need_gx) grad_of_input(a);
    }
  }
  const auto finish = [&](const at::Tensor& t) {
    return t.defined() && t.scalar_type() != x.scalar_type() ? t.to(x.scalar_type()) : t;
  };
  if (forward_out != nullptr) *forward_out = out2d.view(x.sizes());
  return {need_gx ? gx.view(x.sizes()) : at::Tensor(), finish(gw1), finish(gb1), finish(gw2),
          finish(gb2)};
}

}  // namespace

ChunkedFfnGradients chunked_ffn_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                         const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                                         const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
                                         int64_t chunk_size, c10::string_view activation,
                                         double dropout_p, int64_t dropout_seed,
                                         std::array<bool, 5> output_mask) {
  const ChunkedFfnProblem P(x, w1, b1, w2, b2, chunk_size, activation, dropout_p, dropout_seed);
  return backward_impl(P, grad_out, x, output_mask, nullptr);
}

ChunkedFfnGradients chunked_ffn_backward_with_output(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1,
    const c10::optional<at::Tensor>& b1, const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
    int64_t chunk_size, c10::string_view activation, double dropout_p, int64_t dropout_seed,
    at::Tensor& forward_out) {
  const ChunkedFfnProblem P(x, w1, b1, w2, b2, chunk_size, activation, dropout_p, dropout_seed);
  return backward_impl(P, grad_out, x, {true, true, true, true, true}, &forward_out);
}

int64_t read_dropout_seed(const c10::optional<at::Tensor>& dropout_seed, double dropout_p) {
  // the rate first, so that a bad rate is reported as such whatever the seed
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, "dropout_p must be in [0, 1), got ",
                    dropout_p);
  if (!dropout_seed.has_value()) {
    TORCH_CHECK_VALUE(dropout_p == 0.0, "dropout_seed must be given when dropout_p > 0 (got ",
                      "dropout_p = ", dropout_p, " and dropout_seed = None)");
    return 0;
  }
  const auto& seed = *dropout_seed;
  TORCH_CHECK_VALUE(seed.scalar_type() == at::kLong && seed.numel() == 1 && seed.is_cpu(),
                    "dropout_seed must be a one-element int64 tensor on the CPU, got ",
                    seed.scalar_type(), " of shape ", seed.sizes(), " on ", seed.device());
  return seed.item<int64_t>();
}

namespace {

// The operator entry points: the seed tensor read once, then the integer-seed functions above.
at::Tensor chunked_ffn_op(const at::Tensor& x, const at::Tensor& w1,
                          const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                          const c10::optional<at::Tensor>& b2, int64_t chunk_size,
                          c10::string_view activation, double dropout_p,
                          const c10::optional<at::Tensor>& dropout_seed) {
  return chunked_ffn(x, w1, b1, w2, b2, chunk_size, activation, dropout_p,
                     read_dropout_seed(dropout_seed, dropout_p));
}

ChunkedFfnGradients chunked_ffn_backward_op(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1,
    const c10::optional<at::Tensor>& b1, const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
    int64_t chunk_size, c10::string_view activation, double dropout_p,
    const c10::optional<at::Tensor>& dropout_seed, std::array<bool, 5> output_mask) {
  return chunked_ffn_backward(grad_out, x, w1, b1, w2, b2, chunk_size, activation, dropout_p,
                              read_dropout_seed(dropout_seed, dropout_p), output_mask);
}

}  // namespace
}  // namespace reformer

// One function for both devices: besides ATen operators and the GEMMs of gemm.h (fixed-order CPU
// kernels / cuBLAS) it calls the fused element-wise kernels of the tensors' device (CPU:
// float32/float64; CUDA: every dtype).
TORCH_LIBRARY_IMPL(reformer, CPU, m) {
  m.impl("chunked_ffn", &reformer::chunked_ffn_op);
  m.impl("chunked_ffn_backward", &reformer::chunked_ffn_backward_op);
}

TORCH_LIBRARY_IMPL(reformer, CUDA, m) {
  m.impl("chunked_ffn", &reformer::chunked_ffn_op);
  m.impl("chunked_ffn_backward", &reformer::chunked_ffn_backward_op);
}

// The device-generic GEMM and column sums of the operators (see gemm.h), and the test/benchmark
// operator reformer::_gemm that exposes them.
#include "gemm.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "cpu/fixed_order_gemm.h"

namespace reformer {
namespace {

bool is_reduced(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

at::Tensor to_float(const at::Tensor& t) { return t.defined() ? t.to(at::kFloat) : t; }

void cpu_gemm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                  const at::Tensor& bias, double alpha, bool accumulate) {
  if (!is_reduced(a.scalar_type())) {
    cpu::fixed_order_gemm_out(out, a, b, bias, alpha, accumulate);
  } else if (out.scalar_type() == at::kFloat) {
    cpu::fixed_order_gemm_out(out, to_float(a), to_float(b), to_float(bias), alpha, accumulate);
  } else {  // the whole product in float32, then one rounding to out's dtype
    auto result = accumulate ? out.to(at::kFloat)
                             : at::empty(out.sizes(), out.options().dtype(at::kFloat));
    cpu::fixed_order_gemm_out(result, to_float(a), to_float(b), to_float(bias), alpha,
                              accumulate);
    out.copy_(result);
  }
}

// The ATen calls the operators made before the CPU had its own GEMM (cuBLAS on CUDA).
void aten_gemm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                   const at::Tensor& bias, double alpha, bool accumulate) {
  at::Tensor o = out;  // the at::*_out functions take a non-const reference
  if (accumulate) {
    if (o.scalar_type() == a.scalar_type()) {
      o.addmm_(a, b, /*beta=*/1, alpha);
    } else {
      o.add_(at::mm(a, b), alpha);
    }
  } else if (bias.defined()) {
    at::addmm_out(o, bias, a, b, /*beta=*/1, alpha);
  } else if (alpha == 1.0) {
    at::mm_out(o, a, b);
  } else {
    at::addmm_out(o, o, a, b, /*beta=*/0, alpha);  // beta 0: o's old values are ignored
  }
}

void check_gemm_args(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                     const at::Tensor& bias, bool accumulate) {
  const auto dtype = a.scalar_type();
  TORCH_CHECK(b.scalar_type() == dtype && (!bias.defined() || bias.scalar_type() == dtype),
              "gemm: a, b and bias must have one dtype, got ", dtype, ", ", b.scalar_type(),
              bias.defined() ? std::string(", ") + c10::toString(bias.scalar_type()) : "");
  TORCH_CHECK(out.scalar_type() == dtype ||
                  (is_reduced(dtype) && out.scalar_type() == at::kFloat),
              "gemm: out must have the operands' dtype (or float32 for float16 / bfloat16), got ",
              out.scalar_type(), " for ", dtype);
  TORCH_CHECK(!(accumulate && bias.defined()), "gemm: accumulate and bias are exclusive");
}

}  // namespace

void gemm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
              const at::Tensor& bias, double alpha, bool accumulate) {
  check_gemm_args(out, a, b, bias, accumulate);
  if (a.is_cpu()) {
    cpu_gemm_out(out, a, b, bias, alpha, accumulate);
  } else {
    aten_gemm_out(out, a, b, bias, alpha, accumulate);
  }
}

GemmRhs gemm_rhs(const at::Tensor& b) {
  GemmRhs rhs{b, {}};
  if (b.is_cpu() && b.dim() == 2 &&
      (b.scalar_type() == at::kFloat || b.scalar_type() == at::kDouble)) {
    rhs.packed = cpu::pack_rhs(b);
  }
  return rhs;
}

void gemm_out(const at::Tensor& out, const at::Tensor& a, const GemmRhs& b,
              const at::Tensor& bias, double alpha, bool accumulate) {
  if (!b.packed.panels.defined() || !a.is_cpu()) {
    gemm_out(out, a, b.b, bias, alpha, accumulate);
    return;
  }
  check_gemm_args(out, a, b.b, bias, accumulate);
  cpu::fixed_order_gemm_out(out, a, b.packed, bias, alpha, accumulate);
}

at::Tensor gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias) {
  if (!a.is_cpu()) return bias.defined() ? at::addmm(bias, a, b) : at::mm(a, b);
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "gemm: 2-D operands expected, got ", a.sizes(),
              " and ", b.sizes());
  auto out = at::empty({a.size(0), b.size(1)}, a.options());
  gemm_out(out, a, b, bias);
  return out;
}

void add_column_sums_(const at::Tensor& acc, const at::Tensor& m) {
  if (m.is_cpu()) {
    cpu::fixed_order_column_sums_(acc, m);
  } else {
    at::Tensor o = acc;
    o.add_(at::sum(m, {0}, /*keepdim=*/false, acc.scalar_type()));
  }
}

at::Tensor column_sums(const at::Tensor& m, at::ScalarType dtype) {
  if (!m.is_cpu()) return at::sum(m, {0}, /*keepdim=*/false, dtype);
  // float16 / bfloat16 sums accumulate in float32, rounded once
  const auto acc_dtype = is_reduced(dtype) ? at::kFloat : dtype;
  auto acc = at::zeros({m.size(1)}, m.options().dtype(acc_dtype));
  cpu::fixed_order_column_sums_(acc, m);
  return acc_dtype == dtype ? acc : acc.to(dtype);
}

namespace {

// reformer::_gemm: c + alpha · a · b (c given; c itself is not modified), else
// bias + alpha · a · b, through gemm_out (with b packed first by gemm_rhs when packed_b): what
// the operators compute, for tests and benchmarks.
at::Tensor gemm_op(const at::Tensor& a, const at::Tensor& b, const c10::optional<at::Tensor>& bias,
                   const c10::optional<at::Tensor>& c, double alpha, bool packed_b) {
  TORCH_CHECK_VALUE(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0),
                    "_gemm: a (M, K) and b (K, N) expected, got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK_VALUE(!(bias.has_value() && c.has_value()), "_gemm: give bias or c, not both");
  TORCH_CHECK_VALUE(b.device() == a.device(), "_gemm: b must be on a's device");
  if (c.has_value()) {
    TORCH_CHECK_VALUE(c->dim() == 2 && c->size(0) == a.size(0) && c->size(1) == b.size(1) &&
                          c->device() == a.device(),
                      "_gemm: c must have shape (", a.size(0), ", ", b.size(1), ") on a's device, got ",
                      c->sizes());
    auto out = c->clone(at::MemoryFormat::Contiguous);
    if (packed_b) {
      gemm_out(out, a, gemm_rhs(b), {}, alpha, /*accumulate=*/true);
    } else {
      gemm_out(out, a, b, {}, alpha, /*accumulate=*/true);
    }
    return out;
  }
  TORCH_CHECK_VALUE(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == b.size(1) &&
                                          bias->device() == a.device()),
                    "_gemm: bias must have shape (", b.size(1), ") on a's device");
  auto out = at::empty({a.size(0), b.size(1)}, a.options());
  if (packed_b) {
    gemm_out(out, a, gemm_rhs(b), bias.value_or(at::Tensor()), alpha, /*accumulate=*/false);
  } else {
    gemm_out(out, a, b, bias.value_or(at::Tensor()), alpha, /*accumulate=*/false);
  }
  return out;
}

}  // namespace
}  // namespace reformer

TORCH_LIBRARY_IMPL(reformer, CPU, m) { m.impl("_gemm", &reformer::gemm_op); }

TORCH_LIBRARY_IMPL(reformer, CUDA, m) { m.impl("_gemm", &reformer::gemm_op); }

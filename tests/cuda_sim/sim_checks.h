// Checks shared by the CUDA-simulation test files (test_cuda_kernels_sim.cpp,
// test_chunked_ffn_kernels_sim.cpp): typed raw pointers into tensors and a tolerance comparison
// that names the worst element.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>

namespace cuda_sim_checks {

using at::Tensor;

template <typename T>
inline T* data(const Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

// |got - want| <= rtol * |want| + atol_of_max * max|want| everywhere (NaN fails).
inline ::testing::AssertionResult close(const Tensor& got, const Tensor& want, double rtol,
                                 double atol_of_max, const std::string& what) {
  const Tensor g = got.to(at::kDouble), w = want.to(at::kDouble);
  if (g.sizes() != w.sizes())
    return ::testing::AssertionFailure() << what << ": shape " << g.sizes() << " vs " << w.sizes();
  const double scale = w.numel() > 0 ? w.abs().max().item<double>() : 0.0;
  const Tensor err = (g - w).abs();
  const Tensor bound = w.abs() * rtol + atol_of_max * scale;
  const Tensor ok = err <= bound;  // false for NaN
  if (std::getenv("CUDA_SIM_REPORT") != nullptr)  // the margins, for whoever tunes tolerances
    std::printf("  %-40s max|err| / max|want| = %.3g, worst err / bound = %.3g (max|want| %.3g)\n",
                what.c_str(), err.max().item<double>() / std::max(scale, 1e-300),
                (err / bound.clamp_min(1e-300)).max().item<double>(), scale);
  if (ok.all().item<bool>()) return ::testing::AssertionSuccess();
  const Tensor ratio = at::where(ok, at::zeros_like(err), err / bound.clamp_min(1e-300))
                           .nan_to_num(std::numeric_limits<double>::infinity());
  const int64_t at_index = ratio.flatten().argmax().item<int64_t>();
  return ::testing::AssertionFailure()
         << what << ": " << (~ok).sum().item<int64_t>() << " of " << w.numel()
         << " elements out of tolerance; worst at flat index " << at_index << ": got "
         << g.flatten()[at_index].item<double>() << ", want " << w.flatten()[at_index].item<double>()
         << " (max |want| " << scale << ", rtol " << rtol << ", atol " << atol_of_max
         << " * max|want|); max |err| " << err.nan_to_num(INFINITY).max().item<double>();
}

}  // namespace cuda_sim_checks

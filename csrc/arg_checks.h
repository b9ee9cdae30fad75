// Argument-check helpers shared by the operators' checks (lsh_attention_common.cpp,
// local_attention_common.cpp; is_supported_float also chunked_ffn.cpp and reformer_stack.cpp).
// Each failure is a ValueError in Python whose message names the
// argument, the expectation and the value; `ref` / `ref_name` is the tensor the others are
// compared with ("qk" for LSH attention, "q" for local attention).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace reformer {

// float32, float64, float16 or bfloat16.
bool is_supported_float(at::ScalarType t);

// `name must be a tensor, got None` for an undefined tensor.
void check_defined(const at::Tensor& t, const char* name);

// t defined and on ref's device.
void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref,
                       const char* ref_name);

// t has ref's dtype.
void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref,
                      const char* ref_name);

// The queries (or qk): defined, (batch, heads, length, dim) with length and dim >= 1, of a
// supported floating-point dtype.
void check_query_tensor(const at::Tensor& t, const char* name);

// v defined with shape (batch, heads, length, value_dim) ("as in <ref_name>" in the message).
void check_value_shape(const at::Tensor& v, int64_t batch, int64_t heads, int64_t length,
                       const char* ref_name);

// n_chunks_before and n_chunks_after each in [0, kMaxWindowChunks), their window within it.
void check_window(int64_t n_chunks_before, int64_t n_chunks_after);

// The optional key_padding_mask: bool, (batch, length), on ref's device.
void check_key_padding_mask(const c10::optional<at::Tensor>& key_padding_mask, int64_t batch,
                            int64_t length, const at::Tensor& ref, const char* ref_name);

// The backward's grad_out and out: v's shape, ref's dtype and device.
void check_grad_out_and_out(const at::Tensor& grad_out, const at::Tensor& out,
                            const at::Tensor& v, const at::Tensor& ref, const char* ref_name);

// The backward's softmax_stats (batch, heads, length, 2) and optional grad_lse (batch, heads,
// length), both in ref's accumulation type (float64 for float64, else float32) and on its device.
void check_softmax_stats_and_grad_lse(const at::Tensor& softmax_stats,
                                      const c10::optional<at::Tensor>& grad_lse, int64_t batch,
                                      int64_t heads, int64_t length, const at::Tensor& ref,
                                      const char* ref_name);

}  // namespace reformer

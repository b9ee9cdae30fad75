// reformer::reformer_stack and reformer::reformer_stack_backward (docs/semantics.md §3; see
// reformer_stack.h).
//
// One device-generic implementation on ATen operators (LayerNorm), the GEMMs and column sums of
// gemm.h (fixed-order kernels on the CPU, cuBLAS on CUDA) and the project's own operators:
// reformer::lsh_attention and reformer::local_attention (and their backwards) through the
// dispatcher (lsh_attention.h, local_attention.h), so that they run their CPU or CUDA kernels,
// and the device-generic chunked feed-forward (chunked_ffn.h).
// Registered for CPU and CUDA at the bottom of this file.
//
// Backward, per layer from the last, given its outputs (y1, y2) and their gradients (dy1, dy2):
//   G:  h2 = LN2(y1); one chunked pass gives the FFN's output u and its gradients from
//       dropout_o'(dy2); x2 = y2 - dropout_o(u); dy1 += LN2ᵀ(dh2)
//   F:  h = LN1(x2); recompute qk (q and k in a local layer), v, attention (out, softmax stats,
//       the sort permutation of an LSH layer) and
//       a = W_out · merge(out) + b_out; x1 = y1 - dropout_a(a); the attention backward from
//       dropout_a'(dy1); dx2 = dy2 + LN1ᵀ(dh); dx1 = dy1
// Dropout masks are pure functions of (seed, element index) (seeded_dropout.h): the recompute
// reproduces them without storing them. Weight gradients are computed per layer with plain
// GEMMs and column sums. On the CPU every reduction has a fixed order (gemm.h; LayerNorm's
// statistics and input gradient are per row), so outputs and gradients are bitwise identical
// across runs and thread counts on one machine and build (not across instruction sets: FMA
// contraction and vector width change rounding).
#include "reformer_stack.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <initializer_list>
#include <string>
#include <tuple>
#include <vector>

#include "chunked_ffn.h"
#include "gemm.h"
#include "lsh_attention.h"
#include "lsh_attention_common.h"
#include "local_attention.h"
#include "seeded_dropout.h"

namespace reformer {
namespace {

// Seeds of the three dropout masks of a layer, columns of `seeds`.
enum DropoutSite : int64_t { kAttentionOutput, kFfnHidden, kFfnOutput, kDropoutSites };

struct StackOptions {
  int64_t n_heads, bucket_size, n_chunks_before, n_chunks_after, ff_chunk_size;
  bool causal;
  c10::string_view activation;
  double dropout_p, eps;
  at::IntArrayRef bucket_factors;  // shared by every layer; empty: 2 * rotations[l].shape[3]
  at::IntArrayRef local_layers;    // increasing indices of the local-attention layers
  int64_t local_chunk_length, local_chunks_before, local_chunks_after;
  double lsh_attention_dropout_p, local_attention_dropout_p;  // on the attention probabilities

  bool is_local(int64_t layer) const {
    return std::find(local_layers.begin(), local_layers.end(), layer) != local_layers.end();
  }
};

// Sizes of one call, derived once from checked arguments.
struct StackShape {
  int64_t depth = 0, batch = 0, length = 0, d_model = 0;
  int64_t d_head = 0, d_ff = 0;
  int64_t rows() const { return batch * length; }
};

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_stream(const at::Tensor& t, const char* name, const at::Tensor& x1) {
  TORCH_CHECK_VALUE(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK_VALUE(t.sizes() == x1.sizes(), name, " must have the shape of x1 ", x1.sizes(),
                    ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == x1.scalar_type(), name, " must have the dtype of x1 (",
                    x1.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x1.device(), name, " must be on the device of x1 (",
                    x1.device(), "), got ", t.device());
}

// Where a size is read off: dimension `dim` of weight `weight` when that weight has rank `rank`.
struct SizeSource {
  LayerWeight weight;
  int64_t rank, dim;
};

// Rows of a layer's qk weight per H·Dh: the shared query/key of LSH, or query and key stacked.
int64_t qk_weight_multiple(const StackOptions& o, int64_t layer) {
  return o.is_local(layer) ? 2 : 1;
}

// A size that several weights of every layer carry (H·Dh: qk, v and out; d_ff: w1, b1 and w2),
// as most of them give it (the first of equally frequent values; -1 if none has its rank). A
// single wrong weight, whichever it is, is outvoted, so the check of every weight against the
// sizes reports that weight and not one that agrees with the others.
int64_t agreed_size(at::TensorList weights, std::initializer_list<SizeSource> sources,
                    const StackOptions& o) {
  std::vector<int64_t> sizes;
  for (size_t first = 0; first < weights.size(); first += kWeightsPerLayer) {
    const int64_t layer = static_cast<int64_t>(first) / kWeightsPerLayer;
    for (const auto& source : sources) {
      const auto& w = weights[first + source.weight];
      if (!w.defined() || w.dim() != source.rank) continue;
      const int64_t multiple = source.weight == kQkWeight ? qk_weight_multiple(o, layer) : 1;
      sizes.push_back(w.size(source.dim) / multiple);
    }
  }
  int64_t agreed = -1;
  std::ptrdiff_t agreed_count = 0;
  for (const int64_t size : sizes) {
    const auto count = std::count(sizes.begin(), sizes.end(), size);
    if (count > agreed_count) {
      agreed = size;
      agreed_count = count;
    }
  }
  return agreed;
}

StackShape check_stack_args(const at::Tensor& x1, const at::Tensor& x2, at::TensorList weights,
                            at::TensorList rotations,
                            const c10::optional<at::Tensor>& key_padding_mask,
                            const at::Tensor& seeds, const StackOptions& o) {
  TORCH_CHECK_VALUE(x1.defined() && x1.dim() == 3,
                    "x1 must have shape (batch, length, d_model), got ",
                    x1.defined() ? x1.sizes() : at::IntArrayRef{});
  TORCH_CHECK_VALUE(is_supported_float(x1.scalar_type()),
                    "x1 must be float32, float64, float16 or bfloat16, got ", x1.scalar_type());
  check_stream(x2, "x2", x1);
  StackShape s;
  s.batch = x1.size(0);
  s.length = x1.size(1);
  s.d_model = x1.size(2);
  TORCH_CHECK_VALUE(!weights.empty() && weights.size() % kWeightsPerLayer == 0,
                    "weights must hold ", static_cast<int64_t>(kWeightsPerLayer),
                    " tensors per layer (a positive multiple of ",
                    static_cast<int64_t>(kWeightsPerLayer), "), got ", weights.size());
  s.depth = static_cast<int64_t>(weights.size()) / kWeightsPerLayer;
  for (size_t i = 0; i < o.local_layers.size(); ++i) {
    const int64_t layer = o.local_layers[i];
    TORCH_CHECK_VALUE(layer >= 0 && layer < s.depth &&
                          (i == 0 || layer > o.local_layers[i - 1]),
                      "local_layers must hold increasing layer indices in [0, depth) = [0, ",
                      s.depth, "), got ", o.local_layers);
  }
  if (!o.local_layers.empty()) {  // the window is checked by reformer::local_attention
    TORCH_CHECK_VALUE(o.local_chunk_length >= 1, "local_chunk_length must be >= 1, got ",
                      o.local_chunk_length);
  }
  TORCH_CHECK_VALUE(o.n_heads >= 1, "n_heads must be >= 1, got ", o.n_heads);
  const auto& w_qk = weights[kQkWeight];
  const int64_t inner =
      agreed_size(weights, {{kQkWeight, 2, 0}, {kVWeight, 2, 0}, {kOutWeight, 2, 1}}, o);
  TORCH_CHECK_VALUE(inner > 0 && inner % o.n_heads == 0, stack_weight_name(kQkWeight),
                    " must have shape (n_heads * d_head, d_model) with n_heads = ", o.n_heads,
                    ", got ", w_qk.defined() ? w_qk.sizes() : at::IntArrayRef{});
  s.d_head = inner / o.n_heads;
  const auto& w1 = weights[kFfnW1];
  s.d_ff = agreed_size(weights, {{kFfnW1, 2, 0}, {kFfnB1, 1, 0}, {kFfnW2, 2, 1}}, o);
  TORCH_CHECK_VALUE(s.d_ff >= 1, stack_weight_name(kFfnW1),
                    " must have shape (d_ff, d_model), got ",
                    w1.defined() ? w1.sizes() : at::IntArrayRef{});
  const int64_t d = s.d_model, ff = s.d_ff;
  std::array<std::vector<int64_t>, kWeightsPerLayer> expected;
  expected[kNorm1Weight] = expected[kNorm1Bias] = {d};
  expected[kQkWeight] = expected[kVWeight] = {inner, d};
  expected[kOutWeight] = {d, inner};
  expected[kOutBias] = {d};
  expected[kNorm2Weight] = expected[kNorm2Bias] = {d};
  expected[kFfnW1] = {ff, d};
  expected[kFfnB1] = {ff};
  expected[kFfnW2] = {d, ff};
  expected[kFfnB2] = {d};
  for (int64_t i = 0; i < static_cast<int64_t>(weights.size()); ++i) {
    const auto& w = weights[i];
    const auto name = stack_weight_name(i);
    auto expected_shape = expected[i % kWeightsPerLayer];
    if (i % kWeightsPerLayer == kQkWeight)
      expected_shape[0] *= qk_weight_multiple(o, i / kWeightsPerLayer);
    const at::IntArrayRef shape(expected_shape);
    TORCH_CHECK_VALUE(w.defined(), name, " must be a tensor, got None");
    TORCH_CHECK_VALUE(w.sizes() == shape, name, " must have shape ", shape, ", got ", w.sizes());
    TORCH_CHECK_VALUE(w.scalar_type() == x1.scalar_type(), name, " must have the dtype of x1 (",
                      x1.scalar_type(), "), got ", w.scalar_type());
    TORCH_CHECK_VALUE(w.device() == x1.device(), name, " must be on the device of x1 (",
                      x1.device(), "), got ", w.device());
  }
  TORCH_CHECK_VALUE(static_cast<int64_t>(rotations.size()) == s.depth,
                    "rotations must hold one tensor per layer (", s.depth, "), got ",
                    rotations.size());
  for (int64_t l = 0; l < s.depth; ++l) {
    const auto& r = rotations[l];
    if (o.is_local(l)) {
      TORCH_CHECK_VALUE(r.defined() && r.numel() == 0, "rotations[", l,
                        "] must be an empty tensor: layer ", l,
                        " uses local attention (local_layers), got shape ",
                        r.defined() ? r.sizes() : at::IntArrayRef{});
      continue;
    }
    TORCH_CHECK_VALUE(r.defined() && r.dim() == 4 &&
                          (r.size(0) == 1 || r.size(0) == o.n_heads) && r.size(1) == s.d_head &&
                          r.size(2) >= 1 && r.size(3) >= 1,
                      "rotations[", l, "] must have shape (1 or ", o.n_heads, ", ", s.d_head,
                      ", n_hashes, n_buckets // 2), got ",
                      r.defined() ? r.sizes() : at::IntArrayRef{});
    TORCH_CHECK_VALUE(r.device() == x1.device(), "rotations[", l,
                      "] must be on the device of x1 (", x1.device(), "), got ", r.device());
    check_bucket_factors(o.bucket_factors, r.size(3), "rotations[" + std::to_string(l) + "]");
  }
  TORCH_CHECK_VALUE(seeds.defined() && seeds.scalar_type() == at::kLong && seeds.is_cpu() &&
                        seeds.dim() == 2 && seeds.size(0) == s.depth &&
                        seeds.size(1) == kDropoutSites,
                    "seeds must be a CPU int64 tensor of shape (depth, 3) = (", s.depth,
                    ", 3), got ",
                    seeds.defined() ? seeds.toString() + " of shape " + c10::str(seeds.sizes())
                                    : std::string("None"));
  if (key_padding_mask.has_value()) {
    const auto& m = *key_padding_mask;
    TORCH_CHECK_VALUE(m.scalar_type() == at::kBool && m.dim() == 2 && m.size(0) == s.batch &&
                          m.size(1) == s.length,
                      "key_padding_mask must be a bool tensor of shape (batch, length) = (",
                      s.batch, ", ", s.length, "), got ", m.scalar_type(), " ", m.sizes());
    TORCH_CHECK_VALUE(m.device() == x1.device(), "key_padding_mask must be on the device of x1 (",
                      x1.device(), "), got ", m.device());
  }
  TORCH_CHECK_VALUE(o.dropout_p >= 0.0 && o.dropout_p < 1.0, "dropout_p must be in [0, 1), got ",
                    o.dropout_p);
  TORCH_CHECK_VALUE(o.lsh_attention_dropout_p >= 0.0 && o.lsh_attention_dropout_p < 1.0,
                    "lsh_attention_dropout_p must be in [0, 1), got ", o.lsh_attention_dropout_p);
  TORCH_CHECK_VALUE(o.local_attention_dropout_p >= 0.0 && o.local_attention_dropout_p < 1.0,
                    "local_attention_dropout_p must be in [0, 1), got ",
                    o.local_attention_dropout_p);
  TORCH_CHECK_VALUE(o.eps > 0.0, "layer_norm_eps must be > 0, got ", o.eps);
  TORCH_CHECK_VALUE(o.ff_chunk_size >= 1, "ff_chunk_size must be >= 1, got ", o.ff_chunk_size);
  parse_chunked_ffn_activation(o.activation);  // a ValueError naming `activation` if unknown
  // bucket_size, the local options and the windows are checked by the attention operators.
  return s;
}

// One layer's weights, kind of attention and dropout seeds.
struct Layer {
  at::TensorList w;  // kWeightsPerLayer tensors
  const at::Tensor& rotations;
  bool local;  // local attention; else LSH attention
  std::array<int64_t, kDropoutSites> seed;
  double attention_dropout_p;          // on the attention probabilities (the layer kind's rate)
  at::Tensor attention_dropout_seed;   // one-element int64 CPU tensor, derived from
                                       // seed[kAttentionOutput]; undefined when the rate is 0

  Layer(at::TensorList weights, at::TensorList rotations_, const at::Tensor& seeds, int64_t l,
        const StackOptions& o)
      : w(weights.slice(l * kWeightsPerLayer, kWeightsPerLayer)),
        rotations(rotations_[l]),
        local(o.is_local(l)) {
    const auto row = seeds.accessor<int64_t, 2>()[l];
    for (int64_t i = 0; i < kDropoutSites; ++i) seed[i] = row[i];
    attention_dropout_p = local ? o.local_attention_dropout_p : o.lsh_attention_dropout_p;
    if (attention_dropout_p > 0.0) {
      attention_dropout_seed = at::scalar_tensor(
          dropout_hash::derived_seed(seed[kAttentionOutput], dropout_hash::kAttentionProbsSalt),
          at::TensorOptions().dtype(at::kLong));
    }
  }
  c10::optional<at::Tensor> attention_seed() const {
    if (!attention_dropout_seed.defined()) return c10::nullopt;
    return attention_dropout_seed;
  }
  const at::Tensor& operator[](LayerWeight i) const { return w[i]; }
};

// LayerNorm's backward: returns d(loss)/d(x) and writes the weight and bias gradients. Those
// two are column sums computed here in a fixed order (gemm.h) rather than by ATen's LayerNorm
// backward, whose CPU reduction over rows depends on the thread count. ATen's d(loss)/d(x) is
// computed row by row, each row the same way whatever the thread count.
at::Tensor layer_norm_backward(const at::Tensor& d_normed, const at::Tensor& x,
                               const at::Tensor& mean, const at::Tensor& rstd,
                               const at::Tensor& weight,
                               std::vector<at::Tensor>::iterator grad_weight,
                               std::vector<at::Tensor>::iterator grad_bias, const StackShape& s) {
  auto dx = std::get<0>(at::native_layer_norm_backward(d_normed, x, {s.d_model}, mean, rstd,
                                                       weight, {}, {true, false, false}));
  // mean and rstd are float32 for reduced-precision x: so are these sums, until the cast
  const auto x_hat = (x - mean) * rstd;
  *grad_weight = column_sums(d_normed * x_hat, x_hat.scalar_type()).to(weight.scalar_type());
  *grad_bias = column_sums(d_normed, x_hat.scalar_type()).to(weight.scalar_type());
  return dx;
}

// The attention branch's intermediate values that its backward needs.
struct AttentionState {
  at::Tensor normed, mean, rstd;         // LN1(x) and its statistics
  at::Tensor qk, k, v;                   // (B, H, L, Dh) views of the projections (qk: the
                                         // queries of a local layer, k: its keys)
  at::Tensor out, stats, sorted_positions;  // sorted_positions: LSH layers only
  at::Tensor merged;                     // (B·L, H·Dh): the heads side by side
};

// The logit scale of a local layer: HF's 1/sqrt(Dh) (docs/semantics.md §9). LSH layers use
// scale 1, their keys being normalised to length 1/sqrt(Dh) (§1 step 4).
double local_attention_scale(const StackShape& s) {
  return 1.0 / std::sqrt(static_cast<double>(s.d_head));
}

// (B, L, H·Dh) -> (B, H, L, Dh) view.
at::Tensor split_heads(const at::Tensor& t, const StackShape& s, int64_t heads) {
  return t.view({s.batch, s.length, heads, s.d_head}).transpose(1, 2);
}

// (B, H, L, Dh) -> (B·L, H·Dh), contiguous.
at::Tensor merge_heads(const at::Tensor& t, const StackShape& s) {
  return t.transpose(1, 2).reshape({s.rows(), t.size(1) * s.d_head});
}

// F(x) = dropout_a(W_out · attention(LN1(x)) + b_out), as (B·L, d_model); fills `state` when
// given (the backward's recompute).
at::Tensor attention_branch(const at::Tensor& x, const Layer& layer,
                            const c10::optional<at::Tensor>& mask, const StackShape& s,
                            const StackOptions& o, AttentionState* state) {
  const auto x2d = x.reshape({s.rows(), s.d_model});
  auto [normed, mean, rstd] = at::native_layer_norm(x2d, {s.d_model}, layer[kNorm1Weight],
                                                    layer[kNorm1Bias], o.eps);
  const auto projected = gemm(normed, layer[kQkWeight].t());  // (B·L, H·Dh), or 2·H·Dh if local
  const auto v = split_heads(gemm(normed, layer[kVWeight].t()), s, o.n_heads);
  const int64_t inner = o.n_heads * s.d_head;
  at::Tensor qk, k, out, stats, sorted_positions;
  if (layer.local) {
    qk = split_heads(projected.narrow(1, 0, inner), s, o.n_heads);
    k = split_heads(projected.narrow(1, inner, inner), s, o.n_heads);
    std::tie(out, std::ignore, stats) =
        local_attention(qk, k, v, mask, o.local_chunk_length, o.causal, o.local_chunks_before,
                        o.local_chunks_after, local_attention_scale(s),
                        layer.attention_dropout_p, layer.attention_seed());
  } else {
    qk = split_heads(projected, s, o.n_heads);
    std::tie(out, std::ignore, sorted_positions, stats) =
        lsh_attention(qk, v, layer.rotations, mask, o.bucket_size, o.causal, o.n_chunks_before,
                      o.n_chunks_after, /*scale=*/1.0, o.bucket_factors,
                      layer.attention_dropout_p, layer.attention_seed());
  }
  auto merged = merge_heads(out, s);
  auto a = gemm(merged, layer[kOutWeight].t(), layer[kOutBias]);
  seeded_dropout_(a, o.dropout_p, layer.seed[kAttentionOutput]);
  if (state != nullptr) {
    *state = {std::move(normed), std::move(mean), std::move(rstd), qk, k, v, std::move(out),
              std::move(stats), std::move(sorted_positions), std::move(merged)};
  }
  return a;
}

// G(x) = dropout_o(FFN(LN2(x))), as (B·L, d_model).
at::Tensor ffn_branch(const at::Tensor& x, const Layer& layer, const StackShape& s,
                      const StackOptions& o) {
  const auto normed = at::layer_norm(x.reshape({s.rows(), s.d_model}), {s.d_model},
                                     layer[kNorm2Weight], layer[kNorm2Bias], o.eps);
  auto u = chunked_ffn(normed, layer[kFfnW1], layer[kFfnB1], layer[kFfnW2], layer[kFfnB2],
                       o.ff_chunk_size, o.activation, o.dropout_p, layer.seed[kFfnHidden]);
  seeded_dropout_(u, o.dropout_p, layer.seed[kFfnOutput]);
  return u;
}

// dropout'(g) for a mask of `seed`: the same mask and scale applied to a copy of g (B·L, d).
at::Tensor dropout_backward(const at::Tensor& g, double p, int64_t seed) {
  auto out = g.clone(at::MemoryFormat::Contiguous);
  seeded_dropout_(out, p, seed);
  return out;
}

// Gradients of G through LN2 and the FFN; returns the reconstructed G(y1) (the forward's
// value) and accumulates d(loss)/d(y1) into dy1. grads: the layer's slots in the output list.
at::Tensor ffn_branch_backward(const at::Tensor& y1, const at::Tensor& dy2, at::Tensor& dy1,
                               const Layer& layer, const StackShape& s, const StackOptions& o,
                               std::vector<at::Tensor>::iterator grads) {
  auto [normed, mean, rstd] = at::native_layer_norm(y1, {s.d_model}, layer[kNorm2Weight],
                                                    layer[kNorm2Bias], o.eps);
  const auto du = dropout_backward(dy2, o.dropout_p, layer.seed[kFfnOutput]);
  at::Tensor u;
  auto [d_normed, gw1, gb1, gw2, gb2] = chunked_ffn_backward_with_output(
      du, normed, layer[kFfnW1], layer[kFfnB1], layer[kFfnW2], layer[kFfnB2], o.ff_chunk_size,
      o.activation, o.dropout_p, layer.seed[kFfnHidden], u);
  seeded_dropout_(u, o.dropout_p, layer.seed[kFfnOutput]);
  dy1.add_(layer_norm_backward(d_normed, y1, mean, rstd, layer[kNorm2Weight],
                               grads + kNorm2Weight, grads + kNorm2Bias, s));
  grads[kFfnW1] = gw1;
  grads[kFfnB1] = gb1;
  grads[kFfnW2] = gw2;
  grads[kFfnB2] = gb2;
  return u;
}

// Recomputes F(x2) and its gradients from dy1: returns F(x2) (the forward's value) and
// accumulates d(loss)/d(x2) into dx2.
at::Tensor attention_branch_backward(const at::Tensor& x2, const at::Tensor& dy1, at::Tensor& dx2,
                                     const Layer& layer, const c10::optional<at::Tensor>& mask,
                                     const StackShape& s, const StackOptions& o,
                                     std::vector<at::Tensor>::iterator grads) {
  AttentionState st;
  auto a = attention_branch(x2, layer, mask, s, o, &st);
  const auto da = dropout_backward(dy1, o.dropout_p, layer.seed[kAttentionOutput]);
  grads[kOutWeight] = gemm(da.t(), st.merged);
  grads[kOutBias] = column_sums(da, da.scalar_type());
  const auto d_merged = gemm(da, layer[kOutWeight]);  // (B·L, H·Dh)
  const auto d_out = split_heads(d_merged, s, o.n_heads);
  at::Tensor d_qk2d, d_v2d;  // (B·L, H·Dh) each; d_qk2d is (B·L, 2·H·Dh) in a local layer
  if (layer.local) {
    auto [d_q, d_k, d_v] = local_attention_backward(
        d_out, /*grad_lse=*/c10::nullopt, st.qk, st.k, st.v, st.out, st.stats, mask,
        o.local_chunk_length, o.causal, o.local_chunks_before, o.local_chunks_after,
        local_attention_scale(s), layer.attention_dropout_p, layer.attention_seed());
    d_qk2d = at::cat({merge_heads(d_q, s), merge_heads(d_k, s)}, 1);
    d_v2d = merge_heads(d_v, s);
  } else {
    auto [d_qk, d_v] = lsh_attention_backward(d_out, /*grad_lse=*/c10::nullopt, st.qk, st.v,
                                              st.out, st.stats, st.sorted_positions, mask,
                                              o.bucket_size, o.causal, o.n_chunks_before,
                                              o.n_chunks_after, /*scale=*/1.0,
                                              layer.attention_dropout_p, layer.attention_seed());
    d_qk2d = merge_heads(d_qk, s);
    d_v2d = merge_heads(d_v, s);
  }
  grads[kQkWeight] = gemm(d_qk2d.t(), st.normed);
  grads[kVWeight] = gemm(d_v2d.t(), st.normed);
  auto d_normed = gemm(d_qk2d, layer[kQkWeight]);
  gemm_out(d_normed, d_v2d, layer[kVWeight], {}, 1.0, /*accumulate=*/true);
  dx2.add_(layer_norm_backward(d_normed, x2, st.mean, st.rstd, layer[kNorm1Weight],
                               grads + kNorm1Weight, grads + kNorm1Bias, s));
  return a;
}

StackOptions make_options(int64_t n_heads, int64_t bucket_size, bool causal,
                          int64_t n_chunks_before, int64_t n_chunks_after, int64_t ff_chunk_size,
                          c10::string_view activation, double dropout_p, double eps,
                          at::IntArrayRef bucket_factors, at::IntArrayRef local_layers,
                          int64_t local_chunk_length, int64_t local_chunks_before,
                          int64_t local_chunks_after, double lsh_attention_dropout_p,
                          double local_attention_dropout_p) {
  return {n_heads,        bucket_size,        n_chunks_before,     n_chunks_after,
          ff_chunk_size,  causal,             activation,          dropout_p,
          eps,            bucket_factors,     local_layers,        local_chunk_length,
          local_chunks_before, local_chunks_after, lsh_attention_dropout_p,
          local_attention_dropout_p};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> reformer_stack(
    const at::Tensor& x1, const at::Tensor& x2, at::TensorList weights, at::TensorList rotations,
    const c10::optional<at::Tensor>& key_padding_mask, const at::Tensor& seeds, int64_t n_heads,
    int64_t bucket_size, bool causal, int64_t n_chunks_before, int64_t n_chunks_after,
    int64_t ff_chunk_size, c10::string_view activation, double dropout_p, double layer_norm_eps,
    at::IntArrayRef bucket_factors, at::IntArrayRef local_layers, int64_t local_chunk_length,
    int64_t local_chunks_before, int64_t local_chunks_after, double lsh_attention_dropout_p,
    double local_attention_dropout_p) {
  const auto o = make_options(n_heads, bucket_size, causal, n_chunks_before, n_chunks_after,
                              ff_chunk_size, activation, dropout_p, layer_norm_eps,
                              bucket_factors, local_layers, local_chunk_length,
                              local_chunks_before, local_chunks_after, lsh_attention_dropout_p,
                              local_attention_dropout_p);
  const auto s = check_stack_args(x1, x2, weights, rotations, key_padding_mask, seeds, o);
  // The streams as (B·L, d_model) rows; each layer makes new ones (the inputs are never written).
  auto a = x1.reshape({s.rows(), s.d_model});
  auto b = x2.reshape({s.rows(), s.d_model});
  for (int64_t l = 0; l < s.depth; ++l) {
    const Layer layer(weights, rotations, seeds, l, o);
    a = a + attention_branch(b, layer, key_padding_mask, s, o, nullptr);
    b = b + ffn_branch(a, layer, s, o);
  }
  return {a.view(x1.sizes()), b.view(x1.sizes())};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> reformer_stack_backward(
    const at::Tensor& grad_y1, const at::Tensor& grad_y2, const at::Tensor& y1,
    const at::Tensor& y2, at::TensorList weights, at::TensorList rotations,
    const c10::optional<at::Tensor>& key_padding_mask, const at::Tensor& seeds, int64_t n_heads,
    int64_t bucket_size, bool causal, int64_t n_chunks_before, int64_t n_chunks_after,
    int64_t ff_chunk_size, c10::string_view activation, double dropout_p, double layer_norm_eps,
    at::IntArrayRef bucket_factors, at::IntArrayRef local_layers, int64_t local_chunk_length,
    int64_t local_chunks_before, int64_t local_chunks_after, double lsh_attention_dropout_p,
    double local_attention_dropout_p) {
  const auto o = make_options(n_heads, bucket_size, causal, n_chunks_before, n_chunks_after,
                              ff_chunk_size, activation, dropout_p, layer_norm_eps,
                              bucket_factors, local_layers, local_chunk_length,
                              local_chunks_before, local_chunks_after, lsh_attention_dropout_p,
                              local_attention_dropout_p);
  const auto s = check_stack_args(y1, y2, weights, rotations, key_padding_mask, seeds, o);
  check_stream(grad_y1, "grad_y1", y1);
  check_stream(grad_y2, "grad_y2", y1);
  const auto rows = [&](const at::Tensor& t) { return t.reshape({s.rows(), s.d_model}); };
  // The current layer's outputs, turned into its inputs in place, layer by layer: one pair of
  // working streams at any depth (the saved y1, y2 are read, never written), so from depth 2 on
  // the backward holds no more streams than at depth 1.
  at::Tensor a = rows(y1).clone(at::MemoryFormat::Contiguous);
  at::Tensor b = rows(y2).clone(at::MemoryFormat::Contiguous);
  // the gradients w.r.t. them, as fresh tensors that are accumulated into in place
  at::Tensor da = rows(grad_y1).clone(at::MemoryFormat::Contiguous);
  at::Tensor db = rows(grad_y2).clone(at::MemoryFormat::Contiguous);
  std::vector<at::Tensor> grads(weights.size());
  for (int64_t l = s.depth - 1; l >= 0; --l) {
    const Layer layer(weights, rotations, seeds, l, o);
    const auto layer_grads = grads.begin() + l * kWeightsPerLayer;
    // G: b = x2 + G(a)
    b.sub_(ffn_branch_backward(a, db, da, layer, s, o, layer_grads));  // b = x2
    // F: a = x1 + F(x2)
    a.sub_(attention_branch_backward(b, da, db, layer, key_padding_mask, s, o, layer_grads));
  }
  return {da.view(y1.sizes()), db.view(y1.sizes()), std::move(grads)};
}

}  // namespace reformer

// One function for both devices: ATen operators, gemm.h and dispatcher calls.
TORCH_LIBRARY_IMPL(reformer, CPU, m) {
  m.impl("reformer_stack", &reformer::reformer_stack);
  m.impl("reformer_stack_backward", &reformer::reformer_stack_backward);
}

TORCH_LIBRARY_IMPL(reformer, CUDA, m) {
  m.impl("reformer_stack", &reformer::reformer_stack);
  m.impl("reformer_stack_backward", &reformer::reformer_stack_backward);
}

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
// Memory: the row-wise work (LayerNorms, projections, the output projection, their gradients)
// runs over blocks of rows (rows_per_block), in the forward too, so that the recompute takes
// off exactly what the forward added. Besides its streams the backward holds the attention's
// (B·L, H·Dh) projections, output and their gradients, and in the G step the FFN's input,
// output and input gradient: no other (B·L, d_model) temporary.
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

#include "arg_checks.h"
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
                        (seeds.size(1) == kDropoutSites ||
                         seeds.size(1) == kDropoutSites + 1),
                    "seeds must be a CPU int64 tensor of shape (depth, 3) = (", s.depth,
                    ", 3), or (depth, 4) with the attention-probability seeds, got ",
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
  at::Tensor attention_dropout_seed;   // one-element int64 CPU tensor: seeds' fourth column, or
                                       // derived from seed[kAttentionOutput]; undefined when the
                                       // rate is 0

  Layer(at::TensorList weights, at::TensorList rotations_, const at::Tensor& seeds, int64_t l,
        const StackOptions& o)
      : w(weights.slice(l * kWeightsPerLayer, kWeightsPerLayer)),
        rotations(rotations_[l]),
        local(o.is_local(l)) {
    const auto row = seeds.accessor<int64_t, 2>()[l];
    for (int64_t i = 0; i < kDropoutSites; ++i) seed[i] = row[i];
    attention_dropout_p = local ? o.local_attention_dropout_p : o.lsh_attention_dropout_p;
    if (attention_dropout_p > 0.0) {
      // a fourth column gives it (shifted with a sample offset, which a hash cannot carry)
      const int64_t probs_seed =
          seeds.size(1) > kDropoutSites
              ? row[kDropoutSites]
              : dropout_hash::derived_seed(seed[kAttentionOutput],
                                           dropout_hash::kAttentionProbsSalt);
      attention_dropout_seed =
          at::scalar_tensor(probs_seed, at::TensorOptions().dtype(at::kLong));
    }
  }
  c10::optional<at::Tensor> attention_seed() const {
    if (!attention_dropout_seed.defined()) return c10::nullopt;
    return attention_dropout_seed;
  }
  const at::Tensor& operator[](LayerWeight i) const { return w[i]; }
};

// Rows per block of the stack's row-wise work (LayerNorm, the projections, their gradients):
// the backward then holds no full-width (B·L, d_model) temporary besides its streams. On the CPU
// a block's temporaries are about 1 MiB of float32; on CUDA each block costs kernel launches, so
// blocks are larger there. A function of d_model and the device only (never of the thread
// count), so the fixed-order sums over blocks keep results independent of the thread count.
int64_t rows_per_block(const StackShape& s, const at::Device& device) {
  const int64_t elements = device.is_cuda() ? (int64_t{1} << 22) : (int64_t{1} << 18);
  return std::max<int64_t>(1, elements / std::max<int64_t>(s.d_model, 1));
}

// Calls fn(row0, b, p0, n) for blocks of at most `block` consecutive positions p0 .. p0 + n - 1
// of sequence b, in order; row0 = b · L + p0 is the block's first row in (B·L, ·) layout. Blocks
// never span two sequences, so a block is a slice of every (B, H, L, Dh) head tensor too.
template <typename Fn>
void for_each_row_block(const StackShape& s, int64_t block, Fn&& fn) {
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t p0 = 0; p0 < s.length; p0 += block) {
      fn(b * s.length + p0, b, p0, std::min(block, s.length - p0));
    }
  }
}

// Positions p0 .. p0 + n - 1 of sequence b of a (B, H, L, Dh) tensor as (n, H·Dh) rows, the
// heads side by side.
at::Tensor merged_rows(const at::Tensor& heads, int64_t b, int64_t p0, int64_t n) {
  return heads.select(0, b).narrow(1, p0, n).transpose(0, 1).reshape({n, -1});
}

// The inverse of merged_rows: writes rows (n, H·Dh) to those positions of `heads`.
void write_merged_rows(const at::Tensor& heads, const at::Tensor& rows, int64_t b, int64_t p0) {
  const int64_t n = rows.size(0);
  heads.select(0, b).narrow(1, p0, n).copy_(
      rows.view({n, heads.size(1), heads.size(3)}).transpose(0, 1));
}

// Float32 accumulators for float16 / bfloat16 weights (as chunked_ffn's): gradients summed over
// row blocks, converted to the weight's dtype once at the end (finish_gradient).
at::Tensor gradient_accumulator(const at::Tensor& weight) {
  const auto t = weight.scalar_type();
  const bool reduced = t == at::kHalf || t == at::kBFloat16;
  return at::zeros(weight.sizes(), weight.options().dtype(reduced ? at::kFloat : t));
}

at::Tensor finish_gradient(const at::Tensor& acc, const at::Tensor& weight) {
  return acc.scalar_type() == weight.scalar_type() ? acc : acc.to(weight.scalar_type());
}

// LayerNorm's backward, block of rows by block: d(loss)/d(x) of the rows is added to the
// caller's gradient, the weight and bias gradients are summed over the blocks. Those two are the
// fixed-order column sums of gemm.h (rows in order, blocks in order) rather than ATen's
// LayerNorm backward, whose CPU reduction over rows depends on the thread count; ATen's
// d(loss)/d(x) is computed row by row, each row the same way whatever the thread count.
class LayerNormBackward {
 public:
  explicit LayerNormBackward(const at::Tensor& weight)
      : weight_(weight),
        grad_weight_(gradient_accumulator(weight)),
        grad_bias_(gradient_accumulator(weight)) {}

  // dx += d(loss)/d(x) for rows x (n, d_model) with statistics mean, rstd (n, 1; float32 for
  // reduced-precision x), given the gradient d_normed (n, d_model) w.r.t. their output.
  void add_rows(const at::Tensor& dx, const at::Tensor& d_normed, const at::Tensor& x,
                const at::Tensor& mean, const at::Tensor& rstd) {
    dx.add_(std::get<0>(at::native_layer_norm_backward(d_normed, x, {x.size(1)}, mean, rstd,
                                                       weight_, {}, {true, false, false})));
    add_column_sums_(grad_weight_, d_normed * ((x - mean) * rstd));
    add_column_sums_(grad_bias_, d_normed);
  }

  void write_gradients(std::vector<at::Tensor>::iterator weight_slot,
                       std::vector<at::Tensor>::iterator bias_slot) const {
    *weight_slot = finish_gradient(grad_weight_, weight_);
    *bias_slot = finish_gradient(grad_bias_, weight_);
  }

 private:
  const at::Tensor& weight_;
  at::Tensor grad_weight_, grad_bias_;
};

// One layer's attention on LN1(x): the projections, in the attention operators' own (B, H, L,
// Dh) layout (so that they make no contiguous copies), and the attention operator's outputs:
// all the F branch's backward needs besides x (LN1(x) itself is recomputed block by block).
struct Attention {
  at::Tensor qk, k, v;  // qk: the shared query/keys, or the queries of a local layer; k: its keys
  at::Tensor out, stats, sorted_positions;  // sorted_positions: LSH layers only
};

// The logit scale of a local layer: HF's 1/sqrt(Dh) (docs/semantics.md §9). LSH layers use
// scale 1, their keys being normalised to length 1/sqrt(Dh) (§1 step 4).
double local_attention_scale(const StackShape& s) {
  return 1.0 / std::sqrt(static_cast<double>(s.d_head));
}

// The projections of LN1(x) (block by block: LN1(x) never exists whole) and the attention.
Attention attend(const at::Tensor& x2d, const Layer& layer, const c10::optional<at::Tensor>& mask,
                 const StackShape& s, const StackOptions& o) {
  Attention attn;
  const auto heads = [&] {
    return at::empty({s.batch, o.n_heads, s.length, s.d_head}, x2d.options());
  };
  attn.qk = heads();
  if (layer.local) attn.k = heads();
  attn.v = heads();
  const int64_t inner = o.n_heads * s.d_head;
  const auto qk_rhs = gemm_rhs(layer[kQkWeight].t()), v_rhs = gemm_rhs(layer[kVWeight].t());
  for_each_row_block(s, rows_per_block(s, x2d.device()), [&](int64_t row0, int64_t b,
                                                             int64_t p0, int64_t n) {
    const auto normed = std::get<0>(at::native_layer_norm(
        x2d.narrow(0, row0, n), {s.d_model}, layer[kNorm1Weight], layer[kNorm1Bias], o.eps));
    // (n, H·Dh), or (n, 2·H·Dh) in a local layer
    auto projected = at::empty({n, layer[kQkWeight].size(0)}, x2d.options());
    gemm_out(projected, normed, qk_rhs);
    write_merged_rows(attn.qk, projected.narrow(1, 0, inner), b, p0);
    if (layer.local) write_merged_rows(attn.k, projected.narrow(1, inner, inner), b, p0);
    auto values = at::empty({n, inner}, x2d.options());
    gemm_out(values, normed, v_rhs);
    write_merged_rows(attn.v, values, b, p0);
  });
  if (layer.local) {
    std::tie(attn.out, std::ignore, attn.stats) =
        local_attention(attn.qk, attn.k, attn.v, mask, o.local_chunk_length, o.causal,
                        o.local_chunks_before, o.local_chunks_after, local_attention_scale(s),
                        layer.attention_dropout_p, layer.attention_seed());
  } else {
    std::tie(attn.out, std::ignore, attn.sorted_positions, attn.stats) =
        lsh_attention(attn.qk, attn.v, layer.rotations, mask, o.bucket_size, o.causal,
                      o.n_chunks_before, o.n_chunks_after, /*scale=*/1.0, o.bucket_factors,
                      layer.attention_dropout_p, layer.attention_seed());
  }
  return attn;
}

// stream += sign · F(x), F(x) = dropout_a(W_out · merge(out) + b_out), block by block: the
// forward adds it (sign 1), the backward's recompute takes it off again (sign -1) with the very
// same values.
void add_attention_output(const at::Tensor& stream, const Attention& attn, const Layer& layer,
                          const StackShape& s, const StackOptions& o, double sign) {
  const int64_t block = rows_per_block(s, stream.device());
  SeededRowDropout dropout(o.dropout_p, layer.seed[kAttentionOutput], s.d_model, block,
                           stream.options());
  const auto out_rhs = gemm_rhs(layer[kOutWeight].t());
  for_each_row_block(s, block, [&](int64_t row0, int64_t b, int64_t p0, int64_t n) {
    auto f = at::empty({n, s.d_model}, stream.options());
    gemm_out(f, merged_rows(attn.out, b, p0, n), out_rhs, layer[kOutBias]);
    dropout.apply_(f, row0);
    stream.narrow(0, row0, n).add_(f, sign);
  });
}

// The output projection's backward: the W_out and b_out gradients and d(loss)/d(out) as a
// (B, H, L, Dh) tensor, from dy1 (= d(loss)/d(F(x))).
at::Tensor attention_output_backward(const at::Tensor& dy1, const Attention& attn,
                                     const Layer& layer, const StackShape& s,
                                     const StackOptions& o,
                                     std::vector<at::Tensor>::iterator grads) {
  const int64_t block = rows_per_block(s, dy1.device());
  SeededRowDropout dropout(o.dropout_p, layer.seed[kAttentionOutput], s.d_model, block,
                           dy1.options());
  auto grad_w = gradient_accumulator(layer[kOutWeight]);
  auto grad_b = gradient_accumulator(layer[kOutBias]);
  auto d_out = at::empty_like(attn.out, at::MemoryFormat::Contiguous);
  const auto w_rhs = gemm_rhs(layer[kOutWeight]);
  for_each_row_block(s, block, [&](int64_t row0, int64_t b, int64_t p0, int64_t n) {
    const auto da = dropout.backward(dy1.narrow(0, row0, n), row0);
    gemm_out(grad_w, da.t(), merged_rows(attn.out, b, p0, n), {}, 1.0, /*accumulate=*/true);
    add_column_sums_(grad_b, da);
    auto d_merged = at::empty({n, attn.out.size(1) * s.d_head}, dy1.options());
    gemm_out(d_merged, da, w_rhs);
    write_merged_rows(d_out, d_merged, b, p0);
  });
  grads[kOutWeight] = finish_gradient(grad_w, layer[kOutWeight]);
  grads[kOutBias] = finish_gradient(grad_b, layer[kOutBias]);
  return d_out;
}

// One projection of LN1(x) seen from its gradient.
struct ProjectionGradient {
  at::Tensor d_heads;  // d(loss)/d(LN1(x) · Wᵀ), (B, H, L, Dh)
  at::Tensor weight;   // W (H·Dh, d_model): rows of the layer's weight
  at::Tensor grad;     // W's gradient accumulator: rows of the layer's accumulator
};

// The projections' backward, block by block (LN1(x) recomputed per block, bitwise as `attend`
// had it): their weight gradients, LN1's, and d(loss)/d(x) through LN1 added to dx.
void projections_backward(const at::Tensor& x2d, const at::Tensor& dx,
                          const std::vector<ProjectionGradient>& projections, const Layer& layer,
                          const StackShape& s, const StackOptions& o,
                          std::vector<at::Tensor>::iterator grads) {
  std::vector<GemmRhs> weights;
  for (const auto& p : projections) weights.push_back(gemm_rhs(p.weight));
  LayerNormBackward norm(layer[kNorm1Weight]);
  for_each_row_block(s, rows_per_block(s, x2d.device()), [&](int64_t row0, int64_t b,
                                                             int64_t p0, int64_t n) {
    const auto x = x2d.narrow(0, row0, n);
    const auto [normed, mean, rstd] = at::native_layer_norm(
        x, {s.d_model}, layer[kNorm1Weight], layer[kNorm1Bias], o.eps);
    auto d_normed = at::empty({n, s.d_model}, x2d.options());
    for (size_t i = 0; i < projections.size(); ++i) {
      const auto d_rows = merged_rows(projections[i].d_heads, b, p0, n);
      gemm_out(projections[i].grad, d_rows.t(), normed, {}, 1.0, /*accumulate=*/true);
      gemm_out(d_normed, d_rows, weights[i], {}, 1.0, /*accumulate=*/i > 0);
    }
    norm.add_rows(dx.narrow(0, row0, n), d_normed, x, mean, rstd);
  });
  norm.write_gradients(grads + kNorm1Weight, grads + kNorm1Bias);
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

// dropout'(g) for a mask of `seed`: g itself for p == 0 (the callers only read it), else the
// same mask and scale applied to a copy of g (B·L, d).
at::Tensor dropout_backward(const at::Tensor& g, double p, int64_t seed) {
  if (p == 0.0) return g;
  auto out = g.clone(at::MemoryFormat::Contiguous);
  seeded_dropout_(out, p, seed);
  return out;
}

// Gradients of G through LN2 and the FFN; returns the reconstructed G(y1) (the forward's
// value) and accumulates d(loss)/d(y1) into dy1. grads: the layer's slots in the output list.
at::Tensor ffn_branch_backward(const at::Tensor& y1, const at::Tensor& dy2, at::Tensor& dy1,
                               const Layer& layer, const StackShape& s, const StackOptions& o,
                               std::vector<at::Tensor>::iterator grads) {
  at::Tensor normed, mean, rstd, u;
  std::tie(normed, mean, rstd) = at::native_layer_norm(y1, {s.d_model}, layer[kNorm2Weight],
                                                       layer[kNorm2Bias], o.eps);
  auto [d_normed, gw1, gb1, gw2, gb2] = chunked_ffn_backward_with_output(
      dropout_backward(dy2, o.dropout_p, layer.seed[kFfnOutput]), normed, layer[kFfnW1],
      layer[kFfnB1], layer[kFfnW2], layer[kFfnB2], o.ff_chunk_size, o.activation, o.dropout_p,
      layer.seed[kFfnHidden], u);
  normed.reset();  // LN2's backward reads y1 and the statistics only
  seeded_dropout_(u, o.dropout_p, layer.seed[kFfnOutput]);
  LayerNormBackward norm(layer[kNorm2Weight]);
  for_each_row_block(s, rows_per_block(s, y1.device()), [&](int64_t row0, int64_t, int64_t,
                                                            int64_t n) {
    norm.add_rows(dy1.narrow(0, row0, n), d_normed.narrow(0, row0, n), y1.narrow(0, row0, n),
                  mean.narrow(0, row0, n), rstd.narrow(0, row0, n));
  });
  norm.write_gradients(grads + kNorm2Weight, grads + kNorm2Bias);
  grads[kFfnW1] = gw1;
  grads[kFfnB1] = gb1;
  grads[kFfnW2] = gw2;
  grads[kFfnB2] = gb2;
  return u;
}

// Recomputes F(x2) and takes it off the stream a (y1 -> x1); adds d(loss)/d(x2) to dx2 and
// writes the attention's weight gradients. dy1 = d(loss)/d(y1) is also d(loss)/d(F(x2)).
void attention_branch_backward(at::Tensor& a, const at::Tensor& x2, const at::Tensor& dy1,
                               at::Tensor& dx2, const Layer& layer,
                               const c10::optional<at::Tensor>& mask, const StackShape& s,
                               const StackOptions& o, std::vector<at::Tensor>::iterator grads) {
  auto attn = attend(x2, layer, mask, s, o);
  add_attention_output(a, attn, layer, s, o, /*sign=*/-1.0);
  const auto d_out = attention_output_backward(dy1, attn, layer, s, o, grads);
  auto grad_qk = gradient_accumulator(layer[kQkWeight]);
  auto grad_v = gradient_accumulator(layer[kVWeight]);
  std::vector<ProjectionGradient> projections;
  if (layer.local) {
    auto [d_q, d_k, d_v] = local_attention_backward(
        d_out, /*grad_lse=*/c10::nullopt, attn.qk, attn.k, attn.v, attn.out, attn.stats, mask,
        o.local_chunk_length, o.causal, o.local_chunks_before, o.local_chunks_after,
        local_attention_scale(s), layer.attention_dropout_p, layer.attention_seed());
    const int64_t inner = o.n_heads * s.d_head;
    const auto& w_qk = layer[kQkWeight];  // W_q stacked on W_k
    projections = {{d_q, w_qk.narrow(0, 0, inner), grad_qk.narrow(0, 0, inner)},
                   {d_k, w_qk.narrow(0, inner, inner), grad_qk.narrow(0, inner, inner)},
                   {d_v, layer[kVWeight], grad_v}};
  } else {
    auto [d_qk, d_v] = lsh_attention_backward(d_out, /*grad_lse=*/c10::nullopt, attn.qk, attn.v,
                                              attn.out, attn.stats, attn.sorted_positions, mask,
                                              o.bucket_size, o.causal, o.n_chunks_before,
                                              o.n_chunks_after, /*scale=*/1.0,
                                              layer.attention_dropout_p, layer.attention_seed());
    projections = {{d_qk, layer[kQkWeight], grad_qk}, {d_v, layer[kVWeight], grad_v}};
  }
  attn = Attention{};  // the projections' backward needs x2 and the gradients only
  projections_backward(x2, dx2, projections, layer, s, o, grads);
  grads[kQkWeight] = finish_gradient(grad_qk, layer[kQkWeight]);
  grads[kVWeight] = finish_gradient(grad_v, layer[kVWeight]);
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
    a = a.clone(at::MemoryFormat::Contiguous);
    add_attention_output(a, attend(b, layer, key_padding_mask, s, o), layer, s, o, /*sign=*/1.0);
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
    attention_branch_backward(a, b, da, db, layer, key_padding_mask, s, o, layer_grads);  // a = x1
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

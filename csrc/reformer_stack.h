// Torch-facing declarations of the reversible Reformer stack operators (docs/semantics.md §3).
//
// reformer::reformer_stack runs `depth` reversible layers over two streams (B, L, d_model):
//   y1 = x1 + F(x2),   F(x) = dropout_a(W_out · Attention(LN1(x)) + b_out)
//   y2 = x2 + G(y1),   G(x) = dropout_o(ChunkedFFN(LN2(x)))   (hidden dropout inside the FFN)
// where Attention is LSH attention (docs/semantics.md §1), or local attention (§9) in the layers
// listed in `local_layers` (HF's attn_layers),
// with every layer's weights given explicitly and keeps nothing but its outputs;
// reformer::reformer_stack_backward walks the layers in reverse from the final outputs,
// reconstructs each layer's inputs (x2 = y2 - G(y1), x1 = y1 - F(x2)), recomputes F and G and
// returns the gradients of x1, x2 and of every weight. Activation memory is that of one layer,
// whatever the depth.
//
// Arguments shared by both operators:
//   weights    kWeightsPerLayer tensors per layer, in the order of LayerWeight below; the
//              nn.Linear / nn.LayerNorm layouts (w_qk, w_v: (H·Dh, d_model); w_out: (d_model,
//              H·Dh); w1: (d_ff, d_model); w2: (d_model, d_ff)); dtype and device of x1. In a
//              local layer w_qk is (2·H·Dh, d_model): the query weight, then the key weight.
//   rotations  one (1 or H, Dh, n_hashes, n_buckets / 2) tensor per LSH layer (docs/semantics.md
//              §1); an empty tensor for a local layer.
//   bucket_factors  shared by every layer: empty for n_buckets = 2 * rotations[l].shape[3], else
//              the even factors of a factorised bucket count (sum / 2 == rotations[l].shape[3]).
//   seeds      (depth, 3) int64 on the CPU: per layer, the seeds of the attention-output,
//              FFN-hidden and FFN-output dropout masks (seeded_dropout.h); unused when
//              dropout_p == 0. Or (depth, 4): the fourth column is each layer's
//              attention-probability seed, used as given instead of derived (below).
//   the LSH options of docs/semantics.md §1 (scale 1), the FFN's chunk size and activation
//   (docs/semantics.md §2), the dropout rate of all three dropouts, and LayerNorm's eps.
//   local_layers  the indices of the layers that use local attention (increasing), with its
//              options local_chunk_length, local_chunks_before, local_chunks_after and
//              scale 1/sqrt(Dh) (docs/semantics.md §9); `causal` applies to both kinds.
//   lsh_attention_dropout_p, local_attention_dropout_p  dropout on the attention probabilities
//              of the LSH and the local layers (docs/semantics.md §1, §9 "Dropout"), seeded per
//              layer with seeds' fourth column if it has one, else with a seed derived from the
//              layer's attention-output seed (dropout_hash::derived_seed with
//              kAttentionProbsSalt).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

namespace reformer {

// The per-layer weight order, defined here once: the position of each of a layer's weights
// within its group of kWeightsPerLayer in `weights` (weights[l * kWeightsPerLayer + i] is weight
// i of layer l), and below, its name.
enum LayerWeight : int64_t {
  kNorm1Weight, kNorm1Bias,             // F's LayerNorm
  kQkWeight, kVWeight,                  // shared query/key and value projections (no bias)
  kOutWeight, kOutBias,                 // attention output projection
  kNorm2Weight, kNorm2Bias,             // G's LayerNorm
  kFfnW1, kFfnB1, kFfnW2, kFfnB2,       // the feed-forward's two linear layers
  kWeightsPerLayer
};

// The name of each LayerWeight, in that order (the names of the Python module's weight list).
inline constexpr std::array<std::string_view, kWeightsPerLayer> kLayerWeightNames = {
    "norm1_weight", "norm1_bias", "qk_weight", "v_weight", "out_weight", "out_bias",
    "norm2_weight", "norm2_bias", "ffn_w1",    "ffn_b1",   "ffn_w2",     "ffn_b2"};

// "weights[<index>] (layer <l>, <name>)": how every argument-check message names a weight.
inline std::string stack_weight_name(int64_t index) {
  return "weights[" + std::to_string(index) + "] (layer " +
         std::to_string(index / kWeightsPerLayer) + ", " +
         std::string(kLayerWeightNames[index % kWeightsPerLayer]) + ")";
}

// (y1, y2).
std::tuple<at::Tensor, at::Tensor> reformer_stack(
    const at::Tensor& x1, const at::Tensor& x2, at::TensorList weights, at::TensorList rotations,
    const c10::optional<at::Tensor>& key_padding_mask, const at::Tensor& seeds, int64_t n_heads,
    int64_t bucket_size, bool causal, int64_t n_chunks_before, int64_t n_chunks_after,
    int64_t ff_chunk_size, c10::string_view activation, double dropout_p, double layer_norm_eps,
    at::IntArrayRef bucket_factors = {}, at::IntArrayRef local_layers = {},
    int64_t local_chunk_length = 64, int64_t local_chunks_before = 1,
    int64_t local_chunks_after = 0, double lsh_attention_dropout_p = 0.0,
    double local_attention_dropout_p = 0.0);

// (grad_x1, grad_x2, grad_weights) from the final outputs y1, y2 and their gradients.
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> reformer_stack_backward(
    const at::Tensor& grad_y1, const at::Tensor& grad_y2, const at::Tensor& y1,
    const at::Tensor& y2, at::TensorList weights, at::TensorList rotations,
    const c10::optional<at::Tensor>& key_padding_mask, const at::Tensor& seeds, int64_t n_heads,
    int64_t bucket_size, bool causal, int64_t n_chunks_before, int64_t n_chunks_after,
    int64_t ff_chunk_size, c10::string_view activation, double dropout_p, double layer_norm_eps,
    at::IntArrayRef bucket_factors = {}, at::IntArrayRef local_layers = {},
    int64_t local_chunk_length = 64, int64_t local_chunks_before = 1,
    int64_t local_chunks_after = 0, double lsh_attention_dropout_p = 0.0,
    double local_attention_dropout_p = 0.0);

}  // namespace reformer

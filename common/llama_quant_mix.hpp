#pragma once
// llama.cpp's quantization mixes (llama-quantize Q2_K, Q3_K_M, Q4_K_S, Q4_K_M,
// Q5_K_M) as one pure function: the ggml type llama.cpp gives a tensor of a
// dense model, ported from src/llama-quant.cpp (tensor_allows_quantization,
// tensor_get_category, llama_tensor_get_type_impl, tensor_type_fallback) of
// the llama.cpp that node-llama-cpp 3.22.1 bundles.
//
// llama.cpp counts the attn_v and ffn_down tensors as it visits them, in its
// loader's order (by layer, then by name); in a dense model with one of each
// per layer the count is the layer number, which is what this function takes
// from the name. Falcon's and mixture-of-experts models' own rules are not
// ported: callers refuse those models.

#include <loftq/io/gguf.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace loftq_common {

// LLAMA_FTYPE_MOSTLY_<X> of llama.h, the mixes llama-quantize names X.
enum class LlamaMix : std::uint32_t { q2_k = 10, q3_k_m = 12, q4_k_s = 14, q4_k_m = 15, q5_k_m = 17 };

// What of the model the rules read (llama.cpp's hparams).
struct LlamaMixModel {
  int n_layer = 0;         // <arch>.block_count
  int n_head = 0;          // <arch>.attention.head_count
  int n_head_kv = 0;       // <arch>.attention.head_count_kv (n_head when absent)
  bool has_output = true;  // an output.weight exists; without one token_embd is the output (tied)
};

// The tool's names of the mixes (--quant): llama-quantize's in lower case,
// but for Q2_K, whose name loftq's --quant gives the uniform type.
inline const char* llama_mix_name(LlamaMix mix) {
  switch (mix) {
    case LlamaMix::q2_k:
      return "q2_k_mix";
    case LlamaMix::q3_k_m:
      return "q3_k_m";
    case LlamaMix::q4_k_s:
      return "q4_k_s";
    case LlamaMix::q4_k_m:
      return "q4_k_m";
    case LlamaMix::q5_k_m:
      break;
  }
  return "q5_k_m";
}

inline const std::vector<LlamaMix>& llama_mixes() {
  static const std::vector<LlamaMix> m = {LlamaMix::q2_k, LlamaMix::q3_k_m, LlamaMix::q4_k_s, LlamaMix::q4_k_m,
                                          LlamaMix::q5_k_m};
  return m;
}

// The mix of a name (llama_mix_name), or nullopt.
inline std::optional<LlamaMix> llama_mix_from_name(const std::string& name) {
  for (LlamaMix m : llama_mixes())
    if (name == llama_mix_name(m)) return m;
  return std::nullopt;
}

namespace detail {

using loftq::io::GgmlType;

inline bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// ggml_n_dims: trailing dimensions of 1 do not count.
inline int n_dims(const std::vector<std::uint64_t>& ne) {
  int n = static_cast<int>(ne.size());
  while (n > 1 && ne[static_cast<std::size_t>(n) - 1] == 1) --n;
  return n < 1 ? 1 : n;
}

// tensor_allows_quantization with llama-quantize's defaults (quantize_output_tensor, not only_copy).
inline bool allows_quantization(const std::string& name, const std::vector<std::uint64_t>& ne) {
  if (n_dims(ne) < 2) return false;
  if (name.size() < 6 || name.compare(name.size() - 6, 6, "weight") != 0) return false;
  static const char* const excluded[] = {"_norm.weight",
                                         "ffn_gate_inp.weight",
                                         "ffn_gate_tid2eid.weight",
                                         "altup",
                                         "laurel",
                                         "per_layer_model_proj",
                                         "ssm_conv1d",
                                         "shortconv.conv.weight",
                                         "indexer.k_proj.weight",
                                         "indexer.q_proj.weight",
                                         "time_mix_first.weight",
                                         "time_mix_w0.weight",
                                         "time_mix_w1.weight",
                                         "time_mix_w2.weight",
                                         "time_mix_v0.weight",
                                         "time_mix_v1.weight",
                                         "time_mix_v2.weight",
                                         "time_mix_a0.weight",
                                         "time_mix_a1.weight",
                                         "time_mix_a2.weight",
                                         "time_mix_g1.weight",
                                         "time_mix_g2.weight",
                                         "time_mix_decay_w1.weight",
                                         "time_mix_decay_w2.weight",
                                         "time_mix_lerp_fused.weight",
                                         "attn_rel_b.weight",
                                         ".position_embd",
                                         "sam.pos_embd",
                                         "sam.neck.",
                                         "sam.net_",
                                         ".rel_pos",
                                         ".patch_embd",
                                         ".patch_merger",
                                         "a.rvq.codebook",
                                         "mm.a.code_embd"};
  for (const char* e : excluded)
    if (contains(name, e)) return false;
  return name != "position_embd.weight" && name != "token_types.weight";
}

enum class Category { token_embd, output, attn_v, attn_k, attn_q, attn_output, ffn_up, ffn_gate, ffn_down, other };

// tensor_get_category, in its order of tests (attn_qkv and attn_kv_b, absent from llama, fall under other here).
inline Category category(const std::string& name) {
  if (name == "output.weight") return Category::output;
  if (name == "token_embd.weight" || name == "per_layer_token_embd.weight") return Category::token_embd;
  if (contains(name, "attn_qkv.weight") || contains(name, "attn_kv_b.weight")) return Category::other;
  if (contains(name, "attn_v.weight")) return Category::attn_v;
  if (contains(name, "attn_k.weight")) return Category::attn_k;
  if (contains(name, "attn_q.weight")) return Category::attn_q;
  if (contains(name, "attn_output.weight")) return Category::attn_output;
  if (contains(name, "ffn_up")) return Category::ffn_up;
  if (contains(name, "ffn_gate")) return Category::ffn_gate;
  if (contains(name, "ffn_down")) return Category::ffn_down;
  return Category::other;
}

// N of "blk.N." (llama.cpp's sscanf), -1 for other names.
inline int layer_of(const std::string& name) {
  if (name.compare(0, 4, "blk.") != 0) return -1;
  int i = 0;
  std::size_t p = 4;
  if (p >= name.size() || name[p] < '0' || name[p] > '9') return -1;
  while (p < name.size() && name[p] >= '0' && name[p] <= '9' && i < 100000000) i = i * 10 + (name[p++] - '0');
  return i;
}

inline std::uint32_t block_of(GgmlType t) { return loftq::io::ggml_type_traits(static_cast<std::uint32_t>(t))->block; }

// tensor_type_fallback: a row that is not whole blocks of the chosen type.
inline GgmlType fallback(std::uint64_t ncols, GgmlType t) {
  if (ncols % block_of(t) == 0) return t;
  GgmlType r = t;
  switch (t) {
    case GgmlType::IQ4_XS:
      r = GgmlType::IQ4_NL;
      break;
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
      r = GgmlType::Q4_0;
      break;
    case GgmlType::Q4_K:
      r = GgmlType::Q5_0;
      break;
    case GgmlType::Q5_K:
      r = GgmlType::Q5_1;
      break;
    case GgmlType::Q6_K:
      r = GgmlType::Q8_0;
      break;
    default:  // a 32-element type: nothing smaller to demote to
      break;
  }
  return ncols % block_of(r) == 0 ? r : GgmlType::F16;
}

inline bool use_more_bits(int i_layer, int n_layers) {
  return i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2;
}

}  // namespace detail

// The type a mix's base type is (llama_ftype_get_default_type).
inline loftq::io::GgmlType llama_mix_default_type(LlamaMix mix) {
  using loftq::io::GgmlType;
  switch (mix) {
    case LlamaMix::q2_k:
      return GgmlType::Q2_K;
    case LlamaMix::q3_k_m:
      return GgmlType::Q3_K;
    case LlamaMix::q4_k_s:
    case LlamaMix::q4_k_m:
      return GgmlType::Q4_K;
    case LlamaMix::q5_k_m:
      break;
  }
  return GgmlType::Q5_K;
}

// The ggml type llama-quantize gives tensor `name` of dimensions `ne` (ne[0]
// the row length) under `mix`, without an importance matrix or overrides;
// nullopt for a tensor it copies as it is (norms, biases, 1-D tensors).
inline std::optional<loftq::io::GgmlType> llama_mix_type(const std::string& name, const std::vector<std::uint64_t>& ne,
                                                         const LlamaMixModel& m, LlamaMix mix) {
  using detail::Category;
  using loftq::io::GgmlType;
  if (ne.empty() || !detail::allows_quantization(name, ne)) return std::nullopt;
  const GgmlType base = llama_mix_default_type(mix);
  const Category cat = detail::category(name);
  const int i = detail::layer_of(name), n = m.n_layer;
  // llama_model's LLM_TYPE_70B, the one model size the rules know: 80 layers with grouped-query attention.
  const bool is_70b = m.n_layer == 80 && m.n_head != m.n_head_kv;
  const int n_gqa = m.n_head_kv > 0 ? m.n_head / m.n_head_kv : 0;
  GgmlType t = base;
  if (cat == Category::output || (!m.has_output && cat == Category::token_embd)) {
    t = ne[0] % detail::block_of(base) != 0 ? GgmlType::Q8_0 : GgmlType::Q6_K;
  } else if (cat == Category::attn_v) {
    if (mix == LlamaMix::q2_k)
      t = n_gqa >= 4 ? GgmlType::Q4_K : GgmlType::Q3_K;
    else if (mix == LlamaMix::q3_k_m)
      t = i < 2 ? GgmlType::Q5_K : GgmlType::Q4_K;
    else if ((mix == LlamaMix::q4_k_m || mix == LlamaMix::q5_k_m) && detail::use_more_bits(i, n))
      t = GgmlType::Q6_K;
    else if (mix == LlamaMix::q4_k_s && i < 4)
      t = GgmlType::Q5_K;
    if (is_70b && (t == GgmlType::Q3_K || t == GgmlType::Q4_K)) t = GgmlType::Q5_K;
  } else if (cat == Category::ffn_down) {
    if (mix == LlamaMix::q2_k)
      t = GgmlType::Q3_K;
    else if (mix == LlamaMix::q3_k_m)
      t = i < n / 16 ? GgmlType::Q5_K : GgmlType::Q4_K;
    else if ((mix == LlamaMix::q4_k_m || mix == LlamaMix::q5_k_m) && detail::use_more_bits(i, n))
      t = GgmlType::Q6_K;
    else if (mix == LlamaMix::q4_k_s && i < n / 8)
      t = GgmlType::Q5_K;
  } else if (cat == Category::attn_output) {
    if (mix == LlamaMix::q2_k)
      t = GgmlType::Q3_K;
    else if (mix == LlamaMix::q3_k_m)
      t = GgmlType::Q4_K;
  }
  return detail::fallback(ne[0], t);
}

}  // namespace loftq_common

#pragma once
// The names of linear layers in llama.cpp (GGUF tensor names, as its imatrix
// stores them) and in Hugging Face checkpoints (module paths), and which
// layers read the same input.
//
//   blk.N.attn_q.weight       model.layers.N.self_attn.q_proj
//   blk.N.attn_k.weight       model.layers.N.self_attn.k_proj
//   blk.N.attn_v.weight       model.layers.N.self_attn.v_proj
//   blk.N.attn_qkv.weight     model.layers.N.self_attn.qkv_proj   (fused q/k/v)
//   blk.N.attn_output.weight  model.layers.N.self_attn.o_proj
//   blk.N.ffn_gate.weight     model.layers.N.mlp.gate_proj
//   blk.N.ffn_up.weight       model.layers.N.mlp.up_proj
//   blk.N.ffn_down.weight     model.layers.N.mlp.down_proj
//   output.weight             lm_head
//
// N is a decimal layer number without leading zeros, so the mapping is one
// to one. A trailing ".weight" on the Hugging Face side is accepted and
// dropped.

#include <cstddef>
#include <string>
#include <vector>

namespace loftq {
namespace io {

namespace detail {

struct LayerName {
  const char* llama;  // after "blk.N."
  const char* hf;     // after "model.layers.N."
};
inline const LayerName* layer_names(std::size_t& n) {
  static const LayerName t[] = {
      {"attn_q", "self_attn.q_proj"},     {"attn_k", "self_attn.k_proj"},      {"attn_v", "self_attn.v_proj"},
      {"attn_qkv", "self_attn.qkv_proj"}, {"attn_output", "self_attn.o_proj"}, {"ffn_gate", "mlp.gate_proj"},
      {"ffn_up", "mlp.up_proj"},          {"ffn_down", "mlp.down_proj"},
  };
  n = sizeof t / sizeof t[0];
  return t;
}

inline bool strip_suffix(std::string& s, const std::string& suffix) {
  if (s.size() < suffix.size() || s.compare(s.size() - suffix.size(), suffix.size(), suffix) != 0) return false;
  s.resize(s.size() - suffix.size());
  return true;
}
inline bool strip_prefix(std::string& s, const std::string& prefix) {
  if (s.compare(0, prefix.size(), prefix) != 0) return false;
  s.erase(0, prefix.size());
  return true;
}

// Splits "N.rest" (N canonical decimal, at most 9 digits) into N and rest.
inline bool split_layer(const std::string& s, std::string& layer, std::string& rest) {
  std::size_t i = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  if (i == 0 || i > 9 || (i > 1 && s[0] == '0') || i >= s.size() || s[i] != '.') return false;
  layer = s.substr(0, i);
  rest = s.substr(i + 1);
  return true;
}

}  // namespace detail

// The Hugging Face module path of a llama.cpp tensor name ("" when the name
// is not one of the table's).
inline std::string llama_to_hf(const std::string& name) {
  std::string s = name, layer, rest;
  if (!detail::strip_suffix(s, ".weight")) return "";
  if (s == "output") return "lm_head";
  if (!detail::strip_prefix(s, "blk.") || !detail::split_layer(s, layer, rest)) return "";
  std::size_t n;
  const detail::LayerName* t = detail::layer_names(n);
  for (std::size_t i = 0; i < n; ++i)
    if (rest == t[i].llama) return "model.layers." + layer + "." + t[i].hf;
  return "";
}

// The llama.cpp tensor name of a Hugging Face module path ("" when the path
// is not one of the table's).
inline std::string hf_to_llama(const std::string& module) {
  std::string s = module, layer, rest;
  detail::strip_suffix(s, ".weight");
  if (s == "lm_head") return "output.weight";
  if (!detail::strip_prefix(s, "model.layers.") || !detail::split_layer(s, layer, rest)) return "";
  std::size_t n;
  const detail::LayerName* t = detail::layer_names(n);
  for (std::size_t i = 0; i < n; ++i)
    if (rest == t[i].hf) return "blk." + layer + "." + t[i].llama + ".weight";
  return "";
}

// The other modules reading the same input as Hugging Face module `module`,
// most similar first: q/k/v (then the fused qkv_proj, or q/k/v of a fused
// qkv_proj) and gate/up of the same layer. Empty for any other module.
inline std::vector<std::string> input_siblings(const std::string& module) {
  std::string s = module, layer, rest;
  detail::strip_suffix(s, ".weight");
  if (!detail::strip_prefix(s, "model.layers.") || !detail::split_layer(s, layer, rest)) return {};
  const std::string p = "model.layers." + layer + ".";
  std::vector<std::string> group;
  if (rest == "self_attn.q_proj" || rest == "self_attn.k_proj" || rest == "self_attn.v_proj" ||
      rest == "self_attn.qkv_proj")
    group = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.qkv_proj"};
  else if (rest == "mlp.gate_proj" || rest == "mlp.up_proj")
    group = {"mlp.gate_proj", "mlp.up_proj"};
  std::vector<std::string> out;
  for (const std::string& g : group)
    if (g != rest) out.push_back(p + g);
  return out;
}

}  // namespace io
}  // namespace loftq

#pragma once
// Small llama models in GGUF for llama.cpp to run: width 256 (whole K
// super-blocks), vocabulary 256, LLM-like weights (common/matrices.hpp: a
// decaying spectrum, Student-t noise, a few outlier input columns, std
// 1 / sqrt(in)), norms of ones, the classifier tied to embeddings of std 0.1
// unless the shape asks for output.weight: a few nats of next-token entropy.

#include "common/gguf_layout.hpp"
#include "common/matrices.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace llama_check {

// A llama of width 256 and vocabulary 256 with realistic weights (seeded in
// tensor order), FFN width `hidden`; tied: no output.weight.
struct SynthShape {
  const char* name;
  std::uint32_t hidden, layers, heads, heads_kv;
  bool tied;
};

inline int write_synth(const std::string& out, const SynthShape& s) {
  const std::uint32_t dim = 256, hidden = s.hidden, layers = s.layers, heads = s.heads, heads_kv = s.heads_kv,
                      vocab = 256, kv_dim = dim / heads * heads_kv;
  gguf_layout::Builder b;
  b.add_string("general.architecture", "llama");
  b.add_string("general.name", s.name);
  b.add_u32("general.file_type", 0);
  b.add_u32("llama.block_count", layers);
  b.add_u32("llama.context_length", 256);
  b.add_u32("llama.embedding_length", dim);
  b.add_u32("llama.feed_forward_length", hidden);
  b.add_u32("llama.attention.head_count", heads);
  b.add_u32("llama.attention.head_count_kv", heads_kv);
  b.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  b.add_u32("llama.vocab_size", vocab);
  b.add_string("tokenizer.ggml.model", "none");
  std::uint64_t seed = 1;
  auto mat = [&](const std::string& name, std::uint32_t rows, std::uint32_t cols, double std) {
    loftq_common::RealisticSpec spec;
    spec.target_std = std;
    const loftq_common::RowMatrixXf W = loftq_common::realistic_matrix(rows, cols, seed++, spec);
    b.add_tensor(
        name, {cols, rows}, gguf_layout::F32,
        gguf_layout::Builder::encode_floats(std::vector<float>(W.data(), W.data() + W.size()), gguf_layout::F32));
  };
  auto ones = [&](const std::string& name) {
    b.add_tensor(name, {dim}, gguf_layout::F32,
                 gguf_layout::Builder::encode_floats(std::vector<float>(dim, 1.0f), gguf_layout::F32));
  };
  mat("token_embd.weight", vocab, dim, 0.1);
  for (std::uint32_t l = 0; l < layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    ones(p + "attn_norm.weight");
    mat(p + "attn_q.weight", dim, dim, 1 / 16.0);
    mat(p + "attn_k.weight", kv_dim, dim, 1 / 16.0);
    mat(p + "attn_v.weight", kv_dim, dim, 1 / 16.0);
    mat(p + "attn_output.weight", dim, dim, 1 / 16.0);
    ones(p + "ffn_norm.weight");
    mat(p + "ffn_gate.weight", hidden, dim, 1 / 16.0);
    mat(p + "ffn_down.weight", dim, hidden, 1 / std::sqrt(static_cast<double>(hidden)));
    mat(p + "ffn_up.weight", hidden, dim, 1 / 16.0);
  }
  ones("output_norm.weight");
  if (!s.tied) mat("output.weight", vocab, dim, 1 / 16.0);
  b.write(out);
  return 0;
}

}  // namespace llama_check

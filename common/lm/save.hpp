#pragma once
// Writing a LLaMA-architecture model and token ids as files loftq's tool
// reads: the inverse of load.hpp for the Hugging Face layout, and the
// N x T int32 .npy that `loftq calibrate --tokens` takes. The tests write
// checkpoints with it, and the fine-tuning harness drives the tool through
// these files.

#include <loftq/error.hpp>
#include <loftq/io/safetensors.hpp>

#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common/llama2c.hpp"
#include "common/lm/model.hpp"

namespace lm {

// transformers' convert_llama_weights_to_hf.py:
//   permute(w, n_heads) = w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)
// written with the same index arithmetic: element [h][p][j][:] of the view
// moves to [h][j][p][:]. formats.hpp's unpermute_rotary is its inverse.
inline RowMat hf_permute(const Mat<float>& w, int n_heads) {
  const Eigen::Index dim1 = w.rows(), half = dim1 / n_heads / 2;
  RowMat out(dim1, w.cols());
  for (Eigen::Index h = 0; h < n_heads; ++h)
    for (Eigen::Index p = 0; p < half; ++p)
      for (Eigen::Index j = 0; j < 2; ++j) out.row((h * 2 + j) * half + p) = w.row((h * half + p) * 2 + j);
  return out;
}

// A Hugging Face checkpoint of `w` in `dir` (which must exist): config.json
// and model.safetensors, or with shards = 2 two shards and
// model.safetensors.index.json, tensors alternating between them.
inline void write_hf_checkpoint(const Weights<float>& w, const std::string& dir,
                                loftq::io::Dtype dtype = loftq::io::Dtype::F32, int shards = 1) {
  if (shards != 1 && shards != 2)
    throw loftq::Error(loftq::Errc::invalid_argument, "write_hf_checkpoint: shards must be 1 or 2");
  const Config& c = w.config;
  {
    std::ofstream cfg(dir + "/config.json");
    cfg << "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_act\": \"silu\","
        << " \"hidden_size\": " << c.dim << ", \"intermediate_size\": " << c.hidden_dim
        << ", \"num_hidden_layers\": " << c.n_layers << ", \"num_attention_heads\": " << c.n_heads
        << ", \"num_key_value_heads\": " << c.n_kv_heads << ", \"vocab_size\": " << c.vocab_size
        << ", \"max_position_embeddings\": " << c.seq_len << ", \"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0,"
        << " \"tie_word_embeddings\": " << (c.shared_classifier ? "true" : "false")
        << ", \"torch_dtype\": \"float32\"}";
    if (!cfg.flush()) throw loftq::Error(loftq::Errc::io_error, dir + "/config.json: cannot write");
  }
  std::vector<std::pair<std::string, RowMat>> t;
  t.push_back({"model.embed_tokens.weight", w.embedding});
  for (int l = 0; l < c.n_layers; ++l) {
    const auto& lw = w.layers[static_cast<std::size_t>(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.push_back({p + "input_layernorm.weight", RowMat(lw.rms_att)});
    t.push_back({p + "post_attention_layernorm.weight", RowMat(lw.rms_ffn)});
    t.push_back({p + "self_attn.q_proj.weight", hf_permute(lw.W[kQ], c.n_heads)});
    t.push_back({p + "self_attn.k_proj.weight", hf_permute(lw.W[kK], c.n_kv_heads)});
    t.push_back({p + "self_attn.v_proj.weight", lw.W[kV]});
    t.push_back({p + "self_attn.o_proj.weight", lw.W[kO]});
    t.push_back({p + "mlp.gate_proj.weight", lw.W[kGate]});
    t.push_back({p + "mlp.up_proj.weight", lw.W[kUp]});
    t.push_back({p + "mlp.down_proj.weight", lw.W[kDown]});
  }
  t.push_back({"model.norm.weight", RowMat(w.rms_final)});
  if (!c.shared_classifier) t.push_back({"lm_head.weight", w.classifier});
  const std::vector<std::string> shard =
      shards == 1 ? std::vector<std::string>{"model.safetensors"}
                  : std::vector<std::string>{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
  nlohmann::json map = nlohmann::json::object();
  for (int s = 0; s < shards; ++s) {
    std::vector<loftq::io::TensorDecl> decl;
    for (std::size_t i = 0; i < t.size(); ++i) {
      if (static_cast<int>(i % static_cast<std::size_t>(shards)) != s) continue;
      const bool vec = t[i].second.cols() == 1;
      decl.push_back({t[i].first, dtype,
                      vec ? std::vector<std::uint64_t>{static_cast<std::uint64_t>(t[i].second.rows())}
                          : std::vector<std::uint64_t>{static_cast<std::uint64_t>(t[i].second.rows()),
                                                       static_cast<std::uint64_t>(t[i].second.cols())}});
      map[t[i].first] = shard[static_cast<std::size_t>(s)];
    }
    loftq::io::SafetensorsWriter wr(dir + "/" + shard[static_cast<std::size_t>(s)], decl);
    for (std::size_t i = 0; i < t.size(); ++i)
      if (static_cast<int>(i % static_cast<std::size_t>(shards)) == s)
        wr.write_float(t[i].first, t[i].second.data(), static_cast<std::uint64_t>(t[i].second.size()), dtype);
    wr.commit();
  }
  if (shards == 2) {
    std::ofstream idx(dir + "/model.safetensors.index.json");
    idx << nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", map}}.dump();
    if (!idx.flush()) throw loftq::Error(loftq::Errc::io_error, dir + "/model.safetensors.index.json: cannot write");
  }
}

// Token ids as the N x T int32 C-order .npy (format 1.0) that
// `loftq calibrate --tokens` and load.hpp's read_tokens take. Every
// sequence must have the same length.
inline void write_tokens_npy(const std::string& path, const std::vector<std::vector<int>>& seqs) {
  const std::size_t n = seqs.size(), T = n ? seqs[0].size() : 0;
  for (const auto& s : seqs)
    if (s.size() != T) throw loftq::Error(loftq::Errc::invalid_argument, path + ": sequences of unequal length");
  std::string header =
      "{'descr': '<i4', 'fortran_order': False, 'shape': (" + std::to_string(n) + ", " + std::to_string(T) + "), }";
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::string bytes("\x93NUMPY\x01\x00", 8);
  bytes += static_cast<char>(header.size() & 0xff);
  bytes += static_cast<char>(header.size() >> 8);
  bytes += header;
  for (const auto& s : seqs)
    for (int v : s) {
      const std::uint32_t u = static_cast<std::uint32_t>(v);
      for (int k = 0; k < 4; ++k) bytes += static_cast<char>((u >> (8 * k)) & 0xff);
    }
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f.flush()) throw loftq::Error(loftq::Errc::io_error, path + ": cannot write");
}

}  // namespace lm

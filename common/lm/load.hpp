#pragma once
// Loading a LLaMA-architecture model into lm::Weights<float> from the three
// formats calibration takes, and calibration token ids from a .npy file:
//   llama2.c   a .bin checkpoint (common/llama2c.hpp's reader)
//   Hugging Face  a directory with config.json and model.safetensors (or a
//              sharded set with model.safetensors.index.json); F32/F16/BF16
//   GGUF       llama.cpp's llama architecture; F32/F16/BF16 and the quantized
//              types of loftq/io/ggml_dequantize.hpp
//
// Rotary embeddings: this forward (as llama2.c's run.c and llama.cpp) rotates
// interleaved pairs (2p, 2p+1) of each head; transformers rotates halves
// (p, p + head_size/2). transformers' convert_llama_weights_to_hf.py
// reorders the rows of q_proj and k_proj within each head to match,
//   permute(w, n_heads) = w.view(n_heads, head_size/2, 2, in).transpose(1, 2).reshape(out, in),
// i.e. Hugging Face row h*hs + j*hs/2 + p holds original row h*hs + 2p + j.
// Loading a Hugging Face checkpoint applies the inverse to q (n_heads) and
// k (n_kv_heads). GGUF files keep the interleaved order (llama.cpp's
// converter undoes the permutation), so they are read as they are.
//
// Files are untrusted: every shape is checked against the configuration,
// every weight must be finite, and each defect is a loftq::Error naming the
// path and the tensor.

#include <loftq/error.hpp>
#include <loftq/io/gguf.hpp>
#include <loftq/io/npy.hpp>
#include <loftq/io/safetensors.hpp>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "common/llama2c.hpp"
#include "common/lm/model.hpp"

namespace lm {

namespace detail {

using RowMatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

inline void require_finite(const RowMatF& M, const std::string& path, const std::string& tensor) {
  if (!M.allFinite()) throw loftq::Error(loftq::Errc::non_finite, path + ": tensor '" + tensor + "' holds NaN or Inf");
}

inline void require_shape(const RowMatF& M, Eigen::Index rows, Eigen::Index cols, const std::string& path,
                          const std::string& tensor) {
  if (M.rows() != rows || M.cols() != cols)
    bad(path, "tensor '" + tensor + "' is " + std::to_string(M.rows()) + " x " + std::to_string(M.cols()) +
                  ", expected " + std::to_string(rows) + " x " + std::to_string(cols));
}

// The inverse of convert_llama_weights_to_hf.py's permute: Hugging Face's
// half-split rows of each head back to interleaved pairs.
inline Mat<float> unpermute_rotary(const RowMatF& hf, int heads) {
  const Eigen::Index out = hf.rows(), hs = out / heads, half = hs / 2;
  Mat<float> W(out, hf.cols());
  for (Eigen::Index h = 0; h < heads; ++h)
    for (Eigen::Index p = 0; p < half; ++p)
      for (Eigen::Index j = 0; j < 2; ++j) W.row(h * hs + 2 * p + j) = hf.row(h * hs + j * half + p);
  return W;
}

// A config.json field: an integer in 1..kMaxDim, or `fallback` when absent
// (a negative fallback makes the field required).
inline int json_dim(const nlohmann::json& j, const char* key, long long fallback, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) {
    if (fallback < 0) bad(path, std::string("config.json has no '") + key + "'");
    return static_cast<int>(fallback);
  }
  const auto& v = j[key];
  if (!v.is_number_integer() || v.get<long long>() < 1 || v.get<long long>() > kMaxDim)
    bad(path, std::string("config.json: '") + key + "' must be an integer in 1.." + std::to_string(kMaxDim));
  return static_cast<int>(v.get<long long>());
}

inline double json_positive(const nlohmann::json& j, const char* key, double fallback, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  const auto& v = j[key];
  if (!v.is_number() || !(v.get<double>() > 0) || !std::isfinite(v.get<double>()))
    bad(path, std::string("config.json: '") + key + "' must be a positive number");
  return v.get<double>();
}

inline bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace detail

// Reads config.json into a Config (shared by the loader and its tests).
inline Config parse_hf_config(const std::string& text, const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    detail::bad(path, std::string("config.json is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) detail::bad(path, "config.json is not a JSON object");
  auto unsupported = [&](const std::string& what) { throw loftq::Error(loftq::Errc::unsupported, path + ": " + what); };
  if (j.contains("model_type") && j["model_type"].is_string()) {
    const std::string t = j["model_type"].get<std::string>();
    if (t != "llama" && t != "mistral")
      unsupported("model_type '" + t + "' is not a LLaMA-architecture model (llama, mistral)");
  }
  if (j.contains("hidden_act") && j["hidden_act"] != "silu") unsupported("hidden_act must be silu");
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) unsupported("rope_scaling is not supported");
  for (const char* b : {"attention_bias", "mlp_bias"})
    if (j.contains(b) && j[b] == true) unsupported(std::string(b) + " is not supported");
  Config c;
  c.dim = detail::json_dim(j, "hidden_size", -1, path);
  c.hidden_dim = detail::json_dim(j, "intermediate_size", -1, path);
  c.n_layers = detail::json_dim(j, "num_hidden_layers", -1, path);
  c.n_heads = detail::json_dim(j, "num_attention_heads", -1, path);
  c.n_kv_heads = detail::json_dim(j, "num_key_value_heads", c.n_heads, path);
  c.vocab_size = detail::json_dim(j, "vocab_size", -1, path);
  // No limit when absent: the rotary embedding itself has none.
  c.seq_len = detail::json_dim(j, "max_position_embeddings", detail::kMaxDim, path);
  c.rms_eps = detail::json_positive(j, "rms_norm_eps", 1e-6, path);  // LlamaConfig's default
  c.rope_theta = detail::json_positive(j, "rope_theta", 10000.0, path);
  c.shared_classifier = j.contains("tie_word_embeddings") && j["tie_word_embeddings"] == true;
  detail::check_config(c, path);
  if (j.contains("head_dim") && !j["head_dim"].is_null() && j["head_dim"] != c.head_size())
    unsupported("head_dim differs from hidden_size / num_attention_heads");
  return c;
}

// A Hugging Face LLaMA/Mistral checkpoint directory (config.json plus
// model.safetensors or model.safetensors.index.json and its shards).
inline Weights<float> read_hf_checkpoint(const std::string& dir) {
  const std::string cfg_path = (!dir.empty() && dir.back() == '/' ? dir : dir + "/") + "config.json";
  std::ifstream f(cfg_path, std::ios::binary);
  if (!f) throw loftq::Error(loftq::Errc::io_error, cfg_path + ": cannot open");
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  Weights<float> w;
  w.config = parse_hf_config(text, cfg_path);
  const Config& c = w.config;
  const loftq::io::Checkpoint ck(dir);
  auto matrix = [&](const std::string& name, Eigen::Index rows, Eigen::Index cols) {
    const auto it = ck.entries().find(name);
    if (it == ck.entries().end()) detail::bad(dir, "tensor '" + name + "' is missing");
    const auto& file = ck.file(it->second.file);
    detail::RowMatF M;
    if (it->second.info->shape.size() == 1 && cols == 1) {
      const std::vector<float> v = file.read_float(*it->second.info);
      M = Eigen::Map<const detail::RowMatF>(v.data(), static_cast<Eigen::Index>(v.size()), 1);
    } else {
      M = file.read_matrix(*it->second.info);
    }
    detail::require_shape(M, rows, cols, file.path(), name);
    detail::require_finite(M, file.path(), name);
    return M;
  };
  const int d = c.dim, h = c.hidden_dim, kv = c.kv_dim();
  w.embedding = matrix("model.embed_tokens.weight", c.vocab_size, d);
  w.layers.resize(static_cast<std::size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights<float>& lw = w.layers[static_cast<std::size_t>(l)];
    lw.rms_att = matrix(p + "input_layernorm.weight", d, 1);
    lw.rms_ffn = matrix(p + "post_attention_layernorm.weight", d, 1);
    lw.W[kQ] = detail::unpermute_rotary(matrix(p + "self_attn.q_proj.weight", d, d), c.n_heads);
    lw.W[kK] = detail::unpermute_rotary(matrix(p + "self_attn.k_proj.weight", kv, d), c.n_kv_heads);
    lw.W[kV] = matrix(p + "self_attn.v_proj.weight", kv, d);
    lw.W[kO] = matrix(p + "self_attn.o_proj.weight", d, d);
    lw.W[kGate] = matrix(p + "mlp.gate_proj.weight", h, d);
    lw.W[kUp] = matrix(p + "mlp.up_proj.weight", h, d);
    lw.W[kDown] = matrix(p + "mlp.down_proj.weight", d, h);
  }
  w.rms_final = matrix("model.norm.weight", d, 1);
  // Tied checkpoints usually omit lm_head; an untied one must have it.
  if (!c.shared_classifier) w.classifier = matrix("lm_head.weight", c.vocab_size, d);
  return w;
}

namespace detail {

inline std::uint64_t gguf_uint(const loftq::io::GgufFile& g, const std::string& key, bool required,
                               std::uint64_t fallback) {
  using T = loftq::io::GgufValueType;
  const loftq::io::GgufKV* kv = g.find_kv(key);
  if (!kv) {
    if (required) bad(g.path(), "key '" + key + "' is missing");
    return fallback;
  }
  std::uint64_t v = 0;
  std::int64_t s = 0;
  switch (kv->type) {
    case T::UINT8:
    case T::UINT16:
    case T::UINT32:
    case T::UINT64:
      v = loftq::io::detail::get_le(kv->value.data(), static_cast<int>(kv->value.size()));
      break;
    case T::INT8:
    case T::INT16:
    case T::INT32:
    case T::INT64: {
      const int n = static_cast<int>(kv->value.size());
      const std::uint64_t u = loftq::io::detail::get_le(kv->value.data(), n);
      s = n == 8 ? static_cast<std::int64_t>(u)
                 : static_cast<std::int64_t>(u << (64 - 8 * n)) >> (64 - 8 * n);  // sign-extend
      if (s < 0) bad(g.path(), "key '" + key + "' is negative");
      v = static_cast<std::uint64_t>(s);
      break;
    }
    default:
      bad(g.path(), "key '" + key + "' is not an integer");
  }
  if (v < 1 || v > static_cast<std::uint64_t>(kMaxDim))
    bad(g.path(), "key '" + key + "' = " + std::to_string(v) + " is out of range");
  return v;
}

inline double gguf_float(const loftq::io::GgufFile& g, const std::string& key, double fallback) {
  using T = loftq::io::GgufValueType;
  const loftq::io::GgufKV* kv = g.find_kv(key);
  if (!kv) return fallback;
  double v = 0;
  if (kv->type == T::FLOAT32) {
    const std::uint32_t bits = static_cast<std::uint32_t>(loftq::io::detail::get_le(kv->value.data(), 4));
    float f;
    std::memcpy(&f, &bits, 4);
    v = f;
  } else if (kv->type == T::FLOAT64) {
    const std::uint64_t bits = loftq::io::detail::get_le(kv->value.data(), 8);
    std::memcpy(&v, &bits, 8);
  } else {
    bad(g.path(), "key '" + key + "' is not a float");
  }
  if (!(v > 0) || !std::isfinite(v)) bad(g.path(), "key '" + key + "' must be a positive number");
  return v;
}

// Any tensor of a type ggml_dequantize knows as floats, in ggml's element
// order (ne[0] fastest), each element as ggml's dequantize_row_* gives it.
inline std::vector<float> gguf_floats(const loftq::io::GgufFile& g, const loftq::io::GgufTensorInfo& t) {
  if (!loftq::io::ggml_can_dequantize(t.type))
    throw loftq::Error(loftq::Errc::unsupported, g.path() + ": tensor '" + t.name + "' has type " +
                                                     loftq::io::GgufFile::type_name(t.type) +
                                                     ", which cannot be read as floats");
  std::vector<unsigned char> bytes(static_cast<std::size_t>(t.nbytes));
  g.read_bytes(t, 0, t.nbytes, bytes.data());
  return loftq::io::ggml_dequantize(t.type, bytes.data(), bytes.size(), t.numel);
}

}  // namespace detail

// A GGUF file of llama.cpp's llama architecture.
inline Weights<float> read_gguf_model(const std::string& path) {
  const loftq::io::GgufFile g(path);
  std::string arch;
  if (!g.string_value("general.architecture", arch)) detail::bad(path, "general.architecture is missing");
  if (arch != "llama")
    throw loftq::Error(loftq::Errc::unsupported, path + ": architecture '" + arch + "' is not llama");
  const loftq::io::GgufTensorInfo* emb = g.find("token_embd.weight");
  if (!emb) detail::bad(path, "tensor 'token_embd.weight' is missing");
  if (emb->ne.size() != 2) detail::bad(path, "tensor 'token_embd.weight' is not 2-D");
  Weights<float> w;
  Config& c = w.config;
  c.dim = static_cast<int>(detail::gguf_uint(g, "llama.embedding_length", true, 0));
  c.hidden_dim = static_cast<int>(detail::gguf_uint(g, "llama.feed_forward_length", true, 0));
  c.n_layers = static_cast<int>(detail::gguf_uint(g, "llama.block_count", true, 0));
  c.n_heads = static_cast<int>(detail::gguf_uint(g, "llama.attention.head_count", true, 0));
  c.n_kv_heads = static_cast<int>(detail::gguf_uint(g, "llama.attention.head_count_kv", false, c.n_heads));
  c.seq_len = static_cast<int>(detail::gguf_uint(g, "llama.context_length", false, detail::kMaxDim));
  if (emb->ne[1] < 1 || emb->ne[1] > static_cast<std::uint64_t>(detail::kMaxDim))
    detail::bad(path, "token_embd.weight's vocabulary is out of range");
  c.vocab_size = static_cast<int>(emb->ne[1]);
  if (!g.find_kv("llama.attention.layer_norm_rms_epsilon"))
    detail::bad(path, "key 'llama.attention.layer_norm_rms_epsilon' is missing");
  c.rms_eps = detail::gguf_float(g, "llama.attention.layer_norm_rms_epsilon", 0);
  c.rope_theta = detail::gguf_float(g, "llama.rope.freq_base", 10000.0);
  c.shared_classifier = g.find("output.weight") == nullptr;
  detail::check_config(c, path);
  if (g.find_kv("llama.rope.dimension_count") &&
      detail::gguf_uint(g, "llama.rope.dimension_count", true, 0) != static_cast<std::uint64_t>(c.head_size()))
    throw loftq::Error(loftq::Errc::unsupported, path + ": partial rotary embeddings are not supported");

  auto tensor = [&](const std::string& name, Eigen::Index rows, Eigen::Index cols) {
    const loftq::io::GgufTensorInfo* t = g.find(name);
    if (!t) detail::bad(path, "tensor '" + name + "' is missing");
    // ggml's ne = [in, out] for an (out, in) weight; a vector has ne = [n].
    const bool ok = rows == 1 ? t->ne.size() == 1 && t->ne[0] == static_cast<std::uint64_t>(cols)
                              : t->ne.size() == 2 && t->ne[0] == static_cast<std::uint64_t>(cols) &&
                                    t->ne[1] == static_cast<std::uint64_t>(rows);
    if (!ok) detail::bad(path, "tensor '" + name + "' has the wrong shape");
    const std::vector<float> v = detail::gguf_floats(g, *t);
    detail::RowMatF M = Eigen::Map<const detail::RowMatF>(v.data(), rows, cols);
    detail::require_finite(M, path, name);
    return M;
  };
  auto vector = [&](const std::string& name, Eigen::Index n) { return Vec<float>(tensor(name, 1, n).transpose()); };
  const int d = c.dim, h = c.hidden_dim, kv = c.kv_dim();
  w.embedding = tensor("token_embd.weight", c.vocab_size, d);
  w.layers.resize(static_cast<std::size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights<float>& lw = w.layers[static_cast<std::size_t>(l)];
    lw.rms_att = vector(p + "attn_norm.weight", d);
    lw.rms_ffn = vector(p + "ffn_norm.weight", d);
    lw.W[kQ] = tensor(p + "attn_q.weight", d, d);
    lw.W[kK] = tensor(p + "attn_k.weight", kv, d);
    lw.W[kV] = tensor(p + "attn_v.weight", kv, d);
    lw.W[kO] = tensor(p + "attn_output.weight", d, d);
    lw.W[kGate] = tensor(p + "ffn_gate.weight", h, d);
    lw.W[kUp] = tensor(p + "ffn_up.weight", h, d);
    lw.W[kDown] = tensor(p + "ffn_down.weight", d, h);
  }
  w.rms_final = vector("output_norm.weight", d);
  if (!c.shared_classifier) w.classifier = tensor("output.weight", c.vocab_size, d);
  return w;
}

// By the path: a directory (or a .safetensors file's directory) is a Hugging
// Face checkpoint, *.gguf is GGUF, anything else a llama2.c checkpoint.
inline Weights<float> read_model(const std::string& path) {
  auto ends_with = [&](const char* s) {
    const std::size_t n = std::strlen(s);
    return path.size() >= n && path.compare(path.size() - n, n, s) == 0;
  };
  if (detail::is_directory(path)) return read_hf_checkpoint(path);
  if (ends_with(".gguf")) return read_gguf_model(path);
  if (ends_with(".safetensors")) {
    const std::size_t s = path.find_last_of('/');
    return read_hf_checkpoint(s == std::string::npos ? "." : path.substr(0, s));
  }
  return read_checkpoint(path);
}

// Token ids from a 2-D .npy of int32 or int64 (N sequences x T). Refuses ids
// outside 0..vocab_size-1 and T above the model's seq_len.
inline std::vector<std::vector<int>> read_tokens(const std::string& path, const Config& c) {
  const loftq::io::NpyMatrix<std::int64_t> ids = loftq::io::to_int_matrix(loftq::io::read_npy_integers(path), path);
  if (ids.rows() < 1 || ids.cols() < 1)
    throw loftq::Error(loftq::Errc::invalid_argument, path + ": the token array is empty");
  if (ids.cols() > c.seq_len)
    throw loftq::Error(loftq::Errc::invalid_argument, path + ": sequences of " + std::to_string(ids.cols()) +
                                                          " tokens exceed the model's context of " +
                                                          std::to_string(c.seq_len));
  std::vector<std::vector<int>> seqs(static_cast<std::size_t>(ids.rows()));
  for (Eigen::Index i = 0; i < ids.rows(); ++i) {
    auto& s = seqs[static_cast<std::size_t>(i)];
    s.reserve(static_cast<std::size_t>(ids.cols()));
    for (Eigen::Index t = 0; t < ids.cols(); ++t) {
      const std::int64_t id = ids(i, t);
      if (id < 0 || id >= c.vocab_size)
        throw loftq::Error(loftq::Errc::invalid_argument, path + ": token id " + std::to_string(id) + " (sequence " +
                                                              std::to_string(i) + ", position " + std::to_string(t) +
                                                              ") is outside the vocabulary of " +
                                                              std::to_string(c.vocab_size));
      s.push_back(static_cast<int>(id));
    }
  }
  return seqs;
}

}  // namespace lm

#pragma once
// The three model formats' configurations and tensor conversions, shared by
// the model reader (layer_source.hpp):
//   Hugging Face  config.json (parse_hf_config); F32/F16/BF16 safetensors
//   GGUF       llama.cpp's llama architecture keys (gguf_config); F32/F16/
//              BF16 tensors and the quantized types of loftq/io/ggml_dequantize.hpp,
//              in ggml's element order (gguf_floats)
//   llama2.c   its 28-byte header (common/llama2c.hpp)
//
// Rotary embeddings: this forward (as llama2.c's run.c and llama.cpp) rotates
// interleaved pairs (2p, 2p+1) of each head; transformers rotates halves
// (p, p + head_size/2). transformers' convert_llama_weights_to_hf.py
// reorders the rows of q_proj and k_proj within each head to match,
//   permute(w, n_heads) = w.view(n_heads, head_size/2, 2, in).transpose(1, 2).reshape(out, in),
// i.e. Hugging Face row h*hs + j*hs/2 + p holds original row h*hs + 2p + j.
// Reading a Hugging Face checkpoint applies the inverse (unpermute_rotary) to
// q (n_heads) and k (n_kv_heads). GGUF files keep the interleaved order
// (llama.cpp's converter undoes the permutation), so they are read as they are.

#include <loftq/detail/half.hpp>
#include <loftq/error.hpp>
#include <loftq/io/dtype.hpp>
#include <loftq/io/gguf.hpp>
#include <loftq/io/strict_json.hpp>
#include <loftq/io/ggml_dequantize.hpp>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "common/llama2c.hpp"

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
// Read as the tool reads every JSON file (loftq/io/strict_json.hpp): nesting
// is bounded as in `loftq model`'s reading of config.json, so a hostile file
// cannot build a tree whose copies recurse out of the stack, and duplicate
// keys are refused.
inline Config parse_hf_config(const std::string& text, const std::string& path) {
  const nlohmann::json j = loftq::io::parse_json_strict(text, path, loftq::io::kConfigJsonDepth);
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

inline void require_gguf_float_type(const loftq::io::GgufFile& g, const loftq::io::GgufTensorInfo& t) {
  if (!loftq::io::ggml_can_dequantize(t.type))
    throw loftq::Error(loftq::Errc::unsupported, g.path() + ": tensor '" + t.name + "' has type " +
                                                     loftq::io::GgufFile::type_name(t.type) +
                                                     ", which cannot be read as floats");
}

// Any tensor of a type ggml_dequantize knows as floats, in ggml's element
// order (ne[0] fastest), each element as ggml's dequantize_row_* gives it.
inline std::vector<float> gguf_floats(const loftq::io::GgufFile& g, const loftq::io::GgufTensorInfo& t) {
  require_gguf_float_type(g, t);
  std::vector<unsigned char> bytes(static_cast<std::size_t>(t.nbytes));
  g.read_bytes(t, 0, t.nbytes, bytes.data());
  return loftq::io::ggml_dequantize(t.type, bytes.data(), bytes.size(), t.numel);
}

}  // namespace detail

// The configuration of a GGUF file of llama.cpp's llama architecture.
inline Config gguf_config(const loftq::io::GgufFile& g) {
  const std::string& path = g.path();
  std::string arch;
  if (!g.string_value("general.architecture", arch)) detail::bad(path, "general.architecture is missing");
  if (arch != "llama")
    throw loftq::Error(loftq::Errc::unsupported, path + ": architecture '" + arch + "' is not llama");
  const loftq::io::GgufTensorInfo* emb = g.find("token_embd.weight");
  if (!emb) detail::bad(path, "tensor 'token_embd.weight' is missing");
  if (emb->ne.size() != 2) detail::bad(path, "tensor 'token_embd.weight' is not 2-D");
  Config c;
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
  return c;
}

}  // namespace lm

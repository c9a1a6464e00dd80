// What the tests of the LM calibration and loaders (test_calibrate.cpp,
// test_load.cpp, test_layer_source.cpp) share: the shared data, scratch
// directories, random token sequences, a bitwise comparison of two
// calibrations, and writers of the same weights in GGUF.
#pragma once

#include <doctest/doctest.h>

#include <loftq/detail/half.hpp>
#include <loftq/io/gguf.hpp>
#include <loftq/io/safetensors.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include <unistd.h>

#include "common/llama2c.hpp"
#include "common/lm/calibrate.hpp"

namespace calibrate_test {

namespace fs = std::filesystem;
using lm::Mat;

inline std::string shared(const std::string& name) { return std::string(LOFTQ_SHARED_DATA_DIR) + "/" + name; }
inline bool exists(const std::string& path) { return std::ifstream(path).good(); }

#define REQUIRE_STORIES()                                              \
  if (!exists(shared("stories260K.bin"))) {                            \
    MESSAGE("skipped: " << shared("stories260K.bin") << " is absent"); \
    return;                                                            \
  }

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("loftq_test_calibrate_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

inline std::vector<std::vector<int>> random_sequences(int vocab, const std::vector<int>& lengths, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> id(0, vocab - 1);
  std::vector<std::vector<int>> seqs;
  for (int T : lengths) {
    std::vector<int> s(static_cast<std::size_t>(T));
    for (int& t : s) t = id(rng);
    seqs.push_back(s);
  }
  return seqs;
}

// Bitwise equality of two calibrations' sums.
inline void check_identical(const lm::Calibration& a, const lm::Calibration& b) {
  REQUIRE(a.inputs.size() == b.inputs.size());
  CHECK(a.tokens == b.tokens);
  for (std::size_t i = 0; i < a.inputs.size(); ++i) {
    const auto& x = a.inputs[i].stats;
    const auto& y = b.inputs[i].stats;
    CHECK(x.count() == y.count());
    if (x.mode() == loftq::StatsMode::full)
      CHECK(loftq::detail::StatsAccess::sums(x) == loftq::detail::StatsAccess::sums(y));
    else
      CHECK(loftq::detail::StatsAccess::diagonal_sums(x) == loftq::detail::StatsAccess::diagonal_sums(y));
  }
}

// Relative Frobenius difference of a from b.
inline double rel_diff(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b) { return (a - b).norm() / b.norm(); }

// --- Writers of the same weights in the other formats.

enum class GgufWeights { f32, f16, bf16, q8_0 };

// Q8_0 blocks of a row-major tensor (ggml's quantize_row_q8_0_ref: d =
// amax / 127 stored as fp16, codes round(x / d)).
inline std::vector<unsigned char> q8_0_bytes(const lm::RowMat& M) {
  std::vector<unsigned char> out;
  const float* x = M.data();
  for (Eigen::Index b = 0; b < M.size() / 32; ++b) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    const float d = amax / 127, id = d != 0 ? 1 / d : 0;
    const std::uint16_t h = loftq::detail::float_to_half(d);
    out.push_back(static_cast<unsigned char>(h & 0xff));
    out.push_back(static_cast<unsigned char>(h >> 8));
    for (int j = 0; j < 32; ++j)
      out.push_back(static_cast<unsigned char>(static_cast<std::int8_t>(std::lround(x[b * 32 + j] * id))));
  }
  return out;
}

inline lm::RowMat q8_0_dequant(const lm::RowMat& M) {
  const std::vector<unsigned char> b = q8_0_bytes(M);
  lm::RowMat out(M.rows(), M.cols());
  for (Eigen::Index k = 0; k < M.size(); ++k) {
    const unsigned char* blk = b.data() + (k / 32) * 34;
    const float d = loftq::detail::half_to_float(static_cast<std::uint16_t>(blk[0] | (blk[1] << 8)));
    out.data()[k] = static_cast<float>(static_cast<std::int8_t>(blk[2 + k % 32])) * d;
  }
  return out;
}

// A llama-architecture GGUF of `w` (q and k in the interleaved order, as
// llama.cpp stores them). Matrices whose rows are whole 32-blocks take the
// requested type (Q8_0), everything else F32/F16. `edit` may change the
// tensors before they are written.
using NamedTensors = std::vector<std::pair<std::string, lm::RowMat>>;

inline void write_gguf(const lm::Weights<float>& w, const std::string& path, GgufWeights type,
                       const std::function<void(NamedTensors&)>& edit = {}) {
  using loftq::io::GgmlType;
  const lm::Config& c = w.config;
  std::vector<loftq::io::GgufKV> kvs = {
      loftq::io::gguf_kv_string("general.architecture", "llama"),
      loftq::io::gguf_kv_u32("llama.context_length", static_cast<std::uint32_t>(c.seq_len)),
      loftq::io::gguf_kv_u32("llama.embedding_length", static_cast<std::uint32_t>(c.dim)),
      loftq::io::gguf_kv_u32("llama.feed_forward_length", static_cast<std::uint32_t>(c.hidden_dim)),
      loftq::io::gguf_kv_u32("llama.block_count", static_cast<std::uint32_t>(c.n_layers)),
      loftq::io::gguf_kv_u32("llama.attention.head_count", static_cast<std::uint32_t>(c.n_heads)),
      loftq::io::gguf_kv_u32("llama.attention.head_count_kv", static_cast<std::uint32_t>(c.n_kv_heads)),
      loftq::io::gguf_kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f),
      loftq::io::gguf_kv_f32("llama.rope.freq_base", 10000.0f),
  };
  NamedTensors t;
  t.push_back({"token_embd.weight", w.embedding});
  for (int l = 0; l < c.n_layers; ++l) {
    const auto& lw = w.layers[static_cast<std::size_t>(l)];
    const std::string p = "blk." + std::to_string(l) + ".";
    t.push_back({p + "attn_norm.weight", lm::RowMat(lw.rms_att.transpose())});
    t.push_back({p + "attn_q.weight", lw.W[lm::kQ]});
    t.push_back({p + "attn_k.weight", lw.W[lm::kK]});
    t.push_back({p + "attn_v.weight", lw.W[lm::kV]});
    t.push_back({p + "attn_output.weight", lw.W[lm::kO]});
    t.push_back({p + "ffn_norm.weight", lm::RowMat(lw.rms_ffn.transpose())});
    t.push_back({p + "ffn_gate.weight", lw.W[lm::kGate]});
    t.push_back({p + "ffn_up.weight", lw.W[lm::kUp]});
    t.push_back({p + "ffn_down.weight", lw.W[lm::kDown]});
  }
  t.push_back({"output_norm.weight", lm::RowMat(w.rms_final.transpose())});
  if (!c.shared_classifier) t.push_back({"output.weight", w.classifier});
  if (edit) edit(t);  // a defective file
  std::vector<loftq::io::GgufTensorDecl> decl;
  std::vector<GgmlType> types;
  for (const auto& [name, M] : t) {
    const bool vec = M.rows() == 1;
    GgmlType ty = type == GgufWeights::f16 ? GgmlType::F16 : type == GgufWeights::bf16 ? GgmlType::BF16 : GgmlType::F32;
    if (type == GgufWeights::q8_0 && !vec && M.cols() % 32 == 0) ty = GgmlType::Q8_0;
    types.push_back(ty);
    decl.push_back(
        {name,
         vec ? std::vector<std::uint64_t>{static_cast<std::uint64_t>(M.cols())}
             : std::vector<std::uint64_t>{static_cast<std::uint64_t>(M.cols()), static_cast<std::uint64_t>(M.rows())},
         static_cast<std::uint32_t>(ty)});
  }
  loftq::io::GgufWriter wr(path, kvs, decl);
  for (std::size_t i = 0; i < t.size(); ++i) {
    const lm::RowMat& M = t[i].second;
    std::vector<unsigned char> bytes;
    if (types[i] == GgmlType::Q8_0) {
      bytes = q8_0_bytes(M);
    } else if (types[i] == GgmlType::F16) {
      for (Eigen::Index k = 0; k < M.size(); ++k) {
        const std::uint16_t h = loftq::detail::float_to_half(M.data()[k]);
        bytes.push_back(static_cast<unsigned char>(h & 0xff));
        bytes.push_back(static_cast<unsigned char>(h >> 8));
      }
    } else if (types[i] == GgmlType::BF16) {
      bytes.resize(static_cast<std::size_t>(M.size()) * 2);
      loftq::io::from_float(loftq::io::Dtype::BF16, M.data(), static_cast<std::size_t>(M.size()), bytes.data());
    } else {
      bytes.resize(static_cast<std::size_t>(M.size()) * 4);
      std::memcpy(bytes.data(), M.data(), bytes.size());
    }
    wr.write(t[i].first, bytes.data(), bytes.size());
  }
  wr.commit();
}

// `w` with every tensor rounded through a 16-bit storage type.
inline lm::Weights<float> rounded(const lm::Weights<float>& w, loftq::io::Dtype d) {
  auto r = [&](auto& M) {
    std::vector<unsigned char> b(static_cast<std::size_t>(M.size()) * 2);
    loftq::io::from_float(d, M.data(), static_cast<std::size_t>(M.size()), b.data());
    loftq::io::to_float(d, b.data(), static_cast<std::size_t>(M.size()), M.data());
  };
  lm::Weights<float> o = w;
  r(o.embedding);
  r(o.rms_final);
  if (!o.config.shared_classifier) r(o.classifier);
  for (auto& lw : o.layers) {
    r(lw.rms_att);
    r(lw.rms_ffn);
    for (auto& M : lw.W) r(M);
  }
  return o;
}

}  // namespace calibrate_test

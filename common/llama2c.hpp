#pragma once
// llama2.c "version 0" checkpoints: a 7 x int32 header, then float32 arrays.
// The one reader of the format in the project: the LM (common/lm/), the
// tools, the tests and the benchmarks all take their llama2.c weights here.
//
// The file is untrusted input: every header field is range-checked, every
// size is computed in 64-bit with overflow checks, and the file must hold
// exactly the bytes the header implies (llama2.c's own reader trusts the
// header and maps whatever is there).

#include <loftq/error.hpp>

#include <Eigen/Core>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace lm {

template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <class S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

struct Config {
  int dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0, seq_len = 0;
  bool shared_classifier = true;
  // Not in llama2.c's header: run.c's constants, which other formats override.
  double rms_eps = 1e-5;
  double rope_theta = 10000.0;
  int head_size() const { return dim / n_heads; }
  int kv_dim() const { return dim / n_heads * n_kv_heads; }
};

// The seven linear kinds LoRA can target, in PEFT's module names.
enum Kind { kQ = 0, kK, kV, kO, kGate, kUp, kDown, kKinds };
inline const char* kind_name(int k) {
  static const char* names[kKinds] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  return names[k];
}
// (out_features, in_features) of each kind.
inline std::array<int, 2> kind_shape(const Config& c, int k) {
  switch (k) {
    case kQ:
    case kO:
      return {c.dim, c.dim};
    case kK:
    case kV:
      return {c.kv_dim(), c.dim};
    case kGate:
    case kUp:
      return {c.hidden_dim, c.dim};
    default:
      return {c.dim, c.hidden_dim};
  }
}

template <class S>
struct LayerWeights {
  Vec<S> rms_att, rms_ffn;
  std::array<Mat<S>, kKinds> W;  // PyTorch layout, out x in; replaceable (e.g. by a quantized Q)
};

template <class S>
struct Weights {
  Config config;
  Mat<S> embedding;   // vocab x dim
  Mat<S> classifier;  // vocab x dim; empty when shared with the embedding
  std::vector<LayerWeights<S>> layers;
  Vec<S> rms_final;

  const Mat<S>& output_matrix() const { return config.shared_classifier ? embedding : classifier; }

  template <class T>
  Weights<T> cast() const {
    Weights<T> o;
    o.config = config;
    o.embedding = embedding.template cast<T>();
    o.classifier = classifier.template cast<T>();
    o.rms_final = rms_final.template cast<T>();
    o.layers.resize(layers.size());
    for (std::size_t l = 0; l < layers.size(); ++l) {
      o.layers[l].rms_att = layers[l].rms_att.template cast<T>();
      o.layers[l].rms_ffn = layers[l].rms_ffn.template cast<T>();
      for (int k = 0; k < kKinds; ++k) o.layers[l].W[k] = layers[l].W[k].template cast<T>();
    }
    return o;
  }
};

namespace detail {

[[noreturn]] inline void bad(const std::string& name, const std::string& msg) {
  throw loftq::Error(loftq::Errc::parse_error, name + ": " + msg);
}

// Upper bound on any header dimension: far above any llama2.c model, low
// enough that products of a few of them cannot overflow 64 bits.
constexpr std::int64_t kMaxDim = std::int64_t{1} << 24;

inline void check_config(const Config& c, const std::string& name) {
  auto field = [&](const char* f, std::int64_t v) {
    if (v < 1 || v > kMaxDim)
      bad(name, std::string("header field ") + f + " = " + std::to_string(v) + " is out of range");
  };
  field("dim", c.dim);
  field("hidden_dim", c.hidden_dim);
  field("n_layers", c.n_layers);
  field("n_heads", c.n_heads);
  field("n_kv_heads", c.n_kv_heads);
  field("vocab_size", c.vocab_size);
  field("seq_len", c.seq_len);
  if (c.dim % c.n_heads != 0) bad(name, "dim is not a multiple of n_heads");
  if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads != 0) bad(name, "n_heads is not a multiple of n_kv_heads");
  if (c.head_size() % 2 != 0) bad(name, "head_size (dim / n_heads) must be even for rotary embeddings");
}

// Where each array starts, in floats after the header, in the file's order
// (token_embedding, then every layer's rms_att, every wq, ...), and the total.
struct Layout {
  std::uint64_t embedding = 0, rms_att = 0, wq = 0, wk = 0, wv = 0, wo = 0, rms_ffn = 0, w1 = 0, w2 = 0, w3 = 0,
                rms_final = 0, freq_cis = 0, classifier = 0, total = 0;
};

// The layout, or a parse error when the sizes overflow.
inline Layout layout(const Config& c, const std::string& name) {
  const std::uint64_t d = c.dim, h = c.hidden_dim, L = c.n_layers, V = c.vocab_size, kv = c.kv_dim(),
                      hs = c.head_size(), T = c.seq_len;
  // Each term is below 2^24 * 2^24 * 2^24 = 2^72 only in theory; check as we go.
  Layout o;
  auto add = [&](std::uint64_t& at, std::uint64_t a, std::uint64_t b, std::uint64_t cc) {
    const std::uint64_t lim = std::uint64_t{1} << 62;
    if (a > lim / b || a * b > lim / cc) bad(name, "array sizes overflow");
    const std::uint64_t t = a * b * cc;
    if (t > lim - o.total) bad(name, "array sizes overflow");
    at = o.total;
    o.total += t;
  };
  add(o.embedding, V, d, 1);
  add(o.rms_att, L, d, 1);
  add(o.wq, L, d, d);
  add(o.wk, L, kv, d);
  add(o.wv, L, kv, d);
  add(o.wo, L, d, d);
  add(o.rms_ffn, L, d, 1);
  add(o.w1, L, h, d);
  add(o.w2, L, d, h);
  add(o.w3, L, h, d);
  add(o.rms_final, d, 1, 1);
  add(o.freq_cis, T, hs / 2, 2);  // freq_cis_real, freq_cis_imag
  if (!c.shared_classifier) add(o.classifier, V, d, 1);
  return o;
}

// Element count of everything after the header, or a parse error on overflow.
inline std::uint64_t payload_floats(const Config& c, const std::string& name) { return layout(c, name).total; }

constexpr std::size_t kHeaderBytes = 7 * sizeof(std::int32_t);

// The configuration from the header (kHeaderBytes at `header`, read only when
// the file has that many), checked against the file's size.
inline Config parse_header(const unsigned char* header, std::uint64_t file_size, const std::string& name) {
  if (file_size < kHeaderBytes)
    bad(name, "file has " + std::to_string(file_size) + " bytes, shorter than the 28-byte header");
  std::int32_t h[7];
  std::memcpy(h, header, kHeaderBytes);  // little-endian hosts only, like llama2.c
  Config c;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  // A negative vocab_size flags a separate classifier; INT32_MIN has no magnitude.
  if (h[5] == INT32_MIN) bad(name, "header field vocab_size is out of range");
  c.shared_classifier = h[5] > 0;
  c.vocab_size = h[5] < 0 ? -h[5] : h[5];
  c.seq_len = h[6];
  check_config(c, name);
  const std::uint64_t n = payload_floats(c, name);
  const std::uint64_t have = file_size - kHeaderBytes;
  if (have % 4 != 0 || have / 4 != n)
    bad(name, "file has " + std::to_string(file_size) + " bytes, but its header implies " +
                  std::to_string(kHeaderBytes + 4 * n) + (have / 4 < n ? " (truncated)" : " (trailing bytes)"));
  return c;
}

}  // namespace detail

// Parses a checkpoint image (the whole file's bytes). `name` labels messages.
inline Weights<float> parse_checkpoint(const std::vector<unsigned char>& bytes, const std::string& name = "<memory>") {
  const Config c = detail::parse_header(bytes.data(), bytes.size(), name);
  const unsigned char* p = bytes.data() + detail::kHeaderBytes;
  auto take = [&](Eigen::Index count) {
    std::vector<float> v(static_cast<std::size_t>(count));
    std::memcpy(v.data(), p, v.size() * sizeof(float));
    p += v.size() * sizeof(float);
    for (float x : v)
      if (!std::isfinite(x)) throw loftq::Error(loftq::Errc::non_finite, name + ": a weight is NaN or Inf");
    return v;
  };
  // Row-major (out, in) arrays into column-major Eigen matrices.
  auto matrix = [&](Eigen::Index rows, Eigen::Index cols) {
    const std::vector<float> v = take(rows * cols);
    return Mat<float>(
        Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(v.data(), rows, cols));
  };
  auto vector = [&](Eigen::Index len) {
    const std::vector<float> v = take(len);
    return Vec<float>(Eigen::Map<const Vec<float>>(v.data(), len));
  };
  const int d = c.dim, hd = c.hidden_dim, kv = c.kv_dim(), L = c.n_layers;
  Weights<float> w;
  w.config = c;
  w.layers.resize(static_cast<std::size_t>(L));
  w.embedding = matrix(c.vocab_size, d);
  for (auto& l : w.layers) l.rms_att = vector(d);
  for (auto& l : w.layers) l.W[kQ] = matrix(d, d);
  for (auto& l : w.layers) l.W[kK] = matrix(kv, d);
  for (auto& l : w.layers) l.W[kV] = matrix(kv, d);
  for (auto& l : w.layers) l.W[kO] = matrix(d, d);
  for (auto& l : w.layers) l.rms_ffn = vector(d);
  for (auto& l : w.layers) l.W[kGate] = matrix(hd, d);
  for (auto& l : w.layers) l.W[kDown] = matrix(d, hd);
  for (auto& l : w.layers) l.W[kUp] = matrix(hd, d);
  w.rms_final = vector(d);
  // The rotary tables are recomputed from the formula (as run.c's forward
  // does); they are skipped, but still checked for NaN/Inf.
  take(static_cast<Eigen::Index>(c.seq_len) * (c.head_size() / 2) * 2);
  if (!c.shared_classifier) w.classifier = matrix(c.vocab_size, d);
  return w;
}

// The file's bytes, or a loftq::Error naming `path`.
inline Weights<float> read_checkpoint(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw loftq::Error(loftq::Errc::io_error, path + ": cannot open the checkpoint");
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) throw loftq::Error(loftq::Errc::io_error, path + ": read failed");
  return parse_checkpoint(bytes, path);
}

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// A weight matrix under llama2.c's own name, (out, in) row-major as in the file.
struct NamedMatrix {
  std::string name;  // "token_embedding", "layers.0.wq", ..., "output"
  RowMat W;
};

// The checkpoint's weight matrices in llama2.c's names: the token embedding,
// then per layer wq, wk, wv, wo, w1, w2, w3, then "output" when the
// classifier is not shared.
inline std::vector<NamedMatrix> named_matrices(const Weights<float>& w) {
  static const char* const names[kKinds] = {"wq", "wk", "wv", "wo", "w1", "w3", "w2"};  // in Kind order
  static const int file_order[kKinds] = {kQ, kK, kV, kO, kGate, kDown, kUp};            // w1, w2, w3
  std::vector<NamedMatrix> out;
  out.push_back({"token_embedding", w.embedding});
  for (std::size_t l = 0; l < w.layers.size(); ++l)
    for (int k : file_order) out.push_back({"layers." + std::to_string(l) + "." + names[k], w.layers[l].W[k]});
  if (!w.config.shared_classifier) out.push_back({"output", w.classifier});
  return out;
}

// A matrix's elements in row-major order (the file's and safetensors' order).
inline std::vector<float> row_major(const Mat<float>& m) {
  std::vector<float> v(static_cast<std::size_t>(m.size()));
  Eigen::Map<RowMat>(v.data(), m.rows(), m.cols()) = m;
  return v;
}

}  // namespace lm

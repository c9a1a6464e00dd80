#pragma once
// A LLaMA-architecture model read a decoder layer at a time, from the three
// formats calibration takes:
//   llama2.c   a .bin checkpoint (common/llama2c.hpp's header and layout)
//   Hugging Face  a directory with config.json and model.safetensors (or a
//              sharded set with model.safetensors.index.json); F32/F16/BF16
//   GGUF       llama.cpp's llama architecture; F32/F16/BF16 and quantized tensors
//
// The one reader of whole models too (read_model in load.hpp reads every
// layer through it), so a layer read here is the layer read there.
//
// Opening reads headers only and checks every tensor's presence, shape and
// type against the configuration, so that a defect in the last layer is
// refused before any computation; values are read when asked for, and each
// must be finite. Errors are loftq::Error naming the file and the tensor.
// Memory: what the caller keeps of what it asked for (a 7B layer is 0.81 GB
// in float), besides one tensor's conversion.

#include <loftq/error.hpp>
#include <loftq/io/detail/posix_file.hpp>
#include <loftq/io/gguf.hpp>
#include <loftq/io/safetensors.hpp>

#include <Eigen/Core>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "common/llama2c.hpp"
#include "common/lm/calibrate.hpp"
#include "common/lm/formats.hpp"

namespace lm {

// The tensors besides the seven linear kinds (kQ .. kDown).
enum Part { kRmsAtt = kKinds, kRmsFfn, kEmbedding, kRmsFinal, kClassifier };

// (rows, cols) of a part; norm weights are (n, 1).
inline std::array<int, 2> part_shape(const Config& c, int part) {
  if (part < kKinds) return kind_shape(c, part);
  if (part == kEmbedding || part == kClassifier) return {c.vocab_size, c.dim};
  return {c.dim, 1};
}

namespace detail {

// One format's tensors: checked from the headers, read on demand. `layer` is
// ignored for the model-wide parts.
class TensorStore {
 public:
  virtual ~TensorStore() = default;
  // Refuses a tensor that is absent, of another shape or of an unreadable type.
  virtual void check(int part, int layer, const std::array<int, 2>& shape) const = 0;
  // Its values, row-major, every one finite.
  virtual RowMatF read(int part, int layer, const std::array<int, 2>& shape) const = 0;
  // What the file holds besides the model's tensors, checked when a whole
  // model is read (llama2.c's rotary tables must still be finite).
  virtual void check_rest() const {}
};

class HfStore : public TensorStore {
 public:
  explicit HfStore(const std::string& dir) : dir_(dir), ck_(dir) {}

  static std::string name(int part, int layer) {
    static const char* const kinds[kKinds] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                              "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                              "mlp.down_proj"};
    if (part == kEmbedding) return "model.embed_tokens.weight";
    if (part == kRmsFinal) return "model.norm.weight";
    if (part == kClassifier) return "lm_head.weight";
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    if (part == kRmsAtt) return p + "input_layernorm.weight";
    if (part == kRmsFfn) return p + "post_attention_layernorm.weight";
    return p + kinds[part] + ".weight";
  }

  void check(int part, int layer, const std::array<int, 2>& shape) const override {
    const std::string n = name(part, layer);
    const auto& [file, info] = find(n);
    if (!loftq::io::is_float_dtype(info.dtype))
      throw loftq::Error(loftq::Errc::unsupported, file.path() + ": tensor '" + n + "' has dtype " +
                                                       loftq::io::dtype_name(info.dtype) +
                                                       ", expected F32, F16, BF16 or F64");
    // A norm weight may be 1-D; anything else must be 2-D.
    std::uint64_t rows = 0, cols = 0;
    if (info.shape.size() == 1 && shape[1] == 1) {
      rows = info.shape[0];
      cols = 1;
    } else if (info.shape.size() == 2) {
      rows = info.shape[0];
      cols = info.shape[1];
    } else {
      throw loftq::Error(loftq::Errc::invalid_argument, file.path() + ": tensor '" + n + "' is not 2-D");
    }
    if (rows != static_cast<std::uint64_t>(shape[0]) || cols != static_cast<std::uint64_t>(shape[1]))
      bad(file.path(), "tensor '" + n + "' is " + std::to_string(rows) + " x " + std::to_string(cols) + ", expected " +
                           std::to_string(shape[0]) + " x " + std::to_string(shape[1]));
  }

  RowMatF read(int part, int layer, const std::array<int, 2>& shape) const override {
    const std::string n = name(part, layer);
    const auto& [file, info] = find(n);
    RowMatF M;
    if (info.shape.size() == 1 && shape[1] == 1) {
      const std::vector<float> v = file.read_float(info);
      M = Eigen::Map<const RowMatF>(v.data(), static_cast<Eigen::Index>(v.size()), 1);
    } else {
      M = file.read_matrix(info);
    }
    require_shape(M, shape[0], shape[1], file.path(), n);
    require_finite(M, file.path(), n);
    return M;
  }

 private:
  std::pair<const loftq::io::SafetensorsFile&, const loftq::io::TensorInfo&> find(const std::string& n) const {
    const auto it = ck_.entries().find(n);
    if (it == ck_.entries().end()) bad(dir_, "tensor '" + n + "' is missing");
    return {ck_.file(it->second.file), *it->second.info};
  }

  std::string dir_;
  loftq::io::Checkpoint ck_;
};

class GgufStore : public TensorStore {
 public:
  explicit GgufStore(const std::string& path) : g_(path) {}
  const loftq::io::GgufFile& file() const { return g_; }

  static std::string name(int part, int layer) {
    static const char* const kinds[kKinds] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                              "ffn_gate", "ffn_up", "ffn_down"};
    if (part == kEmbedding) return "token_embd.weight";
    if (part == kRmsFinal) return "output_norm.weight";
    if (part == kClassifier) return "output.weight";
    const std::string p = "blk." + std::to_string(layer) + ".";
    if (part == kRmsAtt) return p + "attn_norm.weight";
    if (part == kRmsFfn) return p + "ffn_norm.weight";
    return p + kinds[part] + ".weight";
  }

  void check(int part, int layer, const std::array<int, 2>& shape) const override {
    const std::string n = name(part, layer);
    const loftq::io::GgufTensorInfo* t = g_.find(n);
    if (!t) bad(g_.path(), "tensor '" + n + "' is missing");
    // ggml's ne = [in, out] for an (out, in) weight; a vector has ne = [n].
    const std::uint64_t rows = static_cast<std::uint64_t>(shape[0]), cols = static_cast<std::uint64_t>(shape[1]);
    const bool ok = part == kRmsAtt || part == kRmsFfn || part == kRmsFinal
                        ? t->ne.size() == 1 && t->ne[0] == rows
                        : t->ne.size() == 2 && t->ne[0] == cols && t->ne[1] == rows;
    if (!ok) bad(g_.path(), "tensor '" + n + "' has the wrong shape");
    require_gguf_float_type(g_, *t);
  }

  RowMatF read(int part, int layer, const std::array<int, 2>& shape) const override {
    const std::string n = name(part, layer);
    check(part, layer, shape);
    const std::vector<float> v = gguf_floats(g_, *g_.find(n));
    RowMatF M = Eigen::Map<const RowMatF>(v.data(), shape[0], shape[1]);
    require_finite(M, g_.path(), n);
    return M;
  }

 private:
  loftq::io::GgufFile g_;
};

class Llama2cStore : public TensorStore {
 public:
  explicit Llama2cStore(const std::string& path) {
    f_.open(path);
    unsigned char header[kHeaderBytes] = {};
    if (f_.size() >= kHeaderBytes) f_.pread_exact(header, 0, kHeaderBytes);
    config_ = parse_header(header, f_.size(), path);
    layout_ = layout(config_, path);
  }
  const Config& config() const { return config_; }

  // The header fixes every shape, and its size was checked against the file's.
  void check(int, int, const std::array<int, 2>&) const override {}

  RowMatF read(int part, int layer, const std::array<int, 2>& shape) const override {
    const std::uint64_t n = static_cast<std::uint64_t>(shape[0]) * static_cast<std::uint64_t>(shape[1]);
    const std::uint64_t at =
        start(part) +
        (part == kEmbedding || part == kRmsFinal || part == kClassifier ? 0 : static_cast<std::uint64_t>(layer) * n);
    RowMatF M(shape[0], shape[1]);
    floats(at, n, M.data(), name(part, layer));
    return M;
  }

  void check_rest() const override {
    std::vector<float> v(static_cast<std::size_t>(config_.seq_len) * static_cast<std::size_t>(config_.head_size()));
    floats(layout_.freq_cis, v.size(), v.data(), "freq_cis");
  }

  // llama2.c's names, as named_matrices gives them.
  static std::string name(int part, int layer) {
    static const char* const kinds[kKinds] = {"wq", "wk", "wv", "wo", "w1", "w3", "w2"};
    if (part == kEmbedding) return "token_embedding";
    if (part == kRmsFinal) return "rms_final";
    if (part == kClassifier) return "output";
    const std::string p = "layers." + std::to_string(layer) + ".";
    if (part == kRmsAtt) return p + "rms_att";
    if (part == kRmsFfn) return p + "rms_ffn";
    return p + kinds[part];
  }

 private:
  // In Kind order, then Part order; llama2.c's w1, w3, w2 are gate, up, down.
  std::uint64_t start(int part) const {
    const std::uint64_t at[] = {layout_.wq,      layout_.wk,        layout_.wv,        layout_.wo,
                                layout_.w1,      layout_.w3,        layout_.w2,        layout_.rms_att,
                                layout_.rms_ffn, layout_.embedding, layout_.rms_final, layout_.classifier};
    return at[part];
  }

  // n floats from float `at` after the header, every one finite.
  void floats(std::uint64_t at, std::uint64_t n, float* dst, const std::string& tensor) const {
    f_.pread_exact(reinterpret_cast<unsigned char*>(dst), kHeaderBytes + 4 * at, 4 * n);
    for (std::uint64_t i = 0; i < n; ++i)
      if (!std::isfinite(dst[i]))
        throw loftq::Error(loftq::Errc::non_finite, f_.path() + ": tensor '" + tensor + "' holds NaN or Inf");
  }

  loftq::io::detail::ReadOnlyFile f_;
  Config config_;
  Layout layout_;
};

}  // namespace detail

enum class ModelFormat { by_path, hugging_face, gguf, llama2c };

class LayerSource {
 public:
  // By the path (ModelFormat::by_path): a directory (or a .safetensors file's
  // directory) is a Hugging Face checkpoint, *.gguf is GGUF, anything else a
  // llama2.c checkpoint.
  explicit LayerSource(const std::string& path, ModelFormat format = ModelFormat::by_path) : path_(path) {
    if (format == ModelFormat::by_path) format = format_of(path);
    if (format == ModelFormat::hugging_face) {
      std::string dir = path;
      if (!detail::is_directory(path) && ends_with(path, ".safetensors")) {  // the file's directory
        const std::size_t s = path.find_last_of('/');
        dir = s == std::string::npos ? "." : path.substr(0, s);
      }
      const std::string cfg_path = (!dir.empty() && dir.back() == '/' ? dir : dir + "/") + "config.json";
      std::ifstream f(cfg_path, std::ios::binary);
      if (!f) throw loftq::Error(loftq::Errc::io_error, cfg_path + ": cannot open");
      const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      config_ = parse_hf_config(text, cfg_path);
      store_ = std::make_unique<detail::HfStore>(dir);
      hf_ = true;
    } else if (format == ModelFormat::gguf) {
      auto g = std::make_unique<detail::GgufStore>(path);
      config_ = gguf_config(g->file());
      store_ = std::move(g);
    } else {
      auto b = std::make_unique<detail::Llama2cStore>(path);
      config_ = b->config();
      store_ = std::move(b);
    }
    // In the order a whole model is read, so that the first defect is reported.
    store_->check(kEmbedding, -1, part_shape(config_, kEmbedding));
    for (int l = 0; l < config_.n_layers; ++l)
      for (int part : std::initializer_list<int>{kRmsAtt, kRmsFfn, kQ, kK, kV, kO, kGate, kUp, kDown})
        store_->check(part, l, part_shape(config_, part));
    store_->check(kRmsFinal, -1, part_shape(config_, kRmsFinal));
    if (!config_.shared_classifier) store_->check(kClassifier, -1, part_shape(config_, kClassifier));
  }

  const Config& config() const { return config_; }
  const std::string& path() const { return path_; }

  Mat<float> embedding() const { return read(kEmbedding, -1); }
  Vec<float> rms_final() const { return vec(kRmsFinal, -1); }
  // Empty when the classifier is the embedding.
  Mat<float> classifier() const { return config_.shared_classifier ? Mat<float>() : read(kClassifier, -1); }

  LayerWeights<float> layer(int l) const {
    if (l < 0 || l >= config_.n_layers)
      throw loftq::Error(loftq::Errc::invalid_argument, path_ + ": no layer " + std::to_string(l));
    LayerWeights<float> w;
    w.rms_att = vec(kRmsAtt, l);
    w.rms_ffn = vec(kRmsFfn, l);
    for (int k = 0; k < kKinds; ++k) {
      if (hf_ && (k == kQ || k == kK)) {
        w.W[k] = detail::unpermute_rotary(store_->read(k, l, part_shape(config_, k)),
                                          k == kQ ? config_.n_heads : config_.n_kv_heads);
      } else {
        w.W[k] = read(k, l);
      }
    }
    return w;
  }

  // The whole model, every layer read through layer().
  Weights<float> read_all() const {
    Weights<float> w;
    w.config = config_;
    w.embedding = embedding();
    w.layers.reserve(static_cast<std::size_t>(config_.n_layers));
    for (int l = 0; l < config_.n_layers; ++l) w.layers.push_back(layer(l));
    w.rms_final = rms_final();
    store_->check_rest();
    w.classifier = classifier();
    return w;
  }

 private:
  static bool ends_with(const std::string& path, const char* s) {
    const std::size_t n = std::strlen(s);
    return path.size() >= n && path.compare(path.size() - n, n, s) == 0;
  }
  static ModelFormat format_of(const std::string& path) {
    if (detail::is_directory(path) || ends_with(path, ".safetensors")) return ModelFormat::hugging_face;
    return ends_with(path, ".gguf") ? ModelFormat::gguf : ModelFormat::llama2c;
  }

  Mat<float> read(int part, int l) const { return Mat<float>(store_->read(part, l, part_shape(config_, part))); }
  Vec<float> vec(int part, int l) const {
    const detail::RowMatF M = store_->read(part, l, part_shape(config_, part));
    return Eigen::Map<const Vec<float>>(M.data(), M.rows());
  }

  std::string path_;
  Config config_;
  bool hf_ = false;
  std::unique_ptr<detail::TensorStore> store_;
};

namespace detail {

// A LayerSource as collect_layers asks for it: the embedding until the hidden
// states are made, then one layer at a time (the previous one freed first).
struct LayerAtATime {
  const LayerSource& src;
  Mat<float> emb;
  LayerWeights<float> current;
  const Mat<float>& embedding() { return emb = src.embedding(); }
  void drop_embedding() { emb = Mat<float>(); }
  const LayerWeights<float>& layer(int l) {
    current = LayerWeights<float>();
    return current = src.layer(l);
  }
};

}  // namespace detail

// collect_statistics over a model read a layer at a time: the same sums as
// over the whole model in memory (read_model), holding one layer's weights.
// The final norm and the classifier are not read. A template (Source is
// LayerSource) only so that a unit that does not call it does not
// instantiate the forward pass, as an inline function's body would be.
template <class Source, std::enable_if_t<std::is_same<Source, LayerSource>::value, int> = 0>
Calibration collect_statistics(const Source& src, const std::vector<std::vector<int>>& seqs,
                               const CalibrationOptions& o = {}) {
  detail::LayerAtATime m{src, {}, {}};
  return detail::collect_layers<float>(src.config(), m, seqs, o);
}

#ifdef LOFTQ_LM_INSTANCE
LOFTQ_LM_INSTANCE Calibration detail::collect_layers<float, detail::LayerAtATime>(const Config&, detail::LayerAtATime&,
                                                                                  const std::vector<std::vector<int>>&,
                                                                                  const CalibrationOptions&);
#endif

}  // namespace lm

#pragma once
// PEFT LoRA adapters and loftq's packed-weights file, on top of
// loftq/io/safetensors.hpp (needs nlohmann_json: link loftq::io).
//
// A LoRA adapter as PEFT loads it is a directory with two files:
//
//   adapter_model.safetensors  for every adapted weight "<path>.weight"
//                              (out x in), two float32 tensors
//                                base_model.model.<path>.lora_A.weight  (r x in)
//                                base_model.model.<path>.lora_B.weight  (out x r)
//                              PEFT adds (lora_alpha / r) * lora_B * lora_A to
//                              the weight; loftq::to_peft() scales the factors
//                              so that this sum is A B^T.
//   adapter_config.json        PEFT's LoraConfig (adapter_config_json()).
//
//   loftq::io::AdapterWriter w(dir + "/adapter_model.safetensors",
//                              {{"model.layers.0.self_attn.q_proj.weight", 64, 64}}, /*rank=*/8);
//   w.write("model.layers.0.self_attn.q_proj.weight", loftq::to_peft(result, /*lora_alpha=*/16));
//   w.commit();
//   loftq::io::LoraConfig c;  c.r = 8;  c.lora_alpha = 16;  c.target_modules = {"q_proj"};
//   loftq::io::write_adapter_config(dir + "/adapter_config.json", c);
//
// read_adapter() and parse_adapter_config() read them back.
//
// The packed file (model.packed.safetensors, "format": "loftq-packed" in its
// metadata) stores the true low-bit form of quantized weights, the layout of
// loftq::PackedMatrix (packed.hpp). For a weight <name> of rows x cols:
//
//   <name>.qcodes          U8, the bit-packed codes (packed_bytes(rows*cols, bits))
//   <name>.qscales         F32, one scale per block; or, with double quantization,
//   <name>.qscales_q       U8, one 8-bit code per block scale
//   <name>.qscales_absmax  F32, one per kDoubleQuantBlock scales
//   <name>.qscales_mean    F32, one value
//
// and in the metadata "<name>.bits", "<name>.shape" ("[rows, cols]"),
// "loftq.block_size", "loftq.quantizer", "loftq.scale", "loftq.codebooks"
// (bits -> normalized levels), "loftq.bits" (the width, or "mixed"),
// "loftq.layout" (the decoding rule in words) and, with double quantization,
// "loftq.double_quant" and "loftq.double_quant_block". PackedWriter writes it;
// read_packed() gives back every PackedMatrix, which loftq::dequantize() turns
// into the matrix Q.
//
// Every function throws loftq::Error: invalid_argument for a call that cannot
// work (a weight name without ".weight", a matrix of the wrong shape),
// parse_error for a file that does not follow the layout above.

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "loftq/double_quant.hpp"
#include "loftq/error.hpp"
#include "loftq/initialize.hpp"
#include "loftq/io/detail/strict_json.hpp"
#include "loftq/io/safetensors.hpp"
#include "loftq/packed.hpp"
#include "loftq/quantizer.hpp"

namespace loftq {
namespace io {

// ---------------------------------------------------------------------------
// Tensor names

// "<path>.weight" -> "<path>", the module path PEFT names the adapter after.
inline std::string lora_module_path(const std::string& weight) {
  static const std::string suffix = ".weight";
  ::loftq::detail::require(
      weight.size() > suffix.size() && weight.compare(weight.size() - suffix.size(), suffix.size(), suffix) == 0,
      Errc::invalid_argument, "'" + weight + "' is not a weight name (<module path>.weight)");
  return weight.substr(0, weight.size() - suffix.size());
}
inline std::string lora_a_name(const std::string& weight) {
  return "base_model.model." + lora_module_path(weight) + ".lora_A.weight";
}
inline std::string lora_b_name(const std::string& weight) {
  return "base_model.model." + lora_module_path(weight) + ".lora_B.weight";
}

// ---------------------------------------------------------------------------
// adapter_config.json

struct LoraConfig {
  std::int64_t r = 0;
  double lora_alpha = 0;
  std::vector<std::string> target_modules;
  std::string task_type;                // "CAUSAL_LM", ...; empty: null
  std::string base_model_name_or_path;  // empty: null
};

// PEFT's task type for a transformers config.json (its "architectures"), or
// "" when none is recognized.
inline std::string peft_task_type(const nlohmann::json& hf_config) {
  if (!hf_config.is_object() || !hf_config.contains("architectures") || !hf_config["architectures"].is_array())
    return {};
  for (const auto& a : hf_config["architectures"]) {
    if (!a.is_string()) continue;
    const std::string s = a.get<std::string>();
    auto ends = [&](const std::string& suf) {
      return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
    };
    if (ends("ForCausalLM")) return "CAUSAL_LM";
    if (ends("ForSequenceClassification")) return "SEQ_CLS";
    if (ends("ForTokenClassification")) return "TOKEN_CLS";
    if (ends("ForQuestionAnswering")) return "QUESTION_ANS";
  }
  return {};
}

// The LoraConfig as PEFT saves it. init_lora_weights is true because the
// saved factors already are the initialization: PEFT must load them as they
// are, not run its own LoftQ (which needs the full-precision base).
inline nlohmann::json adapter_config_json(const LoraConfig& cfg) {
  ::loftq::detail::require(cfg.r >= 1, Errc::invalid_argument, "adapter config: r must be >= 1");
  ::loftq::detail::require(std::isfinite(cfg.lora_alpha) && cfg.lora_alpha > 0, Errc::invalid_argument,
                           "adapter config: lora_alpha must be a positive number");
  nlohmann::json c;
  c["peft_type"] = "LORA";
  c["r"] = cfg.r;
  const double alpha = cfg.lora_alpha;
  if (alpha == std::floor(alpha) && alpha < 2147483648.0)
    c["lora_alpha"] = static_cast<std::int64_t>(alpha);  // PEFT's type is int; keep it when it is one
  else
    c["lora_alpha"] = alpha;
  c["target_modules"] = cfg.target_modules;
  c["init_lora_weights"] = true;
  c["bias"] = "none";
  c["lora_dropout"] = 0.0;
  c["fan_in_fan_out"] = false;
  c["use_rslora"] = false;
  c["use_dora"] = false;
  c["modules_to_save"] = nullptr;
  c["layers_to_transform"] = nullptr;
  c["layers_pattern"] = nullptr;
  c["rank_pattern"] = nlohmann::json::object();
  c["alpha_pattern"] = nlohmann::json::object();
  c["inference_mode"] = true;
  c["revision"] = nullptr;
  c["task_type"] = cfg.task_type.empty() ? nlohmann::json(nullptr) : nlohmann::json(cfg.task_type);
  c["base_model_name_or_path"] =
      cfg.base_model_name_or_path.empty() ? nlohmann::json(nullptr) : nlohmann::json(cfg.base_model_name_or_path);
  return c;
}

// The fields LoraConfig holds, from an adapter_config.json object. Only plain
// LoRA adapters without per-layer ranks or alphas fit the struct.
inline LoraConfig parse_adapter_config(const nlohmann::json& j) {
  auto bad = [](const std::string& m) { ::loftq::detail::fail(Errc::parse_error, "adapter config: " + m); };
  if (!j.is_object()) bad("not a JSON object");
  if (!j.contains("peft_type") || j["peft_type"] != "LORA") bad("peft_type is not LORA");
  LoraConfig c;
  if (!j.contains("r") || !j["r"].is_number_integer() || j["r"].get<std::int64_t>() < 1)
    bad("r is not a positive integer");
  c.r = j["r"].get<std::int64_t>();
  if (!j.contains("lora_alpha") || !j["lora_alpha"].is_number() || !(j["lora_alpha"].get<double>() > 0))
    bad("lora_alpha is not a positive number");
  c.lora_alpha = j["lora_alpha"].get<double>();
  if (!j.contains("target_modules") || !j["target_modules"].is_array()) bad("target_modules is not a list");
  for (const auto& m : j["target_modules"]) {
    if (!m.is_string()) bad("target_modules holds a non-string");
    c.target_modules.push_back(m.get<std::string>());
  }
  for (const char* k : {"rank_pattern", "alpha_pattern"})
    if (j.contains(k) && !(j[k].is_null() || (j[k].is_object() && j[k].empty())))
      bad(std::string(k) + " is not empty: per-layer settings are not supported");
  if (j.contains("task_type") && j["task_type"].is_string()) c.task_type = j["task_type"].get<std::string>();
  if (j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string())
    c.base_model_name_or_path = j["base_model_name_or_path"].get<std::string>();
  return c;
}

namespace detail {
// Creates `path` (which must not exist) holding `text`.
inline void write_new_text_file(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) ::loftq::detail::fail(Errc::io_error, path + ": cannot create: " + std::strerror(errno));
  std::size_t off = 0;
  while (off < text.size()) {
    const ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int e = errno;
      ::close(fd);
      ::unlink(path.c_str());
      ::loftq::detail::fail(Errc::io_error, path + ": write failed: " + std::strerror(e));
    }
    off += static_cast<std::size_t>(n);
  }
  // Both run whatever the first does; the first failure is reported.
  int e = 0;
  if (::fsync(fd) != 0 && errno != EINVAL && errno != EROFS) e = errno;
  if (::close(fd) != 0 && e == 0) e = errno;
  if (e != 0) {
    ::unlink(path.c_str());
    ::loftq::detail::fail(Errc::io_error, path + ": cannot finish writing: " + std::strerror(e));
  }
}
}  // namespace detail

// Writes adapter_config.json (indented as PEFT writes it); `path` must not exist.
inline void write_adapter_config(const std::string& path, const LoraConfig& cfg) {
  detail::write_new_text_file(
      path, adapter_config_json(cfg).dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
}

// ---------------------------------------------------------------------------
// adapter_model.safetensors

// One adapted weight: its name in the base model and its shape there.
struct LoraTarget {
  std::string weight;  // "<module path>.weight"
  std::uint64_t out_features = 0, in_features = 0;
};

// The adapter's tensors in file order: lora_A then lora_B of each target.
inline std::vector<TensorDecl> adapter_tensors(const std::vector<LoraTarget>& targets, std::uint64_t rank) {
  std::vector<TensorDecl> d;
  for (const LoraTarget& t : targets) {
    d.push_back({lora_a_name(t.weight), Dtype::F32, {rank, t.in_features}});
    d.push_back({lora_b_name(t.weight), Dtype::F32, {t.out_features, rank}});
  }
  return d;
}

// Streams an adapter: every target is declared up front, then written once,
// in any order; commit() renames the finished file into place.
class AdapterWriter {
 public:
  AdapterWriter(std::string path, const std::vector<LoraTarget>& targets, std::uint64_t rank,
                const std::map<std::string, std::string>& metadata = {})
      : rank_(rank) {
    ::loftq::detail::require(rank >= 1, Errc::invalid_argument, path + ": adapter rank must be >= 1");
    for (const LoraTarget& t : targets)
      ::loftq::detail::require(targets_.emplace(t.weight, t).second, Errc::invalid_argument,
                               path + ": weight '" + t.weight + "' listed twice");
    file_ = std::make_unique<SafetensorsWriter>(std::move(path), adapter_tensors(targets, rank), metadata);
  }

  // Writes one target's factors (lora_A: r x in, lora_B: out x r) as float32.
  template <class Scalar>
  void write(const std::string& weight, const PeftLora<Scalar>& p) {
    const auto it = targets_.find(weight);
    ::loftq::detail::require(it != targets_.end(), Errc::invalid_argument,
                             file_->path() + ": weight '" + weight + "' was not declared");
    const LoraTarget& t = it->second;
    const auto r = static_cast<Eigen::Index>(rank_);
    ::loftq::detail::require(p.lora_A.rows() == r && static_cast<std::uint64_t>(p.lora_A.cols()) == t.in_features &&
                                 static_cast<std::uint64_t>(p.lora_B.rows()) == t.out_features && p.lora_B.cols() == r,
                             Errc::invalid_argument,
                             file_->path() + ": factors of '" + weight + "' do not match its declared shape");
    write_rowmajor(lora_a_name(weight), p.lora_A);
    write_rowmajor(lora_b_name(weight), p.lora_B);
  }

  // The underlying file, for tensors already in the adapter's layout (copied
  // from another adapter file, for instance).
  SafetensorsWriter& file() { return *file_; }
  void commit() { file_->commit(); }

 private:
  template <class M>
  void write_rowmajor(const std::string& name, const M& m) {
    const RowMatrix<float> R = m.template cast<float>();
    file_->write(name, R.data(), static_cast<std::uint64_t>(R.size()) * 4);
  }

  std::uint64_t rank_;
  std::map<std::string, LoraTarget> targets_;
  std::unique_ptr<SafetensorsWriter> file_;
};

// One target's factors as read back.
struct LoraFactors {
  RowMatrix<float> lora_A, lora_B;  // r x in, out x r
};

// Every target of an adapter file, by weight name ("<module path>.weight").
// Each lora_A needs its lora_B, both F32 and of one rank.
inline std::map<std::string, LoraFactors> read_adapter(const SafetensorsFile& f) {
  static const std::string prefix = "base_model.model.", a_suffix = ".lora_A.weight", b_suffix = ".lora_B.weight";
  auto bad = [&](const std::string& m) { ::loftq::detail::fail(Errc::parse_error, f.path() + ": " + m); };
  auto ends = [](const std::string& s, const std::string& suf) {
    return s.size() > suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
  };
  std::map<std::string, LoraFactors> out;
  std::int64_t rank = -1;
  for (const TensorInfo& t : f.tensors()) {
    const bool is_a = ends(t.name, a_suffix);
    if (!is_a && !ends(t.name, b_suffix)) bad("tensor '" + t.name + "' is not a LoRA factor");
    if (t.name.compare(0, prefix.size(), prefix) != 0 || t.name.size() <= prefix.size() + a_suffix.size())
      bad("tensor '" + t.name + "' does not start with " + prefix);
    if (t.dtype != Dtype::F32 || t.shape.size() != 2) bad("tensor '" + t.name + "' is not a 2-D F32 tensor");
    const std::string module = t.name.substr(prefix.size(), t.name.size() - prefix.size() - a_suffix.size());
    const std::uint64_t r = is_a ? t.shape[0] : t.shape[1];
    if (rank < 0) rank = static_cast<std::int64_t>(r);
    if (static_cast<std::uint64_t>(rank) != r) bad("tensor '" + t.name + "' has another rank than the first factor");
    LoraFactors& lf = out[module + ".weight"];
    (is_a ? lf.lora_A : lf.lora_B) = f.read_matrix(t);
  }
  for (const auto& kv : out)
    if (kv.second.lora_A.size() == 0 || kv.second.lora_B.size() == 0)
      bad("weight '" + kv.first + "' lacks its lora_A or lora_B factor");
  return out;
}

// ---------------------------------------------------------------------------
// model.packed.safetensors

// One quantized weight of the packed file.
struct PackedTarget {
  std::string name;  // the weight's name in the base model
  std::uint64_t rows = 0, cols = 0;
  int bits = 4;
};

// What every weight of a packed file shares.
struct PackedSettings {
  Quantizer::Kind kind = Quantizer::Kind::normal_float;
  std::int64_t block_size = 64;
  bool scale_search = false;  // recorded as loftq.scale: "search" or "absmax"
  bool double_quant = false;  // 8-bit block scales (QLoRA's scheme, kDoubleQuantBlock)
};

// A target's tensors in file order.
inline std::vector<TensorDecl> packed_tensors(const PackedTarget& t, std::int64_t block_size, bool double_quant) {
  ::loftq::detail::require(block_size >= 1 && t.bits >= 1 && t.bits <= 8, Errc::invalid_argument,
                           "packed tensor '" + t.name + "': bad block size or bit width");
  const std::uint64_t numel = t.rows * t.cols, bs = static_cast<std::uint64_t>(block_size);
  const std::uint64_t nb = (numel + bs - 1) / bs;
  std::vector<TensorDecl> d = {{t.name + ".qcodes", Dtype::U8, {(numel * static_cast<std::uint64_t>(t.bits) + 7) / 8}}};
  if (double_quant) {
    const std::uint64_t dqb = static_cast<std::uint64_t>(kDoubleQuantBlock);
    d.push_back({t.name + ".qscales_q", Dtype::U8, {nb}});
    d.push_back({t.name + ".qscales_absmax", Dtype::F32, {(nb + dqb - 1) / dqb}});
    d.push_back({t.name + ".qscales_mean", Dtype::F32, {1}});
  } else {
    d.push_back({t.name + ".qscales", Dtype::F32, {nb}});
  }
  return d;
}

// The packed file's metadata (the format's self-description, see the top).
inline std::map<std::string, std::string> packed_metadata(const std::vector<PackedTarget>& targets,
                                                          const PackedSettings& s) {
  std::set<int> widths;
  for (const PackedTarget& t : targets) widths.insert(t.bits);
  auto quantizer = [&](int bits) { return Quantizer(s.kind, bits, static_cast<Eigen::Index>(s.block_size), true); };
  nlohmann::json codebooks = nlohmann::json::object();
  for (int b : widths) codebooks[std::to_string(b)] = quantizer(b).codebook();
  const int one = widths.size() == 1 ? *widths.begin() : 0;  // the width when all share one
  std::string layout =
      "codes: LSB-first bit stream over the row-major flattening, element e in stream bits [e*bits, (e+1)*bits) "
      "with bits = <name>.bits, stream bit s = bit s%8 of byte s/8; block b = elements [b*block_size, "
      "(b+1)*block_size); value = codebooks[bits][code] * scale[b]";
  layout += s.double_quant ? "; scale[b] = qscales_mean + (qscales_q[b] - 128) * (qscales_absmax[b/256] / 127) in "
                             "float32 (exact but for the final add)"
                           : "; scale[b] = qscales[b]";
  std::map<std::string, std::string> meta = {
      {"format", "loftq-packed"},
      {"loftq.bits", one ? std::to_string(one) : std::string("mixed")},
      {"loftq.block_size", std::to_string(s.block_size)},
      {"loftq.quantizer",
       one ? quantizer(one).name() : std::string(s.kind == Quantizer::Kind::uniform ? "uniform" : "nf")},
      {"loftq.scale", s.scale_search ? "search" : "absmax"},
      {"loftq.codebooks", codebooks.dump()},
      {"loftq.layout", layout}};
  // A reader of the single-width layout keeps working; a mixed file says
  // "mixed" there so such a reader fails instead of misreading it.
  if (one) meta["loftq.codebook"] = codebooks[std::to_string(one)].dump();
  if (s.double_quant) {
    meta["loftq.double_quant"] = "int8-absmax-mean";
    meta["loftq.double_quant_block"] = std::to_string(kDoubleQuantBlock);
  }
  for (const PackedTarget& t : targets) {
    meta[t.name + ".shape"] = nlohmann::json({t.rows, t.cols}).dump();
    meta[t.name + ".bits"] = std::to_string(t.bits);
  }
  return meta;
}

// Streams a packed file: targets declared up front, each written once.
class PackedWriter {
 public:
  PackedWriter(std::string path, const std::vector<PackedTarget>& targets, const PackedSettings& s) : s_(s) {
    std::vector<TensorDecl> d;
    for (const PackedTarget& t : targets) {
      ::loftq::detail::require(targets_.emplace(t.name, t).second, Errc::invalid_argument,
                               path + ": weight '" + t.name + "' listed twice");
      for (TensorDecl& x : packed_tensors(t, s.block_size, s.double_quant)) d.push_back(std::move(x));
    }
    file_ = std::make_unique<SafetensorsWriter>(std::move(path), d, packed_metadata(targets, s));
  }

  // Writes one target; P must match its declaration and the settings.
  void write(const std::string& name, const PackedMatrix& P) {
    const auto it = targets_.find(name);
    ::loftq::detail::require(it != targets_.end(), Errc::invalid_argument,
                             file_->path() + ": weight '" + name + "' was not declared");
    const PackedTarget& t = it->second;
    ::loftq::detail::require(static_cast<std::uint64_t>(P.rows) == t.rows &&
                                 static_cast<std::uint64_t>(P.cols) == t.cols && P.bits == t.bits &&
                                 P.block_size == s_.block_size && P.scale_mode == ScaleMode::absmax &&
                                 P.double_quantized() == s_.double_quant,
                             Errc::invalid_argument,
                             file_->path() + ": '" + name +
                                 "' does not match its declaration (shape, bits, block "
                                 "size, absmax scales, double quantization)");
    file_->write(name + ".qcodes", P.codes.data(), P.codes.size());
    if (s_.double_quant) {
      file_->write(name + ".qscales_q", P.scale_dq.codes.data(), P.scale_dq.codes.size());
      file_->write(name + ".qscales_absmax", P.scale_dq.absmax.data(), P.scale_dq.absmax.size() * 4);
      file_->write(name + ".qscales_mean", &P.scale_dq.mean, 4);
    } else {
      file_->write(name + ".qscales", P.scales.data(), P.scales.size() * 4);
    }
  }

  SafetensorsWriter& file() { return *file_; }
  void commit() { file_->commit(); }

 private:
  PackedSettings s_;
  std::map<std::string, PackedTarget> targets_;
  std::unique_ptr<SafetensorsWriter> file_;
};

// A packed file read back.
struct PackedFile {
  PackedSettings settings;
  std::map<std::string, PackedMatrix> tensors;  // by weight name
};

namespace detail {
inline std::int64_t packed_int(const std::map<std::string, std::string>& meta, const std::string& key,
                               const std::string& path, std::int64_t lo, std::int64_t hi) {
  const auto it = meta.find(key);
  if (it == meta.end()) ::loftq::detail::fail(Errc::parse_error, path + ": metadata lacks " + key);
  const std::string& v = it->second;
  std::int64_t x = 0;
  bool ok = !v.empty() && v.size() <= 18;
  for (char c : v) {
    ok = ok && c >= '0' && c <= '9';
    if (ok) x = 10 * x + (c - '0');
  }
  if (!ok || x < lo || x > hi)
    ::loftq::detail::fail(Errc::parse_error, path + ": metadata " + key + " = '" + v + "' is not an integer in " +
                                                 std::to_string(lo) + ".." + std::to_string(hi));
  return x;
}
}  // namespace detail

// Every weight of a packed file, with the scales the storage implies (the
// recovered ones when they are double-quantized).
inline PackedFile read_packed(const SafetensorsFile& f) {
  const std::string& path = f.path();
  auto bad = [&](const std::string& m) { ::loftq::detail::fail(Errc::parse_error, path + ": " + m); };
  const auto& meta = f.metadata();
  const auto fmt = meta.find("format");
  if (fmt == meta.end() || fmt->second != "loftq-packed") bad("not a loftq-packed file (metadata format)");
  PackedFile out;
  PackedSettings& s = out.settings;
  s.block_size = detail::packed_int(meta, "loftq.block_size", path, 1, std::int64_t{1} << 40);
  const auto q = meta.find("loftq.quantizer");
  if (q == meta.end()) bad("metadata lacks loftq.quantizer");
  if (q->second.compare(0, 2, "nf") == 0)
    s.kind = Quantizer::Kind::normal_float;
  else if (q->second.compare(0, 7, "uniform") == 0 && q->second.compare(0, 12, "uniform_asym") != 0)
    s.kind = Quantizer::Kind::uniform;
  else
    bad("unknown quantizer '" + q->second + "'");
  const auto sc = meta.find("loftq.scale");
  s.scale_search = sc != meta.end() && sc->second == "search";
  s.double_quant = meta.count("loftq.double_quant") != 0;
  if (s.double_quant && detail::packed_int(meta, "loftq.double_quant_block", path, 1, 1 << 30) != kDoubleQuantBlock)
    bad("double quantization block is not " + std::to_string(kDoubleQuantBlock));
  const auto cbs = meta.find("loftq.codebooks");
  if (cbs == meta.end()) bad("metadata lacks loftq.codebooks");
  // Bounded depth: metadata is input, and a deep tree would overflow the stack when destroyed.
  const nlohmann::json codebooks = detail::parse_json_strict(cbs->second, path + ": loftq.codebooks", 4);
  if (!codebooks.is_object()) bad("loftq.codebooks is not a JSON object");

  static const std::string bits_suffix = ".bits";
  for (const auto& kv : meta) {
    const std::string& key = kv.first;
    if (key.compare(0, 6, "loftq.") == 0 || key.size() <= bits_suffix.size() ||
        key.compare(key.size() - bits_suffix.size(), bits_suffix.size(), bits_suffix) != 0)
      continue;
    const std::string name = key.substr(0, key.size() - bits_suffix.size());
    PackedMatrix P;
    P.bits = static_cast<int>(detail::packed_int(meta, key, path, 1, 8));
    P.block_size = static_cast<Eigen::Index>(s.block_size);
    P.scale_mode = ScaleMode::absmax;
    const auto shp = meta.find(name + ".shape");
    if (shp == meta.end()) bad("metadata lacks " + name + ".shape");
    const nlohmann::json shape = detail::parse_json_strict(shp->second, path + ": " + name + ".shape", 2);
    if (!shape.is_array() || shape.size() != 2 || !shape[0].is_number_unsigned() || !shape[1].is_number_unsigned() ||
        shape[0].get<std::uint64_t>() > (std::uint64_t{1} << 31) ||
        shape[1].get<std::uint64_t>() > (std::uint64_t{1} << 31))
      bad(name + ".shape is not [rows, cols]");
    P.rows = static_cast<Eigen::Index>(shape[0].get<std::uint64_t>());
    P.cols = static_cast<Eigen::Index>(shape[1].get<std::uint64_t>());
    const std::string bk = std::to_string(P.bits);
    if (!codebooks.contains(bk) || !codebooks[bk].is_array() || codebooks[bk].size() != (std::size_t{1} << P.bits))
      bad("loftq.codebooks has no " + bk + "-bit codebook");
    for (const auto& v : codebooks[bk]) {
      if (!v.is_number()) bad("loftq.codebooks holds a non-number");
      P.codebook.push_back(v.get<float>());
    }
    const PackedTarget t{name, static_cast<std::uint64_t>(P.rows), static_cast<std::uint64_t>(P.cols), P.bits};
    for (const TensorDecl& d : packed_tensors(t, s.block_size, s.double_quant)) {
      const TensorInfo* ti = f.find(d.name);
      if (!ti) bad("missing tensor '" + d.name + "'");
      if (ti->dtype != d.dtype || ti->shape != d.shape) bad("tensor '" + d.name + "' has the wrong dtype or shape");
    }
    auto floats_of = [&](const std::string& n) { return f.read_float(f.at(n)); };
    P.codes = f.read_bytes(f.at(name + ".qcodes"));
    if (s.double_quant) {
      P.scale_dq.block_size = kDoubleQuantBlock;
      P.scale_dq.codes = f.read_bytes(f.at(name + ".qscales_q"));
      P.scale_dq.absmax = floats_of(name + ".qscales_absmax");
      P.scale_dq.mean = floats_of(name + ".qscales_mean")[0];
      P.scales = recover_scales(P.scale_dq);
    } else {
      P.scales = floats_of(name + ".qscales");
    }
    out.tensors.emplace(name, std::move(P));
  }
  return out;
}

}  // namespace io
}  // namespace loftq

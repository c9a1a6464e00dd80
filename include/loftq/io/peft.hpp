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
// read_adapter() and parse_adapter_config() read them back. The packed file
// of quantized weights is loftq/io/packed_file.hpp.
//
// Every function throws loftq::Error: invalid_argument for a call that cannot
// work (a weight name without ".weight", a matrix of the wrong shape),
// parse_error for a file that does not follow the layout above.

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "loftq/error.hpp"
#include "loftq/initialize.hpp"
#include "loftq/io/detail/strict_json.hpp"
#include "loftq/io/safetensors.hpp"

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

}  // namespace io
}  // namespace loftq

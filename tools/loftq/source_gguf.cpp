#include "source_gguf.hpp"

#include "errors.hpp"
#include "staged_output.hpp"

#include <loftq/ggml_format.hpp>
#include <loftq/ggml_quantizer.hpp>
#include <loftq/io/detail/dtypes.hpp>

#include <algorithm>
#include <cstdio>

namespace loftq_cli {

namespace {

// llama.cpp's names of the projections, and the Hugging Face names they
// stand for (llama.cpp's convert_hf_to_gguf.py tensor map).
const std::map<std::string, std::string>& llama_module_names() {
  static const std::map<std::string, std::string> m = {
      {"q_proj", "attn_q"},      {"k_proj", "attn_k"},  {"v_proj", "attn_v"},      {"o_proj", "attn_output"},
      {"gate_proj", "ffn_gate"}, {"up_proj", "ffn_up"}, {"down_proj", "ffn_down"},
  };
  return m;
}

// "blk.<N>.<module>.weight" -> <module>, or "" for any other name.
std::string block_module(const std::string& name) {
  const std::string pre = "blk.", post = ".weight";
  if (name.size() <= pre.size() + post.size() || name.compare(0, pre.size(), pre) != 0 ||
      name.compare(name.size() - post.size(), post.size(), post) != 0)
    return "";
  std::size_t i = pre.size();
  const std::size_t digits = i;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9') ++i;
  if (i == digits || i >= name.size() || name[i] != '.') return "";
  const std::string mod = name.substr(i + 1, name.size() - post.size() - i - 1);
  return mod.find('.') == std::string::npos ? mod : "";
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& m : v) s += (s.empty() ? "" : ",") + m;
  return s;
}

// A small unsigned integer pair of the model's hyperparameters; `fallback` when absent.
int hparam(const io::GgufFile& f, const std::string& key, int fallback) {
  const io::GgufKV* kv = f.find_kv(key);
  if (!kv) return fallback;
  static const std::map<io::GgufValueType, int> widths = {
      {io::GgufValueType::UINT8, 1},  {io::GgufValueType::INT8, 1},   {io::GgufValueType::UINT16, 2},
      {io::GgufValueType::INT16, 2},  {io::GgufValueType::UINT32, 4}, {io::GgufValueType::INT32, 4},
      {io::GgufValueType::UINT64, 8}, {io::GgufValueType::INT64, 8}};
  const auto w = widths.find(kv->type);
  if (w == widths.end() || kv->value.size() != static_cast<std::size_t>(w->second))
    throw InputError{f.path() + ": " + printable(key) + " is not an integer (a per-layer array is not supported)"};
  const std::uint64_t v = io::detail::get_le(kv->value.data(), w->second);
  if (v > 1000000) throw InputError{f.path() + ": " + printable(key) + " = " + std::to_string(v) + " is out of range"};
  return static_cast<int>(v);
}

bool is_float_type(std::uint32_t type) {
  const auto ty = static_cast<io::GgmlType>(type);
  return ty == io::GgmlType::F32 || ty == io::GgmlType::F16 || ty == io::GgmlType::BF16;
}

std::string type_name(std::uint32_t t) { return io::GgufFile::type_name(t); }

}  // namespace

GgufSource::GgufSource(const Args& a) : input_(a.input), in_(a.input), quant_(a.quant), mix_(a.mix) {
  if (!in_.string_value("general.architecture", arch_))
    throw InputError{a.input + ": no general.architecture string (llama.cpp needs it in the adapter too)"};
  plain_options_.scale_search = a.scale_search;
  plain_options_.threads = a.threads;
}

loftq_common::LlamaMixModel GgufSource::mix_model() const {
  const std::string mix = loftq_common::llama_mix_name(*mix_);
  if (arch_ == "falcon")
    throw InputError{input_ + ": --quant " + mix + " follows llama.cpp's rules for dense models other than Falcon"};
  if (hparam(in_, arch_ + ".expert_count", 0) > 1)
    throw InputError{input_ + ": --quant " + mix + " follows llama.cpp's rules for dense models; this one has " +
                     std::to_string(hparam(in_, arch_ + ".expert_count", 0)) + " experts"};
  loftq_common::LlamaMixModel m;
  m.n_layer = hparam(in_, arch_ + ".block_count", 0);
  m.n_head = hparam(in_, arch_ + ".attention.head_count", 0);
  m.n_head_kv = hparam(in_, arch_ + ".attention.head_count_kv", m.n_head);
  m.has_output = in_.find("output.weight") != nullptr;
  if (m.n_layer < 1) throw InputError{input_ + ": --quant " + mix + " needs " + arch_ + ".block_count"};
  return m;
}

void GgufSource::plan(const Args& a) {
  std::map<std::string, std::string> wanted;  // llama.cpp module -> as requested
  for (const std::string& m : a.modules) {
    const auto it = llama_module_names().find(m);
    wanted[it == llama_module_names().end() ? m : it->second] = m;
  }
  loftq_common::LlamaMixModel model;
  if (mix_) model = mix_model();
  for (const io::GgufTensorInfo& t : in_.tensors()) {
    // With a mix, llama.cpp's type for the tensor and the format loftq writes it in (none: kept).
    std::optional<io::GgmlType> rule;
    loftq::GgmlFormat fmt = quant_;
    if (mix_) {
      rule = loftq_common::llama_mix_type(t.name, t.ne, model, *mix_);
      fmt = rule ? ggml_format_of(*rule) : loftq::GgmlFormat::none;
    }
    const std::string mod = block_module(t.name);
    if (mod.empty() || !wanted.count(mod)) {
      if (rule && fmt != loftq::GgmlFormat::none && is_float_type(t.type) && t.ne.size() == 2)
        plain_[t.name] = fmt;
      else if (rule && static_cast<std::uint32_t>(*rule) != t.type)
        mix_unwritten_[t.name] = type_name(static_cast<std::uint32_t>(*rule));
      continue;
    }
    const std::string where = a.input + ": tensor '" + printable(t.name) + "'";
    if (t.ne.size() != 2) throw InputError{where + " is not 2-D"};
    if (!is_float_type(t.type))
      throw InputError{where + " has type " + type_name(t.type) + "; --format gguf quantizes F32, F16 or BF16 targets"};
    std::string why;
    if (mix_ && !rule)
      why = "llama.cpp does not quantize it";
    else if (mix_ && fmt == loftq::GgmlFormat::none)
      why = std::string("llama.cpp's ") + loftq_common::llama_mix_name(*mix_) + " gives it " +
            type_name(static_cast<std::uint32_t>(*rule)) + ", which loftq does not write";
    else if (t.ne[0] % static_cast<std::uint64_t>(loftq::ggml_format_block(fmt)) != 0)
      why = "rows of " + std::to_string(t.ne[0]) + " are not whole blocks of " +
            std::to_string(loftq::ggml_format_block(fmt));
    if (why.empty() && static_cast<std::uint64_t>(a.rank) > std::min(t.ne[0], t.ne[1]))
      throw InputError{where + ": rank " + std::to_string(a.rank) + " is larger than its " + std::to_string(t.ne[1]) +
                       "x" + std::to_string(t.ne[0]) + " shape allows"};
    if (!why.empty()) {
      kept_.push_back(t.name);
      kept_why_[t.name] = why;
      if (rule && static_cast<std::uint32_t>(*rule) != t.type)
        mix_unwritten_[t.name] = type_name(static_cast<std::uint32_t>(*rule));
    } else {
      quantized_[t.name] = targets_.size();
      ModelTarget mt{t.name, mod, t.ne[1], t.ne[0], type_name(t.type), where, targets_.size()};
      mt.ggml = fmt;
      targets_.push_back(std::move(mt));
    }
    if (std::find(matched_.begin(), matched_.end(), wanted.at(mod)) == matched_.end())
      matched_.push_back(wanted.at(mod));
  }
  if (targets_.empty())
    throw InputError{a.input + ": no target tensors (blk.N.<module>.weight " +
                     (mix_ ? std::string("of a type loftq writes in ") + loftq_common::llama_mix_name(*mix_)
                           : "with rows of a multiple of " + std::to_string(loftq::ggml_format_block(a.quant))) +
                     ") for --target-modules " + joined(a.modules)};
}

std::uint32_t GgufSource::output_type(const io::GgufTensorInfo& t) const {
  const auto q = quantized_.find(t.name);
  if (q != quantized_.end()) return static_cast<std::uint32_t>(io::ggml_type_of(targets_[q->second].ggml));
  const auto p = plain_.find(t.name);
  return p != plain_.end() ? static_cast<std::uint32_t>(io::ggml_type_of(p->second)) : t.type;
}

std::vector<Step> GgufSource::steps() const {
  std::vector<Step> out;
  for (std::size_t i = 0; i < in_.tensors().size(); ++i) {
    const auto it = quantized_.find(in_.tensors()[i].name);
    out.push_back(it != quantized_.end() ? Step{&targets_[it->second]} : Step{nullptr, i});
  }
  return out;
}

void GgufSource::read(const ModelTarget& t, float* W) const {
  const RowMatrixF M = in_.read_matrix(*in_.find(t.name));
  std::copy(M.data(), M.data() + M.size(), W);
}

void GgufSource::copy(std::size_t copy, const CopyOut& out) const {
  const io::GgufTensorInfo& t = in_.tensors()[copy];
  const auto plain = plain_.find(t.name);
  if (plain != plain_.end()) {
    // A tensor the mix quantizes without an adapter: ggml's blocks of W itself, a few rows at a time (blocks never
    // cross a row, so the bytes are those of the whole tensor at once) to keep a vocabulary-sized one out of memory.
    const std::uint64_t cols = t.ne[0], rows = t.ne[1], chunk_rows = std::max<std::uint64_t>(1, (1u << 20) / cols);
    const loftq::io::Dtype dtype = static_cast<io::GgmlType>(t.type) == io::GgmlType::F32   ? loftq::io::Dtype::F32
                                   : static_cast<io::GgmlType>(t.type) == io::GgmlType::F16 ? loftq::io::Dtype::F16
                                                                                            : loftq::io::Dtype::BF16;
    const std::uint64_t width = dtype == loftq::io::Dtype::F32 ? 4 : 2;
    std::vector<unsigned char> raw;
    std::uint64_t written = 0;
    for (std::uint64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
      const std::uint64_t n = std::min(chunk_rows, rows - r0);
      std::vector<unsigned char> bytes;
      try {
        raw.resize(static_cast<std::size_t>(n * cols * width));
        in_.read_bytes(t, r0 * cols * width, raw.size(), raw.data());
        RowMatrixF W(static_cast<Eigen::Index>(n), static_cast<Eigen::Index>(cols));
        loftq::io::to_float(dtype, raw.data(), static_cast<std::size_t>(W.size()), W.data());
        bytes = io::ggml_block_bytes(loftq::quantize(W, loftq::GgmlQuantizer(plain->second), plain_options_),
                                     plain->second);
      } catch (const loftq::Error& e) {
        if (e.code() == loftq::Errc::cancelled) throw Interrupted{};
        throw InputError{input_ + ": tensor '" + printable(t.name) + "': " + e.what()};
      }
      out(t.name, 0, bytes.data(), bytes.size(), written);
      written += bytes.size();
      check_interrupt();
    }
    return;
  }
  const std::uint64_t chunk = std::uint64_t(64) << 20;
  std::vector<unsigned char> buf(static_cast<std::size_t>(std::min(chunk, t.nbytes)));
  for (std::uint64_t off = 0; off < t.nbytes; off += chunk) {
    const std::uint64_t n = std::min(chunk, t.nbytes - off);
    in_.read_bytes(t, off, n, buf.data());
    out(t.name, 0, buf.data(), n, off);
    check_interrupt();
  }
}

void GgufSource::describe(nlohmann::json& rep) const {
  rep["target_modules_matched"] = matched_;
  rep["num_targets"] = targets_.size();
  // Rows that are not whole blocks cannot be stored in the --quant type (with a mix: types loftq does not write).
  rep["kept_unquantized"] = kept_;
  if (mix_) rep["mix"] = mix_json();
}

nlohmann::json GgufSource::mix_json() const {
  // Every tensor the mix covers, in the type model.gguf stores it in, and the average over them at ggml's sizes.
  nlohmann::json types = nlohmann::json::object(), counts = nlohmann::json::object();
  double bits = 0, llama_bits = 0, weights = 0;
  const loftq_common::LlamaMixModel model = mix_model();
  for (const io::GgufTensorInfo& t : in_.tensors()) {
    const auto rule = loftq_common::llama_mix_type(t.name, t.ne, model, *mix_);
    if (!rule) continue;
    const std::uint32_t type = output_type(t);
    types[t.name] = type_name(type);
    counts[type_name(type)] = counts.value(type_name(type), 0) + 1;
    bits += 8.0 * static_cast<double>(io::ggml_nbytes(type, t.ne, t.name));
    llama_bits += 8.0 * static_cast<double>(io::ggml_nbytes(static_cast<std::uint32_t>(*rule), t.ne, t.name));
    weights += static_cast<double>(t.numel);
  }
  nlohmann::json without_adapter = nlohmann::json::array();
  for (const auto& p : plain_) without_adapter.push_back(p.first);
  return {{"name", loftq_common::llama_mix_name(*mix_)},
          {"llama_ftype", static_cast<std::uint32_t>(*mix_)},
          {"tensor_types", types},
          {"tensors_per_type", counts},
          {"average_bits_per_weight", weights > 0 ? bits / weights : 0.0},
          // What llama-quantize's file of the mix stores, the kept tensors in llama.cpp's types.
          {"llama_cpp_average_bits_per_weight", weights > 0 ? llama_bits / weights : 0.0},
          {"quantized_without_adapter", without_adapter},
          {"kept_not_written_type", mix_unwritten_}};
}

std::string GgufSource::summary_count() const {
  if (mix_)
    return std::to_string(targets_.size()) + " target tensors in llama.cpp's " + loftq_common::llama_mix_name(*mix_) +
           " mix (" + std::to_string(plain_.size()) + " more without an adapter)";
  return std::to_string(targets_.size()) + " target tensors as " + loftq::ggml_format_name(quant_);
}

void GgufSource::print_notes() const {
  for (const std::string& k : kept_)
    std::fprintf(stderr, "loftq: note: %s kept as it was: %s\n", printable(k).c_str(),
                 printable(kept_why_.at(k)).c_str());
}

}  // namespace loftq_cli

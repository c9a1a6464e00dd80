#include "source_gguf.hpp"

#include "errors.hpp"
#include "staged_output.hpp"

#include <loftq/ggml_format.hpp>

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

}  // namespace

GgufSource::GgufSource(const Args& a) : input_(a.input), in_(a.input), quant_(a.quant) {
  if (!in_.string_value("general.architecture", arch_))
    throw InputError{a.input + ": no general.architecture string (llama.cpp needs it in the adapter too)"};
}

void GgufSource::plan(const Args& a) {
  std::map<std::string, std::string> wanted;  // llama.cpp module -> as requested
  for (const std::string& m : a.modules) {
    const auto it = llama_module_names().find(m);
    wanted[it == llama_module_names().end() ? m : it->second] = m;
  }
  for (const io::GgufTensorInfo& t : in_.tensors()) {
    const std::string mod = block_module(t.name);
    if (mod.empty() || !wanted.count(mod)) continue;
    const std::string where = a.input + ": tensor '" + printable(t.name) + "'";
    if (t.ne.size() != 2) throw InputError{where + " is not 2-D"};
    const auto ty = static_cast<io::GgmlType>(t.type);
    if (ty != io::GgmlType::F32 && ty != io::GgmlType::F16 && ty != io::GgmlType::BF16)
      throw InputError{where + " has type " + io::GgufFile::type_name(t.type) +
                       "; --format gguf quantizes F32, F16 or BF16 targets"};
    const bool fallback = t.ne[0] % static_cast<std::uint64_t>(loftq::ggml_format_block(a.quant)) != 0;
    if (!fallback && static_cast<std::uint64_t>(a.rank) > std::min(t.ne[0], t.ne[1]))
      throw InputError{where + ": rank " + std::to_string(a.rank) + " is larger than its " + std::to_string(t.ne[1]) +
                       "x" + std::to_string(t.ne[0]) + " shape allows"};
    if (fallback) {
      kept_.push_back(t.name);
    } else {
      quantized_[t.name] = targets_.size();
      targets_.push_back({t.name, mod, t.ne[1], t.ne[0], io::GgufFile::type_name(t.type), where, targets_.size()});
    }
    if (std::find(matched_.begin(), matched_.end(), wanted.at(mod)) == matched_.end())
      matched_.push_back(wanted.at(mod));
  }
  if (targets_.empty())
    throw InputError{a.input + ": no target tensors (blk.N.<module>.weight with rows of a multiple of " +
                     std::to_string(loftq::ggml_format_block(a.quant)) + ") for " + "--target-modules " +
                     joined(a.modules)};
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
  // Rows that are not whole blocks of 32 cannot be stored in the --quant type.
  rep["kept_unquantized"] = kept_;
}

std::string GgufSource::summary_count() const {
  return std::to_string(targets_.size()) + " target tensors as " + loftq::ggml_format_name(quant_);
}

void GgufSource::print_notes() const {
  for (const std::string& k : kept_)
    std::fprintf(stderr, "loftq: note: %s kept as it was: rows of %s are not whole blocks of 32\n",
                 printable(k).c_str(), std::to_string(in_.find(k)->ne[0]).c_str());
}

}  // namespace loftq_cli

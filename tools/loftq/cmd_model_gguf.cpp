// loftq model --format gguf: a GGUF file in, llama.cpp's two files out.
//
//   DIR/model.gguf     every key-value pair and every tensor of the input, the
//                      targets replaced by LoftQ's Q in the --quant type
//   DIR/adapter.gguf   the LoRA factors as llama.cpp's --lora reads them
//                      (llama-adapter.cpp): general.type = adapter,
//                      adapter.type = lora, adapter.lora.alpha, the input's
//                      general.architecture, and per target
//                      <name>.lora_a, ne = [in, r] (PEFT's lora_A, r x in) and
//                      <name>.lora_b, ne = [r, out] (lora_B, out x r), F32;
//                      llama.cpp adds (alpha / r) * lora_b * lora_a * x
//   DIR/loftq_report.json
//
// One target is in memory at a time; the tensors are streamed into writers
// in the staging directory (staged_output.hpp), as the safetensors path does.

#include "checkpoint_plan.hpp"
#include "commands.hpp"
#include "errors.hpp"
#include "report.hpp"
#include "staged_output.hpp"

#include <loftq/io/gguf.hpp>
#include <loftq/loftq.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace loftq_cli {

namespace {

namespace gg = loftq::io;

// llama.cpp's names of the projections, and the Hugging Face names they
// stand for (llama.cpp's convert_hf_to_gguf.py tensor map).
const std::map<std::string, std::string>& llama_module_names() {
  static const std::map<std::string, std::string> m = {
      {"q_proj", "attn_q"},   {"k_proj", "attn_k"}, {"v_proj", "attn_v"},     {"o_proj", "attn_output"},
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

struct GgufTarget {
  const gg::GgufTensorInfo* info;
  std::string module;
  bool fallback = false;  // rows not whole blocks: copied unchanged, no adapter
};

void copy_gguf_tensor(const gg::GgufFile& in, const gg::GgufTensorInfo& t, gg::GgufWriter& w) {
  const std::uint64_t chunk = std::uint64_t(64) << 20;
  std::vector<unsigned char> buf(static_cast<std::size_t>(std::min(chunk, t.nbytes)));
  for (std::uint64_t off = 0; off < t.nbytes; off += chunk) {
    const std::uint64_t n = std::min(chunk, t.nbytes - off);
    in.read_bytes(t, off, n, buf.data());
    w.write(t.name, buf.data(), n, off);
    check_interrupt();
  }
}

template <class Matrix>
void write_row_major(gg::GgufWriter& w, const std::string& name, const Matrix& M) {
  const loftq::RowMatrix<float> R = M.template cast<float>();
  w.write(name, R.data(), static_cast<std::uint64_t>(R.size()) * sizeof(float));
}

}  // namespace

int run_model_gguf(const Args& a) {
  const auto t_start = std::chrono::steady_clock::now();
  const loftq::GgmlQuantizer q(a.quant);
  const gg::GgmlType qtype = gg::ggml_type_of(a.quant);
  const gg::GgufFile in(a.input);
  std::string arch;
  if (!in.string_value("general.architecture", arch))
    throw InputError{a.input + ": no general.architecture string (llama.cpp needs it in the adapter too)"};

  // Targets: --target-modules as llama.cpp names or their Hugging Face names.
  std::map<std::string, std::string> wanted;  // llama.cpp module -> as requested
  for (const std::string& m : a.modules) {
    const auto it = llama_module_names().find(m);
    wanted[it == llama_module_names().end() ? m : it->second] = m;
  }
  std::vector<GgufTarget> targets;
  std::map<std::string, std::size_t> target_of;
  std::vector<std::string> matched;
  for (const gg::GgufTensorInfo& t : in.tensors()) {
    const std::string mod = block_module(t.name);
    if (mod.empty() || !wanted.count(mod)) continue;
    const std::string where = a.input + ": tensor '" + printable(t.name) + "'";
    if (t.ne.size() != 2) throw InputError{where + " is not 2-D"};
    const auto ty = static_cast<gg::GgmlType>(t.type);
    if (ty != gg::GgmlType::F32 && ty != gg::GgmlType::F16 && ty != gg::GgmlType::BF16)
      throw InputError{where + " has type " + gg::GgufFile::type_name(t.type) +
                       "; --format gguf quantizes F32, F16 or BF16 targets"};
    GgufTarget g{&t, mod, t.ne[0] % loftq::kGgmlBlock != 0};
    if (!g.fallback && static_cast<std::uint64_t>(a.rank) > std::min(t.ne[0], t.ne[1]))
      throw InputError{where + ": rank " + std::to_string(a.rank) + " is larger than its " + std::to_string(t.ne[1]) +
                       "x" + std::to_string(t.ne[0]) + " shape allows"};
    target_of[t.name] = targets.size();
    targets.push_back(g);
    if (std::find(matched.begin(), matched.end(), wanted.at(mod)) == matched.end()) matched.push_back(wanted.at(mod));
  }
  std::size_t quantized = 0;
  for (const GgufTarget& t : targets) quantized += !t.fallback;
  if (quantized == 0)
    throw InputError{a.input + ": no target tensors (blk.N.<module>.weight with rows of a multiple of 32) for " +
                     "--target-modules " + [&] {
                       std::string s;
                       for (const std::string& m : a.modules) s += (s.empty() ? "" : ",") + m;
                       return s;
                     }()};

  StagedOutput out(a.output, a.overwrite ? StagedOutput::Existing::replace : StagedOutput::Existing::refuse, {a.input});
  const double alpha = a.lora_alpha > 0 ? a.lora_alpha : static_cast<double>(a.rank);
  const loftq::Options opt = library_options(a);
  apply_threads(a.threads);

  std::vector<gg::GgufTensorDecl> base_decls, adapter_decls;
  for (const gg::GgufTensorInfo& t : in.tensors()) {
    const auto it = target_of.find(t.name);
    const bool quant = it != target_of.end() && !targets[it->second].fallback;
    base_decls.push_back({t.name, t.ne, quant ? static_cast<std::uint32_t>(qtype) : t.type});
    if (quant) {
      const std::uint64_t r = static_cast<std::uint64_t>(a.rank);
      adapter_decls.push_back({t.name + ".lora_a", {t.ne[0], r}, static_cast<std::uint32_t>(gg::GgmlType::F32)});
      adapter_decls.push_back({t.name + ".lora_b", {r, t.ne[1]}, static_cast<std::uint32_t>(gg::GgmlType::F32)});
    }
  }
  const std::vector<gg::GgufKV> adapter_kvs = {
      gg::gguf_kv_string("general.architecture", arch), gg::gguf_kv_string("general.type", "adapter"),
      gg::gguf_kv_string("adapter.type", "lora"), gg::gguf_kv_f32("adapter.lora.alpha", static_cast<float>(alpha))};

  Progress progress(quantized, a.quiet);
  progress.update(0, "");
  out.stage();  // from here a signal only raises a flag; we clean up
  std::unique_ptr<gg::GgufWriter> base, adapter;
  try {
    base = std::make_unique<gg::GgufWriter>(out.path("model.gguf").string(), in.kvs(), base_decls);
    adapter = std::make_unique<gg::GgufWriter>(out.path("adapter.gguf").string(), adapter_kvs, adapter_decls);
  } catch (const loftq::Error& e) {
    throw InputError{std::string("--format gguf: ") + e.what()};
  }

  nlohmann::json tensors = nlohmann::json::object(), kept = nlohmann::json::array();
  double sum_err = 0, sum_qlora = 0;
  std::size_t done = 0;
  for (const gg::GgufTensorInfo& t : in.tensors()) {
    const auto it = target_of.find(t.name);
    if (it == target_of.end() || targets[it->second].fallback) {
      if (it != target_of.end()) kept.push_back(t.name);
      copy_gguf_tensor(in, t, *base);
      continue;
    }
    const std::string where = a.input + ": tensor '" + printable(t.name) + "'";
    const auto t0 = std::chrono::steady_clock::now();
    const loftq::RowMatrix<float> W = in.read_matrix(t);
    loftq::Result<float> r;
    try {
      r = loftq::initialize(W, q, opt);
    } catch (const loftq::Error& e) {
      if (e.code() == loftq::Errc::cancelled) throw Interrupted{};
      throw InputError{where + ": " + numeric_failure(e, W)};
    }
    if (!r.Q.allFinite() || !r.A.allFinite() || !r.B.allFinite())
      throw InputError{where + ": " + numeric_failure(not_finite_result(), W)};
    const std::vector<unsigned char> blocks = gg::ggml_block_bytes(r.packed, a.quant);
    base->write(t.name, blocks.data(), blocks.size());
    const auto peft = loftq::to_peft(r, alpha);
    if (!peft.lora_A.allFinite() || !peft.lora_B.allFinite())
      throw InputError{where + ": the adapter at lora_alpha " + std::to_string(alpha) + " is not finite"};
    write_row_major(*adapter, t.name + ".lora_a", peft.lora_A);
    write_row_major(*adapter, t.name + ".lora_b", peft.lora_B);
    TensorFacts facts;
    facts.shape = {t.ne[1], t.ne[0]};
    facts.dtype = gg::GgufFile::type_name(t.type);
    facts.module = targets[it->second].module;
    facts.bits = loftq::ggml_format_bits(a.quant);
    facts.sq_err = loftq::squared_error(r, W.cast<double>().squaredNorm());
    facts.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    nlohmann::json e = tensor_entry(a, facts, r, loftq::DoubleQuantEffect{});
    e["ggml_type"] = gg::GgufFile::type_name(static_cast<std::uint32_t>(qtype));
    tensors[t.name] = e;
    sum_err += r.error();
    sum_qlora += r.qlora_error;
    progress.update(++done, t.name);
    check_interrupt();
  }
  base->commit();
  adapter->commit();

  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  nlohmann::json rep;
  rep["version"] = loftq::version();
  rep["input"] = a.input;
  rep["settings"] = {{"format", "gguf"},
                     {"quant", loftq::ggml_format_name(a.quant)},
                     {"rank", a.rank},
                     {"iters", a.iters},
                     {"scale", a.scale_search ? "search" : "ggml"},
                     {"start", start_name(a.start)},
                     {"lora_alpha", alpha},
                     {"svd", loftq::to_string(a.svd)},
                     {"seed", a.seed},
                     {"target_modules", a.modules}};
  if (!a.keep_best) rep["settings"]["keep_best"] = false;
  rep["threads"] = loftq::thread_count(a.threads);
  rep["target_modules_matched"] = matched;
  rep["num_targets"] = quantized;
  // Rows that are not whole blocks of 32 cannot be stored in the --quant type.
  rep["kept_unquantized"] = kept;
  add_totals(rep, tensors);
  rep["tensors"] = tensors;
  rep["seconds"] = total;
  out.write_file(kReportFile, dump_json(rep));
  out.publish();

  if (!a.quiet) {
    for (const auto& k : kept)
      std::fprintf(stderr, "loftq: note: %s kept as it was: rows of %s are not whole blocks of 32\n",
                   printable(k.get<std::string>()).c_str(),
                   std::to_string(in.find(k.get<std::string>())->ne[0]).c_str());
    const double k = static_cast<double>(quantized);
    std::printf("loftq %s: %s -> %s: %zu target tensors as %s, mean rel. error %.6f (QLoRA %.6f), %.1f s\n",
                loftq::version().c_str(), printable(a.input).c_str(), printable(out.dir().string()).c_str(), quantized,
                loftq::ggml_format_name(a.quant), sum_err / k, sum_qlora / k, total);
    std::fflush(stdout);
  }
  return kExitOk;
}

}  // namespace loftq_cli

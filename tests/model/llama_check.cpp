// llama.cpp itself on the outputs of `loftq model --format gguf` (engine_test.sh):
//
//   llama_check logits MODEL.gguf TOKENS.npy LOGITS.npy TOL
//       llama.cpp's logits of MODEL on the tokens equal the reference to TOL
//   llama_check synth OUT.gguf
//       a small llama model for the K formats, whose super-blocks need rows of
//       a multiple of 256: width 256, FFN 512, 1 layer, 4 heads, 256 tokens;
//       LLM-like weights (common/matrices.hpp: a decaying spectrum, Student-t
//       noise, a few outlier input columns, std 1 / sqrt(in)), the classifier
//       tied to embeddings of std 1/8: a few nats of next-token entropy
//   llama_check adapter FP.gguf DIR QUANT WORK
//       llama.cpp loads DIR/model.gguf with DIR/adapter.gguf, names the file's
//       type rightly, reads the base's general.name and the note from the
//       adapter, and warns of nothing but its weight repacking (and what
//       it warns of for FP too); on
//       sequences it samples from FP, the next-token KL(FP || base + s *
//       adapter) is lower at s = 1 than at 0.9 and 1.1, at most half of
//       KL(FP || ggml's own quantization of the same tensors to QUANT), made
//       here by ggml_quantize_chunk (WORK/ggml.gguf), and at most 0.6 of the
//       KL of that quantization with an adapter of the same rank and layout
//       holding the truncated SVD of its error (WORK/svd.gguf): the same
//       bytes spent the plain way
//   llama_check mix_synth OUT.gguf LAYERS HEADS HEADS_KV tied|untied
//       a llama model for the quantization mixes: width 256, FFN 288 (ffn_down's
//       rows are not whole super-blocks, so llama.cpp falls back), vocabulary
//       256; "tied" leaves out output.weight
//   llama_check mix FP.gguf MIX WORK [DIR]
//       llama_model_quantize of FP to MIX (q2_k_mix, q3_k_m, ...) writes every
//       tensor in the type llama_mix_type (common/llama_quant_mix.hpp) gives
//       it; with DIR (a --scale absmax run), DIR/model.gguf holds each tensor
//       in llama.cpp's type but those of a type loftq does not write (Q5_0,
//       Q5_1, F16), kept as in FP, those without an adapter (token_embd,
//       output) byte for byte as llama.cpp's, and llama.cpp loads it with
//       DIR/adapter.gguf and names the mix
//
// The libraries are the prebuilt ones of @node-llama-cpp/linux-x64 (libllama,
// libggml, libggml-base, one libggml-cpu-* per CPU family) in
// LOFTQ_LLAMA_CPP_DIR, opened with dlopen and called through llama.h's own
// declarations; without them the program exits 77 (a CTest skip).
#include "common/gguf_layout.hpp"
#include "common/llama_quant_mix.hpp"
#include "common/matrices.hpp"

#include "common/ggml_baseline.hpp"
#include "common/llama_engine.hpp"
#include "common/llama_synth.hpp"

#include <loftq/io/npy.hpp>

#include <dlfcn.h>
#include <ggml-backend.h>
#include <ggml.h>
#include <llama.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace gl = gguf_layout;
using llama_check::Api;
using llama_check::die;
using llama_check::Engine;
using llama_check::g_verbose;
using llama_check::g_warnings;
using llama_check::kSeqLen;
using llama_check::load_api;
using llama_check::log_softmax;
using llama_check::mean_kl;
using llama_check::require;
using llama_check::sample;
using llama_check::write_ggml_baseline;
using llama_check::write_svd_adapter;
using llama_check::write_synth;

int cmd_synth(const std::string& out) { return write_synth(out, {"synth256", 512, 1, 4, 4, true}); }

int cmd_logits(const Api& api, const std::string& model, const std::string& tokens_path, const std::string& logits_path,
               double tol) {
  for (const std::string& p : {tokens_path, logits_path})
    if (!std::ifstream(p)) {
      std::printf("llama_check: skipped: %s is absent\n", p.c_str());
      return 77;
    }
  const loftq::io::NpyArray ta = loftq::io::read_npy_integers(tokens_path);
  std::vector<llama_token> tokens;
  for (std::size_t i = 0; i < ta.element_count(); ++i) {
    std::int64_t v = 0;
    for (int b = 0; b < ta.itemsize; ++b)
      v |= static_cast<std::int64_t>(ta.data[i * static_cast<std::size_t>(ta.itemsize) + static_cast<std::size_t>(b)])
           << (8 * b);
    tokens.push_back(static_cast<llama_token>(v));
  }
  const auto ref = loftq::io::read_npy_matrix<float>(logits_path);
  require(ref.rows() == static_cast<Eigen::Index>(tokens.size()), "reference logits: rows != tokens");
  Engine e(api, model);
  require(ref.cols() == e.n_vocab(), "reference logits: columns != the model's vocabulary");
  const auto l = e.logits(tokens);
  double err = 0;
  for (std::size_t i = 0; i < l.size(); ++i)
    for (int k = 0; k < e.n_vocab(); ++k)
      err = std::max(
          err, std::abs(static_cast<double>(l[i][static_cast<std::size_t>(k)]) - ref(static_cast<Eigen::Index>(i), k)));
  std::printf("llama_check: %s: %zu positions, max |llama.cpp logit - reference| = %.3g (tolerance %g)\n",
              model.c_str(), l.size(), err, tol);
  require(err <= tol, "llama.cpp's logits differ from the reference by " + std::to_string(err));
  return 0;
}

int cmd_adapter(const Api& api, const std::string& fp_path, const std::string& dir, const std::string& quant,
                const std::string& work) {
  const std::string model_path = dir + "/model.gguf", adapter_path = dir + "/adapter.gguf";
  // llama_model_ftype_name's words for the LLAMA_FTYPE of each type (the K formats' as llama.cpp's loader infers).
  const std::map<std::string, std::string> names = {
      {"q4_0", "Q4_0"},          {"q8_0", "Q8_0"},          {"iq4_nl", "IQ4_NL - 4.5 bpw"},
      {"q2_k", "Q2_K - Medium"}, {"q3_k", "Q3_K - Medium"}, {"q4_k", "Q4_K - Medium"},
      {"q5_k", "Q5_K - Medium"}, {"q6_k", "Q6_K"},          {"iq4_xs", "IQ4_XS - 4.25 bpw"}};
  require(names.count(quant) != 0, "unknown type " + quant);
  const std::string type_name = names.at(quant);
  g_warnings.clear();
  Engine fp(api, fp_path);
  const std::vector<std::string> input_warnings = g_warnings;  // the test model's own (a vocabulary of dummies)
  g_warnings.clear();
  Engine lq(api, model_path);
  lq.load_adapter(adapter_path);
  // Beyond those, only the repacking note: LoRA tensors next to repacked weights stay in the CPU buffer.
  for (const std::string& w : g_warnings)
    require(w.find("CPU_REPACK") != std::string::npos ||
                std::find(input_warnings.begin(), input_warnings.end(), w) != input_warnings.end(),
            "llama.cpp warned: " + w);
  const std::string desc = lq.desc();
  require(desc.size() >= type_name.size() &&
              desc.compare(desc.size() - type_name.size(), std::string::npos, type_name) == 0,
          "llama.cpp names the file '" + desc + "', not " + type_name);
  const gl::File fp_file(fp_path);
  require(lq.adapter_meta("general.name") == fp_file.kv_string("general.name"),
          "the adapter's general.name is '" + lq.adapter_meta("general.name") + "', not the base's");
  require(lq.adapter_meta("loftq.use_with_adapter").find("adapter.gguf") != std::string::npos,
          "the adapter has no loftq.use_with_adapter note");
  const gl::File adapter_file(adapter_path);
  write_ggml_baseline(api, fp_file, gl::File(model_path), adapter_file, work + "/ggml.gguf");
  write_svd_adapter(api, fp_file, gl::File(work + "/ggml.gguf"), adapter_file, work + "/svd.gguf");
  Engine gg(api, work + "/ggml.gguf");
  Engine sv(api, work + "/ggml.gguf");
  sv.load_adapter(work + "/svd.gguf");
  sv.adapter_scale(1.0f);

  const std::vector<std::vector<llama_token>> seqs = sample(fp, 8, 20240601u);
  std::vector<std::vector<std::vector<float>>> ref;
  for (const auto& s : seqs) ref.push_back(fp.logits(s));
  double entropy = 0;
  for (const auto& seq : ref)
    for (const auto& l : seq) {
      const std::vector<double> lp = log_softmax(l);
      for (double v : lp) entropy -= std::exp(v) * v;
    }
  entropy /= static_cast<double>(seqs.size() * kSeqLen);
  const double kl_ggml = mean_kl(ref, gg, seqs), kl_svd = mean_kl(ref, sv, seqs);
  double kl[3];
  const float scales[3] = {0.9f, 1.0f, 1.1f};
  for (int i = 0; i < 3; ++i) {
    lq.adapter_scale(scales[i]);
    kl[i] = mean_kl(ref, lq, seqs);
  }
  lq.adapter_scale(0.0f);
  const double kl_base = mean_kl(ref, lq, seqs);
  std::printf(
      "llama_check: %s (%s): KL(fp || .) over %zu x %d sampled tokens (fp entropy %.2f nats): ggml's own %.5f; "
      "ggml's own + SVD adapter of its error %.5f; LoftQ base alone %.5f, with the adapter at 0.9 %.5f, 1.0 %.5f, "
      "1.1 %.5f; ratio to ggml's %.3f, to ggml's + SVD %.3f\n",
      quant.c_str(), desc.c_str(), seqs.size(), kSeqLen, entropy, kl_ggml, kl_svd, kl_base, kl[0], kl[1], kl[2],
      kl[1] / kl_ggml, kl[1] / kl_svd);
  require(kl[1] < kl[0] && kl[1] < kl[2], "the KL is not lowest at adapter scale 1.0");
  require(kl[1] <= 0.5 * kl_ggml, "base + adapter is not within half of ggml's own KL");
  require(kl[1] <= 0.6 * kl_svd, "base + adapter is not within 0.6 of ggml's own with an SVD adapter of its error");
  return 0;
}

int cmd_mix_synth(const std::string& out, std::uint32_t layers, std::uint32_t heads, std::uint32_t heads_kv,
                  bool tied) {
  return write_synth(out, {"mix256", 288, layers, heads, heads_kv, tied});
}

std::uint32_t kv_u32(const gl::File& f, const std::string& key, std::uint32_t fallback) {
  const std::vector<unsigned char>* v = f.kv(key);
  return v && v->size() == 4 ? static_cast<std::uint32_t>(gl::le(v->data(), 4)) : fallback;
}

int cmd_mix(const Api& api, const std::string& fp_path, const std::string& mix_name, const std::string& work,
            const std::string& dir) {
  const std::optional<loftq_common::LlamaMix> mix = loftq_common::llama_mix_from_name(mix_name);
  require(mix.has_value(), "unknown mix " + mix_name);
  // llama_model_ftype_name's words for the mixes.
  const std::map<loftq_common::LlamaMix, std::string> names = {{loftq_common::LlamaMix::q2_k, "Q2_K - Medium"},
                                                               {loftq_common::LlamaMix::q3_k_m, "Q3_K - Medium"},
                                                               {loftq_common::LlamaMix::q4_k_s, "Q4_K - Small"},
                                                               {loftq_common::LlamaMix::q4_k_m, "Q4_K - Medium"},
                                                               {loftq_common::LlamaMix::q5_k_m, "Q5_K - Medium"}};
  const std::string ref_path = work + "/llama_" + mix_name + ".gguf";
  llama_model_quantize_params qp = api.llama_model_quantize_default_params();
  qp.ftype = static_cast<llama_ftype>(*mix);
  qp.nthread = 1;
  require(api.llama_model_quantize(fp_path.c_str(), ref_path.c_str(), &qp) == 0, "llama_model_quantize failed");
  const gl::File fp(fp_path), ref(ref_path);
  const std::string arch = fp.kv_string("general.architecture");
  loftq_common::LlamaMixModel m;
  m.n_layer = static_cast<int>(kv_u32(fp, arch + ".block_count", 0));
  m.n_head = static_cast<int>(kv_u32(fp, arch + ".attention.head_count", 0));
  m.n_head_kv = static_cast<int>(kv_u32(fp, arch + ".attention.head_count_kv", static_cast<std::uint32_t>(m.n_head)));
  m.has_output = fp.find("output.weight") != nullptr;
  std::map<std::string, int> counts;
  for (const gl::Tensor& t : ref.tensors) {
    const gl::Tensor* in = fp.find(t.name);
    require(in != nullptr, t.name + ": not in " + fp_path);
    const auto rule = loftq_common::llama_mix_type(t.name, t.ne, m, *mix);
    const std::uint32_t want = rule ? static_cast<std::uint32_t>(*rule) : in->type;
    require(t.type == want, t.name + ": llama.cpp writes type " + std::to_string(t.type) + ", llama_mix_type gives " +
                                std::to_string(want));
    ++counts[loftq::io::GgufFile::type_name(t.type)];
  }
  std::string summary;
  for (const auto& c : counts) summary += " " + std::to_string(c.second) + " " + c.first;
  std::printf(
      "llama_check: %s (%d layers, %d/%d heads%s): llama_mix_type agrees with llama.cpp on all %zu tensors:%s\n",
      mix_name.c_str(), m.n_layer, m.n_head, m.n_head_kv, m.has_output ? "" : ", tied", ref.tensors.size(),
      summary.c_str());
  if (dir.empty()) return 0;
  const gl::File out(dir + "/model.gguf");
  require(out.tensors.size() == ref.tensors.size(), "model.gguf has another tensor count than llama.cpp's file");
  require(kv_u32(out, "general.file_type", 0) == static_cast<std::uint32_t>(*mix), "model.gguf's general.file_type");
  int kept = 0, same_bytes = 0;
  const gl::File adapter(dir + "/adapter.gguf");
  for (const gl::Tensor& t : out.tensors) {
    const gl::Tensor* r = ref.find(t.name);
    require(r != nullptr, t.name + ": not in llama.cpp's file");
    const bool unwritten = r->type == gl::F16 || r->type == gl::Q5_0 || r->type == gl::Q5_1;
    if (unwritten && t.type == fp.find(t.name)->type) {
      ++kept;
      continue;
    }
    require(t.type == r->type,
            t.name + ": model.gguf has type " + std::to_string(t.type) + ", llama.cpp's " + std::to_string(r->type));
    // Quantized without an adapter, at --scale absmax: ggml's own blocks, as llama-quantize writes them.
    if (t.type != fp.find(t.name)->type && !adapter.find(t.name + ".lora_a")) {
      require(t.nbytes == r->nbytes && std::memcmp(out.at(t), ref.at(*r), t.nbytes) == 0,
              t.name + ": quantized without an adapter, but not llama.cpp's bytes");
      ++same_bytes;
    }
  }
  require(same_bytes > 0, "no tensor quantized without an adapter");
  g_warnings.clear();
  Engine lq(api, dir + "/model.gguf");
  lq.load_adapter(dir + "/adapter.gguf");
  const std::string desc = lq.desc(), type_name = names.at(*mix);
  require(desc.size() >= type_name.size() &&
              desc.compare(desc.size() - type_name.size(), std::string::npos, type_name) == 0,
          "llama.cpp names the file '" + desc + "', not " + type_name);
  std::printf(
      "llama_check: %s: model.gguf has llama.cpp's types (%d kept in a type loftq does not write; %d quantized "
      "without an adapter byte for byte llama.cpp's); llama.cpp loads it with the adapter as '%s'\n",
      mix_name.c_str(), kept, same_bytes, desc.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> a(argv + 1, argv + argc);
  g_verbose = std::getenv("LOFTQ_LLAMA_CHECK_VERBOSE") != nullptr;
  try {
    if (a.size() == 2 && a[0] == "synth") return cmd_synth(a[1]);
    if (a.size() == 5 && a[0] == "logits") {
      const Api api = load_api();
      return cmd_logits(api, a[1], a[2], a[3], std::stod(a[4]));
    }
    if (a.size() == 6 && a[0] == "mix_synth")
      return cmd_mix_synth(a[1], static_cast<std::uint32_t>(std::stoul(a[2])),
                           static_cast<std::uint32_t>(std::stoul(a[3])), static_cast<std::uint32_t>(std::stoul(a[4])),
                           a[5] == "tied");
    if ((a.size() == 4 || a.size() == 5) && a[0] == "mix") {
      const Api api = load_api();
      return cmd_mix(api, a[1], a[2], a[3], a.size() == 5 ? a[4] : std::string());
    }
    if (a.size() == 5 && a[0] == "adapter") {
      const Api api = load_api();
      return cmd_adapter(api, a[1], a[2], a[3], a[4]);
    }
  } catch (const std::exception& e) {
    die(e.what());
  }
  std::fprintf(stderr,
               "usage: llama_check synth OUT.gguf\n"
               "       llama_check logits MODEL.gguf TOKENS.npy LOGITS.npy TOL\n"
               "       llama_check adapter FP.gguf DIR QUANT WORK\n"
               "       llama_check mix_synth OUT.gguf LAYERS HEADS HEADS_KV tied|untied\n"
               "       llama_check mix FP.gguf MIX WORK [DIR]\n");
  return 2;
}

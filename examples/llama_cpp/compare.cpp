// LoftQ's llama.cpp files against ggml's own quantization, measured in
// llama.cpp itself (docs/llama_cpp.md shows the output):
//
//   llama_cpp_compare LOFTQ WORK
//
// LOFTQ is the loftq tool; WORK, a new directory, receives everything. The
// model is a small llama made here (WORK/fp.gguf: width 256, FFN 512, 2
// layers, 4 heads, vocabulary 256; common/llama_synth.hpp). For each ggml
// type and each of llama.cpp's mixes the targets (every attention and FFN
// matrix) are stored three ways at the same bytes but (a)'s missing adapter:
//
//   (a) ggml       ggml's own quantization (ggml_quantize_chunk), no adapter
//   (b) ggml+SVD   (a) with a rank-r adapter holding the truncated SVD of
//                  (a)'s error, laid out as the tool's adapter.gguf
//   (c) LoftQ      `LOFTQ model --format gguf --quant TYPE --rank r`
//
// and each row gives the file sizes, the targets' bits per weight without
// and with the adapter (and the adapter's share projected to 4096 x 4096
// matrices), and, over token sequences llama.cpp samples from WORK/fp.gguf,
// the mean next-token KL(fp || .) and the perplexity. The second table does
// the same with an importance matrix: `LOFTQ calibrate --imatrix` on other
// sampled sequences; (a) and (b) then quantize with its weights
// (ggml_quantize_chunk's imatrix argument, as llama-quantize --imatrix
// does), and (c) is `LOFTQ model ... --calibration imatrix.gguf`.
//
// The libraries are those of LOFTQ_LLAMA_CPP_DIR (common/llama_engine.hpp);
// without them the program says so and exits 77.
#include "common/ggml_baseline.hpp"
#include "common/gguf_layout.hpp"
#include "common/llama_engine.hpp"
#include "common/llama_quant_mix.hpp"
#include "common/llama_synth.hpp"
#include "common/lm/save.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

namespace {

namespace gl = gguf_layout;
namespace lc = llama_check;

constexpr int kRank = 16;
constexpr int kEvalSequences = 16;

struct Eval {
  std::vector<std::vector<llama_token>> seqs;
  std::vector<std::vector<std::vector<float>>> ref;  // fp's logits
};

struct Scores {
  double kl = 0, ppl = 0;
};

Scores score(lc::Engine& e, const Eval& ev) {
  return {lc::mean_kl(ev.ref, e, ev.seqs), std::exp(lc::mean_nll(e, ev.seqs))};
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

void run(const std::string& cmd) { lc::require(std::system(cmd.c_str()) == 0, "failed: " + cmd); }

// llama-quantize's importance per column: an imatrix.gguf's <name>.in_sum2 over <name>.counts.
lc::Importance read_importance(const std::string& path) {
  const gl::File f(path);
  lc::Importance out;
  const std::string suffix = ".in_sum2";
  for (const gl::Tensor& t : f.tensors) {
    if (t.name.size() <= suffix.size() || t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string name = t.name.substr(0, t.name.size() - suffix.size());
    const gl::Tensor* c = f.find(name + ".counts");
    lc::require(c != nullptr && c->numel == 1, path + ": " + name + " has no single count");
    const float count = f.values(*c)[0];
    lc::require(count > 0, path + ": " + name + " has count 0");
    std::vector<float> v = f.values(t);
    for (float& x : v) x /= count;
    out[name] = std::move(v);
  }
  lc::require(!out.empty(), path + ": no importance");
  return out;
}

// One row: LOFTQ's files for `quant` (a type or a mix) and the two ggml baselines, all three in llama.cpp.
double row(const lc::Api& api, const std::string& loftq, const std::string& fp, const std::string& work,
           const std::string& quant, const Eval& ev, const std::string& imatrix_path,
           const lc::Importance* importance) {
  const std::string dir = work + "/" + (importance ? "im_" : "") + quant;
  run(quoted(loftq) + " model --input " + quoted(fp) + " --output " + quoted(dir) + " --format gguf --quant " + quant +
      " --rank " + std::to_string(kRank) + " --threads 2 --quiet" +
      (importance ? " --calibration " + quoted(imatrix_path) : std::string()));
  const gl::File fpf(fp), model(dir + "/model.gguf"), adapter(dir + "/adapter.gguf");
  lc::write_ggml_baseline(api, fpf, model, adapter, dir + "/ggml.gguf", importance);
  lc::write_svd_adapter(api, fpf, gl::File(dir + "/ggml.gguf"), adapter, dir + "/svd.gguf");

  // The targets (the tensors with an adapter): what model.gguf stores of them, and adapter.gguf's factors.
  double weights = 0, base_bits = 0, adapter_bits = 0, factor_bits = 0;
  for (const gl::Tensor& t : model.tensors) {
    const gl::Tensor* a = adapter.find(t.name + ".lora_a");
    const gl::Tensor* b = adapter.find(t.name + ".lora_b");
    if (!a || !b) continue;
    weights += static_cast<double>(t.numel);
    base_bits += 8.0 * static_cast<double>(t.nbytes);
    adapter_bits += 8.0 * static_cast<double>(a->nbytes + b->nbytes);
    factor_bits = 8.0 * static_cast<double>(a->nbytes) / static_cast<double>(a->numel);
  }
  // A 4096 x 4096 matrix: the same blocks, and r (4096 + 4096) adapter elements.
  const double wide_adapter = factor_bits * kRank * 2.0 * 4096 / (4096.0 * 4096.0);

  lc::Engine gg(api, dir + "/ggml.gguf");
  lc::Engine sv(api, dir + "/ggml.gguf");
  sv.load_adapter(dir + "/svd.gguf");
  sv.adapter_scale(1.0f);
  lc::Engine lq(api, dir + "/model.gguf");
  lq.load_adapter(dir + "/adapter.gguf");
  lq.adapter_scale(1.0f);
  const Scores a = score(gg, ev), b = score(sv, ev), c = score(lq, ev);
  std::printf("| %s | %zu | %zu | %.4f | %.4f | %.4f | %.5f | %.5f | %.5f | %.3f | %.4f | %.4f | %.4f |\n",
              quant.c_str(), static_cast<std::size_t>(std::filesystem::file_size(dir + "/model.gguf")),
              static_cast<std::size_t>(std::filesystem::file_size(dir + "/adapter.gguf")), base_bits / weights,
              (base_bits + adapter_bits) / weights, base_bits / weights + wide_adapter, a.kl, b.kl, c.kl, c.kl / b.kl,
              a.ppl, b.ppl, c.ppl);
  std::fflush(stdout);
  return factor_bits;
}

void header(const char* title) {
  std::printf(
      "\n%s\n\n"
      "| type | model.gguf bytes | adapter.gguf bytes | bits/weight | with adapter | with adapter at 4096 | "
      "KL ggml | KL ggml+SVD | KL LoftQ | LoftQ / ggml+SVD | PPL ggml | PPL ggml+SVD | PPL LoftQ |\n"
      "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
      title);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: llama_cpp_compare LOFTQ WORK\n");
    return 2;
  }
  const std::string loftq = argv[1], work = argv[2];
  try {
    const lc::Api api = lc::load_api();
    lc::require(!std::filesystem::exists(work), work + ": exists; give a new directory");
    std::filesystem::create_directories(work);
    const std::string fp = work + "/fp.gguf";
    lc::write_synth(fp, {"synth256x2", 512, 2, 4, 4, false});

    Eval ev;
    std::vector<std::vector<int>> calib;
    double fp_ppl = 0;
    {
      lc::Engine fpe(api, fp);
      ev.seqs = lc::sample(fpe, kEvalSequences, 20240601u);
      for (const auto& s : ev.seqs) ev.ref.push_back(fpe.logits(s));
      fp_ppl = std::exp(lc::mean_nll(fpe, ev.seqs));
      for (const auto& s : lc::sample(fpe, kEvalSequences, 7u)) calib.emplace_back(s.begin(), s.end());
    }
    lm::write_tokens_npy(work + "/tokens.npy", calib);
    run(quoted(loftq) + " calibrate --input " + quoted(fp) + " --tokens " + quoted(work + "/tokens.npy") +
        " --output " + quoted(work + "/calib") + " --stats diag --imatrix --threads 2 --quiet");
    const std::string imatrix = work + "/calib/imatrix.gguf";
    const lc::Importance importance = read_importance(imatrix);

    std::printf(
        "model: %s (width 256, FFN 512, 2 layers, vocabulary 256), rank %d adapters; %d sequences of %d tokens "
        "sampled from it by llama.cpp; its own perplexity on them %.4f\n",
        fp.c_str(), kRank, kEvalSequences, lc::kSeqLen, fp_ppl);
    const std::vector<std::string> types = {"q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_xs", "q4_0", "q8_0", "iq4_nl"};
    header("Without an importance matrix: (a) ggml, (b) ggml + SVD adapter of its error, (c) LoftQ");
    double factor_bits = 0;
    for (const std::string& q : types) factor_bits = row(api, loftq, fp, work, q, ev, imatrix, nullptr);
    for (loftq_common::LlamaMix m : loftq_common::llama_mixes())
      row(api, loftq, fp, work, loftq_common::llama_mix_name(m), ev, imatrix, nullptr);
    header("With the importance matrix: (a) ggml with its weights, (b) that + SVD adapter, (c) LoftQ --calibration");
    for (const std::string& q : types) row(api, loftq, fp, work, q, ev, imatrix, &importance);
    std::printf("\nadapter.gguf's factors (and the SVD adapter's) take %g bits per element, the tool's default type\n",
                factor_bits);
  } catch (const std::exception& e) {
    lc::die(e.what());
  }
  return 0;
}

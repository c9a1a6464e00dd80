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
//       adapter) is lower at s = 1 than at 0.9 and 1.1, and at most half of
//       KL(FP || ggml's own quantization of the same tensors to QUANT), made
//       here by ggml_quantize_chunk (WORK/ggml.gguf).
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

[[noreturn]] void die(const std::string& m) {
  std::fprintf(stderr, "llama_check: %s\n", m.c_str());
  std::exit(1);
}
void require(bool ok, const std::string& m) {
  if (!ok) die(m);
}

// llama.h's and ggml's entry points, resolved from the prebuilt libraries.
struct Api {
#define LOFTQ_API_FN(name) decltype(&::name) name = nullptr
  LOFTQ_API_FN(ggml_backend_load_all_from_path);
  LOFTQ_API_FN(ggml_quantize_chunk);
  LOFTQ_API_FN(llama_backend_init);
  LOFTQ_API_FN(llama_log_set);
  LOFTQ_API_FN(llama_model_default_params);
  LOFTQ_API_FN(llama_context_default_params);
  LOFTQ_API_FN(llama_model_load_from_file);
  LOFTQ_API_FN(llama_model_free);
  LOFTQ_API_FN(llama_model_desc);
  LOFTQ_API_FN(llama_model_get_vocab);
  LOFTQ_API_FN(llama_vocab_n_tokens);
  LOFTQ_API_FN(llama_init_from_model);
  LOFTQ_API_FN(llama_free);
  LOFTQ_API_FN(llama_get_memory);
  LOFTQ_API_FN(llama_memory_clear);
  LOFTQ_API_FN(llama_batch_init);
  LOFTQ_API_FN(llama_batch_free);
  LOFTQ_API_FN(llama_decode);
  LOFTQ_API_FN(llama_get_logits_ith);
  LOFTQ_API_FN(llama_adapter_lora_init);
  LOFTQ_API_FN(llama_adapter_lora_free);
  LOFTQ_API_FN(llama_adapter_meta_val_str);
  LOFTQ_API_FN(llama_set_adapters_lora);
  LOFTQ_API_FN(llama_model_quantize_default_params);
  LOFTQ_API_FN(llama_model_quantize);
#undef LOFTQ_API_FN
};

// The warnings and errors llama.cpp logs while loading, for the "no warning" check.
std::vector<std::string> g_warnings;
bool g_verbose = false;

void log_callback(ggml_log_level level, const char* text, void*) {
  static ggml_log_level last = GGML_LOG_LEVEL_INFO;
  if (level != GGML_LOG_LEVEL_CONT) last = level;
  if (last == GGML_LOG_LEVEL_WARN || last == GGML_LOG_LEVEL_ERROR) {
    if (level == GGML_LOG_LEVEL_CONT && !g_warnings.empty())
      g_warnings.back() += text;
    else
      g_warnings.emplace_back(text);
  }
  if (g_verbose) std::fputs(text, stderr);
}

template <class F>
void resolve(void* lib, const char* name, F& f) {
  void* sym = dlsym(lib, name);
  require(sym != nullptr, std::string("no symbol ") + name);
  f = reinterpret_cast<F>(sym);
}

// The libraries, or exit 77 with a message when they are not there.
Api load_api() {
  const char* env = std::getenv("LOFTQ_LLAMA_CPP_DIR");
  std::string dir = env ? env : "";
#ifdef LOFTQ_LLAMA_CPP_DIR
  if (dir.empty()) dir = LOFTQ_LLAMA_CPP_DIR;
#endif
  if (dir.empty()) {
    std::printf("llama_check: skipped: set LOFTQ_LLAMA_CPP_DIR to the directory of llama.cpp's prebuilt libraries\n");
    std::exit(77);
  }
  // libllama's NEEDED entries name its siblings without a path: loaded first, by path, they satisfy them.
  void* libs[3] = {};
  const char* names[3] = {"libggml-base.so", "libggml.v0.5.0.so", "libllama.v0.5.0.so"};
  for (int i = 0; i < 3; ++i) {
    libs[i] = dlopen((dir + "/" + names[i]).c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!libs[i]) {
      std::printf("llama_check: skipped: cannot load %s/%s: %s\n", dir.c_str(), names[i], dlerror());
      std::exit(77);
    }
  }
  Api a;
  resolve(libs[1], "ggml_backend_load_all_from_path", a.ggml_backend_load_all_from_path);
  resolve(libs[0], "ggml_quantize_chunk", a.ggml_quantize_chunk);
#define LOFTQ_RESOLVE(name) resolve(libs[2], #name, a.name)
  LOFTQ_RESOLVE(llama_backend_init);
  LOFTQ_RESOLVE(llama_log_set);
  LOFTQ_RESOLVE(llama_model_default_params);
  LOFTQ_RESOLVE(llama_context_default_params);
  LOFTQ_RESOLVE(llama_model_load_from_file);
  LOFTQ_RESOLVE(llama_model_free);
  LOFTQ_RESOLVE(llama_model_desc);
  LOFTQ_RESOLVE(llama_model_get_vocab);
  LOFTQ_RESOLVE(llama_vocab_n_tokens);
  LOFTQ_RESOLVE(llama_init_from_model);
  LOFTQ_RESOLVE(llama_free);
  LOFTQ_RESOLVE(llama_get_memory);
  LOFTQ_RESOLVE(llama_memory_clear);
  LOFTQ_RESOLVE(llama_batch_init);
  LOFTQ_RESOLVE(llama_batch_free);
  LOFTQ_RESOLVE(llama_decode);
  LOFTQ_RESOLVE(llama_get_logits_ith);
  LOFTQ_RESOLVE(llama_adapter_lora_init);
  LOFTQ_RESOLVE(llama_adapter_lora_free);
  LOFTQ_RESOLVE(llama_adapter_meta_val_str);
  LOFTQ_RESOLVE(llama_set_adapters_lora);
  LOFTQ_RESOLVE(llama_model_quantize_default_params);
  LOFTQ_RESOLVE(llama_model_quantize);
#undef LOFTQ_RESOLVE
  a.llama_log_set(log_callback, nullptr);
  a.ggml_backend_load_all_from_path(dir.c_str());
  a.llama_backend_init();
  return a;
}

constexpr int kSeqLen = 64;

// A model and one context on it; logits of whole sequences, one decode each.
class Engine {
 public:
  Engine(const Api& api, const std::string& path) : api_(api) {
    llama_model_params mp = api_.llama_model_default_params();
    mp.n_gpu_layers = 0;
    model_ = api_.llama_model_load_from_file(path.c_str(), mp);
    require(model_ != nullptr, path + ": llama.cpp cannot load it");
    llama_context_params cp = api_.llama_context_default_params();
    cp.n_ctx = 0;  // the model's: a shorter context is warned about
    cp.n_batch = kSeqLen;
    cp.n_ubatch = kSeqLen;
    cp.n_seq_max = 1;
    cp.n_threads = 1;
    cp.n_threads_batch = 1;
    // The cache in F32, not its default F16, and attention without flash attention's F16 rounding.
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    ctx_ = api_.llama_init_from_model(model_, cp);
    require(ctx_ != nullptr, path + ": no llama.cpp context");
    n_vocab_ = api_.llama_vocab_n_tokens(api_.llama_model_get_vocab(model_));
  }
  ~Engine() {
    api_.llama_free(ctx_);  // before the adapter it may use
    if (adapter_) api_.llama_adapter_lora_free(adapter_);
    api_.llama_model_free(model_);
  }
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  int n_vocab() const { return n_vocab_; }
  std::string desc() const {
    char buf[256] = {};
    api_.llama_model_desc(model_, buf, sizeof buf);
    return buf;
  }
  void load_adapter(const std::string& path) {
    adapter_ = api_.llama_adapter_lora_init(model_, path.c_str());
    require(adapter_ != nullptr, path + ": llama.cpp cannot load the adapter");
  }
  // A string of the adapter's metadata as llama.cpp reads it ("" when absent).
  std::string adapter_meta(const char* key) const {
    char buf[512] = {};
    return api_.llama_adapter_meta_val_str(adapter_, key, buf, sizeof buf) < 0 ? std::string() : std::string(buf);
  }
  void adapter_scale(float s) {
    require(api_.llama_set_adapters_lora(ctx_, &adapter_, 1, &s) == 0, "llama_set_adapters_lora failed");
  }

  // Logits of every position, [position][token], from a fresh cache.
  std::vector<std::vector<float>> logits(const std::vector<llama_token>& tokens) { return decode(tokens, 0); }
  // The next-token logits after `token` at position `pos`, on the cache of positions 0 .. pos - 1.
  std::vector<float> next(llama_token token, int pos) { return decode({token}, pos).back(); }

 private:
  std::vector<std::vector<float>> decode(const std::vector<llama_token>& tokens, int pos0) {
    if (pos0 == 0) api_.llama_memory_clear(api_.llama_get_memory(ctx_), true);
    const int n = static_cast<int>(tokens.size());
    llama_batch b = api_.llama_batch_init(n, 0, 1);
    b.n_tokens = n;
    for (int i = 0; i < n; ++i) {
      b.token[i] = tokens[static_cast<std::size_t>(i)];
      b.pos[i] = pos0 + i;
      b.n_seq_id[i] = 1;
      b.seq_id[i][0] = 0;
      b.logits[i] = 1;
    }
    const int rc = api_.llama_decode(ctx_, b);
    api_.llama_batch_free(b);
    require(rc == 0, "llama_decode failed: " + std::to_string(rc));
    std::vector<std::vector<float>> out(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
      const float* l = api_.llama_get_logits_ith(ctx_, i);
      require(l != nullptr, "no logits");
      out[static_cast<std::size_t>(i)].assign(l, l + n_vocab_);
    }
    return out;
  }

  const Api& api_;
  llama_model* model_ = nullptr;
  llama_context* ctx_ = nullptr;
  llama_adapter_lora* adapter_ = nullptr;
  int n_vocab_ = 0;
};

std::vector<double> log_softmax(const std::vector<float>& l) {
  const double mx = *std::max_element(l.begin(), l.end());
  double z = 0;
  for (float v : l) z += std::exp(v - mx);
  const double lz = mx + std::log(z);
  std::vector<double> out(l.size());
  for (std::size_t i = 0; i < l.size(); ++i) out[i] = l[i] - lz;
  return out;
}

// Sequences of kSeqLen tokens after BOS (1), sampled at temperature 1 from the
// engine's own next-token distributions; deterministic for a seed.
std::vector<std::vector<llama_token>> sample(Engine& fp, int count, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<std::vector<llama_token>> seqs;
  for (int s = 0; s < count; ++s) {
    std::vector<llama_token> t = {1};
    while (static_cast<int>(t.size()) < kSeqLen) {
      const int pos = static_cast<int>(t.size()) - 1;
      const std::vector<double> lp = log_softmax(fp.next(t.back(), pos));
      double x = u(rng), acc = 0;
      int next = static_cast<int>(lp.size()) - 1;
      for (std::size_t k = 0; k < lp.size(); ++k) {
        acc += std::exp(lp[k]);
        if (x < acc) {
          next = static_cast<int>(k);
          break;
        }
      }
      t.push_back(next);
    }
    seqs.push_back(t);
  }
  return seqs;
}

// Mean over positions of KL(p || q), p the reference's next-token distribution.
double mean_kl(const std::vector<std::vector<std::vector<float>>>& ref, Engine& e,
               const std::vector<std::vector<llama_token>>& seqs) {
  double sum = 0;
  std::size_t n = 0;
  for (std::size_t s = 0; s < seqs.size(); ++s) {
    const auto q = e.logits(seqs[s]);
    for (std::size_t i = 0; i < q.size(); ++i) {
      const std::vector<double> lp = log_softmax(ref[s][i]), lq = log_softmax(q[i]);
      double kl = 0;
      for (std::size_t k = 0; k < lp.size(); ++k) kl += std::exp(lp[k]) * (lp[k] - lq[k]);
      require(std::isfinite(kl), "a KL is not finite");
      sum += kl;
      ++n;
    }
  }
  return sum / static_cast<double>(n);
}

// A llama of width 256 and vocabulary 256 with realistic weights (seeded in
// tensor order), FFN width `hidden`; tied: no output.weight.
struct SynthShape {
  const char* name;
  std::uint32_t hidden, layers, heads, heads_kv;
  bool tied;
};

int write_synth(const std::string& out, const SynthShape& s) {
  const std::uint32_t dim = 256, hidden = s.hidden, layers = s.layers, heads = s.heads, heads_kv = s.heads_kv,
                      vocab = 256, kv_dim = dim / heads * heads_kv;
  gl::Builder b;
  b.add_string("general.architecture", "llama");
  b.add_string("general.name", s.name);
  b.add_u32("general.file_type", 0);
  b.add_u32("llama.block_count", layers);
  b.add_u32("llama.context_length", 256);
  b.add_u32("llama.embedding_length", dim);
  b.add_u32("llama.feed_forward_length", hidden);
  b.add_u32("llama.attention.head_count", heads);
  b.add_u32("llama.attention.head_count_kv", heads_kv);
  b.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  b.add_u32("llama.vocab_size", vocab);
  b.add_string("tokenizer.ggml.model", "none");
  std::uint64_t seed = 1;
  auto mat = [&](const std::string& name, std::uint32_t rows, std::uint32_t cols, double std) {
    loftq_common::RealisticSpec spec;
    spec.target_std = std;
    const loftq_common::RowMatrixXf W = loftq_common::realistic_matrix(rows, cols, seed++, spec);
    b.add_tensor(name, {cols, rows}, gl::F32,
                 gl::Builder::encode_floats(std::vector<float>(W.data(), W.data() + W.size()), gl::F32));
  };
  auto ones = [&](const std::string& name) {
    b.add_tensor(name, {dim}, gl::F32, gl::Builder::encode_floats(std::vector<float>(dim, 1.0f), gl::F32));
  };
  mat("token_embd.weight", vocab, dim, 0.1);
  for (std::uint32_t l = 0; l < layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    ones(p + "attn_norm.weight");
    mat(p + "attn_q.weight", dim, dim, 1 / 16.0);
    mat(p + "attn_k.weight", kv_dim, dim, 1 / 16.0);
    mat(p + "attn_v.weight", kv_dim, dim, 1 / 16.0);
    mat(p + "attn_output.weight", dim, dim, 1 / 16.0);
    ones(p + "ffn_norm.weight");
    mat(p + "ffn_gate.weight", hidden, dim, 1 / 16.0);
    mat(p + "ffn_down.weight", dim, hidden, 1 / std::sqrt(static_cast<double>(hidden)));
    mat(p + "ffn_up.weight", hidden, dim, 1 / 16.0);
  }
  ones("output_norm.weight");
  if (!s.tied) mat("output.weight", vocab, dim, 1 / 16.0);
  b.write(out);
  return 0;
}

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

// ggml's own quantization of model.gguf's quantized targets: model.gguf with
// each tensor that has an adapter replaced by ggml_quantize_chunk of FP's.
void write_ggml_baseline(const Api& api, const gl::File& fp, const gl::File& model, const gl::File& adapter,
                         const std::string& out) {
  std::vector<unsigned char> bytes = model.bytes;
  int n = 0;
  for (const gl::Tensor& t : model.tensors) {
    if (!adapter.find(t.name + ".lora_a")) continue;
    const gl::Tensor* src = fp.find(t.name);
    require(src && src->ne == t.ne, t.name + ": not in the fp model with that shape");
    const std::vector<float> w = fp.values(*src);
    const std::size_t written =
        api.ggml_quantize_chunk(static_cast<ggml_type>(t.type), w.data(), bytes.data() + model.data + t.offset, 0,
                                static_cast<std::int64_t>(t.ne[1]), static_cast<std::int64_t>(t.ne[0]), nullptr);
    require(written == t.nbytes, t.name + ": ggml_quantize_chunk wrote " + std::to_string(written) + " bytes");
    ++n;
  }
  require(n > 0, "no quantized target in model.gguf");
  std::ofstream f(out, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  require(static_cast<bool>(f), out + ": cannot write");
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
  write_ggml_baseline(api, fp_file, gl::File(model_path), gl::File(adapter_path), work + "/ggml.gguf");
  Engine gg(api, work + "/ggml.gguf");

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
  const double kl_ggml = mean_kl(ref, gg, seqs);
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
      "LoftQ base alone %.5f, with the adapter at 0.9 %.5f, 1.0 %.5f, 1.1 %.5f; ratio to ggml's %.3f\n",
      quant.c_str(), desc.c_str(), seqs.size(), kSeqLen, entropy, kl_ggml, kl_base, kl[0], kl[1], kl[2],
      kl[1] / kl_ggml);
  require(kl[1] < kl[0] && kl[1] < kl[2], "the KL is not lowest at adapter scale 1.0");
  require(kl[1] <= 0.5 * kl_ggml, "base + adapter is not within half of ggml's own KL");
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

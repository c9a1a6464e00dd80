// llama.cpp as llama_check and examples/llama_cpp call it: the entry points
// of the prebuilt libraries (dlopen, llama.h's declarations), a model with
// one context and an optional LoRA adapter, and the sampling, KL and
// perplexity they measure.
#pragma once

#include <dlfcn.h>
#include <ggml-backend.h>
#include <ggml.h>
#include <llama.h>

#include "common/ggml_base_lib.hpp"

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

namespace llama_check {

[[noreturn]] inline void die(const std::string& m) {
  std::fprintf(stderr, "llama_check: %s\n", m.c_str());
  std::exit(1);
}
inline void require(bool ok, const std::string& m) {
  if (!ok) die(m);
}

// llama.h's and ggml's entry points, resolved from the prebuilt libraries.
struct Api {
#define LOFTQ_API_FN(name) decltype(&::name) name = nullptr
  LOFTQ_API_FN(ggml_backend_load_all_from_path);
  LOFTQ_API_FN(ggml_quantize_chunk);
  LOFTQ_API_FN(ggml_get_type_traits);
  LOFTQ_API_FN(ggml_type_size);
  LOFTQ_API_FN(ggml_blck_size);
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
inline std::vector<std::string> g_warnings;
inline bool g_verbose = false;

inline void log_callback(ggml_log_level level, const char* text, void*) {
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
inline Api load_api() {
  const std::string dir = loftq_common::llama_cpp_dir();
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
  resolve(libs[0], "ggml_get_type_traits", a.ggml_get_type_traits);
  resolve(libs[0], "ggml_type_size", a.ggml_type_size);
  resolve(libs[0], "ggml_blck_size", a.ggml_blck_size);
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

inline std::vector<double> log_softmax(const std::vector<float>& l) {
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
inline std::vector<std::vector<llama_token>> sample(Engine& fp, int count, unsigned seed) {
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
inline double mean_kl(const std::vector<std::vector<std::vector<float>>>& ref, Engine& e,
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

// Mean over the sequences' positions of -log q(the next token they hold): the
// log of the engine's perplexity on them.
inline double mean_nll(Engine& e, const std::vector<std::vector<llama_token>>& seqs) {
  double sum = 0;
  std::size_t n = 0;
  for (const auto& seq : seqs) {
    const auto q = e.logits(seq);
    for (std::size_t i = 0; i + 1 < seq.size(); ++i) {
      sum -= log_softmax(q[i])[static_cast<std::size_t>(seq[i + 1])];
      ++n;
    }
  }
  require(n > 0 && std::isfinite(sum), "no finite log-likelihood");
  return sum / static_cast<double>(n);
}

}  // namespace llama_check

// Writes a LLaMA-2-7B-shaped safetensors checkpoint for measuring `loftq model`:
// hidden 4096, intermediate 11008, 32 heads, vocabulary 32000; per layer
// q/k/v/o_proj (4096x4096), gate/up_proj (11008x4096), down_proj (4096x11008)
// and two RMSNorm weights; embed_tokens, the final norm and lm_head. Matrices
// are loftq_common::realistic_matrix (decaying spectrum, heavy tails, outlier
// input channels), one seed per tensor derived from SEED, stored as BF16 (or
// another float dtype), and split over files the way transformers shards a
// checkpoint: LAYERS_PER_FILE layers a file, with model.safetensors.index.json
// and a config.json.
//
//   make_checkpoint DIR [--layers N] [--seed S] [--dtype BF16|F16|F32]
//                       [--layers-per-file K] [--hidden H] [--intermediate I] [--vocab V]
//                       [--tokens NxT]
//
// --tokens also writes DIR/tokens.npy: N x T int32 ids, uniform over the
// vocabulary from SEED, the input `loftq calibrate --tokens` takes.
//
// One tensor is in memory at a time. The output is deterministic for a given
// SEED and shape (realistic_matrix is, for any thread count).

#include <loftq/io/safetensors.hpp>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include <sys/stat.h>

#include "common/lm/save.hpp"
#include "common/matrices.hpp"

namespace st = loftq::io;

namespace {

struct Spec {
  std::string name;
  std::vector<std::uint64_t> shape;
};

struct Shape {
  int layers = 4, layers_per_file = 2;
  std::uint64_t hidden = 4096, intermediate = 11008, vocab = 32000, heads = 32;
  std::uint64_t seed = 0;
  st::Dtype dtype = st::Dtype::BF16;
  std::uint64_t token_rows = 0, token_cols = 0;  // --tokens NxT; 0: no tokens.npy
};

std::vector<Spec> layer_tensors(int l, const Shape& s) {
  const std::string p = "model.layers." + std::to_string(l) + ".";
  const std::uint64_t h = s.hidden, i = s.intermediate;
  return {{p + "input_layernorm.weight", {h}},          {p + "mlp.down_proj.weight", {h, i}},
          {p + "mlp.gate_proj.weight", {i, h}},         {p + "mlp.up_proj.weight", {i, h}},
          {p + "post_attention_layernorm.weight", {h}}, {p + "self_attn.k_proj.weight", {h, h}},
          {p + "self_attn.o_proj.weight", {h, h}},      {p + "self_attn.q_proj.weight", {h, h}},
          {p + "self_attn.v_proj.weight", {h, h}}};
}

// Values of one tensor: realistic matrices for 2-D, 1 + small noise for norms.
std::vector<float> values(const Spec& t, std::uint64_t seed) {
  if (t.shape.size() == 2) {
    const auto M = loftq_common::realistic_matrix(static_cast<Eigen::Index>(t.shape[0]),
                                                  static_cast<Eigen::Index>(t.shape[1]), seed);
    return std::vector<float>(M.data(), M.data() + M.size());
  }
  std::vector<float> v(t.shape[0]);
  loftq_common::detail::Normal nd(seed);
  for (float& x : v) x = static_cast<float>(1.0 + 0.05 * nd());
  return v;
}

int run(const std::string& dir, const Shape& s) {
  ::mkdir(dir.c_str(), 0777);
  // Files: the first holds embed_tokens, the last the final norm and lm_head.
  std::vector<std::vector<Spec>> files;
  for (int l = 0; l < s.layers; l += s.layers_per_file) {
    std::vector<Spec> f;
    for (int k = l; k < std::min(s.layers, l + s.layers_per_file); ++k)
      for (Spec& t : layer_tensors(k, s)) f.push_back(std::move(t));
    files.push_back(std::move(f));
  }
  if (files.empty()) files.emplace_back();
  files.front().insert(files.front().begin(), Spec{"model.embed_tokens.weight", {s.vocab, s.hidden}});
  files.back().push_back({"model.norm.weight", {s.hidden}});
  files.back().push_back({"lm_head.weight", {s.vocab, s.hidden}});

  nlohmann::json wm = nlohmann::json::object();
  std::uint64_t total = 0, stream = 0;
  const int nf = static_cast<int>(files.size());
  for (int f = 0; f < nf; ++f) {
    char fname[64];
    std::snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", f + 1, nf);
    std::vector<st::TensorDecl> decls;
    for (const Spec& t : files[f]) decls.push_back({t.name, s.dtype, t.shape});
    st::SafetensorsWriter w(dir + "/" + fname, decls, {{"format", "pt"}});
    for (const Spec& t : files[f]) {
      const std::vector<float> v = values(t, loftq_common::detail::stream_seed(s.seed, stream++));
      w.write_float(t.name, v.data(), v.size(), s.dtype);
      wm[t.name] = fname;
      total += v.size() * st::dtype_size(s.dtype);
      std::fprintf(stderr, "make_checkpoint: %s\n", t.name.c_str());
    }
    w.commit();
  }
  nlohmann::json idx;
  idx["metadata"] = {{"total_size", total}};
  idx["weight_map"] = wm;
  std::ofstream(dir + "/model.safetensors.index.json") << idx.dump(2) << "\n";
  const nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}},
                              {"model_type", "llama"},
                              {"_name_or_path", "synthetic-llama-2-7b-shape"},
                              {"hidden_size", s.hidden},
                              {"intermediate_size", s.intermediate},
                              {"num_attention_heads", s.heads},
                              {"num_key_value_heads", s.heads},
                              {"num_hidden_layers", s.layers},
                              {"vocab_size", s.vocab},
                              {"rms_norm_eps", 1e-5},
                              {"torch_dtype", s.dtype == st::Dtype::BF16  ? "bfloat16"
                                              : s.dtype == st::Dtype::F16 ? "float16"
                                                                          : "float32"}};
  std::ofstream c(dir + "/config.json");
  c << cfg.dump(2) << "\n";
  if (!c) throw std::runtime_error("cannot write " + dir + "/config.json");
  if (s.token_rows > 0) {
    std::mt19937_64 rng(loftq_common::detail::stream_seed(s.seed, stream++));
    std::uniform_int_distribution<std::uint64_t> id(0, s.vocab - 1);
    std::vector<std::vector<int>> seqs(s.token_rows, std::vector<int>(s.token_cols));
    for (auto& q : seqs)
      for (int& t : q) t = static_cast<int>(id(rng));
    lm::write_tokens_npy(dir + "/tokens.npy", seqs);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  auto usage = [] {
    std::fprintf(stderr,
                 "usage: make_checkpoint DIR [--layers N] [--seed S] [--dtype BF16|F16|F32] [--layers-per-file K]\n"
                 "                       [--hidden H] [--intermediate I] [--vocab V] [--tokens NxT]\n");
    return 2;
  };
  if (argc < 2 || argv[1][0] == '-') return usage();
  Shape s;
  for (int i = 2; i < argc; i += 2) {
    if (i + 1 >= argc) return usage();
    const std::string k = argv[i];
    char* end = nullptr;
    const unsigned long long v = std::strtoull(argv[i + 1], &end, 10);
    const bool num = *end == '\0' && argv[i + 1][0] != '-';
    if (k == "--dtype") {
      if (!st::parse_dtype(argv[i + 1], s.dtype) || !st::is_float_dtype(s.dtype) || s.dtype == st::Dtype::F64)
        return usage();
      continue;
    }
    if (k == "--tokens") {
      char* x = nullptr;
      s.token_rows = std::strtoull(argv[i + 1], &x, 10);
      if (*x != 'x' || !std::isdigit(static_cast<unsigned char>(x[1]))) return usage();
      s.token_cols = std::strtoull(x + 1, &end, 10);
      if (*end != '\0' || s.token_rows < 1 || s.token_cols < 1 || s.token_rows * s.token_cols > (1ull << 30))
        return usage();
      continue;
    }
    if (!num) return usage();
    if (k == "--layers" && v <= 1000)
      s.layers = static_cast<int>(v);
    else if (k == "--seed")
      s.seed = v;
    else if (k == "--layers-per-file" && v >= 1 && v <= 1000)
      s.layers_per_file = static_cast<int>(v);
    else if (k == "--hidden" && v >= 1)
      s.hidden = v;
    else if (k == "--intermediate" && v >= 1)
      s.intermediate = v;
    else if (k == "--vocab" && v >= 1)
      s.vocab = v;
    else
      return usage();
  }
  try {
    return run(argv[1], s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_checkpoint: %s\n", e.what());
    return 1;
  }
}

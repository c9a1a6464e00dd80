// The GGUF side of the `loftq model` tests (model_test.sh, cases gguf_*):
//
//   gguftool stories BIN OUT.gguf [f32|f16|bf16]   llama2.c's stories260K as a llama GGUF that
//                                                   llama.cpp loads (exit 77 when BIN is absent)
//   gguftool synth OUT.gguf [VARIANT]               odd shapes and types, alignment 64,
//                                                   assorted key-value types
//   gguftool synth_big OUT.gguf MIB                 one small target and a MIB MiB F16 output.weight
//                                                   of zeros, left sparse in the file
//   gguftool quantize IN.gguf OUT.gguf TYPE          IN's float matrices of whole TYPE blocks in TYPE
//                                                   (q8_0, q4_k, ...), as ggml quantizes them
//   gguftool verify IN.gguf DIR QUANT RANK ITERS ALPHA SCALE [ADAPTER_TYPE]
//   gguftool mix_synth OUT.gguf [falcon|moe]        a 4-layer llama (GQA, width 256, FFN 288,
//                                                   vocabulary 4200, an output.weight) for the mixes
//   gguftool verify_mix IN.gguf DIR MIX RANK ITERS SCALE
//   gguftool verify_budget IN.gguf DIR BUDGET       a --bits-budget run: types, stored bits, the allocation
//
// gguftool_verify.cpp says what verify, verify_mix and verify_budget check.
#include "common/gguf_layout.hpp"
#include "common/llama2c.hpp"
#include "common/llama_quant_mix.hpp"

#include <loftq/io/ggml_types.hpp>
#include <loftq/io/gguf_types.hpp>
#include <loftq/loftq.hpp>

#include <nlohmann/json.hpp>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "gguftool.hpp"

namespace {

using namespace gguftool;  // NOLINT(google-build-using-namespace): one program's own helpers

std::uint32_t float_type(const std::string& s) {
  if (s == "f32") return gl::F32;
  if (s == "f16") return gl::F16;
  if (s == "bf16") return gl::BF16;
  die("unknown dtype " + s);
}

void llama_keys(gl::Builder& b, std::uint32_t layers, std::uint32_t dim, std::uint32_t hidden, std::uint32_t heads,
                std::uint32_t kv_heads) {
  b.add_string("general.architecture", "llama");
  b.add_string("general.name", "stories260K");
  b.add_u32("llama.block_count", layers);
  b.add_u32("llama.embedding_length", dim);
  b.add_u32("llama.feed_forward_length", hidden);
  b.add_u32("llama.attention.head_count", heads);
  b.add_u32("llama.attention.head_count_kv", kv_heads);
  b.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
}

int cmd_stories(const std::string& bin, const std::string& out, std::uint32_t type) {
  if (!std::ifstream(bin, std::ios::binary)) {
    std::printf("gguftool: %s is absent; skipping\n", bin.c_str());
    return 77;
  }
  const lm::Weights<float> w = lm::read_checkpoint(bin);
  const lm::Config& c = w.config;
  const std::uint64_t dim = std::uint64_t(c.dim);
  const int L = c.n_layers;
  gl::Builder b;
  llama_keys(b, static_cast<std::uint32_t>(L), static_cast<std::uint32_t>(c.dim),
             static_cast<std::uint32_t>(c.hidden_dim), static_cast<std::uint32_t>(c.n_heads),
             static_cast<std::uint32_t>(c.n_kv_heads));
  // What llama.cpp needs to load it besides: the context length, and a vocabulary of dummy tokens
  // (tokenizer "none" with llama.vocab_size), since llama2.c keeps its tokenizer in another file.
  b.add_u32("llama.context_length", static_cast<std::uint32_t>(c.seq_len));
  b.add_u32("llama.vocab_size", static_cast<std::uint32_t>(c.vocab_size));
  b.add_string("tokenizer.ggml.model", "none");
  // As convert_hf_to_gguf.py writes it: LLAMA_FTYPE_ALL_F32 0, MOSTLY_F16 1, MOSTLY_BF16 32.
  b.add_u32("general.file_type", type == gl::F32 ? 0u : type == gl::F16 ? 1u : 32u);
  // llama2.c stores each weight (out, in) row-major: ggml's ne = [in, out].
  std::map<std::string, std::pair<std::vector<std::uint64_t>, std::vector<float>>> ts;
  auto mat = [&](const std::string& name, const lm::Mat<float>& m) {
    ts[name] = {{std::uint64_t(m.cols()), std::uint64_t(m.rows())}, lm::row_major(m)};
  };
  auto vec = [&](const std::string& name, const lm::Vec<float>& v) {
    ts[name] = {{dim}, std::vector<float>(v.data(), v.data() + v.size())};
  };
  auto layer = [](int l, const char* what) { return "blk." + std::to_string(l) + "." + what + ".weight"; };
  mat("token_embd.weight", w.embedding);
  static const std::pair<const char*, int> kinds[] = {
      {"attn_q", lm::kQ},      {"attn_k", lm::kK},      {"attn_v", lm::kV}, {"attn_output", lm::kO},
      {"ffn_gate", lm::kGate}, {"ffn_down", lm::kDown}, {"ffn_up", lm::kUp}};
  for (int l = 0; l < L; ++l) {
    const auto& lw = w.layers[std::size_t(l)];
    vec(layer(l, "attn_norm"), lw.rms_att);
    vec(layer(l, "ffn_norm"), lw.rms_ffn);
    for (const auto& [name, kind] : kinds) mat(layer(l, name), lw.W[std::size_t(kind)]);
  }
  vec("output_norm.weight", w.rms_final);
  // In llama.cpp's order: embeddings, then each block, then the final norm.
  auto add = [&](const std::string& name, bool norm) {
    const auto& t = ts.at(name);
    b.add_tensor(name, t.first, norm ? gl::F32 : type, gl::Builder::encode_floats(t.second, norm ? gl::F32 : type));
  };
  add("token_embd.weight", false);
  for (int l = 0; l < L; ++l) {
    add(layer(l, "attn_norm"), true);
    for (const char* m : {"attn_q", "attn_k", "attn_v", "attn_output"}) add(layer(l, m), false);
    add(layer(l, "ffn_norm"), true);
    for (const char* m : {"ffn_gate", "ffn_down", "ffn_up"}) add(layer(l, m), false);
  }
  add("output_norm.weight", true);
  b.write(out);
  return 0;
}

// A synthetic model's weights: N(0, 0.05) from a fixed seed, drawn in order.
struct NormalWeights {
  std::mt19937 g;
  std::normal_distribution<float> N{0.0f, 0.05f};
  explicit NormalWeights(unsigned seed) : g(seed) {}
  std::vector<float> operator()(std::uint64_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = N(g);
    return v;
  }
};

// Shapes no real model has: rows of 96 and 33 x 64 (whole blocks), 70 (not:
// kept), a 3-D I32 tensor, alignment 64, string arrays and floats in the keys.
// VARIANT: "" as above; "i32target" with blk.0.attn_q an I32 tensor; "noarch"
// without general.architecture.
int cmd_synth(const std::string& out, const std::string& variant) {
  NormalWeights rnd(7);
  gl::Builder b;
  b.add_u32("general.alignment", 64);
  if (variant != "noarch") b.add_string("general.architecture", "llama");
  b.add_string_array("tokenizer.ggml.tokens", {"<unk>", "a", "",
                                               "\xe2\x96\x81"
                                               "b"});
  b.add_f32("llama.rope.freq_base", 10000.0f);
  b.add_tensor("token_embd.weight", {64, 10}, gl::F16, gl::Builder::encode_floats(rnd(640), gl::F16));
  if (variant == "i32target")
    b.add_tensor("blk.0.attn_q.weight", {96, 40}, gl::I32, std::vector<unsigned char>(4 * 96 * 40, 0));
  else
    b.add_tensor("blk.0.attn_q.weight", {96, 40}, gl::F16, gl::Builder::encode_floats(rnd(96 * 40), gl::F16));
  b.add_tensor("blk.0.attn_k.weight", {64, 33}, gl::BF16, gl::Builder::encode_floats(rnd(64 * 33), gl::BF16));
  b.add_tensor("blk.0.ffn_down.weight", {70, 64}, gl::F32, gl::Builder::encode_floats(rnd(70 * 64), gl::F32));
  std::vector<unsigned char> ints;
  for (int i = 0; i < 2 * 3 * 5; ++i) gl::Builder::put(ints, static_cast<std::uint64_t>(i * 7 + 1), 4);
  b.add_tensor("blk.0.extra", {2, 3, 5}, gl::I32, ints);
  b.add_tensor("blk.1.ffn_up.weight", {128, 48}, gl::F32, gl::Builder::encode_floats(rnd(128 * 48), gl::F32));
  b.write(out);
  return 0;
}

int cmd_synth_big(const std::string& out, std::uint64_t mib) {
  const std::vector<float> w = NormalWeights(7)(96 * 64);
  gl::Builder b;
  b.add_string("general.architecture", "llama");
  b.add_tensor("blk.0.attn_q.weight", {96, 64}, gl::F32, gl::Builder::encode_floats(w, gl::F32));
  // Last, with its bytes left out: the file is then extended over them, a hole that reads as zeros.
  const std::uint64_t cols = 4096, rows = mib * (std::uint64_t(1) << 20) / (2 * cols);
  b.add_tensor("output.weight", {cols, rows}, gl::F16, {});
  b.write(out);
  std::filesystem::resize_file(out, std::filesystem::file_size(out) + 2 * cols * rows);
  return 0;
}

// IN with every 2-D F32, F16 or BF16 tensor whose rows are whole blocks of TYPE (a ggml format: q8_0, q4_k, ...)
// in TYPE as ggml_quantize_chunk writes it (the library's ggml quantizer without its scale search, which
// test_ggml_kquants holds to ggml's bytes), every other tensor and key-value pair as it is but general.file_type,
// TYPE's LLAMA_FTYPE: a file as llama-quantize makes it for a model of whole blocks.
int cmd_quantize(const std::string& in_path, const std::string& out, const std::string& type) {
  const loftq::GgmlFormat fmt = loftq::ggml_format_from_name(type);
  const gl::File in(in_path);
  gl::Builder b;
  for (const auto& e : in.kvs) {
    if (e.first == "general.file_type") {
      b.add_u32(e.first, loftq::ggml_format_llama_ftype(fmt));
      continue;
    }
    b.key(e.first, e.second.first);
    b.kv.insert(b.kv.end(), e.second.second.begin(), e.second.second.end());
    if (e.first == "general.alignment") b.alignment = gl::le(e.second.second.data(), 4);
  }
  loftq::QuantizeOptions plain;
  plain.scale_search = false;
  plain.threads = 1;
  int quantized = 0;
  for (const gl::Tensor& t : in.tensors) {
    const bool is_float = t.type == gl::F32 || t.type == gl::F16 || t.type == gl::BF16;
    if (!is_float || t.ne.size() != 2 || t.ne[0] % static_cast<std::uint64_t>(loftq::ggml_format_block(fmt)) != 0) {
      b.add_tensor(t.name, t.ne, t.type, std::vector<unsigned char>(in.at(t), in.at(t) + t.nbytes));
      continue;
    }
    const std::vector<float> v = in.values(t);
    const Eigen::Map<const loftq::RowMatrix<float>> W(v.data(), static_cast<Eigen::Index>(t.ne[1]),
                                                      static_cast<Eigen::Index>(t.ne[0]));
    b.add_tensor(t.name, t.ne, static_cast<std::uint32_t>(loftq::ggml_format_type_id(fmt)),
                 loftq::io::ggml_block_bytes(loftq::quantize(W, loftq::GgmlQuantizer(fmt), plain), fmt));
    ++quantized;
  }
  b.write(out);
  std::printf("gguftool: %d tensors in %s\n", quantized, loftq::ggml_format_name(fmt));
  return 0;
}

int cmd_mix_synth(const std::string& out, const std::string& variant) {
  const std::string arch = variant == "falcon" ? "falcon" : "llama";
  // A vocabulary of 4200: token_embd and output are more than the 2^20 elements the tool quantizes at a time.
  const std::uint64_t dim = 256, kv = 64, hidden = 288, vocab = 4200, layers = 4;
  NormalWeights rnd(11);
  gl::Builder b;
  b.add_string("general.architecture", arch);
  b.add_string("general.name", "mix4");
  b.add_u32(arch + ".block_count", layers);
  b.add_u32(arch + ".embedding_length", dim);
  b.add_u32(arch + ".attention.head_count", 8);
  b.add_u32(arch + ".attention.head_count_kv", 2);
  if (variant == "moe") b.add_u32(arch + ".expert_count", 8);
  auto mat = [&](const std::string& name, std::uint64_t rows, std::uint64_t cols, std::uint32_t type) {
    b.add_tensor(name, {cols, rows}, type, gl::Builder::encode_floats(rnd(rows * cols), type));
  };
  mat("token_embd.weight", vocab, dim, gl::F16);
  for (std::uint64_t l = 0; l < layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    b.add_tensor(p + "attn_norm.weight", {dim}, gl::F32,
                 gl::Builder::encode_floats(std::vector<float>(dim, 1), gl::F32));
    mat(p + "attn_q.weight", dim, dim, gl::F32);
    mat(p + "attn_k.weight", kv, dim, gl::F16);
    mat(p + "attn_v.weight", kv, dim, gl::BF16);
    mat(p + "attn_output.weight", dim, dim, gl::F32);
    mat(p + "ffn_gate.weight", hidden, dim, gl::F32);
    mat(p + "ffn_down.weight", dim, hidden, gl::F32);
    mat(p + "ffn_up.weight", hidden, dim, gl::F32);
  }
  mat("output.weight", vocab, dim, gl::F32);
  b.write(out);
  return 0;
}

// Inputs the reader accepts whose outputs it would not (the tool refuses them
// before any work): `kvs` holds exactly kGgufMaxKVs pairs, to which
// model.gguf adds three (`kvs_fit`: three fewer, so the output is at the
// limit); `name` has a target named with the 63 bytes a name may have, which
// the adapter's ".lora_a" lengthens; `header` has a header 64 bytes short of
// kGgufMaxHeaderBytes (a 256 MiB string value), to which model.gguf adds a
// longer pair.
int cmd_synth_limit(const std::string& out, const std::string& variant) {
  const std::vector<float> w = NormalWeights(5)(64 * 64);
  gl::Builder b;
  b.add_string("general.architecture", "llama");
  std::string target = "blk.0.attn_q.weight";
  if (variant == "kvs" || variant == "kvs_fit") {
    const std::uint64_t n = loftq::io::kGgufMaxKVs - (variant == "kvs" ? 0 : 3);
    for (std::uint64_t i = 1; i < n; ++i) b.add_u32("x.k" + std::to_string(i), 1);
  } else if (variant == "name") {
    target = "blk." + std::string(loftq::io::kGgufMaxName - 18, '0') + ".attn_q.weight";
  } else if (variant == "header") {
    // 24 bytes of counts, the architecture pair (45 bytes), the pad pair's
    // 25 bytes besides its value, and the tensor info (59 bytes).
    const std::uint64_t rest = 24 + 45 + 25 + (8 + target.size() + 4 + 16 + 4 + 8);
    b.add_string("x.pad", std::string(loftq::io::kGgufMaxHeaderBytes - 64 - rest, ' '));
  } else {
    throw std::runtime_error("synth_limit: unknown variant " + variant);
  }
  b.add_tensor(target, {64, 64}, gl::F32, gl::Builder::encode_floats(w, gl::F32));
  b.write(out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace gguftool;  // NOLINT(google-build-using-namespace)
  const std::vector<std::string> a(argv + 1, argv + argc);
  try {
    if (a.size() >= 3 && a[0] == "stories") return cmd_stories(a[1], a[2], a.size() > 3 ? float_type(a[3]) : gl::F32);
    if ((a.size() == 2 || a.size() == 3) && a[0] == "synth") return cmd_synth(a[1], a.size() == 3 ? a[2] : "");
    if (a.size() == 4 && a[0] == "quantize") return cmd_quantize(a[1], a[2], a[3]);
    if (a.size() == 4 && a[0] == "verify_budget") return cmd_verify_budget(a[1], a[2], std::stod(a[3]));
    if (a.size() == 3 && a[0] == "synth_limit") return cmd_synth_limit(a[1], a[2]);
    if (a.size() == 3 && a[0] == "synth_big") return cmd_synth_big(a[1], std::stoull(a[2]));
    if ((a.size() == 2 || a.size() == 3) && a[0] == "mix_synth") return cmd_mix_synth(a[1], a.size() == 3 ? a[2] : "");
    if (a.size() == 7 && a[0] == "verify_mix")
      return cmd_verify_mix(a[1], a[2], a[3], std::stol(a[4]), std::stoi(a[5]), a[6]);
    if ((a.size() == 8 || a.size() == 9) && a[0] == "verify")
      return cmd_verify(a[1], a[2], a[3], std::stol(a[4]), std::stoi(a[5]), std::stod(a[6]), a[7],
                        a.size() == 9 ? a[8] : "f16");
  } catch (const std::exception& e) {
    die(e.what());
  }
  std::fprintf(stderr,
               "usage: gguftool stories BIN OUT [f32|f16|bf16] | synth OUT [i32target|noarch] | quantize IN OUT TYPE | "
               "synth_big OUT MIB | synth_limit OUT kvs|kvs_fit|name|header | "
               "verify IN DIR QUANT RANK ITERS ALPHA SCALE [ADAPTER_TYPE] | mix_synth OUT [falcon|moe] | "
               "verify_mix IN DIR MIX RANK ITERS SCALE | verify_budget IN DIR BUDGET\n");
  return 2;
}

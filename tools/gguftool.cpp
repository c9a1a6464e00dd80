// The GGUF side of the `loftq model` tests (model_test.sh, cases gguf_*):
//
//   gguftool stories BIN OUT.gguf [f32|f16|bf16]   llama2.c's stories260K as a llama GGUF that
//                                                   llama.cpp loads (exit 77 when BIN is absent)
//   gguftool synth OUT.gguf [VARIANT]               odd shapes and types, alignment 64,
//                                                   assorted key-value types
//   gguftool verify IN.gguf DIR QUANT RANK ITERS ALPHA SCALE [ADAPTER_TYPE]
//   gguftool mix_synth OUT.gguf [falcon|moe]        a 4-layer llama (GQA, width 256, FFN 288,
//                                                   vocabulary 4200, an output.weight) for the mixes
//   gguftool verify_mix IN.gguf DIR MIX RANK ITERS SCALE
//
// verify_mix checks model.gguf of a --quant MIX run (q2_k_mix, q4_k_m, ...):
// general.file_type the mix's LLAMA_FTYPE; each tensor in the type
// llama_mix_type gives it (common/llama_quant_mix.hpp) when loftq writes that
// type, else byte for byte as in IN; a tensor with an adapter decoded equal
// bit for bit to the Q of loftq::initialize in its format, one without (a plain
// quantization) to loftq::quantize's.
//
// verify reads IN and DIR/model.gguf, DIR/adapter.gguf with the layouts of
// common/gguf_layout.hpp (not the library's reader) and checks: the
// key-value pairs copied in order but general.file_type and
// general.quantization_version (llama.cpp's values), plus a note; every
// tensor in order with its shape; non-targets byte for byte; each target in the QUANT type, decoded
// by ggml's rules, equal bit for bit in F32 to the Q of loftq::initialize
// run here with the same settings; the adapter's metadata, the lora_a /
// lora_b shapes llama.cpp checks, their type (ADAPTER_TYPE, default f32;
// a q8_0 lora_b of a rank not a multiple of 32 in f16) and every stored
// value within that type's rounding of the library's to_peft factors,
// and (alpha / r) * lora_b * lora_a equal to the library's A B^T (F32) and
// lowering the error of Q alone.
#include "common/gguf_layout.hpp"
#include "common/llama2c.hpp"
#include "common/llama_quant_mix.hpp"

#include <loftq/loftq.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

namespace gl = gguf_layout;

[[noreturn]] void die(const std::string& m) {
  std::fprintf(stderr, "gguftool: %s\n", m.c_str());
  std::exit(1);
}
void require(bool ok, const std::string& m) {
  if (!ok) die(m);
}

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

// Shapes no real model has: rows of 96 and 33 x 64 (whole blocks), 70 (not:
// kept), a 3-D I32 tensor, alignment 64, string arrays and floats in the keys.
// VARIANT: "" as above; "q8target" with blk.0.attn_q already Q8_0; "noarch"
// without general.architecture.
int cmd_synth(const std::string& out, const std::string& variant) {
  std::mt19937 g(7);
  std::normal_distribution<float> N(0.0f, 0.05f);
  auto rnd = [&](std::uint64_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = N(g);
    return v;
  };
  gl::Builder b;
  b.add_u32("general.alignment", 64);
  if (variant != "noarch") b.add_string("general.architecture", "llama");
  b.add_string_array("tokenizer.ggml.tokens", {"<unk>", "a", "",
                                               "\xe2\x96\x81"
                                               "b"});
  b.add_f32("llama.rope.freq_base", 10000.0f);
  b.add_tensor("token_embd.weight", {64, 10}, gl::F16, gl::Builder::encode_floats(rnd(640), gl::F16));
  if (variant == "q8target")
    b.add_tensor("blk.0.attn_q.weight", {96, 40}, gl::Q8_0, std::vector<unsigned char>(3 * 34 * 40, 0));
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

// blk.<digits>.<projection>.weight with rows of whole blocks of 32.
bool is_target(const gl::Tensor& t) {
  static const char* mods[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
  if (t.ne.size() != 2 || t.ne[0] % 32 != 0 || t.name.rfind("blk.", 0) != 0) return false;
  const std::size_t dot = t.name.find('.', 4);
  if (dot == std::string::npos || dot == 4) return false;
  for (std::size_t i = 4; i < dot; ++i)
    if (t.name[i] < '0' || t.name[i] > '9') return false;
  const std::string rest = t.name.substr(dot + 1);
  for (const char* m : mods)
    if (rest == std::string(m) + ".weight") return true;
  return false;
}

std::uint32_t u32_kv(const gl::File& f, const std::string& key) {
  for (const auto& e : f.kvs)
    if (e.first == key) {
      require(e.second.first == gl::T_U32 && e.second.second.size() == 4, key + " is not a UINT32");
      return static_cast<std::uint32_t>(gl::le(e.second.second.data(), 4));
    }
  require(false, key + " is missing");
  return 0;
}

// model.gguf's pairs: the input's in its order with its types and values, but general.file_type (LLAMA_FTYPE
// `ftype`) and general.quantization_version (GGML_QNT_VERSION 2), then loftq.use_with_adapter, a note.
void check_model_kvs(const gl::File& in, const gl::File& model, std::uint32_t ftype) {
  const std::string ft = "general.file_type", qv = "general.quantization_version", note = "loftq.use_with_adapter";
  std::size_t j = 0;
  for (const auto& e : in.kvs) {
    require(j < model.kvs.size() && model.kvs[j].first == e.first, "model.gguf: pair " + e.first + " moved or lost");
    if (e.first != ft && e.first != qv)
      require(model.kvs[j].second == e.second, "model.gguf: pair " + e.first + " changed");
    ++j;
  }
  for (; j < model.kvs.size(); ++j) {
    const std::string& k = model.kvs[j].first;
    require(k == ft || k == qv || k == note, "model.gguf: an unexpected pair " + k);
  }
  require(u32_kv(model, ft) == ftype, "model.gguf: general.file_type " + std::to_string(u32_kv(model, ft)));
  require(u32_kv(model, qv) == 2, "model.gguf: general.quantization_version");
  require(model.kv_string(note).find("adapter.gguf") != std::string::npos, "model.gguf: no note naming the adapter");
}

// Each stored value within its type's rounding of x: F16 and BF16 half a unit in the last place (F16's subnormal
// spacing 2^-24), Q8_0 half a step d = amax / 127 of its block of 32 plus the fp16 rounding of d (127 d 2^-11).
void check_rounding(const loftq::RowMatrix<float>& x, const std::vector<float>& stored, std::uint32_t type,
                    const std::string& what) {
  require(stored.size() == static_cast<std::size_t>(x.size()), what + ": size");
  const float* v = x.data();
  for (std::size_t i = 0; i < stored.size(); ++i) {
    const double e = std::abs(static_cast<double>(stored[i]) - v[i]), a = std::abs(static_cast<double>(v[i]));
    double bound = 0;
    if (type == gl::F16) {
      bound = std::max(a * std::ldexp(1.0, -11), std::ldexp(1.0, -25));
    } else if (type == gl::BF16) {
      bound = a * std::ldexp(1.0, -8);
    } else if (type == gl::Q8_0) {
      double amax = 0;
      for (std::size_t j = i / 32 * 32; j < i / 32 * 32 + 32; ++j) amax = std::max(amax, std::abs(double(v[j])));
      bound = (amax / 127) * (0.5 + 127 * std::ldexp(1.0, -11)) * (1 + 1e-6);
    }
    require(e <= bound, what + ": element " + std::to_string(i) + " stored as " + std::to_string(stored[i]) +
                            ", not within the rounding of " + std::to_string(v[i]));
  }
}

int cmd_verify(const std::string& in_path, const std::string& dir, const std::string& quant, long rank, int iters,
               double alpha, const std::string& scale, const std::string& atype) {
  const std::uint32_t ta = atype == "f16" ? gl::F16 : atype == "bf16" ? gl::BF16 : atype == "q8_0" ? gl::Q8_0 : gl::F32;
  const std::uint32_t tb = ta == gl::Q8_0 && rank % 32 != 0 ? gl::F16 : ta;
  const gl::File in(in_path), model(dir + "/model.gguf"), adapter(dir + "/adapter.gguf");
  const loftq::GgmlFormat fmt = quant == "q4_0"   ? loftq::GgmlFormat::q4_0
                                : quant == "q8_0" ? loftq::GgmlFormat::q8_0
                                                  : loftq::GgmlFormat::iq4_nl;
  const std::uint32_t qtype = quant == "q4_0" ? gl::Q4_0 : quant == "q8_0" ? gl::Q8_0 : gl::IQ4_NL;
  // llama.h's LLAMA_FTYPE_MOSTLY_Q4_0 / Q8_0 / IQ4_NL.
  const std::uint32_t ftype = quant == "q4_0" ? 2 : quant == "q8_0" ? 7 : 25;
  check_model_kvs(in, model, ftype);
  require(model.tensors.size() == in.tensors.size(), "model.gguf: tensor count");
  require(adapter.kv_string("general.type") == "adapter", "adapter: general.type");
  require(adapter.kv_string("adapter.type") == "lora", "adapter: adapter.type");
  require(adapter.kv_string("general.architecture") == in.kv_string("general.architecture"), "adapter: architecture");
  require(!in.kv("general.name") || adapter.kv_string("general.name") == in.kv_string("general.name"),
          "adapter: general.name is not the base's");
  require(adapter.kv_string("loftq.use_with_adapter") == model.kv_string("loftq.use_with_adapter"),
          "adapter: loftq.use_with_adapter");
  const auto* a_kv = adapter.kv("adapter.lora.alpha");
  require(a_kv && a_kv->size() == 4, "adapter: adapter.lora.alpha is not an F32");
  float stored_alpha;
  std::memcpy(&stored_alpha, a_kv->data(), 4);
  require(stored_alpha == static_cast<float>(alpha), "adapter: alpha " + std::to_string(stored_alpha));

  loftq::Options opt;
  opt.rank = rank;
  opt.iterations = iters;
  opt.scale_search = scale == "search";
  opt.threads = 1;  // results do not depend on it; one thread is the fastest on a loaded machine
  int targets = 0, copied = 0;
  for (std::size_t i = 0; i < in.tensors.size(); ++i) {
    const gl::Tensor &t = in.tensors[i], &o = model.tensors[i];
    require(o.name == t.name && o.ne == t.ne, "model.gguf: tensor " + std::to_string(i) + " is " + o.name);
    if (!is_target(t)) {
      require(o.type == t.type && o.nbytes == t.nbytes && std::memcmp(in.at(t), model.at(o), t.nbytes) == 0,
              t.name + ": not copied byte for byte");
      require(!adapter.find(t.name + ".lora_a"), t.name + ": has an adapter");
      ++copied;
      continue;
    }
    require(o.type == qtype, t.name + ": type " + std::to_string(o.type));
    const std::vector<float> w = in.values(t), q = model.values(o);
    const Eigen::Index m = static_cast<Eigen::Index>(t.ne[1]), n = static_cast<Eigen::Index>(t.ne[0]);
    const Eigen::Map<const loftq::RowMatrix<float>> W(w.data(), m, n), Q(q.data(), m, n);
    const loftq::Result<float> r = loftq::initialize(W, loftq::GgmlQuantizer(fmt), opt);
    require(std::memcmp(r.Q.data(), q.data(), q.size() * 4) == 0, t.name + ": decoded Q differs from the library's");
    const gl::Tensor* la = adapter.find(t.name + ".lora_a");
    const gl::Tensor* lb = adapter.find(t.name + ".lora_b");
    require(la && lb && la->type == ta && lb->type == tb, t.name + ": lora_a / lora_b missing or not " + atype);
    // llama-adapter.cpp: model ne[0] == a ne[0], model ne[1] == b ne[1], a ne[1] == b ne[0] (the rank).
    require(la->ne == std::vector<std::uint64_t>{t.ne[0], static_cast<std::uint64_t>(rank)} &&
                lb->ne == std::vector<std::uint64_t>{static_cast<std::uint64_t>(rank), t.ne[1]},
            t.name + ": adapter shapes");
    const std::vector<float> av = adapter.values(*la), bv = adapter.values(*lb);
    const auto peft = loftq::to_peft(r, alpha);
    check_rounding(peft.lora_A, av, ta, t.name + ".lora_a");
    check_rounding(peft.lora_B, bv, tb, t.name + ".lora_b");
    const Eigen::Map<const loftq::RowMatrix<float>> A(av.data(), rank, n), B(bv.data(), m, rank);
    const Eigen::MatrixXd delta = (alpha / static_cast<double>(rank)) * B.cast<double>() * A.cast<double>();
    const Eigen::MatrixXd lib = r.A.cast<double>() * r.B.cast<double>().transpose();
    require(ta != gl::F32 || (delta - lib).norm() <= 1e-5 * std::max(1e-30, lib.norm()),
            t.name + ": (alpha/r) B A != A B^T");
    const double e_q = (W.cast<double>() - Q.cast<double>()).norm();
    const double e_qab = (W.cast<double>() - Q.cast<double>() - delta).norm();
    require(e_qab < e_q, t.name + ": the adapter does not lower the error");
    ++targets;
  }
  require(adapter.tensors.size() == 2 * static_cast<std::size_t>(targets), "adapter: tensor count");
  std::printf("gguftool: verified %d targets, %d copied\n", targets, copied);
  return 0;
}

int cmd_mix_synth(const std::string& out, const std::string& variant) {
  const std::string arch = variant == "falcon" ? "falcon" : "llama";
  // A vocabulary of 4200: token_embd and output are more than the 2^20 elements the tool quantizes at a time.
  const std::uint64_t dim = 256, kv = 64, hidden = 288, vocab = 4200, layers = 4;
  std::mt19937 g(11);
  std::normal_distribution<float> N(0.0f, 0.05f);
  gl::Builder b;
  b.add_string("general.architecture", arch);
  b.add_string("general.name", "mix4");
  b.add_u32(arch + ".block_count", layers);
  b.add_u32(arch + ".embedding_length", dim);
  b.add_u32(arch + ".attention.head_count", 8);
  b.add_u32(arch + ".attention.head_count_kv", 2);
  if (variant == "moe") b.add_u32(arch + ".expert_count", 8);
  auto mat = [&](const std::string& name, std::uint64_t rows, std::uint64_t cols, std::uint32_t type) {
    std::vector<float> v(rows * cols);
    for (float& x : v) x = N(g);
    b.add_tensor(name, {cols, rows}, type, gl::Builder::encode_floats(v, type));
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

// The format loftq writes for a ggml type; none for the others (Q5_0, Q5_1, F16).
loftq::GgmlFormat written_format(std::uint32_t type) {
  switch (type) {
    case gl::Q4_0:
      return loftq::GgmlFormat::q4_0;
    case gl::Q8_0:
      return loftq::GgmlFormat::q8_0;
    case gl::IQ4_NL:
      return loftq::GgmlFormat::iq4_nl;
    case gl::Q2_K:
      return loftq::GgmlFormat::q2_K;
    case gl::Q3_K:
      return loftq::GgmlFormat::q3_K;
    case gl::Q4_K:
      return loftq::GgmlFormat::q4_K;
    case gl::Q5_K:
      return loftq::GgmlFormat::q5_K;
    case gl::Q6_K:
      return loftq::GgmlFormat::q6_K;
    case gl::IQ4_XS:
      return loftq::GgmlFormat::iq4_xs;
    default:
      return loftq::GgmlFormat::none;
  }
}

int cmd_verify_mix(const std::string& in_path, const std::string& dir, const std::string& mix_name, long rank,
                   int iters, const std::string& scale) {
  const auto mix = loftq_common::llama_mix_from_name(mix_name);
  require(mix.has_value(), "unknown mix " + mix_name);
  const gl::File in(in_path), model(dir + "/model.gguf"), adapter(dir + "/adapter.gguf");
  check_model_kvs(in, model, static_cast<std::uint32_t>(*mix));
  require(model.tensors.size() == in.tensors.size(), "model.gguf: tensor count");
  const std::string arch = in.kv_string("general.architecture");
  loftq_common::LlamaMixModel m;
  m.n_layer = static_cast<int>(u32_kv(in, arch + ".block_count"));
  m.n_head = static_cast<int>(u32_kv(in, arch + ".attention.head_count"));
  m.n_head_kv = static_cast<int>(u32_kv(in, arch + ".attention.head_count_kv"));
  m.has_output = in.find("output.weight") != nullptr;
  loftq::Options opt;
  opt.rank = rank;
  opt.iterations = iters;
  opt.scale_search = scale == "search";
  opt.threads = 1;
  loftq::QuantizeOptions qopt;
  qopt.scale_search = opt.scale_search;
  qopt.threads = 1;
  int targets = 0, plain = 0, kept = 0;
  for (std::size_t i = 0; i < in.tensors.size(); ++i) {
    const gl::Tensor &t = in.tensors[i], &o = model.tensors[i];
    require(o.name == t.name && o.ne == t.ne, "model.gguf: tensor " + std::to_string(i) + " is " + o.name);
    const auto rule = loftq_common::llama_mix_type(t.name, t.ne, m, *mix);
    const loftq::GgmlFormat fmt = rule ? written_format(static_cast<std::uint32_t>(*rule)) : loftq::GgmlFormat::none;
    const bool has_adapter = adapter.find(t.name + ".lora_a") != nullptr;
    if (fmt == loftq::GgmlFormat::none) {
      require(!has_adapter, t.name + ": kept, but has an adapter");
      require(o.type == t.type && o.nbytes == t.nbytes && std::memcmp(in.at(t), model.at(o), t.nbytes) == 0,
              t.name + ": not copied byte for byte");
      ++kept;
      continue;
    }
    require(o.type == static_cast<std::uint32_t>(*rule),
            t.name + ": type " + std::to_string(o.type) + ", the mix's is " + std::to_string(int(*rule)));
    const std::vector<float> w = in.values(t), q = model.values(o);
    const Eigen::Map<const loftq::RowMatrix<float>> W(w.data(), static_cast<Eigen::Index>(t.ne[1]),
                                                      static_cast<Eigen::Index>(t.ne[0]));
    const loftq::RowMatrix<float> lib =
        has_adapter ? loftq::initialize(W, loftq::GgmlQuantizer(fmt), opt).Q
                    : loftq::dequantize<float>(loftq::quantize(W, loftq::GgmlQuantizer(fmt), qopt), 1);
    require(std::memcmp(lib.data(), q.data(), q.size() * 4) == 0,
            t.name + ": decoded values differ from the library's " + (has_adapter ? "LoftQ Q" : "quantization"));
    ++(has_adapter ? targets : plain);
  }
  require(adapter.tensors.size() == 2 * static_cast<std::size_t>(targets), "adapter: tensor count");
  std::printf("gguftool: %s: %d targets and %d plain tensors in the mix's types, %d copied\n", mix_name.c_str(),
              targets, plain, kept);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> a(argv + 1, argv + argc);
  try {
    if (a.size() >= 3 && a[0] == "stories") return cmd_stories(a[1], a[2], a.size() > 3 ? float_type(a[3]) : gl::F32);
    if ((a.size() == 2 || a.size() == 3) && a[0] == "synth") return cmd_synth(a[1], a.size() == 3 ? a[2] : "");
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
               "usage: gguftool stories BIN OUT [f32|f16|bf16] | synth OUT [q8target|noarch] | "
               "verify IN DIR QUANT RANK ITERS ALPHA SCALE [ADAPTER_TYPE] | mix_synth OUT [falcon|moe] | "
               "verify_mix IN DIR MIX RANK ITERS SCALE\n");
  return 2;
}

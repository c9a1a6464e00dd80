// gguftool verify, verify_mix and verify_budget: the outputs of `loftq model
// --format gguf`, checked against the library run here.
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
// and (alpha / r) * lora_b * lora_a equal to the library's A B^T (F32),
// lowering the error of Q alone and, with Q, no higher than ggml's own
// quantization of the target's values. IN's targets may be quantized (decoded by ggml's rules).
// quantization of the target's values. IN's targets may be quantized (decoded by ggml's rules).
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

namespace gguftool {

namespace {

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

}  // namespace

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
    // No worse than ggml's own quantization of the same values.
    loftq::QuantizeOptions plain;
    plain.scale_search = false;
    plain.threads = 1;
    const double e_plain =
        (W - loftq::fake_quantize(loftq::RowMatrix<float>(W), loftq::GgmlQuantizer(fmt), plain)).cast<double>().norm();
    require(e_qab <= e_plain,
            t.name + ": error " + std::to_string(e_qab) + " above ggml's quantization's " + std::to_string(e_plain));
    ++targets;
  }
  require(adapter.tensors.size() == 2 * static_cast<std::size_t>(targets), "adapter: tensor count");
  std::printf("gguftool: verified %d targets, %d copied\n", targets, copied);
  return 0;
}

// DIR of a --format gguf --bits-budget BUDGET run on IN: each target of model.gguf in the type its report entry
// names, one of its candidates; what model.gguf and adapter.gguf store for the targets (ggml's blocks of Q, lora_a
// and lora_b), counted from the files, averaging at most BUDGET bits per weight and equal to the report's average;
// the report's total error the sum of the chosen types' measured errors, and no higher than that of any single type
// every target could take within the budget (the knapsack's optimum is at least as good).
int cmd_verify_budget(const std::string& in_path, const std::string& dir, double budget) {
  const gl::File in(in_path), model(dir + "/model.gguf"), adapter(dir + "/adapter.gguf");
  std::ifstream rf(dir + "/loftq_report.json");
  require(static_cast<bool>(rf), "no report");
  const nlohmann::json rep = nlohmann::json::parse(rf);
  const nlohmann::json& alloc = rep.at("bits_allocation");
  const nlohmann::json& cand = alloc.at("candidate_sq_err");
  require(model.tensors.size() == in.tensors.size(), "model.gguf: tensor count");
  double bits = 0, weights = 0, err = 0;
  std::map<std::string, std::pair<double, double>> uniform;  // type -> (bits, error) with every target in it
  std::map<std::string, int> takers;
  for (const auto& [name, c] : cand.items()) {
    const gl::Tensor* t = model.find(name);
    const gl::Tensor* la = adapter.find(name + ".lora_a");
    const gl::Tensor* lb = adapter.find(name + ".lora_b");
    require(t && la && lb, name + ": missing in model.gguf or adapter.gguf");
    const std::string chosen = rep.at("tensors").at(name).at("ggml_type").get<std::string>();
    std::string fname;
    for (const auto& [f, e] : c.items())
      if (static_cast<std::uint32_t>(loftq::ggml_format_type_id(loftq::ggml_format_from_name(f))) == t->type) fname = f;
    require(!fname.empty(), name + ": model.gguf's type is not among its candidates");
    std::string upper = fname;
    for (char& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    require(upper == chosen, name + ": model.gguf holds " + upper + ", the report says " + chosen);
    const double adapter_bits = 8.0 * static_cast<double>(la->nbytes + lb->nbytes);
    bits += 8.0 * static_cast<double>(t->nbytes) + adapter_bits;
    weights += static_cast<double>(t->numel);
    err += c.at(fname).get<double>();
    for (const auto& [f, e] : c.items()) {
      const loftq::GgmlFormat g = loftq::ggml_format_from_name(f);
      auto& u = uniform[f];
      u.first += static_cast<double>(t->numel) * loftq::ggml_format_bits_per_weight(g) + adapter_bits;
      u.second += e.get<double>();
      ++takers[f];
    }
  }
  const double avg = bits / weights;
  require(avg <= budget, "average " + std::to_string(avg) + " bits per weight over the budget");
  require(std::abs(avg - alloc.at("average_bits_per_weight").get<double>()) <= 1e-9 * avg,
          "the report's average is not the files'");
  require(std::abs(err - alloc.at("total_sq_err").get<double>()) <= 1e-9 * err, "total_sq_err is not the sum");
  int compared = 0;
  for (const auto& [f, u] : uniform)
    if (takers[f] == static_cast<int>(cand.size()) && u.first / weights <= budget) {
      require(err <= u.second * (1 + 1e-12), "every target in " + f + " fits the budget with a lower error");
      ++compared;
    }
  std::printf("gguftool: %zu targets, %.4f bits per weight, total error %.6g; %d uniform types within the budget\n",
              cand.size(), avg, err, compared);
  return 0;
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

}  // namespace gguftool

// Helper for the `loftq model` / `loftq merge` tests (model_test.sh).
//
//   modeltool stories BIN DIR [DTYPE] [SHARDS]  llama2.c v0 checkpoint -> HF-named safetensors
//   modeltool synth DIR DTYPE SHARDS LAYERS DIM HIDDEN   a random Llama-shaped checkpoint
//   modeltool check INPUT OUT R ALPHA           verify a full `loftq model` output against INPUT
//   modeltool packed OUT                        verify model.packed.safetensors decodes to Q
//   modeltool get JSON KEY[/KEY...]             print a value of a JSON file
//   modeltool npy FILE TENSOR OUT.npy           a 2-D tensor of a .safetensors file as float32 .npy
//   modeltool bnb INPUT OUT [REF]               verify a --format bnb-nf4 output: each target decoded by
//                                               bitsandbytes' rules from OUT alone equals REF's Q bit for
//                                               bit (REF: the same run in the default format, F32), or
//                                               gives the report's error with the adapter (no REF);
//                                               quant_state, config.json, other tensors, adapter
//   modeltool pad FILE BYTES                    rewrite a .safetensors file with a "pad" metadata entry
//                                               making its header exactly BYTES long (a multiple of 8)
//   modeltool budget INPUT OUT REF B            verify a --bits-budget B output: average code bits
//                                               <= B, mixed widths recorded everywhere, and a lower
//                                               total ||W - Q - s B A||^2 than the output REF
//
// Exit 0 on success, 1 with a message on failure, 77 when BIN is absent.
#include <loftq/io/npy.hpp>
#include <loftq/io/safetensors.hpp>

#include "common/llama2c.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iterator>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <sys/stat.h>

#include "modeltool.hpp"

namespace st = loftq::io;
using modeltool::Fail;
using modeltool::is_target;
using modeltool::read_json;
using modeltool::require;
using modeltool::RowMatrix;

namespace modeltool {

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  require(static_cast<bool>(f), "cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return nlohmann::json::parse(ss.str());
}

bool is_target(const std::string& name, const st::TensorInfo& t) {
  static const char* mods[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  if (t.shape.size() != 2) return false;
  for (const char* m : mods)
    if (name.size() > std::strlen(m) + 8 &&
        name.compare(name.size() - std::strlen(m) - 7, std::string::npos, std::string(m) + ".weight") == 0 &&
        name[name.size() - std::strlen(m) - 8] == '.')
      return true;
  return false;
}

}  // namespace modeltool

namespace {

struct Tensor {
  std::string name;
  std::vector<std::uint64_t> shape;
  std::vector<float> v;
};

st::Dtype dtype_of(const std::string& s) {
  st::Dtype d = st::Dtype::F32;
  require(st::parse_dtype(s, d) && st::is_float_dtype(d), "bad dtype " + s);
  return d;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  require(static_cast<bool>(f), "cannot write " + path);
}

// Writes tensors round-robin into SHARDS files (sorted by name), with an
// index when SHARDS > 1, plus a config.json.
void write_checkpoint(const std::string& dir, std::vector<Tensor> ts, st::Dtype dt, int shards,
                      const std::string& model_name) {
  ::mkdir(dir.c_str(), 0777);
  std::sort(ts.begin(), ts.end(), [](const Tensor& a, const Tensor& b) { return a.name < b.name; });
  nlohmann::json wm = nlohmann::json::object();
  std::uint64_t total = 0;
  for (int s = 0; s < shards; ++s) {
    char fname[64];
    if (shards == 1)
      std::snprintf(fname, sizeof fname, "model.safetensors");
    else
      std::snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, shards);
    std::vector<st::TensorDecl> decls;
    for (std::size_t i = static_cast<std::size_t>(s); i < ts.size(); i += static_cast<std::size_t>(shards)) {
      decls.push_back({ts[i].name, dt, ts[i].shape});
      wm[ts[i].name] = fname;
      total += ts[i].v.size() * st::dtype_size(dt);
    }
    // A non-float tensor too, which must be copied untouched.
    if (s == 0) decls.push_back({"model.extra_ids", st::Dtype::I64, {3}});
    st::SafetensorsWriter w(dir + "/" + fname, decls, {{"format", "pt"}, {"origin", "modeltool"}});
    for (std::size_t i = static_cast<std::size_t>(s); i < ts.size(); i += static_cast<std::size_t>(shards))
      w.write_float(ts[i].name, ts[i].v.data(), ts[i].v.size(), dt);
    if (s == 0) {
      const std::int64_t ids[3] = {7, -1, 1 << 30};
      w.write("model.extra_ids", ids, sizeof ids);
      wm["model.extra_ids"] = fname;
      total += sizeof ids;
    }
    w.commit();
  }
  if (shards > 1) {
    nlohmann::json idx;
    idx["metadata"] = {{"total_size", total}};
    idx["weight_map"] = wm;
    write_text(dir + "/model.safetensors.index.json", idx.dump(2));
  }
  nlohmann::json cfg = {
      {"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"_name_or_path", model_name}};
  write_text(dir + "/config.json", cfg.dump(2));
}

int cmd_stories(const std::string& bin, const std::string& dir, st::Dtype dt, int shards) {
  if (!std::ifstream(bin, std::ios::binary)) {
    std::printf("modeltool: %s is absent; skipping\n", bin.c_str());
    return 77;
  }
  const lm::Weights<float> w = lm::read_checkpoint(bin);
  const int L = w.config.n_layers;
  std::vector<Tensor> ts;
  auto matrix = [](const lm::Mat<float>& m) { return lm::row_major(m); };
  auto vec = [](const lm::Vec<float>& v) { return std::vector<float>(v.data(), v.data() + v.size()); };
  auto layer_name = [](int l, const std::string& mod) {
    return "model.layers." + std::to_string(l) + "." + mod + ".weight";
  };
  // In llama2.c's file order, which is also the order of the shards.
  ts.push_back({"model.embed_tokens.weight",
                {std::uint64_t(w.embedding.rows()), std::uint64_t(w.embedding.cols())},
                matrix(w.embedding)});
  auto per_layer_vec = [&](const std::string& mod, lm::Vec<float> lm::LayerWeights<float>::*field) {
    for (int l = 0; l < L; ++l) {
      const auto& v = w.layers[std::size_t(l)].*field;
      ts.push_back({layer_name(l, mod), {std::uint64_t(v.size())}, vec(v)});
    }
  };
  auto per_layer = [&](const std::string& mod, int kind) {
    for (int l = 0; l < L; ++l) {
      const auto& m = w.layers[std::size_t(l)].W[std::size_t(kind)];
      ts.push_back({layer_name(l, mod), {std::uint64_t(m.rows()), std::uint64_t(m.cols())}, matrix(m)});
    }
  };
  per_layer_vec("input_layernorm", &lm::LayerWeights<float>::rms_att);
  per_layer("self_attn.q_proj", lm::kQ);
  per_layer("self_attn.k_proj", lm::kK);
  per_layer("self_attn.v_proj", lm::kV);
  per_layer("self_attn.o_proj", lm::kO);
  per_layer_vec("post_attention_layernorm", &lm::LayerWeights<float>::rms_ffn);
  per_layer("mlp.gate_proj", lm::kGate);  // w1
  per_layer("mlp.down_proj", lm::kDown);  // w2
  per_layer("mlp.up_proj", lm::kUp);      // w3
  ts.push_back({"model.norm.weight", {std::uint64_t(w.rms_final.size())}, vec(w.rms_final)});
  write_checkpoint(dir, ts, dt, shards, "karpathy/tinyllamas-stories260K");
  return 0;
}

int cmd_synth(const std::string& dir, st::Dtype dt, int shards, int layers, std::uint64_t dim, std::uint64_t hidden) {
  std::mt19937 gen(1234);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<Tensor> ts;
  auto mat = [&](const std::string& name, std::uint64_t r, std::uint64_t c) {
    Tensor t{name, {r, c}, std::vector<float>(r * c)};
    for (auto& x : t.v) x = nd(gen);
    // A few outliers, as real weights have.
    for (std::uint64_t i = 0; i < t.v.size(); i += 97) t.v[i] *= 8;
    ts.push_back(std::move(t));
  };
  mat("model.embed_tokens.weight", 64, dim);
  mat("lm_head.weight", 64, dim);
  for (int l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const char* m : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"})
      mat(p + m + ".weight", dim, dim);
    mat(p + "mlp.gate_proj.weight", hidden, dim);
    mat(p + "mlp.up_proj.weight", hidden, dim);
    mat(p + "mlp.down_proj.weight", dim, hidden);
    ts.push_back({p + "input_layernorm.weight", {dim}, std::vector<float>(dim, 1.0f)});
  }
  write_checkpoint(dir, ts, dt, shards, "synthetic-llama");
  return 0;
}

int cmd_check(const std::string& input, const std::string& out, std::uint64_t r, double alpha) {
  st::Checkpoint in(input), base(out);
  st::SafetensorsFile ad(out + "/adapter_model.safetensors");
  require(in.entries().size() == base.entries().size(), "base output has a different tensor count");
  require(in.sharded() == base.sharded() && in.num_files() == base.num_files(), "base output sharded differently");
  std::size_t targets = 0;
  const double scaling = alpha / static_cast<double>(r);
  for (const auto& kv : in.entries()) {
    const std::string& name = kv.first;
    const st::SafetensorsFile& fi = in.file(kv.second.file);
    const st::TensorInfo& ti = *kv.second.info;
    require(base.entries().count(name) == 1, "missing in output: " + name);
    const auto& bo = base.entries().at(name);
    const st::SafetensorsFile& fo = base.file(bo.file);
    const st::TensorInfo& to = *bo.info;
    require(in.file_name(kv.second.file) == base.file_name(bo.file) || !in.sharded(),
            "moved to another shard: " + name);
    require(to.dtype == ti.dtype && to.shape == ti.shape, "dtype/shape changed: " + name);
    const std::string path = name.substr(0, name.size() - 7);
    const std::string ka = "base_model.model." + path + ".lora_A.weight",
                      kb = "base_model.model." + path + ".lora_B.weight";
    if (!is_target(name, ti)) {
      require(fi.read_bytes(ti) == fo.read_bytes(to), "non-target not byte-identical: " + name);
      require(!ad.find(ka), "adapter for a non-target: " + name);
      continue;
    }
    ++targets;
    const std::uint64_t m = ti.shape[0], n = ti.shape[1];
    const st::TensorInfo* A = ad.find(ka);
    const st::TensorInfo* B = ad.find(kb);
    require(A && B, "no adapter for " + name);
    require(A->dtype == st::Dtype::F32 && A->shape == std::vector<std::uint64_t>{r, n}, "lora_A shape for " + name);
    require(B->dtype == st::Dtype::F32 && B->shape == std::vector<std::uint64_t>{m, r}, "lora_B shape for " + name);
    const RowMatrix W = fi.read_matrix(ti), Q = fo.read_matrix(to), LA = ad.read_matrix(*A), LB = ad.read_matrix(*B);
    const RowMatrix E = W - Q - static_cast<float>(scaling) * (LB * LA);
    const double eq = (W - Q).norm(), el = E.norm();
    require(el < eq,
            name + ": Q + s*B*A (" + std::to_string(el) + ") is not closer to W than Q (" + std::to_string(eq) + ")");
  }
  require(ad.tensors().size() == 2 * targets, "adapter holds extra tensors");
  require(targets > 0, "no targets");
  const nlohmann::json cfg = read_json(out + "/adapter_config.json");
  require(cfg.at("peft_type") == "LORA" && cfg.at("r") == r && cfg.at("lora_alpha").get<double>() == alpha &&
              cfg.at("bias") == "none" && cfg.at("init_lora_weights") == true && cfg.at("target_modules").is_array(),
          "adapter_config.json fields");
  const nlohmann::json rep = read_json(out + "/loftq_report.json");
  require(rep.at("tensors").size() == targets, "report does not list every target");
  for (const auto& e : rep.at("tensors"))
    require(e.at("history").is_array() && e.at("qlora_rel_err").is_number() && e.at("seconds").is_number() &&
                e.at("shape").size() == 2 && e.at("rel_err").get<double>() < e.at("qlora_rel_err").get<double>(),
            "report entry");
  std::printf("modeltool: %zu targets verified\n", targets);
  return 0;
}

int cmd_pad(const std::string& file, std::uint64_t bytes) {
  std::vector<st::TensorDecl> decls;
  std::map<std::string, std::string> meta;
  std::vector<std::vector<unsigned char>> data;
  {
    const st::SafetensorsFile f(file);
    meta = f.metadata();
    for (const st::TensorInfo& t : f.tensors()) {
      decls.push_back({t.name, t.dtype, t.shape});
      data.emplace_back(t.nbytes());
      f.read_bytes(t, 0, t.nbytes(), data.back().data());
    }
  }
  meta["pad"] = "";
  const std::uint64_t base = st::safetensors_header_size(decls, meta);
  require(bytes % 8 == 0 && bytes >= base, "pad: BYTES must be a multiple of 8 and at least " + std::to_string(base));
  meta["pad"].assign(bytes - base, 'x');  // the padding of base absorbs the rest
  require(st::safetensors_header_size(decls, meta) == bytes, "pad: header size");
  st::SafetensorsWriter w(file, decls, meta);
  for (std::size_t i = 0; i < decls.size(); ++i) w.write(decls[i].name, data[i].data(), data[i].size());
  w.commit();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> a(argv + 1, argv + argc);
    require(!a.empty(), "usage: see modeltool.cpp");
    if (a[0] == "stories" && a.size() >= 3)
      return cmd_stories(a[1], a[2], dtype_of(a.size() > 3 ? a[3] : "F32"), a.size() > 4 ? std::stoi(a[4]) : 1);
    if (a[0] == "synth" && a.size() == 7)
      return cmd_synth(a[1], dtype_of(a[2]), std::stoi(a[3]), std::stoi(a[4]), std::stoull(a[5]), std::stoull(a[6]));
    if (a[0] == "check" && a.size() == 5) return cmd_check(a[1], a[2], std::stoull(a[3]), std::stod(a[4]));
    if (a[0] == "packed" && a.size() == 2) return modeltool::cmd_packed(a[1]);
    if (a[0] == "bnb" && (a.size() == 3 || a.size() == 4))
      return modeltool::cmd_bnb(a[1], a[2], a.size() == 4 ? a[3] : "");
    if (a[0] == "get" && a.size() == 3) {
      nlohmann::json j = read_json(a[1]);
      for (std::size_t b = 0;;) {
        const std::size_t e = a[2].find('/', b);
        j = j.at(a[2].substr(b, e == std::string::npos ? std::string::npos : e - b));
        if (e == std::string::npos) break;
        b = e + 1;
      }
      std::printf("%s\n", j.is_string() ? j.get<std::string>().c_str() : j.dump().c_str());
      return 0;
    }
    if (a[0] == "npy" && a.size() == 4) {
      const loftq::io::SafetensorsFile f(a[1]);
      loftq::io::write_npy(a[3], f.read_matrix(f.at(a[2])));
      return 0;
    }
    if (a[0] == "pad" && a.size() == 3) return cmd_pad(a[1], std::stoull(a[2]));
    if (a[0] == "budget" && a.size() == 5) return modeltool::cmd_budget(a[1], a[2], a[3], std::stod(a[4]));
    require(false, "bad arguments");
  } catch (const Fail& e) {
    std::fprintf(stderr, "modeltool: FAIL: %s\n", e.msg.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "modeltool: error: %s\n", e.what());
  }
  return 1;
}

#include "checkpoint_plan.hpp"

#include "errors.hpp"
#include "path_safety.hpp"

#include <loftq/io/detail/posix_file.hpp>
#include <loftq/io/detail/strict_json.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <limits>
#include <set>

namespace loftq_cli {

namespace {

constexpr std::int64_t kIntMax = std::numeric_limits<int>::max();

// The module of a weight when the tensor is `<prefix>.<module>.weight` with
// module in `modules`; else "".
std::string matched_module(const std::string& name, const std::vector<std::string>& modules) {
  static const std::string suffix = ".weight";
  if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) return {};
  const std::string path = name.substr(0, name.size() - suffix.size());
  for (const std::string& m : modules)
    if (path == m || (path.size() > m.size() && path.compare(path.size() - m.size(), m.size(), m) == 0 &&
                      path[path.size() - m.size() - 1] == '.'))
      return m;
  return {};
}

std::string dir_of_input(const st::Checkpoint& ck, const std::string& input) {
  if (!ck.dir().empty()) return ck.dir();
  const fs::path p = fs::path(input).parent_path();
  return p.empty() ? std::string(".") : p.string();
}

// Real configurations nest a few levels (rope_scaling, quantization_config,
// task_specific_params); the bound keeps every tree the tool builds, copies
// and serializes shallow, whatever the file holds.
constexpr int kConfigDepth = 64;
constexpr std::uint64_t kConfigMaxBytes = std::uint64_t{16} << 20;

// config.json next to the checkpoint: null when there is none (or it is not
// a regular file, which is not copied either); an InputError naming it when
// it cannot be used. Read through the strict, bounded-depth reader.
nlohmann::json read_config(const std::string& dir) {
  const fs::path p = fs::path(dir) / "config.json";
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return nullptr;
  try {
    loftq::io::detail::ReadOnlyFile f;
    f.open(p.string());
    if (f.size() > kConfigMaxBytes)
      throw InputError{p.string() + ": larger than 16 MiB (" + std::to_string(f.size()) +
                       " bytes); not a model configuration loftq reads"};
    std::string text(static_cast<std::size_t>(f.size()), '\0');
    f.pread_exact(reinterpret_cast<unsigned char*>(&text[0]), 0, f.size());
    nlohmann::json j = loftq::io::detail::parse_json_strict(text, p.string(), kConfigDepth);
    if (!j.is_object()) throw InputError{p.string() + ": not a JSON object"};
    return j;
  } catch (const loftq::Error& e) {
    throw InputError{e.what()};
  }
}

std::map<std::string, std::string> with_format(std::map<std::string, std::string> m) {
  if (!m.count("format")) m["format"] = "pt";
  return m;
}

// {"<tensor name>": bits} of the given targets, for file metadata.
std::string bits_json(const std::vector<const Target*>& ts, const std::map<std::string, int>& bits_of) {
  nlohmann::json j = nlohmann::json::object();
  for (const Target* t : ts) j[t->name] = bits_of.at(t->name);
  return j.dump();
}

std::string base_file_name(const st::Checkpoint& ck, std::size_t i) {
  return ck.sharded() ? ck.file_name(i) : std::string("model.safetensors");
}

// What transformers needs to load the targets as they are: every other 2-D
// float weight stays a plain nn.Linear (or embedding), so it is skipped.
nlohmann::json bnb_quantization_config(const st::Checkpoint& ck, const Settings& s, const std::vector<Target>& targets) {
  std::set<std::string> target_names;
  std::vector<std::string> quantized, others;
  for (const Target& t : targets) {
    target_names.insert(t.name);
    quantized.push_back(st::lora_module_path(t.name));
  }
  static const std::string suffix = ".weight";
  for (const auto& kv : ck.entries()) {
    const st::TensorInfo& t = *kv.second.info;
    const std::string& n = kv.first;
    if (t.shape.size() != 2 || !st::is_float_dtype(t.dtype) || target_names.count(n) || n.size() <= suffix.size() ||
        n.compare(n.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    others.push_back(n.substr(0, n.size() - suffix.size()));
  }
  try {
    return st::bnb_quantization_config(s.packing.double_quant, targets.front().info->dtype,
                                       st::bnb_skip_modules(quantized, others));
  } catch (const loftq::Error& e) {
    throw InputError{e.what()};
  }
}

constexpr const char* kSideFiles[] = {"config.json",           "generation_config.json",  "tokenizer.json",
                                      "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"};

// Refuses a side file that is a symbolic link leading out of the input: it
// would be copied into the output as a regular file. Allowed: a target
// inside the input directory, or, for a Hugging Face cache snapshot
// (.../snapshots/<rev>/), inside that repository's .../blobs/.
void check_side_link(const fs::path& file, const std::string& dir) {
  std::error_code ec;
  if (!fs::is_symlink(fs::symlink_status(file, ec))) return;
  const fs::path target = fs::canonical(file, ec);
  if (ec) throw InputError{file.string() + ": a symbolic link that cannot be resolved: " + ec.message()};
  const fs::path in_dir = fs::canonical(dir, ec);
  if (ec) throw InputError{dir + ": cannot resolve the input directory: " + ec.message()};
  if (lies_within(target, in_dir)) return;
  if (in_dir.has_parent_path() && in_dir.parent_path().filename() == "snapshots" &&
      lies_within(target, in_dir.parent_path().parent_path() / "blobs"))
    return;
  throw InputError{file.string() + ": a symbolic link to " + target.string() +
                   ", outside the input directory (and not a Hugging Face cache blob); refusing to copy it"};
}

}  // namespace

Plan plan_targets(const st::Checkpoint& ck, const std::vector<std::string>& modules, Eigen::Index rank,
                  const std::string& input) {
  if (rank < 1) throw InputError{input + ": rank " + std::to_string(rank) + " is not a positive integer"};
  Plan p;
  std::set<std::string> used;
  for (const auto& kv : ck.entries()) {  // std::map: sorted by name
    const st::TensorInfo& t = *kv.second.info;
    if (t.shape.size() != 2) continue;
    const std::string m = matched_module(kv.first, modules);
    if (m.empty()) continue;
    if (!st::is_float_dtype(t.dtype))
      throw InputError{input + ": target tensor '" + printable(t.name) + "' has dtype " + st::dtype_name(t.dtype) +
                       "; expected F32, F16, BF16 or F64"};
    const std::uint64_t mn = std::min(t.shape[0], t.shape[1]);
    if (static_cast<std::uint64_t>(rank) > mn)
      throw InputError{input + ": --rank " + std::to_string(rank) + " exceeds min(out, in) = " + std::to_string(mn) +
                       " of target tensor '" + printable(t.name) + "' (" + std::to_string(t.shape[0]) + "x" +
                       std::to_string(t.shape[1]) + ")"};
    if (t.shape[0] > static_cast<std::uint64_t>(std::numeric_limits<int>::max()) ||
        t.shape[1] > static_cast<std::uint64_t>(std::numeric_limits<int>::max()))
      throw InputError{input + ": target tensor '" + printable(t.name) + "' is too large"};
    Target tg;
    tg.name = kv.first;
    tg.module = m;
    tg.file = kv.second.file;
    tg.info = &t;
    tg.rows = t.shape[0];
    tg.cols = t.shape[1];
    p.targets.push_back(tg);
    used.insert(m);
  }
  if (p.targets.empty()) {
    std::string list;
    for (const std::string& m : modules) list += (list.empty() ? "" : ",") + m;
    throw InputError{input + ": no 2-D tensor named <prefix>.<module>.weight matches --target-modules " + list};
  }
  for (const std::string& m : modules)
    if (used.count(m)) p.modules.push_back(m);
  return p;
}

Settings Settings::of(const Args& a) {
  const bool budget = a.bits_budget > 0;
  Settings s;
  s.j["bits"] = budget ? nlohmann::json(nullptr) : nlohmann::json(a.bits);
  if (budget) s.j["bits_budget"] = a.bits_budget;
  s.j["rank"] = a.rank;
  s.j["iters"] = a.iters;
  s.j["quantizer"] = quantizer_name(a.kind);
  s.j["block_size"] = a.block_size;
  s.j["scale"] = scale_name(a.scale_search);
  s.j["start"] = start_name(a.start);
  s.j["double_quant"] = a.double_quant;
  s.j["lora_alpha"] = a.lora_alpha > 0 ? a.lora_alpha : static_cast<double>(a.rank);
  s.j["svd"] = loftq::to_string(a.svd);
  s.j["seed"] = a.seed;
  s.j["target_modules"] = a.modules;
  s.j["packed"] = a.packed;
  // Recorded only with --last, so reports of default runs stay as they were;
  // a merge then refuses shards that returned different iterates.
  if (!a.keep_best) s.j["keep_best"] = false;
  if (a.bnb_nf4) s.j["format"] = "bnb-nf4";
  s.bits = a.bits;
  s.rank = a.rank;
  s.alpha = s.j["lora_alpha"].get<double>();
  s.packed = a.packed;
  s.bnb_nf4 = a.bnb_nf4;
  s.modules = a.modules;
  s.packing = {a.kind, static_cast<std::int64_t>(a.block_size), a.scale_search, a.double_quant};
  return s;
}

Settings Settings::from_report(const nlohmann::json& j) {
  auto bad = [](const std::string& what) { throw InputError{"shard settings: " + what}; };
  if (!j.is_object()) bad("not an object");
  auto field = [&](const char* k) -> const nlohmann::json& {
    if (!j.contains(k)) bad(std::string("no ") + k);
    return j[k];
  };
  Settings s;
  s.j = j;
  // A --bits-budget run (bits null) cannot be sharded, so a shard has one width.
  // The ranges the command line accepts: a report is input like any other.
  auto count = [&](const char* k) {
    const nlohmann::json& v = field(k);
    const bool ok = v.is_number_unsigned() ? v.get<std::uint64_t>() >= 1 && v.get<std::uint64_t>() <= kIntMax
                    : v.is_number_integer() ? v.get<std::int64_t>() >= 1 && v.get<std::int64_t>() <= kIntMax
                                            : false;
    if (!ok) bad(std::string(k) + " " + v.dump() + " is not an integer in 1.." + std::to_string(kIntMax));
  };
  auto one_of = [&](const char* k, std::initializer_list<const char*> names, bool optional) {
    if (optional && !j.contains(k)) return;
    const nlohmann::json& v = field(k);
    for (const char* n : names)
      if (v.is_string() && v.get<std::string>() == n) return;
    bad(std::string(k) + " " + v.dump() + " is not a known value");
  };
  count("bits");
  count("rank");
  count("iters");
  count("block_size");
  one_of("svd", {"exact", "randomized"}, false);
  one_of("start", {"zero", "svd"}, true);
  // nlohmann stores every non-negative integer as unsigned.
  if (!field("seed").is_number_unsigned()) bad("seed is not a non-negative integer");
  if (j.contains("keep_best") && !j["keep_best"].is_boolean()) bad("keep_best is not a boolean");
  if (!field("lora_alpha").is_number() || !lora_alpha_in_range(field("lora_alpha").get<double>()))
    bad("lora_alpha " + field("lora_alpha").dump() + " is not a number in 1e-6..1e6");
  if (!field("packed").is_boolean()) bad("packed is not a boolean");
  if (!field("target_modules").is_array()) bad("target_modules is not a list");
  for (const auto& m : field("target_modules")) {
    if (!m.is_string() || m.get<std::string>().empty()) bad("target_modules holds a non-name");
    s.modules.push_back(m.get<std::string>());
  }
  const nlohmann::json& q = field("quantizer");
  if (!q.is_string() || (q != "nf" && q != "uniform")) bad("quantizer is neither nf nor uniform");
  const nlohmann::json& bs = field("block_size");
  // Absent in reports of older versions, which had neither.
  const nlohmann::json dq = j.value("double_quant", nlohmann::json(false));
  const nlohmann::json sc = j.value("scale", nlohmann::json("absmax"));
  if (!dq.is_boolean()) bad("double_quant is not a boolean");
  if (sc != "absmax" && sc != "search") bad("scale is neither absmax nor search");
  s.bits = j["bits"].get<int>();
  s.rank = j["rank"].get<std::int64_t>();
  s.alpha = j["lora_alpha"].get<double>();
  s.packed = j["packed"].get<bool>();
  s.packing = {q == "uniform" ? loftq::Quantizer::Kind::uniform : loftq::Quantizer::Kind::normal_float,
               bs.get<std::int64_t>(), sc == "search", dq.get<bool>()};
  try {
    (void)loftq::Quantizer(s.packing.kind, s.bits, static_cast<Eigen::Index>(s.packing.block_size), true);
  } catch (const loftq::Error& e) {
    bad(e.what());
  }
  return s;
}

void Writers::commit() {
  for (auto& w : base) w->commit();
  adapter->commit();
  if (packed) packed->commit();
}

Writers open_writers(const StagedOutput& out, const st::Checkpoint& ck, const std::vector<const Target*>& sel,
                     bool shard_run, const Settings& s, const std::map<std::string, int>& bits_of) {
  Writers w;
  std::map<std::string, const Target*> selected;
  for (const Target* t : sel) selected[t->name] = t;
  // The targets' bit widths go into each file that holds them.
  auto with_bits = [&](std::map<std::string, std::string> meta, const std::vector<const Target*>& ts) {
    if (!ts.empty()) meta["loftq.tensor_bits"] = bits_json(ts, bits_of);
    return with_format(std::move(meta));
  };
  if (shard_run) {
    std::vector<st::TensorDecl> d;
    for (const Target* t : sel) {
      d.push_back({t->name, t->info->dtype, t->info->shape});
      w.base_of[t->name] = 0;
    }
    w.base.push_back(std::make_unique<st::SafetensorsWriter>(out.path(kShardModelFile).string(), d, with_bits({}, sel)));
  } else {
    for (std::size_t f = 0; f < ck.num_files(); ++f) {
      std::vector<st::TensorDecl> d;
      std::vector<const Target*> here;
      for (const st::TensorInfo& t : ck.file(f).tensors()) {
        w.base_of[t.name] = f;
        const auto it = selected.find(t.name);
        if (it != selected.end()) here.push_back(it->second);
        if (it != selected.end() && s.bnb_nf4) {
          for (st::TensorDecl& x : st::bnb_nf4_tensors(bnb_target(*it->second), s.packing.block_size, s.packing.double_quant))
            d.push_back(std::move(x));
        } else {
          d.push_back({t.name, t.dtype, t.shape});
        }
      }
      w.base.push_back(std::make_unique<st::SafetensorsWriter>(out.path(base_file_name(ck, f)).string(), d,
                                                               with_bits(ck.file(f).metadata(), here)));
    }
  }
  std::vector<st::LoraTarget> lora;
  for (const Target* t : sel) lora.push_back({t->name, t->rows, t->cols});
  w.adapter = std::make_unique<st::AdapterWriter>(out.path(kAdapterFile).string(), lora,
                                                  static_cast<std::uint64_t>(s.rank), with_bits({}, sel));
  if (s.packed) {
    std::vector<st::PackedTarget> pt;
    for (const Target* t : sel) pt.push_back({t->name, t->rows, t->cols, bits_of.at(t->name)});
    // bitsandbytes' nested scales are not this file's int8 scheme: with
    // bnb-nf4 it holds the fp32 scales they recover, which decode to the same Q.
    st::PackedSettings packing = s.packing;
    packing.double_quant = packing.double_quant && !s.bnb_nf4;
    w.packed = std::make_unique<st::PackedWriter>(out.path(kPackedFile).string(), pt, packing);
  }
  return w;
}

void copy_tensor(const st::SafetensorsFile& f, const st::TensorInfo& t, st::SafetensorsWriter& w,
                 const std::string& out_name) {
  const std::uint64_t chunk = std::uint64_t(16) << 20;
  std::vector<unsigned char> buf(static_cast<std::size_t>(std::min(chunk, t.nbytes())));
  std::uint64_t off = 0;
  do {
    const std::uint64_t n = std::min(chunk, t.nbytes() - off);
    f.read_bytes(t, off, n, buf.data());
    w.write(out_name, buf.data(), n, off);
    off += n;
    check_interrupt();
  } while (off < t.nbytes());
}

st::BnbTarget bnb_target(const Target& t) { return {t.name, t.rows, t.cols, t.info->dtype}; }

void check_bnb_output(const st::Checkpoint& ck, const std::string& input, const Settings& s,
                      const std::vector<Target>& targets) {
  if (!read_config(dir_of_input(ck, input)).is_object())
    throw InputError{"--format bnb-nf4: no config.json next to the input " + input +
                     " (transformers reads quantization_config from it)"};
  for (const Target& t : targets) {
    try {
      (void)st::bnb_dtype_name(t.info->dtype);
    } catch (const loftq::Error& e) {
      throw InputError{input + ": target tensor '" + t.name + "': " + e.what()};
    }
  }
  (void)bnb_quantization_config(ck, s, targets);
}

void write_full_extras(StagedOutput& out, const st::Checkpoint& ck, const std::string& input, const Settings& s,
                       const std::vector<std::string>& modules, const std::vector<Target>& targets) {
  const std::string in_dir = dir_of_input(ck, input);
  nlohmann::json config = read_config(in_dir);
  st::LoraConfig c;
  c.r = s.rank;
  c.lora_alpha = s.alpha;
  c.target_modules = modules;
  c.task_type = st::peft_task_type(config);
  if (config.is_object() && config.contains("_name_or_path") && config["_name_or_path"].is_string())
    c.base_model_name_or_path = config["_name_or_path"].get<std::string>();
  out.write_file("adapter_config.json", st::adapter_config_json(c).dump(2, ' ', false,
                                                                       nlohmann::json::error_handler_t::replace) + "\n");
  if (ck.sharded()) {
    nlohmann::json idx;
    idx["metadata"] = ck.index_metadata();
    nlohmann::json wm = nlohmann::json::object();
    for (const auto& kv : ck.entries()) wm[kv.first] = ck.file_name(kv.second.file);
    if (s.bnb_nf4)
      for (const Target& t : targets)
        for (const st::TensorDecl& d : st::bnb_nf4_tensors(bnb_target(t), s.packing.block_size, s.packing.double_quant))
          wm[d.name] = ck.file_name(t.file);
    idx["weight_map"] = wm;
    out.write_file("model.safetensors.index.json", idx.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  }
  // Config and tokenizer files, so DIR is a loadable base model.
  for (const char* name : kSideFiles) {
    const fs::path src = fs::path(in_dir) / name;
    std::error_code ec;
    if (s.bnb_nf4 && std::string(name) == "config.json") continue;
    if (fs::is_regular_file(src, ec)) out.copy_file(src, name);
  }
  if (s.bnb_nf4) {
    if (!config.is_object()) throw InputError{"--format bnb-nf4: no config.json next to the input " + input};
    config["quantization_config"] = bnb_quantization_config(ck, s, targets);
    out.write_file("config.json", config.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  }
}

std::vector<std::string> checkpoint_inputs(const st::Checkpoint& ck, const std::string& input) {
  std::vector<std::string> in;
  for (std::size_t i = 0; i < ck.num_files(); ++i) in.push_back(ck.file(i).path());
  const std::string dir = dir_of_input(ck, input);
  std::error_code ec;
  if (ck.sharded()) in.push_back((fs::path(dir) / "model.safetensors.index.json").string());
  for (const char* name : kSideFiles) {
    const fs::path p = fs::path(dir) / name;
    check_side_link(p, dir);
    if (fs::exists(p, ec)) in.push_back(p.string());
  }
  // Before any work: a config.json the output needs parsed must parse.
  (void)read_config(dir);
  if (!ck.dir().empty()) in.push_back(ck.dir());
  return in;
}

void check_checkpoint_names(const st::Checkpoint& ck, bool packed) {
  std::vector<std::string> files, tool = {kAdapterFile, kReportFile, "adapter_config.json",
                                          "model.safetensors.index.json", kMarkerFile};
  if (packed) tool.push_back(kPackedFile);
  for (const char* name : kSideFiles) tool.push_back(name);
  for (std::size_t i = 0; i < ck.num_files(); ++i) files.push_back(base_file_name(ck, i));
  check_output_names(files, tool);
}

namespace {

struct Fnv64 {
  std::uint64_t h = 1469598103934665603ull;
  void bytes(const void* p, std::size_t n) {
    const unsigned char* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) {
      h ^= b[i];
      h *= 1099511628211ull;
    }
  }
  void str(const std::string& s) {
    num(s.size());
    bytes(s.data(), s.size());
  }
  void num(std::uint64_t x) { bytes(&x, sizeof x); }
};

}  // namespace

std::string checkpoint_identity(const st::Checkpoint& ck) {
  Fnv64 h;
  h.str(ck.index_metadata().dump());
  h.num(ck.num_files());
  for (std::size_t i = 0; i < ck.num_files(); ++i) {
    const st::SafetensorsFile& f = ck.file(i);
    std::error_code ec;
    h.str(ck.file_name(i));
    h.num(static_cast<std::uint64_t>(fs::file_size(f.path(), ec)));
    for (const auto& kv : f.metadata()) {
      h.str(kv.first);
      h.str(kv.second);
    }
    for (const st::TensorInfo& t : f.tensors()) {
      h.str(t.name);
      h.str(st::dtype_name(t.dtype));
      h.num(t.shape.size());
      for (std::uint64_t d : t.shape) h.num(d);
      h.num(t.begin);
      const std::uint64_t n = t.nbytes(), k = std::min<std::uint64_t>(n, 64);
      h.num(n);
      unsigned char b[64];
      for (std::uint64_t at : {std::uint64_t(0), (n - k) / 2, n - k}) {
        f.read_bytes(t, at, k, b);
        h.bytes(b, k);
      }
    }
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "fnv1a64:%016llx", static_cast<unsigned long long>(h.h));
  return buf;
}

void check_finite(const st::SafetensorsFile& f, const st::TensorInfo& t) {
  const std::vector<unsigned char> bytes = f.read_bytes(t);
  const unsigned char* b = bytes.data();
  const std::uint64_t n = t.nbytes();
  bool ok = true;
  switch (t.dtype) {
    case st::Dtype::F32:
      for (std::uint64_t i = 0; ok && i + 4 <= n; i += 4) {
        float x;
        std::memcpy(&x, b + i, 4);
        ok = std::isfinite(x);
      }
      break;
    case st::Dtype::F64:
      for (std::uint64_t i = 0; ok && i + 8 <= n; i += 8) {
        double x;
        std::memcpy(&x, b + i, 8);
        ok = std::isfinite(x);
      }
      break;
    case st::Dtype::F16:
      for (std::uint64_t i = 0; ok && i + 2 <= n; i += 2) {
        std::uint16_t x;
        std::memcpy(&x, b + i, 2);
        ok = ((x >> 10) & 0x1f) != 0x1f;  // all-ones exponent: Inf or NaN
      }
      break;
    case st::Dtype::BF16:
      for (std::uint64_t i = 0; ok && i + 2 <= n; i += 2) {
        std::uint16_t x;
        std::memcpy(&x, b + i, 2);
        ok = ((x >> 7) & 0xff) != 0xff;  // likewise
      }
      break;
    default:
      break;
  }
  if (!ok) throw InputError{f.path() + ": tensor '" + printable(t.name) + "' holds NaN or infinite values"};
}

namespace {
std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) s = 0;
  const long t = static_cast<long>(s + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  return buf;
}
}  // namespace

Progress::Progress(std::size_t total, bool quiet) : total_(total), quiet_(quiet), tty_(::isatty(2) != 0) {}

void Progress::update(std::size_t done, const std::string& current) {
  if (quiet_) return;
  const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  const double eta = done > 0 ? el / static_cast<double>(done) * static_cast<double>(total_ - done) : 0.0;
  const int pct = total_ ? static_cast<int>(100 * done / total_) : 100;
  char head[128];
  std::snprintf(head, sizeof head, "[%zu/%zu] %3d%%  elapsed %s  ETA %s  ", done, total_, pct,
                fmt_duration(el).c_str(), done > 0 ? fmt_duration(eta).c_str() : "-:--:--");
  if (tty_) {
    std::string bar(20, ' ');
    for (std::size_t i = 0; i < (total_ ? 20 * done / total_ : 20); ++i) bar[i] = '#';
    std::fprintf(stderr, "\r[%s] %s%s\x1b[K", bar.c_str(), head, printable(current).c_str());
    if (done == total_) std::fputc('\n', stderr);
  } else if (done > 0) {
    std::fprintf(stderr, "loftq: %s%s\n", head, printable(current).c_str());
  }
  std::fflush(stderr);
}

}  // namespace loftq_cli

// loftq merge: the outputs of `model --shard K/N` runs and the original
// checkpoint -> the output of an unsharded run (identical tensors).

#include "checkpoint_plan.hpp"
#include "commands.hpp"
#include "errors.hpp"
#include "content_identity.hpp"
#include "path_safety.hpp"
#include "report.hpp"
#include "safetensors_output.hpp"

#include <loftq/io/strict_json.hpp>
#include <loftq/version.hpp>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>

namespace loftq_cli {

namespace {

nlohmann::json read_report(const std::string& dir) {
  const fs::path p = fs::path(dir) / kReportFile;
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) throw InputError{p.string() + ": missing or not a regular file"};
  std::FILE* f = std::fopen(p.c_str(), "rb");
  if (!f) throw InputError{p.string() + ": cannot open: " + std::strerror(errno)};
  std::string text;
  char buf[65536];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    text.append(buf, n);
    if (text.size() > (std::size_t{256} << 20)) {
      std::fclose(f);
      throw InputError{p.string() + ": too large"};
    }
  }
  std::fclose(f);
  // Strict, as the checkpoint's index is read: a duplicate key or a NUL byte
  // is refused rather than silently resolved.
  nlohmann::json j;
  try {
    j = loftq::io::parse_json_strict(text, p.string());
  } catch (const loftq::Error& e) {
    throw InputError{e.what()};
  }
  if (!j.is_object() || !j.contains("shard") || !j["shard"].is_object() || !j.contains("settings") ||
      !j["settings"].is_object() || !j.contains("tensors") || !j["tensors"].is_object())
    throw InputError{p.string() + ": not the report of a 'loftq model --shard' run"};
  return j;
}

// The calibration statistics a shard was computed with (null: none), without
// the targets that shard computed data-free, which are its own.
nlohmann::json calibration_of(const nlohmann::json& rep) {
  if (!rep.contains("calibration")) return nullptr;
  nlohmann::json c = rep["calibration"];
  if (c.is_object()) c.erase("data_free_targets");
  return c;
}

// The merged report's "calibration": the shards' own, with every shard's data-free targets.
nlohmann::json merged_calibration(const std::vector<nlohmann::json>& reps) {
  nlohmann::json c = calibration_of(reps[0]);
  if (!c.is_object()) return c;
  std::set<std::string> fallbacks;
  for (const auto& r : reps) {
    const nlohmann::json& f =
        r["calibration"].contains("data_free_targets") ? r["calibration"]["data_free_targets"] : nlohmann::json();
    if (f.is_array())
      for (const auto& t : f)
        if (t.is_string()) fallbacks.insert(t.get<std::string>());
  }
  c["data_free_targets"] = fallbacks;
  return c;
}

// Checks that the reports are shards 1..N of one run with equal settings.
void check_shard_set(const Args& a, const std::vector<nlohmann::json>& reps) {
  const std::size_t n = reps.size();
  std::vector<bool> have(n, false);
  for (std::size_t i = 0; i < n; ++i) {
    const nlohmann::json& sh = reps[i]["shard"];
    if (!sh.contains("index") || !sh["index"].is_number_integer() || !sh.contains("count") ||
        !sh["count"].is_number_integer())
      throw InputError{a.shards[i] + ": malformed shard report: no integer shard index and count"};
    const std::int64_t k = sh["index"].get<std::int64_t>(), cnt = sh["count"].get<std::int64_t>();
    if (cnt != static_cast<std::int64_t>(n))
      throw InputError{a.shards[i] + ": is shard " + std::to_string(k) + " of " + std::to_string(cnt) + " but " +
                       std::to_string(n) + " shard directories were given"};
    if (k < 1 || k > cnt || have[static_cast<std::size_t>(k - 1)])
      throw InputError{a.shards[i] + ": shard index " + std::to_string(k) + " is out of range or repeated"};
    have[static_cast<std::size_t>(k - 1)] = true;
    if (reps[i]["settings"] != reps[0]["settings"])
      throw InputError{a.shards[i] + ": settings differ from " + a.shards[0] + "'s"};
    if (calibration_of(reps[i]) != calibration_of(reps[0]))
      throw InputError{a.shards[i] + ": computed with other calibration statistics than " + a.shards[0]};
  }
}

// Reads the reports of the --shards directories: each named once, shards
// 1..N of one run with equal settings.
std::vector<nlohmann::json> read_shard_reports(const Args& a) {
  // A shard named twice, as the same text or as two paths to one directory.
  std::vector<InputFile> dirs;
  for (const std::string& d : a.shards) {
    const InputFile f = input_file(d);
    for (std::size_t j = 0; j < dirs.size(); ++j)
      if (d == dirs[j].shown || (!f.real.empty() && f.real == dirs[j].real))
        throw InputError{d + ": the shard directory is listed twice in --shards (also as " + dirs[j].shown + ")"};
    dirs.push_back(f);
  }
  std::vector<nlohmann::json> reps;
  for (const std::string& d : a.shards) reps.push_back(read_report(d));
  check_shard_set(a, reps);
  return reps;
}

// Every shard must come from this very checkpoint: equal settings and
// shapes alone would let the shards of another model through.
void check_identity(const Args& a, const std::vector<nlohmann::json>& reps, const std::string& identity) {
  for (std::size_t i = 0; i < reps.size(); ++i) {
    const nlohmann::json& id = reps[i].contains("input_identity") ? reps[i]["input_identity"] : nlohmann::json();
    if (!id.is_string())
      throw InputError{a.shards[i] +
                       ": the shard report records no input identity (written by an older loftq); "
                       "rerun the shard"};
    if (id.get<std::string>() != identity)
      throw InputError{a.shards[i] + ": computed from a different checkpoint than " + a.input + " (input identity " +
                       printable(id.get<std::string>()) + ", " + a.input + " has " + identity + ")"};
  }
}

std::vector<std::string> merge_inputs(const Args& a, const io::Checkpoint& ck) {
  std::vector<std::string> inputs = checkpoint_inputs(ck, a.input);
  for (const std::string& d : a.shards) {
    inputs.push_back(d);
    for (const char* f : {kReportFile, kShardModelFile, kAdapterFile, kPackedFile})
      inputs.push_back((fs::path(d) / f).string());
  }
  return inputs;
}

// The shards' files, and which shard holds each target (every target exactly once).
struct Shards {
  std::vector<std::unique_ptr<io::SafetensorsFile>> model, adapter, packed;
  std::map<std::string, std::size_t> owner;
  nlohmann::json tensors = nlohmann::json::object();  // the shards' report entries
};

// Each file a shard's tensors come from must be the one its run wrote: a
// shard changed or damaged afterwards (a Q rescaled, a factor edited) would
// otherwise merge at exit 0 into a model its report does not describe.
void check_shard_files(const std::string& dir, const nlohmann::json& rep, bool packed) {
  const nlohmann::json* files = rep.contains("files") && rep["files"].is_object() ? &rep["files"] : nullptr;
  for (const char* name : {kShardModelFile, kAdapterFile, kPackedFile}) {
    if (name == std::string(kPackedFile) && !packed) continue;
    const std::string path = (fs::path(dir) / name).string();
    if (!files || !files->contains(name) || !(*files)[name].is_string())
      throw InputError{dir + ": the report records no identity of " + name + " (a shard of another loftq version?)"};
    if (content_identity(path) != (*files)[name].get<std::string>())
      throw InputError{path + ": not the file this shard's run wrote (changed or damaged since)"};
  }
}

Shards open_shards(const Args& a, const std::vector<nlohmann::json>& reps, const Settings& s, const Plan& plan) {
  Shards sh;
  for (std::size_t i = 0; i < reps.size(); ++i) {
    const fs::path d(a.shards[i]);
    check_shard_files(a.shards[i], reps[i], s.packed);
    sh.model.push_back(std::make_unique<io::SafetensorsFile>((d / kShardModelFile).string()));
    sh.adapter.push_back(std::make_unique<io::SafetensorsFile>((d / kAdapterFile).string()));
    if (s.packed) sh.packed.push_back(std::make_unique<io::SafetensorsFile>((d / kPackedFile).string()));
    for (auto it = reps[i]["tensors"].begin(); it != reps[i]["tensors"].end(); ++it) {
      if (!sh.owner.emplace(it.key(), i).second)
        throw InputError{a.shards[i] + ": tensor '" + printable(it.key()) + "' was also produced by another shard"};
      sh.tensors[it.key()] = it.value();
    }
  }
  for (const Target& t : plan.targets)
    if (!sh.owner.count(t.name))
      throw InputError{a.input + ": target tensor '" + printable(t.name) + "' is in none of the shards"};
  if (sh.owner.size() != plan.targets.size())
    throw InputError{"the shards hold tensors that are not targets of " + a.input};
  return sh;
}

// Each tensor's width as its shard reported it (all equal to the settings'
// today: a --bits-budget run cannot be sharded), its entry checked.
std::map<std::string, int> check_entries(const Args& a, const Shards& sh, const Settings& s, const Plan& plan) {
  std::map<std::string, int> bits_of;
  for (const Target& t : plan.targets) {
    const nlohmann::json& e = sh.tensors[t.name];
    const std::string where = a.shards[sh.owner.at(t.name)] + ": report entry of tensor '" + printable(t.name) + "'";
    if (!e.is_object()) throw InputError{where + " is not an object"};
    // The merged report sums these; a bad one would pass into its totals.
    for (const char* k : {"sq_err", "rel_err", "qlora_rel_err", "bits_per_weight"})
      if (e.contains(k) && !(e[k].is_number() && e[k].get<double>() >= 0))
        throw InputError{where + ": " + k + " " + e[k].dump() + " is not a non-negative number"};
    const int b = e.contains("bits") && e["bits"].is_number_integer() ? e["bits"].get<int>() : s.bits;
    if (b != s.bits)
      throw InputError{where + " has bits " + std::to_string(b) + ", the settings say " + std::to_string(s.bits)};
    if (e.contains("rank") && e["rank"] != s.j["rank"])
      throw InputError{where + " has rank " + e["rank"].dump() + ", the settings say " + s.j["rank"].dump()};
    if (e.contains("shape") && e["shape"] != nlohmann::json({t.rows, t.cols}))
      throw InputError{where + " has shape " + e["shape"].dump() + ", the checkpoint's is [" + std::to_string(t.rows) +
                       "," + std::to_string(t.cols) + "]"};
    bits_of[t.name] = b;
  }
  return bits_of;
}

// A shard's tensor, checked to be what the merged output declares.
const io::TensorInfo& expect(const io::SafetensorsFile& f, const std::string& name, io::Dtype dt,
                             const std::vector<std::uint64_t>& shape) {
  const io::TensorInfo* t = f.find(name);
  if (!t) throw InputError{f.path() + ": missing tensor '" + printable(name) + "'"};
  if (t->dtype != dt || t->shape != shape)
    throw InputError{f.path() + ": tensor '" + printable(name) + "' has the wrong dtype or shape"};
  check_finite(f, *t);
  return *t;
}

void copy_tensors(const io::Checkpoint& ck, const Plan& plan, const Shards& sh, const Settings& s,
                  const std::map<std::string, int>& bits_of, Writers& w) {
  const std::uint64_t r = static_cast<std::uint64_t>(s.rank);
  for (std::size_t fi = 0; fi < ck.num_files(); ++fi) {
    const io::SafetensorsFile& f = ck.file(fi);
    for (const io::TensorInfo& t : f.tensors()) {
      const auto o = sh.owner.find(t.name);
      if (o == sh.owner.end()) {
        copy_tensor(f, t, *w.base.files[fi], t.name);
        continue;
      }
      const io::SafetensorsFile& m = *sh.model[o->second];
      copy_tensor(m, expect(m, t.name, t.dtype, t.shape), *w.base.files[fi], t.name);
    }
  }
  for (const Target& t : plan.targets) {
    const std::size_t i = sh.owner.at(t.name);
    const io::SafetensorsFile& ad = *sh.adapter[i];
    const std::string la = io::lora_a_name(t.name), lb = io::lora_b_name(t.name);
    copy_tensor(ad, expect(ad, la, io::Dtype::F32, {r, t.cols}), w.adapter->file(), la);
    copy_tensor(ad, expect(ad, lb, io::Dtype::F32, {t.rows, r}), w.adapter->file(), lb);
    if (w.packed)
      for (const io::TensorDecl& d : io::packed_tensors({t.name, t.rows, t.cols, bits_of.at(t.name)},
                                                        s.packing.block_size, s.packing.double_quant))
        copy_tensor(*sh.packed[i], expect(*sh.packed[i], d.name, d.dtype, d.shape), w.packed->file(), d.name);
  }
}

}  // namespace

int run_merge(const Args& a) {
  const auto t_start = std::chrono::steady_clock::now();
  const std::vector<nlohmann::json> reps = read_shard_reports(a);
  const Settings s = Settings::from_report(reps[0]["settings"]);
  const InputIdentity input_id(a.input);
  const io::Checkpoint ck(a.input);
  const SideFiles side = read_side_files(ck, a.input, input_id);
  check_same_input(a.input, input_id, ck);
  check_checkpoint_names(ck, s.packed);
  const std::string identity = checkpoint_identity(ck);
  check_identity(a, reps, identity);
  StagedOutput out(a.output, a.overwrite ? StagedOutput::Existing::replace : StagedOutput::Existing::refuse,
                   merge_inputs(a, ck));
  const Plan plan = plan_targets(ck, s.modules, static_cast<Eigen::Index>(s.rank), a.input);
  std::vector<const Target*> all;
  for (const Target& t : plan.targets) all.push_back(&t);
  const Shards sh = open_shards(a, reps, s, plan);
  const std::map<std::string, int> bits_of = check_entries(a, sh, s, plan);
  // The whole adapter is larger than any shard's: its header is checked here.
  check_output_headers(a.input, ck, all, /*shard_run=*/false, s);
  check_output_index(ck, a.input, s, plan.targets);

  out.stage();
  Writers w = open_writers(out, ck, all, s, bits_of);
  copy_tensors(ck, plan, sh, s, bits_of, w);
  w.commit();

  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  double shard_seconds = 0;
  for (const auto& rp : reps)
    if (rp.contains("seconds") && rp["seconds"].is_number()) shard_seconds += rp["seconds"].get<double>();
  ReportBuilder rep(a.input);
  rep["input_identity"] = identity;
  rep["settings"] = s.j;
  rep["target_modules_matched"] = plan.modules;
  rep["num_targets"] = plan.targets.size();
  rep["merged_shards"] = reps.size();
  if (reps[0].contains("calibration")) rep["calibration"] = merged_calibration(reps);
  rep.tensors(sh.tensors);
  rep["shard_seconds"] = shard_seconds;
  out.write_file(kReportFile, rep.finish(total));
  write_full_extras(out, ck, a.input, side, s, plan.modules, plan.targets);
  out.publish();
  if (!a.quiet) {
    std::printf("loftq %s: merged %zu shards of %s -> %s (%zu target tensors), %.1f s\n", loftq::version().c_str(),
                reps.size(), printable(a.input).c_str(), printable(out.dir().string()).c_str(), plan.targets.size(),
                total);
    std::fflush(stdout);
  }
  return kExitOk;
}

}  // namespace loftq_cli

// libFuzzer target: the JSON loftq reads besides safetensors headers. The
// first byte picks the reader, the rest is the file:
//   odd:  a sharded checkpoint's model.safetensors.index.json
//         (loftq::io::detail::read_shard_index, what Checkpoint opens);
//   even: a `loftq model --shard` report as `loftq merge` reads it (strict
//         JSON, then Settings::from_report on its "settings").
//
// Contract under test: every defect is a loftq::Error (library) or the
// tool's InputError; nothing else escapes and no sanitizer fires. What is
// accepted must satisfy what later code relies on.
#include <loftq/io/safetensors.hpp>

#include "checkpoint_plan.hpp"
#include "errors.hpp"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

void index_file(const std::string& text) {
  static const std::string path = "/tmp/fuzz_json_inputs." + std::to_string(::getpid()) + ".index.json";
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (!text.empty() && std::fwrite(text.data(), 1, text.size(), f) != text.size()) std::abort();
  std::fclose(f);
  loftq::io::detail::ShardIndex idx;
  try {
    idx = loftq::io::detail::read_shard_index(path);
  } catch (const loftq::Error&) {
    return;
  }
  if (idx.weight_map.empty() || idx.shard_names.empty()) std::abort();
  for (const auto& kv : idx.weight_map) {
    const std::string& file = kv.second;
    // Plain names in the index's own directory only.
    if (file.empty() || file == "." || file == ".." || file.find('/') != std::string::npos) std::abort();
    if (idx.shard_names.count(file) != 1) std::abort();
  }
}

void shard_report(const std::string& text) {
  nlohmann::json j;
  try {
    j = loftq::io::detail::parse_json_strict(text, "fuzz report");
  } catch (const loftq::Error&) {
    return;
  }
  if (!j.is_object() || !j.contains("settings")) return;
  try {
    const loftq_cli::Settings s = loftq_cli::Settings::from_report(j["settings"]);
    // What merge goes on to use must be in the ranges the command line takes.
    if (s.bits < 1 || s.rank < 1 || s.packing.block_size < 1 || !(s.alpha >= 1e-6 && s.alpha <= 1e6)) std::abort();
    for (const std::string& m : s.modules)
      if (m.empty()) std::abort();
  } catch (const loftq_cli::InputError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] & 1)
    index_file(text);
  else
    shard_report(text);
  return 0;
}

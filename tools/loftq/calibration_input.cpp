#include "calibration_input.hpp"

#include "errors.hpp"

#include <loftq/io/calibration.hpp>
#include <loftq/io/file.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>

namespace loftq_cli {

namespace {

// The file's size and a 64-bit FNV-1a hash of its bytes: shards computed with
// different statistics cannot be merged, whatever their file names.
std::string content_identity(const std::string& path) {
  io::ReadOnlyFile f;
  f.open(path);
  std::uint64_t h = 1469598103934665603ull;
  std::vector<unsigned char> buf(std::size_t(16) << 20);
  for (std::uint64_t off = 0; off < f.size();) {
    const std::uint64_t n = std::min<std::uint64_t>(buf.size(), f.size() - off);
    f.pread_exact(buf.data(), off, n);
    for (std::uint64_t i = 0; i < n; ++i) h = (h ^ buf[i]) * 1099511628211ull;
    off += n;
  }
  char id[64];
  std::snprintf(id, sizeof id, "%llu:fnv1a64:%016llx", static_cast<unsigned long long>(f.size()),
                static_cast<unsigned long long>(h));
  return id;
}

const char* metric_name(loftq::StatsMode m) { return m == loftq::StatsMode::full ? "full" : "diagonal"; }

}  // namespace

CalibrationInput::CalibrationInput(const std::string& path, bool data_free_fallback, double damping)
    : path_(path), fallback_(data_free_fallback), damping_(damping) {
  try {
    file_ = io::read_calibration(path);
    identity_ = content_identity(path);
  } catch (const loftq::Error& e) {
    throw InputError{std::string(e.what()).rfind(path, 0) == 0 ? e.what() : path + ": " + e.what()};
  }
}

void CalibrationInput::check(const std::vector<ModelTarget>& targets) {
  std::size_t matched = 0;
  for (const ModelTarget& t : targets) {
    io::StatisticsFile::Match m;
    try {
      m = file_.lookup(t.name);
      if (m.entry) file_.check(t.name, static_cast<Eigen::Index>(t.cols));
    } catch (const loftq::Error& e) {
      throw InputError{e.what()};
    }
    if (!m.entry) {
      if (!fallback_)
        throw InputError{path_ + ": no statistics for target '" + printable(t.name) +
                         "' (--calibration-missing data-free computes such targets without them)"};
      fallbacks_.push_back(t.name);
      continue;
    }
    if (m.entry->count < 1) throw InputError{path_ + ": '" + m.entry->name + "' was summed over no tokens"};
    entry_of_[t.name] = {m.entry->name, m.shared};
    ++matched;
  }
  if (matched == 0 && !targets.empty())
    throw InputError{path_ + ": no entry matches any target (names such as '" + printable(targets.front().name) +
                     "'); is it the statistics of another model?"};
}

const loftq::InputStatistics* CalibrationInput::of(const ModelTarget& t) const {
  const auto it = entry_of_.find(t.name);
  if (it == entry_of_.end()) return nullptr;
  const std::string& entry = it->second.first;
  for (const auto& c : cache_)
    if (c.first == entry) return &c.second;
  if (cache_.size() >= 2) cache_.erase(cache_.begin());
  try {
    cache_.emplace_back(entry, file_.statistics(t.name));
  } catch (const loftq::Error& e) {
    throw InputError{e.what()};
  }
  return &cache_.back().second;
}

nlohmann::json CalibrationInput::describe() const {
  return {{"file", std::filesystem::path(path_).filename().string()},
          {"format", io::calibration_format_name(file_.format())},
          {"identity", identity_},
          {"damping", {{"full", data_aware_options().damping}, {"diagonal", data_aware_options().diagonal_damping}}},
          {"missing", fallback_ ? "data-free" : "refuse"},
          {"data_free_targets", fallbacks_}};
}

nlohmann::json CalibrationInput::target_json(const ModelTarget& t) const {
  const auto it = entry_of_.find(t.name);
  if (it == entry_of_.end()) return {{"metric", "none"}};
  const io::CalibrationEntry& e = file_.entries().at(it->second.first);
  return {{"metric", metric_name(e.mode)},
          {file_.counts_are_chunks() ? "chunks" : "tokens", e.count},
          {"entry", e.name},
          {"shared", it->second.second}};
}

}  // namespace loftq_cli

#pragma once
// Calibration statistics files: the project's own (a .safetensors file,
// written and read here) and, through the same StatisticsFile type,
// llama.cpp's importance matrices (io/imatrix.hpp). io/calibration.hpp
// tells the three apart by content. The layout is documented in
// docs/formats.md, "Calibration statistics":
//
//   <module>.xtx     F32 or F64, [n, n] (sum of x x^T over the tokens, full
//                    statistics) or [n] (sum of x_j^2, diagonal statistics)
//   <module>.tokens  I64, shape [] or [1]: the number of tokens summed
//   __metadata__     "loftq.format": kStatisticsFormat;
//                    "loftq.shares.<target>": "<module>" for each target that
//                    reads the same input as <module> and has no entry of
//                    its own (q/k/v, gate/up)
//
// Sums rather than means, so that files of disjoint token sets merge by
// adding entries, as llama.cpp's in_sum2 does.
//
// Opening checks the structure (names, dtypes, shapes, token counts,
// shares); the values of an n x n entry are read and checked when asked for
// (statistics(), or validate() for every entry), so that a model's worth of
// full matrices is never held at once. Every defect is a loftq::Error naming
// the file and the tensor: NaN or Inf, a negative diagonal, a matrix that is
// not square or not symmetric to within kSymmetryTolerance, zero tokens, an
// unpaired or unexpected tensor, a share naming no entry, and whatever
// SafetensorsFile rejects (truncation, a hostile header).

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "loftq/error.hpp"
#include "loftq/input_statistics.hpp"
#include "loftq/io/llama_names.hpp"
#include "loftq/io/safetensors.hpp"

namespace loftq {
namespace io {

constexpr const char* kStatisticsFormat = "loftq.calibration.v1";
constexpr const char* kStatisticsFormatKey = "loftq.format";
constexpr const char* kStatisticsSharesPrefix = "loftq.shares.";
// |H_ij - H_ji| <= tol * sqrt(H_ii H_jj): float32 sums computed by a GEMM that
// does not mirror its triangles stay well inside it.
constexpr double kSymmetryTolerance = 1e-4;

enum class CalibrationFormat { loftq, imatrix_gguf, imatrix_dat };

inline const char* calibration_format_name(CalibrationFormat f) {
  switch (f) {
    case CalibrationFormat::loftq:
      return "loftq statistics (safetensors)";
    case CalibrationFormat::imatrix_gguf:
      return "llama.cpp imatrix (GGUF)";
    case CalibrationFormat::imatrix_dat:
      return "llama.cpp imatrix (legacy .dat)";
  }
  return "?";
}

struct CalibrationEntry {
  std::string name;  // Hugging Face module path when known, else the file's name
  Eigen::Index features = 0;
  StatsMode mode = StatsMode::diagonal;
  // Samples summed over: tokens; chunks for a legacy imatrix (see
  // StatisticsFile::counts_are_chunks). The mean sum / count is what matters.
  std::int64_t count = 0;
};

namespace detail {
struct StatisticsFileAccess;
}

class StatisticsFile {
 public:
  struct Match {
    const CalibrationEntry* entry = nullptr;  // nullptr: no statistics for the target
    bool shared = false;                      // true: another module's entry, same input
  };

  StatisticsFile() = default;
  StatisticsFile(StatisticsFile&&) noexcept = default;
  StatisticsFile& operator=(StatisticsFile&&) noexcept = default;

  const std::string& path() const { return path_; }
  CalibrationFormat format() const { return format_; }
  const std::map<std::string, CalibrationEntry>& entries() const { return entries_; }
  // Target -> the entry it falls back to.
  const std::map<std::string, std::string>& shares() const { return shares_; }
  // Entries this library cannot use (llama.cpp's per-expert statistics), with why.
  const std::map<std::string, std::string>& refused() const { return refused_; }
  const std::vector<std::string>& datasets() const { return datasets_; }
  std::int64_t chunk_count() const { return chunk_count_; }
  std::int64_t chunk_size() const { return chunk_size_; }  // 0: unknown
  // A legacy imatrix records chunks, not tokens: counts are chunks there.
  bool counts_are_chunks() const { return counts_are_chunks_; }

  // The entry for `target`, by Hugging Face module path (".weight" optional)
  // or llama.cpp tensor name, falling back along shares(). Throws
  // Errc::unsupported for a refused entry.
  Match lookup(const std::string& target) const {
    for (const std::string& c : {target, strip_weight(target), llama_to_hf(target), hf_to_llama(target)}) {
      if (c.empty()) continue;
      const auto e = entries_.find(c);
      if (e != entries_.end()) return {&e->second, false};
      const auto s = shares_.find(c);
      if (s != shares_.end()) return {&entries_.at(s->second), true};
      const auto r = refused_.find(c);
      if (r != refused_.end()) ::loftq::detail::fail(Errc::unsupported, path_ + ": '" + c + "': " + r->second);
    }
    return {};
  }

  // The entry for `target`, which must exist and have n features.
  const CalibrationEntry& check(const std::string& target, Eigen::Index n) const {
    const Match m = lookup(target);
    ::loftq::detail::require(m.entry != nullptr, Errc::invalid_argument,
                             path_ + ": no statistics for '" + target + "'");
    ::loftq::detail::require(m.entry->features == n, Errc::invalid_argument,
                             path_ + ": tensor '" + tensor_name(*m.entry) + "' has " +
                                 std::to_string(m.entry->features) + " features, but '" + target + "' has " +
                                 std::to_string(n) + " inputs");
    return *m.entry;
  }

  // The statistics of `target` (see lookup), read and validated.
  InputStatistics statistics(const std::string& target) const {
    const Match m = lookup(target);
    ::loftq::detail::require(m.entry != nullptr, Errc::invalid_argument,
                             path_ + ": no statistics for '" + target + "'");
    return load(*m.entry);
  }

  // Reads and validates every entry, one at a time.
  void validate() const {
    for (const auto& e : entries_) load(e.second);
  }

 private:
  friend struct detail::StatisticsFileAccess;

  static std::string strip_weight(std::string s) {
    detail::strip_suffix(s, ".weight");
    return s;
  }
  std::string tensor_name(const CalibrationEntry& e) const {
    return format_ == CalibrationFormat::loftq ? e.name + ".xtx" : e.name;
  }

  InputStatistics load(const CalibrationEntry& e) const {
    const auto d = diagonal_.find(e.name);
    if (d != diagonal_.end()) return ::loftq::detail::StatsAccess::restore(d->second, e.count);
    return load_xtx(e);
  }

  // The stored matrix or vector as doubles, checked; a matrix is symmetrized
  // (the mean of its two triangles) once it passes the tolerance.
  InputStatistics load_xtx(const CalibrationEntry& e) const {
    const TensorInfo& t = file_->at(e.name + ".xtx");
    const std::string what = path_ + ": tensor '" + t.name + "'";
    const std::size_t es = dtype_size(t.dtype);
    const std::uint64_t n = static_cast<std::uint64_t>(e.features);
    const std::uint64_t rows = e.mode == StatsMode::full ? n : 1, width = n;
    const std::uint64_t step = std::max<std::uint64_t>(1, (std::uint64_t(1) << 20) / (width * es));
    Eigen::MatrixXd M(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(width));
    std::vector<unsigned char> buf;
    for (std::uint64_t r0 = 0; r0 < rows; r0 += step) {
      const std::uint64_t k = std::min(step, rows - r0);
      buf.resize(static_cast<std::size_t>(k * width * es));
      file_->read_bytes(t, r0 * width * es, buf.size(), buf.data());
      for (std::uint64_t i = 0; i < k; ++i)
        for (std::uint64_t j = 0; j < width; ++j) {
          const unsigned char* p = buf.data() + (i * width + j) * es;
          double v;
          if (t.dtype == Dtype::F64) {
            std::memcpy(&v, p, 8);
          } else {
            float f;
            std::memcpy(&f, p, 4);
            v = f;
          }
          if (!std::isfinite(v))
            ::loftq::detail::fail(Errc::non_finite, what + ": element " + std::to_string(r0 + i) +
                                                        (rows > 1 ? "," + std::to_string(j) : std::string()) +
                                                        " is NaN or Inf");
          M(static_cast<Eigen::Index>(r0 + i), static_cast<Eigen::Index>(j)) = v;
        }
    }
    const Eigen::Index nn = e.features;
    auto diag = [&](Eigen::Index j) { return e.mode == StatsMode::full ? M(j, j) : M(0, j); };
    for (Eigen::Index j = 0; j < nn; ++j)
      if (!(diag(j) >= 0))
        ::loftq::detail::fail(Errc::invalid_argument, what + ": diagonal element " + std::to_string(j) +
                                                          " is negative (" + std::to_string(diag(j)) +
                                                          "); a second moment cannot be");
    if (e.mode == StatsMode::diagonal)
      return ::loftq::detail::StatsAccess::restore(Eigen::VectorXd(M.row(0).transpose()), e.count);
    for (Eigen::Index j = 0; j < nn; ++j)
      for (Eigen::Index i = j + 1; i < nn; ++i) {
        const double a = M(i, j), b = M(j, i);
        if (!(std::abs(a - b) <= kSymmetryTolerance * std::sqrt(M(i, i) * M(j, j))))
          ::loftq::detail::fail(Errc::invalid_argument, what + ": not symmetric: element " + std::to_string(i) + "," +
                                                            std::to_string(j) + " is " + std::to_string(a) +
                                                            ", element " + std::to_string(j) + "," + std::to_string(i) +
                                                            " is " + std::to_string(b));
        M(i, j) = 0.5 * a + 0.5 * b;
      }
    return ::loftq::detail::StatsAccess::restore(std::move(M), e.count);
  }

  std::string path_;
  CalibrationFormat format_ = CalibrationFormat::loftq;
  std::map<std::string, CalibrationEntry> entries_;
  std::map<std::string, std::string> shares_, refused_;
  std::map<std::string, Eigen::VectorXd> diagonal_;  // imatrix entries, held in memory
  std::unique_ptr<SafetensorsFile> file_;            // project files: read on demand
  std::vector<std::string> datasets_;
  std::int64_t chunk_count_ = 0, chunk_size_ = 0;
  bool counts_are_chunks_ = false;
};

namespace detail {

struct StatisticsFileAccess {
  static std::string& path(StatisticsFile& f) { return f.path_; }
  static CalibrationFormat& format(StatisticsFile& f) { return f.format_; }
  static std::map<std::string, CalibrationEntry>& entries(StatisticsFile& f) { return f.entries_; }
  static std::map<std::string, std::string>& shares(StatisticsFile& f) { return f.shares_; }
  static std::map<std::string, std::string>& refused(StatisticsFile& f) { return f.refused_; }
  static std::map<std::string, Eigen::VectorXd>& diagonal(StatisticsFile& f) { return f.diagonal_; }
  static std::unique_ptr<SafetensorsFile>& file(StatisticsFile& f) { return f.file_; }
  static std::vector<std::string>& datasets(StatisticsFile& f) { return f.datasets_; }
  static std::int64_t& chunk_count(StatisticsFile& f) { return f.chunk_count_; }
  static std::int64_t& chunk_size(StatisticsFile& f) { return f.chunk_size_; }
  static bool& counts_are_chunks(StatisticsFile& f) { return f.counts_are_chunks_; }
};

inline void check_shares(const std::string& path, const std::map<std::string, CalibrationEntry>& entries,
                         const std::map<std::string, std::string>& shares) {
  for (const auto& s : shares) {
    ::loftq::detail::require(!s.first.empty() && !entries.count(s.first), Errc::invalid_argument,
                             path + ": share '" + s.first + "' names a module that has an entry of its own");
    ::loftq::detail::require(entries.count(s.second) == 1, Errc::invalid_argument,
                             path + ": share '" + s.first + "' falls back to '" + s.second + "', which has no entry");
  }
}

}  // namespace detail

// Reads a project statistics file (see the top of this header).
inline StatisticsFile read_statistics(const std::string& path) {
  using A = detail::StatisticsFileAccess;
  StatisticsFile out;
  A::path(out) = path;
  A::format(out) = CalibrationFormat::loftq;
  auto file = std::make_unique<SafetensorsFile>(path);
  const auto& md = file->metadata();
  const auto fmt = md.find(kStatisticsFormatKey);
  ::loftq::detail::require(fmt != md.end(), Errc::parse_error,
                           path + ": not a loftq statistics file (no '" + kStatisticsFormatKey + "' metadata)");
  ::loftq::detail::require(
      fmt->second == kStatisticsFormat, Errc::unsupported,
      path + ": statistics format '" + fmt->second + "' is not supported (expected '" + kStatisticsFormat + "')");
  auto& entries = A::entries(out);
  for (const TensorInfo& t : file->tensors()) {
    std::string module = t.name;
    const std::string what = path + ": tensor '" + t.name + "'";
    if (detail::strip_suffix(module, ".xtx") && !module.empty()) {
      ::loftq::detail::require(t.dtype == Dtype::F32 || t.dtype == Dtype::F64, Errc::unsupported,
                               what + " has dtype " + dtype_name(t.dtype) + ", expected F32 or F64");
      const bool full = t.shape.size() == 2;
      ::loftq::detail::require((t.shape.size() == 1 || (full && t.shape[0] == t.shape[1])) && t.shape[0] >= 1,
                               Errc::parse_error, what + " must have shape [n, n] or [n], n >= 1");
      ::loftq::detail::require(t.shape[0] <= (std::uint64_t(1) << 31), Errc::unsupported, what + " is too large");
      CalibrationEntry& e = entries[module];
      e.name = module;
      e.features = static_cast<Eigen::Index>(t.shape[0]);
      e.mode = full ? StatsMode::full : StatsMode::diagonal;
    } else if (detail::strip_suffix(module = t.name, ".tokens") && !module.empty()) {
      ::loftq::detail::require(t.dtype == Dtype::I64 && t.numel == 1 && t.shape.size() <= 1, Errc::parse_error,
                               what + " must be one I64 (shape [] or [1])");
      unsigned char b[8];
      file->read_bytes(t, 0, 8, b);
      std::int64_t count;
      std::memcpy(&count, b, 8);
      ::loftq::detail::require(count >= 1, Errc::invalid_argument,
                               what + " records " + std::to_string(count) + " tokens; statistics need at least one");
      CalibrationEntry& e = entries[module];
      e.name = module;
      e.count = count;
    } else {
      ::loftq::detail::fail(Errc::parse_error, what + " is neither <module>.xtx nor <module>.tokens");
    }
  }
  for (const auto& e : entries) {
    ::loftq::detail::require(e.second.features >= 1, Errc::parse_error,
                             path + ": tensor '" + e.first + ".tokens' has no '" + e.first + ".xtx'");
    ::loftq::detail::require(e.second.count >= 1, Errc::parse_error,
                             path + ": tensor '" + e.first + ".xtx' has no '" + e.first + ".tokens'");
  }
  const std::string prefix = kStatisticsSharesPrefix;
  for (const auto& kv : md)
    if (kv.first.compare(0, prefix.size(), prefix) == 0) A::shares(out)[kv.first.substr(prefix.size())] = kv.second;
  detail::check_shares(path, entries, A::shares(out));
  A::file(out) = std::move(file);
  return out;
}

// What a statistics file will hold for one module, declared before any sum
// is known: its name, input width and mode.
struct StatisticsDecl {
  std::string module;
  Eigen::Index features = 0;
  StatsMode mode = StatsMode::full;
};

// Writes a statistics file one module at a time, so that a model's worth of
// full matrices never has to be in memory at once: the header (every
// module's tensors, and `shares`, target -> declared module) is laid out
// from the declarations, each module's sums are written when they are
// complete, and commit() publishes the file atomically (a temporary next to
// `path`, O_EXCL with a random suffix, synced, renamed). A writer destroyed
// before commit() leaves nothing. `dtype` is F32 or F64; a sum that does not
// fit it is an error.
class StatisticsWriter {
 public:
  StatisticsWriter(std::string path, const std::vector<StatisticsDecl>& modules,
                   const std::map<std::string, std::string>& shares = {}, Dtype dtype = Dtype::F32)
      : path_(std::move(path)), dtype_(dtype) {
    ::loftq::detail::require(dtype == Dtype::F32 || dtype == Dtype::F64, Errc::invalid_argument,
                             path_ + ": statistics are written as F32 or F64");
    ::loftq::detail::require(!modules.empty(), Errc::invalid_argument, path_ + ": no statistics to write");
    std::map<std::string, CalibrationEntry> entries;
    std::vector<TensorDecl> decls;
    for (const auto& m : modules) {
      ::loftq::detail::require(!m.module.empty(), Errc::invalid_argument, path_ + ": a module has an empty name");
      ::loftq::detail::require(m.features >= 1, Errc::invalid_argument,
                               path_ + ": '" + m.module + "' has no input features");
      ::loftq::detail::require(entries.count(m.module) == 0, Errc::invalid_argument,
                               path_ + ": '" + m.module + "' is declared twice");
      const std::uint64_t n = static_cast<std::uint64_t>(m.features);
      entries[m.module] = CalibrationEntry{m.module, m.features, m.mode, 1};
      decls.push_back({m.module + ".xtx", dtype,
                       m.mode == StatsMode::full ? std::vector<std::uint64_t>{n, n} : std::vector<std::uint64_t>{n}});
      decls.push_back({m.module + ".tokens", Dtype::I64, {}});
      pending_[m.module] = m;
    }
    detail::check_shares(path_, entries, shares);
    std::map<std::string, std::string> md{{kStatisticsFormatKey, kStatisticsFormat}};
    for (const auto& s : shares) md[kStatisticsSharesPrefix + s.first] = s.second;
    writer_ = std::make_unique<SafetensorsWriter>(path_, decls, md);
  }

  // The sums of a declared module (over at least one sample), once.
  void write(const std::string& module, const InputStatistics& s) {
    const auto it = pending_.find(module);
    ::loftq::detail::require(it != pending_.end(), Errc::invalid_argument,
                             path_ + ": '" + module + "' is not declared or already written");
    ::loftq::detail::require(s.features() == it->second.features && s.mode() == it->second.mode, Errc::invalid_argument,
                             path_ + ": '" + module + "' does not match its declaration");
    ::loftq::detail::require(s.count() >= 1, Errc::invalid_argument, path_ + ": '" + module + "' has no samples");
    const bool full = s.mode() == StatsMode::full;
    const Eigen::Index n = s.features();
    const Eigen::MatrixXd& S = ::loftq::detail::StatsAccess::sums(s);
    const Eigen::VectorXd& D = ::loftq::detail::StatsAccess::diagonal_sums(s);
    const std::size_t es = dtype_size(dtype_);
    std::vector<unsigned char> row(static_cast<std::size_t>(n) * es);
    for (Eigen::Index i = 0; i < (full ? n : 1); ++i) {
      for (Eigen::Index j = 0; j < n; ++j) {
        const double v = full ? (i >= j ? S(i, j) : S(j, i)) : D(j);  // the lower triangle, mirrored
        unsigned char* p = row.data() + static_cast<std::size_t>(j) * es;
        bool finite;
        if (dtype_ == Dtype::F64) {
          std::memcpy(p, &v, 8);
          finite = std::isfinite(v);
        } else {
          const float f = static_cast<float>(v);
          std::memcpy(p, &f, 4);
          finite = std::isfinite(f);
        }
        if (!finite)
          ::loftq::detail::fail(Errc::non_finite,
                                path_ + ": '" + module + "': a sum is not finite in " + dtype_name(dtype_));
      }
      writer_->write(module + ".xtx", row.data(), row.size(), static_cast<std::uint64_t>(i) * row.size());
    }
    const std::int64_t count = s.count();
    unsigned char b[8];
    std::memcpy(b, &count, 8);
    writer_->write(module + ".tokens", b, 8);
    pending_.erase(it);
  }

  // Publishes the file; every declared module must have been written.
  void commit() {
    ::loftq::detail::require(pending_.empty(), Errc::invalid_argument,
                             path_ + ": '" + (pending_.empty() ? std::string() : pending_.begin()->first) +
                                 "' was declared but not written");
    writer_->commit();
  }

 private:
  std::string path_;
  Dtype dtype_;
  std::map<std::string, StatisticsDecl> pending_;
  std::unique_ptr<SafetensorsWriter> writer_;
};

// Writes `stats` (module -> statistics, each over at least one sample) and
// `shares` (target -> module in stats) to `path` at once, atomically, as
// StatisticsWriter does.
inline void write_statistics(const std::string& path, const std::map<std::string, InputStatistics>& stats,
                             const std::map<std::string, std::string>& shares = {}, Dtype dtype = Dtype::F32) {
  std::vector<StatisticsDecl> decls;
  decls.reserve(stats.size());
  for (const auto& s : stats) decls.push_back({s.first, s.second.features(), s.second.mode()});
  StatisticsWriter w(path, decls, shares, dtype);
  for (const auto& s : stats) w.write(s.first, s.second);
  w.commit();
}

}  // namespace io
}  // namespace loftq

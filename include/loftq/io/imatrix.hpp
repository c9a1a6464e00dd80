#pragma once
// llama.cpp's importance matrix ("imatrix") as diagonal calibration
// statistics: read in both of its layouts, written in the GGUF one. The
// layouts and their meaning follow llama.cpp's tools/imatrix/imatrix.cpp
// (writers), common/imatrix-loader.cpp (reader) and the loader of
// tools/quantize/quantize.cpp (the meaning llama-quantize gives the values).
//
// GGUF: key-value pairs general.type = "imatrix", imatrix.datasets (array of
// strings), imatrix.chunk_count and imatrix.chunk_size (UINT32); per weight
// tensor <name> (e.g. blk.0.attn_q.weight), F32 tensors <name>.in_sum2, the
// sum over tokens of x_j^2 per input column, ne = [n] (or [n, n_expert]),
// and <name>.counts, the token count(s), ne = [1] (or [1, n_expert]).
// llama-quantize divides in_sum2 by the count; an expert with count 0 gets
// importance 1 for every column.
//
// Legacy .dat, little endian: int32 n_entries (>= 1); per entry int32 name
// length, the name, int32 ncall, int32 nval, nval float32 values; then
// optionally int32 chunk count, int32 length and a dataset name. The writer
// stores (sum / count) * ncall with ncall = ceil(max count / chunk size), so
// llama-quantize's importance is values / ncall (the values themselves when
// ncall <= 0). The token count is not stored: entries read from .dat count
// chunks (StatisticsFile::counts_are_chunks), and their mean sum / count is
// llama-quantize's importance.
//
// Entries are named by Hugging Face module path where io/llama_names.hpp
// maps the name, else by the name in the file. A module of a q/k/v or
// gate/up group without an entry falls back to a sibling's (shares()).
// Per-expert statistics (n_expert > 1, or an *_exps tensor in .dat) are
// listed in refused(); looking one up is Errc::unsupported.
//
// Both readers face untrusted bytes: every defect (truncation, counts that
// disagree with the bytes left, trailing bytes, duplicate names, NaN, Inf
// or negative sums, unpaired tensors, missing metadata) is a loftq::Error
// naming the file.

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "loftq/error.hpp"
#include "loftq/input_statistics.hpp"
#include "loftq/io/detail/posix_file.hpp"
#include "loftq/io/gguf.hpp"
#include "loftq/io/llama_names.hpp"
#include "loftq/io/statistics.hpp"

namespace loftq {
namespace io {

constexpr const char* kImatrixDatasets = "imatrix.datasets";
constexpr const char* kImatrixChunkCount = "imatrix.chunk_count";
constexpr const char* kImatrixChunkSize = "imatrix.chunk_size";

namespace detail {

// Adds one imatrix entry under its Hugging Face name where there is one.
inline void add_imatrix_entry(StatisticsFile& out, const std::string& file_name, Eigen::VectorXd sums,
                              std::int64_t count) {
  using A = StatisticsFileAccess;
  const std::string hf = llama_to_hf(file_name);
  const std::string key = hf.empty() ? file_name : hf;
  ::loftq::detail::require(!A::entries(out).count(key) && !A::refused(out).count(key), Errc::parse_error,
                           A::path(out) + ": two entries for '" + key + "'");
  A::entries(out)[key] = CalibrationEntry{key, static_cast<Eigen::Index>(sums.size()), StatsMode::diagonal, count};
  A::diagonal(out)[key] = std::move(sums);
}

inline void refuse_imatrix_entry(StatisticsFile& out, const std::string& file_name, const std::string& why) {
  using A = StatisticsFileAccess;
  const std::string hf = llama_to_hf(file_name);
  const std::string key = hf.empty() ? file_name : hf;
  ::loftq::detail::require(!A::entries(out).count(key) && A::refused(out).emplace(key, why).second, Errc::parse_error,
                           A::path(out) + ": two entries for '" + key + "'");
}

// Each module of a q/k/v or gate/up group without an entry falls back to
// the first sibling that has one.
inline void derive_imatrix_shares(StatisticsFile& out) {
  using A = StatisticsFileAccess;
  const auto& entries = A::entries(out);
  for (const auto& e : entries)
    for (const std::string& target : input_siblings(e.first)) {
      if (entries.count(target) || A::refused(out).count(target) || A::shares(out).count(target)) continue;
      if (target.size() >= 8 && target.compare(target.size() - 8, 8, "qkv_proj") == 0) continue;  // fused: not a target
      for (const std::string& s : input_siblings(target))
        if (entries.count(s)) {
          A::shares(out)[target] = s;
          break;
        }
    }
}

// The end of both readers: a file must give at least one module statistics
// (one whose every entry holds per-expert statistics would read as an empty
// file that refuses each lookup), then the shared entries are derived.
inline void finish_imatrix(StatisticsFile& out, const std::string& path) {
  ::loftq::detail::require(!StatisticsFileAccess::entries(out).empty(), Errc::unsupported,
                           path + ": no usable entry: every one holds per-expert statistics");
  derive_imatrix_shares(out);
}

inline void check_sums(const std::string& what, const float* v, std::uint64_t n) {
  for (std::uint64_t j = 0; j < n; ++j)
    if (!(std::isfinite(v[j]) && v[j] >= 0))
      ::loftq::detail::fail(std::isfinite(v[j]) ? Errc::invalid_argument : Errc::non_finite,
                            what + ": value " + std::to_string(j) + " (" + std::to_string(v[j]) +
                                ") is not a finite non-negative sum of squares");
}

inline bool is_expert_tensor(const std::string& name) { return name.find("_exps") != std::string::npos; }

}  // namespace detail

// Reads an imatrix in llama.cpp's GGUF layout.
inline StatisticsFile read_imatrix_gguf(const std::string& path) {
  using A = detail::StatisticsFileAccess;
  GgufFile g(path);
  StatisticsFile out;
  A::path(out) = path;
  A::format(out) = CalibrationFormat::imatrix_gguf;
  std::string type;
  if (g.find_kv("general.type"))
    ::loftq::detail::require(g.string_value("general.type", type) && type == "imatrix", Errc::parse_error,
                             path + ": general.type is not \"imatrix\"");
  const GgufKV* ds = g.find_kv(kImatrixDatasets);
  const GgufKV* cc = g.find_kv(kImatrixChunkCount);
  const GgufKV* cs = g.find_kv(kImatrixChunkSize);
  ::loftq::detail::require(
      ds && cc && cs, Errc::parse_error,
      path + ": missing imatrix metadata (imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size)");
  ::loftq::detail::require(cc->type == GgufValueType::UINT32 && cs->type == GgufValueType::UINT32, Errc::parse_error,
                           path + ": imatrix.chunk_count and imatrix.chunk_size must be UINT32");
  A::chunk_count(out) = static_cast<std::int64_t>(detail::get_le(cc->value.data(), 4));
  A::chunk_size(out) = static_cast<std::int64_t>(detail::get_le(cs->value.data(), 4));
  ::loftq::detail::require(ds->type == GgufValueType::ARRAY && ds->value.size() >= 12 &&
                               detail::get_le(ds->value.data(), 4) == static_cast<std::uint32_t>(GgufValueType::STRING),
                           Errc::parse_error, path + ": imatrix.datasets must be an array of strings");
  // GgufFile has checked the array's strings lie inside the value.
  for (std::size_t pos = 12; pos < ds->value.size();) {
    const std::uint64_t len = detail::get_le(ds->value.data() + pos, 8);
    A::datasets(out).emplace_back(reinterpret_cast<const char*>(ds->value.data() + pos + 8),
                                  static_cast<std::size_t>(len));
    pos += 8 + static_cast<std::size_t>(len);
  }
  std::map<std::string, std::pair<const GgufTensorInfo*, const GgufTensorInfo*>> pairs;
  for (const GgufTensorInfo& t : g.tensors()) {
    std::string name = t.name;
    if (detail::strip_suffix(name, ".in_sum2"))
      pairs[name].first = &t;
    else if (detail::strip_suffix(name, ".counts"))
      pairs[name].second = &t;
  }
  ::loftq::detail::require(!pairs.empty(), Errc::parse_error, path + ": no imatrix entries");
  std::vector<float> sums, counts;
  for (const auto& p : pairs) {
    const GgufTensorInfo* s = p.second.first;
    const GgufTensorInfo* c = p.second.second;
    const std::string what = path + ": '" + p.first + "'";
    ::loftq::detail::require(s && c, Errc::parse_error, what + ": needs both .in_sum2 and .counts");
    ::loftq::detail::require(
        s->type == static_cast<std::uint32_t>(GgmlType::F32) && c->type == static_cast<std::uint32_t>(GgmlType::F32),
        Errc::parse_error, what + ": .in_sum2 and .counts must be F32");
    const std::uint64_t n_expert = c->numel, n = s->ne[0];
    ::loftq::detail::require(s->numel % n_expert == 0 && s->numel / n_expert == n, Errc::parse_error,
                             what + ": .in_sum2 holds " + std::to_string(s->numel) + " values, not " +
                                 std::to_string(n) + " per count of .counts (" + std::to_string(n_expert) + ")");
    counts.resize(static_cast<std::size_t>(n_expert));
    g.read_bytes(*c, 0, c->nbytes, counts.data());
    for (float k : counts)
      if (!(std::isfinite(k) && k >= 0 && k < 9e18f))
        ::loftq::detail::fail(Errc::parse_error, what + ": a token count (" + std::to_string(k) + ") is not a count");
    if (n_expert > 1 || detail::is_expert_tensor(p.first)) {
      detail::refuse_imatrix_entry(
          out, p.first, "per-expert statistics (" + std::to_string(n_expert) + " experts) do not map to one module");
      continue;
    }
    ::loftq::detail::require(n <= (std::uint64_t(1) << 31), Errc::unsupported, what + " is too large");
    sums.resize(static_cast<std::size_t>(n));
    g.read_bytes(*s, 0, s->nbytes, sums.data());
    detail::check_sums(path + ": tensor '" + p.first + ".in_sum2'", sums.data(), n);
    const std::int64_t count = std::llround(counts[0]);
    Eigen::VectorXd v = Eigen::Map<const Eigen::VectorXf>(sums.data(), static_cast<Eigen::Index>(n)).cast<double>();
    if (count == 0) {
      v.setOnes();  // llama-quantize: importance 1 where no token was seen
      detail::add_imatrix_entry(out, p.first, std::move(v), 1);
    } else {
      detail::add_imatrix_entry(out, p.first, std::move(v), count);
    }
  }
  detail::finish_imatrix(out, path);
  return out;
}

// Reads an imatrix in llama.cpp's legacy .dat layout.
inline StatisticsFile read_imatrix_dat(const std::string& path) {
  using A = detail::StatisticsFileAccess;
  detail::ReadOnlyFile f;
  f.open(path);
  StatisticsFile out;
  A::path(out) = path;
  A::format(out) = CalibrationFormat::imatrix_dat;
  A::counts_are_chunks(out) = true;
  std::uint64_t pos = 0;
  auto left = [&] { return f.size() - pos; };
  auto bytes = [&](void* dst, std::uint64_t n, const std::string& what) {
    ::loftq::detail::require(n <= left(), Errc::parse_error,
                             path + ": truncated: " + what + " at byte " + std::to_string(pos) + " needs " +
                                 std::to_string(n) + " bytes, " + std::to_string(left()) + " are left");
    f.pread_exact(static_cast<unsigned char*>(dst), pos, n);
    pos += n;
  };
  auto i32 = [&](const std::string& what) {
    unsigned char b[4];
    bytes(b, 4, what);
    return static_cast<std::int32_t>(static_cast<std::uint32_t>(detail::get_le(b, 4)));
  };
  const std::int32_t n_entries = i32("the entry count");
  ::loftq::detail::require(n_entries >= 1, Errc::parse_error, path + ": no imatrix entries");
  // An entry takes at least 4 + 1 + 4 + 4 + 4 bytes.
  ::loftq::detail::require(static_cast<std::uint64_t>(n_entries) <= left() / 17, Errc::parse_error,
                           path + ": truncated: " + std::to_string(n_entries) + " entries cannot fit in " +
                               std::to_string(left()) + " bytes");
  std::vector<float> vals;
  for (std::int32_t i = 0; i < n_entries; ++i) {
    const std::string entry = "entry " + std::to_string(i);
    const std::int32_t len = i32("the name length of " + entry);
    ::loftq::detail::require(len >= 1, Errc::parse_error,
                             path + ": " + entry + " has a name of " + std::to_string(len) + " bytes");
    std::string name(static_cast<std::size_t>(std::min<std::uint64_t>(static_cast<std::uint64_t>(len), left())), '\0');
    bytes(&name[0], static_cast<std::uint64_t>(len), "the name of " + entry);
    ::loftq::detail::require(name.find('\0') == std::string::npos, Errc::parse_error,
                             path + ": the name of " + entry + " holds a NUL byte");
    const std::int32_t ncall = i32("ncall of '" + name + "'");
    const std::int32_t nval = i32("nval of '" + name + "'");
    ::loftq::detail::require(nval >= 1, Errc::parse_error,
                             path + ": '" + name + "' has " + std::to_string(nval) + " values");
    ::loftq::detail::require(static_cast<std::uint64_t>(nval) <= left() / 4, Errc::parse_error,
                             path + ": truncated: the " + std::to_string(nval) + " values of '" + name + "'");
    vals.resize(static_cast<std::size_t>(nval));
    bytes(vals.data(), static_cast<std::uint64_t>(nval) * 4, "the values of '" + name + "'");
    detail::check_sums(path + ": '" + name + "'", vals.data(), static_cast<std::uint64_t>(nval));
    if (detail::is_expert_tensor(name)) {
      detail::refuse_imatrix_entry(out, name, "per-expert statistics do not map to one module");
      continue;
    }
    // llama-quantize's importance is values / ncall, or the values when ncall <= 0.
    Eigen::VectorXd v = Eigen::Map<const Eigen::VectorXf>(vals.data(), nval).cast<double>();
    detail::add_imatrix_entry(out, name, std::move(v), ncall > 0 ? ncall : 1);
  }
  if (left() > 0) {
    A::chunk_count(out) = i32("the chunk count");
    const std::int32_t len = i32("the dataset name length");
    ::loftq::detail::require(len >= 0 && static_cast<std::uint64_t>(len) == left(), Errc::parse_error,
                             path + ": the dataset name of " + std::to_string(len) + " bytes does not end the file (" +
                                 std::to_string(left()) + " bytes left)");
    std::string ds(static_cast<std::size_t>(len), '\0');
    if (len > 0) bytes(&ds[0], static_cast<std::uint64_t>(len), "the dataset name");
    ds.resize(std::strlen(ds.c_str()));  // llama.cpp reads it as a C string
    if (!ds.empty()) A::datasets(out).push_back(ds);
  }
  detail::finish_imatrix(out, path);
  return out;
}

// Writes `stats` (module -> statistics; a full matrix contributes its
// diagonal) as an imatrix GGUF that llama.cpp's quantizers read. Modules are
// named as llama.cpp names them (io/llama_names.hpp; a llama.cpp name is
// kept); each target of `shares` gets a copy of the entry it falls back to,
// since llama-quantize looks each tensor up by its own name.
inline void write_imatrix_gguf(const std::string& path, const std::map<std::string, InputStatistics>& stats,
                               const std::vector<std::string>& datasets, std::uint32_t chunk_count,
                               std::uint32_t chunk_size, const std::map<std::string, std::string>& shares = {}) {
  ::loftq::detail::require(!stats.empty(), Errc::invalid_argument, path + ": no statistics to write");
  auto llama_name = [&](const std::string& m) {
    std::string n = hf_to_llama(m);
    if (n.empty() && !llama_to_hf(m).empty()) n = m;
    ::loftq::detail::require(!n.empty(), Errc::invalid_argument,
                             path + ": '" + m + "' has no llama.cpp tensor name (io/llama_names.hpp)");
    return n;
  };
  std::map<std::string, const InputStatistics*> out;  // sorted as llama-imatrix sorts
  for (const auto& s : stats) {
    ::loftq::detail::require(s.second.count() >= 1, Errc::invalid_argument,
                             path + ": '" + s.first + "' has no samples");
    ::loftq::detail::require(out.emplace(llama_name(s.first), &s.second).second, Errc::invalid_argument,
                             path + ": two modules are named '" + llama_name(s.first) + "'");
  }
  for (const auto& s : shares) {
    const auto it = stats.find(s.second);
    ::loftq::detail::require(it != stats.end() && !stats.count(s.first), Errc::invalid_argument,
                             path + ": share '" + s.first + "' -> '" + s.second + "' does not fall back to an entry");
    ::loftq::detail::require(out.emplace(llama_name(s.first), &it->second).second, Errc::invalid_argument,
                             path + ": two modules are named '" + llama_name(s.first) + "'");
  }
  GgufKV ds{kImatrixDatasets, GgufValueType::ARRAY, {}};
  detail::put_u32(ds.value, static_cast<std::uint32_t>(GgufValueType::STRING));
  detail::put_u64(ds.value, datasets.size());
  for (const std::string& d : datasets) detail::put_string(ds.value, d);
  const std::vector<GgufKV> kvs = {gguf_kv_string("general.type", "imatrix"), ds,
                                   gguf_kv_u32(kImatrixChunkCount, chunk_count),
                                   gguf_kv_u32(kImatrixChunkSize, chunk_size)};
  std::vector<GgufTensorDecl> decls;
  for (const auto& o : out) {
    decls.push_back({o.first + ".in_sum2",
                     {static_cast<std::uint64_t>(o.second->features())},
                     static_cast<std::uint32_t>(GgmlType::F32)});
    decls.push_back({o.first + ".counts", {1}, static_cast<std::uint32_t>(GgmlType::F32)});
  }
  GgufWriter w(path, kvs, decls);
  std::vector<float> v;
  for (const auto& o : out) {
    const InputStatistics& s = *o.second;
    const Eigen::VectorXd d = s.mode() == StatsMode::full
                                  ? Eigen::VectorXd(::loftq::detail::StatsAccess::sums(s).diagonal())
                                  : ::loftq::detail::StatsAccess::diagonal_sums(s);
    v.assign(d.data(), d.data() + d.size());  // to float
    for (float x : v)
      if (!std::isfinite(x)) ::loftq::detail::fail(Errc::non_finite, path + ": '" + o.first + "': a sum overflows F32");
    w.write(o.first + ".in_sum2", v.data(), v.size() * 4);
    const float count = static_cast<float>(s.count());
    w.write(o.first + ".counts", &count, 4);
  }
  w.commit();
}

}  // namespace io
}  // namespace loftq

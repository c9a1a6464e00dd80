// The validators and readers of option_table.cpp: how a value is checked,
// parsed and read back from a shard's settings.

#include "option_checks.hpp"

#include "errors.hpp"

#include <loftq/ggml_format.hpp>
#include <loftq/io/bnb.hpp>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <utility>

namespace loftq_cli {

const std::uint64_t kIntMax = static_cast<std::uint64_t>(std::numeric_limits<int>::max());

std::uint64_t to_u64(const std::string& v) {
  std::uint64_t x = 0;
  std::from_chars(v.data(), v.data() + v.size(), x);
  return x;
}

Check count(std::uint64_t lo, std::uint64_t hi) {
  return [lo, hi](const std::string& v) -> std::string {
    const std::string range = std::to_string(lo) + ".." + std::to_string(hi);
    bool digits = !v.empty();
    for (char c : v) digits = digits && c >= '0' && c <= '9';
    std::uint64_t x = 0;
    if (digits) {
      const auto r = std::from_chars(v.data(), v.data() + v.size(), x);
      digits = r.ec != std::errc::result_out_of_range;
    }
    // One message for a malformed value and one out of range, as number_in() gives.
    if (!digits || x < lo || x > hi) return "invalid value '" + v + "': expected a decimal integer in " + range;
    return {};
  };
}

Check one_of(std::vector<std::string> names) {
  return [names](const std::string& v) -> std::string {
    std::string list;
    for (const std::string& n : names) {
      if (v == n) return {};
      list += (list.empty() ? "" : " or ") + n;
    }
    return "invalid value '" + v + "': expected " + list;
  };
}

// --quant's values: the ggml types, then llama.cpp's mixes.
std::vector<std::string> quant_names() {
  std::vector<std::string> n = loftq::ggml_format_names();
  for (loftq_common::LlamaMix m : loftq_common::llama_mixes()) n.push_back(loftq_common::llama_mix_name(m));
  return n;
}

Check nonempty_path() {
  return [](const std::string& v) -> std::string { return v.empty() ? "needs a non-empty path" : std::string(); };
}

// A number as the documentation writes one: decimal digits with an optional
// fraction and exponent ("2.5", "1e-6"), nothing around it. strtod alone
// would also take leading blanks, a sign, hex ("0x8"), "inf" and "nan"; the
// counts (count()) take digits only, so one rule holds for every option.
bool parse_number(const std::string& v, double& x) {
  std::size_t i = 0, digits = 0;
  auto run = [&] {
    std::size_t n = 0;
    while (i < v.size() && v[i] >= '0' && v[i] <= '9') ++i, ++n;
    return n;
  };
  digits = run();
  if (i < v.size() && v[i] == '.') {
    ++i;
    digits += run();
  }
  if (digits == 0) return false;
  if (i < v.size() && (v[i] == 'e' || v[i] == 'E')) {
    ++i;
    if (i < v.size() && (v[i] == '+' || v[i] == '-')) ++i;
    if (run() == 0) return false;
  }
  if (i != v.size()) return false;
  char* end = nullptr;
  errno = 0;
  x = std::strtod(v.c_str(), &end);
  // ERANGE: an overflow, or an underflow to 0 or a denormal; either is out of every range.
  return end == v.c_str() + v.size() && errno == 0 && std::isfinite(x);
}

// A number in lo..hi (both included), or the usage error naming the range.
Check number_in(double lo, double hi, std::string expected) {
  return [lo, hi, expected](const std::string& v) -> std::string {
    double x = 0;
    return parse_number(v, x) && x >= lo && x <= hi ? std::string() : "invalid value '" + v + "': expected " + expected;
  };
}

std::vector<std::string> split_list(const std::string& v, bool keep_repeats) {
  std::vector<std::string> out;
  std::size_t b = 0;
  for (;;) {
    const std::size_t e = v.find(',', b);
    const std::string item = v.substr(b, e == std::string::npos ? std::string::npos : e - b);
    if (keep_repeats || std::find(out.begin(), out.end(), item) == out.end()) out.push_back(item);
    if (e == std::string::npos) break;
    b = e + 1;
  }
  return out;
}

// A default value as help shows it (%g: 0.1, not 0.100000).
std::string number_text(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", x);
  return b;
}

Check list() {
  return [](const std::string& v) -> std::string {
    for (const std::string& item : split_list(v))
      if (item.empty()) return "invalid value '" + v + "': empty list item";
    return {};
  };
}

// merge's readers of a shard's "settings": the ranges the command line
// accepts, since a report is input like any other.
[[noreturn]] void bad_setting(const std::string& what) { throw InputError{"shard settings: " + what}; }

const nlohmann::json& field(const nlohmann::json& j, const char* k) {
  if (!j.contains(k)) bad_setting(std::string("no ") + k);
  return j[k];
}

// An integer in 1..INT_MAX.
std::int64_t count_field(const nlohmann::json& j, const char* k) {
  const nlohmann::json& v = field(j, k);
  const bool ok = v.is_number_unsigned()  ? v.get<std::uint64_t>() >= 1 && v.get<std::uint64_t>() <= kIntMax
                  : v.is_number_integer() ? v.get<std::int64_t>() >= 1 && v.get<std::int64_t>() <= std::int64_t(kIntMax)
                                          : false;
  if (!ok) bad_setting(std::string(k) + " " + v.dump() + " is not an integer in 1.." + std::to_string(kIntMax));
  return v.get<std::int64_t>();
}

// One of `names`; `fallback` when absent (reports of older versions), or required when null.
std::string name_field(const nlohmann::json& j, const char* k, std::initializer_list<const char*> names,
                       const char* fallback, const std::string& complaint) {
  if (fallback && !j.contains(k)) return fallback;
  const nlohmann::json& v = field(j, k);
  for (const char* n : names)
    if (v.is_string() && v.get<std::string>() == n) return n;
  bad_setting(complaint.empty() ? std::string(k) + " " + v.dump() + " is not a known value" : complaint);
}

bool bool_field(const nlohmann::json& j, const char* k, bool optional, bool fallback) {
  if (optional && !j.contains(k)) return fallback;
  const nlohmann::json& v = field(j, k);
  if (!v.is_boolean()) bad_setting(std::string(k) + " is not a boolean");
  return v.get<bool>();
}

double alpha_of(const Args& a) { return a.lora_alpha > 0 ? a.lora_alpha : static_cast<double>(a.rank); }

// The combinations --format cannot make.
std::string format_conflicts(const Args& a) {
  if (a.bnb_nf4) {
    // bitsandbytes has NF4 at 64..4096-element blocks and nothing else.
    if (a.kind != loftq::Quantizer::Kind::normal_float || a.bits_budget > 0 || a.bits != 4)
      return "--format bnb-nf4 needs --bits 4 --quantizer nf (bitsandbytes has no other 4-bit normal float and no "
             "NF2 or NF3)";
    if (!loftq::io::bnb_block_size_ok(static_cast<std::int64_t>(a.block_size)))
      return "--format bnb-nf4 needs --block-size 64, 128, 256, 512, 1024, 2048 or 4096 (got " +
             std::to_string(a.block_size) + ")";
    if (a.shard_n > 0) return "--format bnb-nf4 cannot be combined with --shard";
  }
  if (a.gguf && (a.bits_given || a.shard_n > 0 || a.packed || a.double_quant))
    return "--format gguf takes its width from --quant: not with --bits, --shard, --packed or --double-quant";
  if (a.gguf && a.bits_budget > 0 && a.quant_given)
    return "--bits-budget with --format gguf chooses each target's ggml type: not with --quant";
  return {};
}

}  // namespace loftq_cli

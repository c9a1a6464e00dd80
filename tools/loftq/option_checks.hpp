#pragma once
// What the option table (option_table.cpp) is written with: the validators
// of a typed value (one rule for every number: decimal digits, a fraction
// and exponent where the value is not a count, nothing around them), and the
// readers of a shard's recorded settings, which accept what the command line
// accepts.

#include "option_table.hpp"

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace loftq_cli {

// INT_MAX, the largest count an option or a setting takes.
extern const std::uint64_t kIntMax;

// The value of a count that count() accepted.
std::uint64_t to_u64(const std::string& v);
// A decimal integer in lo..hi.
Check count(std::uint64_t lo, std::uint64_t hi);
// One of `names`.
Check one_of(std::vector<std::string> names);
// --quant's values: the ggml types, then llama.cpp's mixes.
std::vector<std::string> quant_names();
// A path, not empty.
Check nonempty_path();
// Parses a number as the documentation writes one; false when `v` is not one.
bool parse_number(const std::string& v, double& x);
// A number in lo..hi (both included); `expected` says so in the message.
Check number_in(double lo, double hi, std::string expected);
// A default value as help shows it (%g: 0.1, not 0.100000).
std::string number_text(double x);
// A comma-separated list without empty items.
Check list();

// merge's readers of a shard's "settings"; each throws InputError naming
// the setting, as bad_setting() does.
[[noreturn]] void bad_setting(const std::string& what);
const nlohmann::json& field(const nlohmann::json& j, const char* k);
// An integer in 1..INT_MAX.
std::int64_t count_field(const nlohmann::json& j, const char* k);
// One of `names`; `fallback` when absent (reports of older versions), or
// required when null.
std::string name_field(const nlohmann::json& j, const char* k, std::initializer_list<const char*> names,
                       const char* fallback, const std::string& complaint);
bool bool_field(const nlohmann::json& j, const char* k, bool optional, bool fallback);

// lora_alpha as the run uses it (the rank when not given).
double alpha_of(const Args& a);
// The combinations --format cannot make, or "".
std::string format_conflicts(const Args& a);

}  // namespace loftq_cli

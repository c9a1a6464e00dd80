// The option table: every option of every command, declared once.
//
// Values are kept as the strings the user typed and checked by the
// validators here, so the accepted forms are exactly the documented ones (a
// decimal count, not CLI11's own conversions, which would also take "0x10"
// or "010" as octal).

#include "option_table.hpp"

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

namespace {

constexpr std::uint64_t kIntMax = static_cast<std::uint64_t>(std::numeric_limits<int>::max());

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
    if (!digits) return "invalid value '" + v + "': expected a decimal integer in " + range;
    std::uint64_t x = 0;
    const auto r = std::from_chars(v.data(), v.data() + v.size(), x);
    if (r.ec == std::errc::result_out_of_range || x < lo || x > hi) return "value '" + v + "' is out of range " + range;
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

// A finite number x with lo < x (open) or lo <= x (closed) and x <= hi.
bool parse_number(const std::string& v, double& x) {
  if (v.empty()) return false;
  char* end = nullptr;
  errno = 0;
  x = std::strtod(v.c_str(), &end);
  return end == v.c_str() + v.size() && errno == 0 && std::isfinite(x);
}

}  // namespace

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

namespace {

// A default value as help shows it (%g: 0.1, not 0.100000).
std::string number_text(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", x);
  return b;
}

}  // namespace

namespace {

Check list() {
  return [](const std::string& v) -> std::string {
    for (const std::string& item : split_list(v))
      if (item.empty()) return "invalid value '" + v + "': empty list item";
    return {};
  };
}

// merge's readers of a shard's "settings": the ranges the command line
// accepts, since a report is input like any other.
[[noreturn]] void bad(const std::string& what) { throw InputError{"shard settings: " + what}; }

const nlohmann::json& field(const nlohmann::json& j, const char* k) {
  if (!j.contains(k)) bad(std::string("no ") + k);
  return j[k];
}

// An integer in 1..INT_MAX.
std::int64_t count_field(const nlohmann::json& j, const char* k) {
  const nlohmann::json& v = field(j, k);
  const bool ok = v.is_number_unsigned()  ? v.get<std::uint64_t>() >= 1 && v.get<std::uint64_t>() <= kIntMax
                  : v.is_number_integer() ? v.get<std::int64_t>() >= 1 && v.get<std::int64_t>() <= std::int64_t(kIntMax)
                                          : false;
  if (!ok) bad(std::string(k) + " " + v.dump() + " is not an integer in 1.." + std::to_string(kIntMax));
  return v.get<std::int64_t>();
}

// One of `names`; `fallback` when absent (reports of older versions), or required when null.
std::string name_field(const nlohmann::json& j, const char* k, std::initializer_list<const char*> names,
                       const char* fallback, const std::string& complaint) {
  if (fallback && !j.contains(k)) return fallback;
  const nlohmann::json& v = field(j, k);
  for (const char* n : names)
    if (v.is_string() && v.get<std::string>() == n) return n;
  bad(complaint.empty() ? std::string(k) + " " + v.dump() + " is not a known value" : complaint);
}

bool bool_field(const nlohmann::json& j, const char* k, bool optional, bool fallback) {
  if (optional && !j.contains(k)) return fallback;
  const nlohmann::json& v = field(j, k);
  if (!v.is_boolean()) bad(std::string(k) + " is not a boolean");
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
  if (a.gguf && (a.bits_given || a.bits_budget > 0 || a.shard_n > 0 || a.packed || a.double_quant))
    return "--format gguf takes its width from --quant: not with --bits, --bits-budget, --shard, --packed or "
           "--double-quant";
  return {};
}

// The table in parts of under 80 lines, in its order (the order of the help).
void rows_1(std::vector<OptionDef>& t, const Args& d) {
  (void)d;
  for (OptionDef& r : std::vector<OptionDef>{
    {"--input", "PATH", "2-D .npy weight matrix, float32 or float64, C or Fortran order (computed in float32)",
     kInit, true, nonempty_path(), [](Args& a, const std::string& v) { a.input = v; }},
    {"--input", "PATH",
     "a .safetensors file, or a directory holding model.safetensors, a sharded set with "
     "model.safetensors.index.json, or exactly one .safetensors file; with --format gguf a .gguf file",
     kModel | kMerge, true, nonempty_path(), [](Args& a, const std::string& v) { a.input = v; }},
    {"--output", "DIR",
     "output directory; created if missing (with parents), otherwise the four files in it are replaced", kInit,
     true, nonempty_path(), [](Args& a, const std::string& v) { a.output = v; }},
    {"--output", "DIR", "output directory, created with its parents; must not exist unless --overwrite",
     kModel | kMerge | kCalibrate, true, nonempty_path(), [](Args& a, const std::string& v) { a.output = v; }},
    {"--shards", "DIR1,DIR2,...", "the output directories of all N 'loftq model --shard K/N' runs", kMerge, true,
     list(), [](Args& a, const std::string& v) { a.shards = split_list(v, /*keep_repeats=*/true); }},
    OptionDef{"--bits", "N", "bits per weight, 2..8 (default " + std::to_string(d.bits) + ")", kCore, false,
     // Any well-formed count: the library decides which widths it supports
     // (an unsupported one is bad input, exit 1).
     count(0, kIntMax),
     [](Args& a, const std::string& v) {
       a.bits = static_cast<int>(to_u64(v));
       a.bits_given = true;
     }}
        // null with a budget: the widths vary; a GGUF output's width is --quant's.
        .recorded("bits",
                  [](const Args& a, nlohmann::json& s) {
                    if (!a.gguf) s["bits"] = a.bits_budget > 0 ? nlohmann::json(nullptr) : nlohmann::json(a.bits);
                  },
                  // A --bits-budget run (bits null) cannot be sharded, so a shard has one width.
                  [](const nlohmann::json& j, Args& a) { a.bits = static_cast<int>(count_field(j, "bits")); }),
    OptionDef{"--rank", "N", "LoRA rank r, 1..min(m, n) (default " + std::to_string(d.rank) + ")", kCore, false,
              count(1, kIntMax), [](Args& a, const std::string& v) { a.rank = static_cast<Eigen::Index>(to_u64(v)); }}
        .recorded("rank", [](const Args& a, nlohmann::json& s) { s["rank"] = a.rank; },
                  [](const nlohmann::json& j, Args& a) { a.rank = static_cast<Eigen::Index>(count_field(j, "rank")); }),
    OptionDef{"--iters", "N", "LoftQ alternating steps (default " + std::to_string(d.iters) + ")", kCore, false,
              count(1, kIntMax), [](Args& a, const std::string& v) { a.iters = static_cast<int>(to_u64(v)); }}
        .recorded("iters", [](const Args& a, nlohmann::json& s) { s["iters"] = a.iters; },
                  [](const nlohmann::json& j, Args& a) { a.iters = static_cast<int>(count_field(j, "iters")); }),
    OptionDef{"--quantizer", "nf|uniform",
     std::string("normal-float (QLoRA NF-k) or uniform grid (default ") + quantizer_name(d.kind) + ")", kCore,
     false, one_of({"nf", "uniform"}),
     [](Args& a, const std::string& v) {
       a.kind = v == "nf" ? loftq::Quantizer::Kind::normal_float : loftq::Quantizer::Kind::uniform;
     }}
        .recorded("quantizer",
                  [](const Args& a, nlohmann::json& s) {
                    if (!a.gguf) s["quantizer"] = quantizer_name(a.kind);
                  },
                  [](const nlohmann::json& j, Args& a) {
                    a.kind = name_field(j, "quantizer", {"nf", "uniform"}, nullptr,
                                        "quantizer is neither nf nor uniform") == "uniform"
                                 ? loftq::Quantizer::Kind::uniform
                                 : loftq::Quantizer::Kind::normal_float;
                  }),
    OptionDef{"--block-size", "N",
     "elements per quantization block of the row-major flattening (default " + std::to_string(d.block_size) + ")",
     kCore, false, count(1, kIntMax),
     [](Args& a, const std::string& v) { a.block_size = static_cast<Eigen::Index>(to_u64(v)); }}
        .recorded("block_size",
                  [](const Args& a, nlohmann::json& s) {
                    if (!a.gguf) s["block_size"] = a.block_size;
                  },
                  [](const nlohmann::json& j, Args& a) {
                    a.block_size = static_cast<Eigen::Index>(count_field(j, "block_size"));
                  })
       })
    t.push_back(std::move(r));
}

// The table in parts of under 80 lines, in its order (the order of the help).
void rows_2(std::vector<OptionDef>& t, const Args& d) {
  (void)d;
  for (OptionDef& r : std::vector<OptionDef>{
           OptionDef{
               "--scale", "absmax|search",
               std::string("block scales: absmax, or searched per block for the lowest squared error (same storage) "
                           "(default ") +
                   scale_name(d.scale_search) + ")",
               kCore, false, one_of({"absmax", "search"}),
               [](Args&a, const std::string&v) { a.scale_search = v == "search"; }}
               // A GGUF output's absmax scales are ggml's own.
               .recorded(
                   "scale",
                   [](const Args&a, nlohmann::json&s) {
                     s["scale"] = a.scale_search ? "search" : a.gguf ? "ggml" : scale_name(false);
                   },
                   // Absent in reports of older versions, which had absmax only.
                   [](const nlohmann::json&j, Args&a) {
                     a.scale_search = name_field(j, "scale", {"absmax", "search"}, "absmax",
                                                 "scale is neither absmax nor search") == std::string("search");
                   }),
           OptionDef{
               "--svd", "exact|randomized",
               std::string("truncated SVD method (default ") + loftq::to_string(d.svd) + ")", kCore, false,
               one_of({"exact", "randomized"}),
               [](Args&a, const std::string
                              &v) { a.svd = v == "exact" ? loftq::SVDMethod::exact : loftq::SVDMethod::randomized; }}
               .recorded(
                   "svd", [](const Args&a, nlohmann::json&s) { s["svd"] = loftq::to_string(a.svd); },
                   [](const nlohmann::json&j, Args&a) {
                     a.svd = name_field(j, "svd", {"exact", "randomized"}, nullptr, "") == std::string("exact")
                                 ? loftq::SVDMethod::exact
                                 : loftq::SVDMethod::randomized;
                   }),
           OptionDef{"--seed", "N", "seed of the randomized SVD, 0..2^64-1 (default " + std::to_string(d.seed) + ")",
                     kCore, false, count(0, std::numeric_limits<std::uint64_t>::max()),
                     [](Args&a, const std::string&v) { a.seed = to_u64(v); }}
               .recorded(
                   "seed", [](const Args&a, nlohmann::json&s) { s["seed"] = a.seed; },
                   [](const nlohmann::json&j, Args&a) {
                     // nlohmann stores every non-negative integer as unsigned.
                     if (!field(j, "seed").is_number_unsigned()) bad("seed is not a non-negative integer");
                     a.seed = j["seed"].get<std::uint64_t>();
                   }),
           OptionDef{
               "--start", "zero|svd",
               std::string("zero: LoftQ's A = B = 0 start; svd: start from the top-r SVD of W (default ") +
                   start_name(d.start) + ")",
               kCore, false, one_of({"zero", "svd"}),
               [](Args&a, const std::string&v) { a.start = v == "zero" ? loftq::Start::zero : loftq::Start::svd; }}
               .recorded(
                   "start", [](const Args&a, nlohmann::json&s) { s["start"] = start_name(a.start); },
                   [](const nlohmann::json&j, Args&a) {
                     const std::string v = name_field(j, "start", {"zero", "svd"}, start_name(a.start), "");
                     a.start = v == "zero" ? loftq::Start::zero : loftq::Start::svd;
                   }),
           OptionDef{
               "--double-quant", "",
               "double quantization (QLoRA): the fp32 block scales are quantized to 8 bits in blocks of 256 after "
               "subtracting their mean (0.5 -> 0.127 bits/weight at block 64), then A, B are refit to the rounded Q "
               "once; "
               "Q (and the packed scales) are that Q",
               kCore, false, nullptr, [](Args&a, const std::string&) { a.double_quant = true; }}
               .recorded(
                   "double_quant",
                   [](const Args&a, nlohmann::json&s) {
                     if (!a.gguf) s["double_quant"] = a.double_quant;
                   },
                   // Absent in reports of older versions, which had none.
                   [](const nlohmann::json&j, Args&a) { a.double_quant = bool_field(j, "double_quant", true, false); }),
           {"--threads", "N",
            "worker threads, 1.." + std::to_string(kMaxThreads) +
                " (default: OpenMP's); the results are bit-identical for any thread count",
            kCore | kCalibrate, false, count(1, kMaxThreads),
            [](Args&a, const std::string&v) { a.threads = static_cast<int>(to_u64(v)); }}})
    t.push_back(std::move(r));
}

// The table in parts of under 80 lines, in its order (the order of the help).
void rows_3(std::vector<OptionDef>& t, const Args& d) {
  (void)d;
  const std::string budget_lo = std::to_string(budget_bits().front()), budget_hi = std::to_string(budget_bits().back());
  for (OptionDef& r : std::vector<OptionDef>{
           OptionDef{"--last", "", "return the last iterate (as the reference does), not the one with the lowest error",
                     kCore, false, nullptr, [](Args&a, const std::string&) { a.keep_best = false; }}
               // Recorded only with --last, so reports of default runs stay as they were;
               // a merge then refuses shards that returned different iterates.
               .recorded(
                   "keep_best",
                   [](const Args&a, nlohmann::json&s) {
                     if (!a.keep_best) s["keep_best"] = false;
                   },
                   [](const nlohmann::json&j, Args&a) { a.keep_best = bool_field(j, "keep_best", true, true); }),
           OptionDef{
               "--bits-budget", "B",
               "mixed precision instead of --bits: " + budget_lo + ", 3 or " + budget_hi +
                   " bits per target, chosen (exact knapsack) to minimize the total squared error ||W - Q - A B^T||^2 "
                   "with an average of at most B code bits per weight, " +
                   budget_lo + " <= B <= " + budget_hi +
                   " (block scales not counted); measures each target at every width, then recomputes the chosen one; "
                   "not with --shard",
               kModel, false,
               [budget_lo, budget_hi](const std::string&v) -> std::string {
                 double x = 0;
                 if (!parse_number(v, x) || x < budget_bits().front() || x > budget_bits().back())
                   return "invalid value '" + v + "': expected a number of bits per weight in " + budget_lo + ".." +
                          budget_hi;
                 return {};
               },
               [](Args&a, const std::string&v) { parse_number(v, a.bits_budget); }}
               .recorded("bits_budget",
                         [](const Args&a, nlohmann::json&s) {
                           if (a.bits_budget > 0) s["bits_budget"] = a.bits_budget;
                         })
               .excluding([](const Args&a) -> std::string {
                 if (a.bits_given) return "--bits and --bits-budget exclude each other: the budget chooses the widths";
                 // The allocation weighs every target against every other; one shard only sees its own.
                 if (a.shard_n > 0) return "--bits-budget cannot be combined with --shard";
                 return {};
               }),
           OptionDef{"--lora-alpha", "A", "PEFT lora_alpha, a number in 1e-6..1e6 (default: r)", kModel, false,
                     [](const std::string&v) -> std::string {
                       double x = 0;
                       return parse_number(v, x) && lora_alpha_in_range(x)
                                  ? std::string()
                                  : "invalid value '" + v + "': expected a number in 1e-6..1e6";
                     },
                     [](Args&a, const std::string&v) { parse_number(v, a.lora_alpha); }}
               .recorded(
                   "lora_alpha", [](const Args&a, nlohmann::json&s) { s["lora_alpha"] = alpha_of(a); },
                   [](const nlohmann::json&j, Args&a) {
                     if (!field(j, "lora_alpha").is_number() || !lora_alpha_in_range(j["lora_alpha"].get<double>()))
                       bad("lora_alpha " + j["lora_alpha"].dump() + " is not a number in 1e-6..1e6");
                     a.lora_alpha = j["lora_alpha"].get<double>();
                   }),
           OptionDef{"--target-modules", "LIST",
                     std::string("comma-separated module names (default ") + kDefaultTargets + ")", kModel, false,
                     list(), [](Args&a, const std::string&v) { a.modules = split_list(v); }}
               .recorded(
                   "target_modules", [](const Args&a, nlohmann::json&s) { s["target_modules"] = a.modules; },
                   [](const nlohmann::json&j, Args&a) {
                     if (!field(j, "target_modules").is_array()) bad("target_modules is not a list");
                     for (const auto& m : j["target_modules"]) {
                       if (!m.is_string() || m.get<std::string>().empty()) bad("target_modules holds a non-name");
                       a.modules.push_back(m.get<std::string>());
                     }
                   })})
    t.push_back(std::move(r));
}

// The table in parts of under 80 lines, in its order (the order of the help).
void rows_4(std::vector<OptionDef>& t, const Args& d) {
  (void)d;
  for (
      OptionDef& r : std::vector<OptionDef>{
          OptionDef{
              "--format", "dequantized|bnb-nf4|gguf",
              "the base model.safetensors: dequantized, Q in the input's dtype; bnb-nf4, the targets as "
              "bitsandbytes NF4 (packed codes, absmax, quant_state; with --double-quant bitsandbytes' nested absmax) "
              "and "
              "config.json with its quantization_config, which transformers loads without quantizing again; needs "
              "--bits 4 --quantizer nf, a block size of 64..4096 (a power of 2) and config.json next to the input; not "
              "with --shard or --bits-budget. gguf: PATH is a GGUF v3 file (F32, F16 or BF16 targets "
              "blk.N.<module>.weight, <module> one of attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down, "
              "which --target-modules also accepts by their HF names q_proj, ...); "
              "DIR receives model.gguf (every key-value pair and tensor copied, the targets as Q in the --quant type) "
              "and "
              "adapter.gguf (a llama.cpp LoRA adapter: llama-cli -m DIR/model.gguf --lora DIR/adapter.gguf) and "
              "loftq_report.json; the alternation quantizes in the --quant format itself, --scale absmax being ggml's "
              "own block scales; a target whose rows are not multiples of 32 is copied unchanged without an adapter "
              "(llama.cpp's fallback); not with --bits, --bits-budget, --shard, --packed or --double-quant "
              "(default dequantized)",
              kModel, false, one_of({"dequantized", "bnb-nf4", "gguf"}),
              [](Args&a, const std::string&v) {
                a.bnb_nf4 = v == "bnb-nf4";
                a.gguf = v == "gguf";
              }}
              .recorded("format",
                        [](const Args&a, nlohmann::json&s) {
                          if (a.bnb_nf4) s["format"] = "bnb-nf4";
                          if (a.gguf) s["format"] = "gguf";
                        })
              .excluding(format_conflicts),
          OptionDef{
              "--quant", "TYPE",
              "--format gguf: the ggml type of the targets in model.gguf. Blocks of 32 with an fp16 scale: iq4_nl "
              "(16 non-uniform levels, 4.5 bits per weight), q4_0 (4.5) or q8_0 (8.5); super-blocks of 256 (rows of a "
              "multiple of 256, others kept): q2_k (2.625), q3_k (3.4375), q4_k (4.5), q5_k (5.5), q6_k (6.5625), "
              "iq4_xs (4.25). Or one of llama-quantize's mixes, a type per tensor by llama.cpp's rules: q2_k_mix "
              "(llama-quantize's Q2_K), q3_k_m, q4_k_s, q4_k_m, q5_k_m; the targets get LoftQ in their type, the "
              "other tensors llama.cpp quantizes (token_embd, output, projections not targeted) a plain "
              "quantization, and a tensor whose type loftq does not write (q5_0, q5_1, f16) is kept "
              "(default iq4_nl)",
              kModel, false, one_of(quant_names()),
              [](Args&a, const std::string&v) {
                a.mix = loftq_common::llama_mix_from_name(v);
                a.quant = a.mix ? ggml_format_of(loftq_common::llama_mix_default_type(*a.mix))
                                : loftq::ggml_format_from_name(v);
                a.quant_given = true;
              }}
              .recorded("quant",
                        [](const Args&a, nlohmann::json&s) {
                          if (a.gguf)
                            s["quant"] =
                                a.mix ? loftq_common::llama_mix_name(*a.mix) : loftq::ggml_format_name(a.quant);
                        })
              .excluding([](const Args&a) { return a.gguf ? std::string() : "--quant needs --format gguf"; }),
          OptionDef{"--adapter-type", "TYPE",
                    "--format gguf: the ggml type of adapter.gguf's lora_a and lora_b, as convert_lora_to_gguf.py "
                    "--outtype: f32, f16, bf16 or q8_0 (a lora_b of a rank not a multiple of 32 in f16, as that "
                    "script falls back); the report gives the error the rounding adds to (alpha/r) lora_b lora_a "
                    "(default " +
                        d.adapter_type + ": half the bytes of f32)",
                    kModel, false, one_of({"f32", "f16", "bf16", "q8_0"}),
                    [](Args&a, const std::string&v) { a.adapter_type = v; }}
              .recorded("adapter_type",
                        [](const Args&a, nlohmann::json&s) {
                          if (a.gguf) s["adapter_type"] = a.adapter_type;
                        })
              .excluding([](const Args&a) { return a.gguf ? std::string() : "--adapter-type needs --format gguf"; }),
          OptionDef{"--packed", "", "also write model.packed.safetensors", kModel, false, nullptr,
                    [](Args&a, const std::string&) { a.packed = true; }}
              .recorded(
                  "packed",
                  [](const Args&a, nlohmann::json&s) {
                    if (!a.gguf) s["packed"] = a.packed;
                  },
                  [](const nlohmann::json&j, Args&a) { a.packed = bool_field(j, "packed", false, false); }),
          {"--shard", "K/N",
           "process only targets i (0-based, in sorted name order) with i % N == K - 1, 1 <= K <= N, into a partial "
           "output (adapter_model.safetensors, shard_model.safetensors, loftq_report.json); combine the N outputs "
           "with merge",
           kModel, false,
           [](const std::string&v) -> std::string {
             const std::size_t slash = v.find('/');
             if (slash == std::string::npos) return "invalid value '" + v + "': expected K/N";
             const std::string n = v.substr(slash + 1), k = v.substr(0, slash);
             std::string e = count(1, 1000000)(n);
             if (e.empty()) e = count(1, to_u64(n))(k);
             return e;
           },
           [](Args&a, const std::string&v) {
             const std::size_t slash = v.find('/');
             a.shard_n = static_cast<int>(to_u64(v.substr(slash + 1)));
             a.shard_k = static_cast<int>(to_u64(v.substr(0, slash)));
           }},
          {"--overwrite", "", "replace an existing DIR (only once the new one is complete)",
           kModel | kMerge | kCalibrate, false, nullptr, [](Args&a, const std::string&) { a.overwrite = true; }},
          {"--quiet", "", "print nothing on success (no progress, no summary)", kAll, false, nullptr,
           [](Args&a, const std::string&) { a.quiet = true; }}})
    t.push_back(std::move(r));
}

// Calibration: `calibrate`, and `model --calibration`.
void rows_5(std::vector<OptionDef>& t, const Args& d) {
  for (OptionDef& r : std::vector<OptionDef>{
           {"--input", "MODEL",
            "a Hugging Face llama or mistral directory (config.json and safetensors, F32/F16/BF16), a GGUF file of the "
            "llama architecture (F32, F16, BF16 or Q8_0 weights) or a llama2.c checkpoint",
            kCalibrate, true, nonempty_path(), [](Args&a, const std::string&v) { a.input = v; }},
           {"--tokens", "TOKENS.npy",
            "calibration token ids: a 2-D .npy of int32 or int64, one sequence per row (N x T), every id inside the "
            "vocabulary and T at most the model's context length",
            kCalibrate, true, nonempty_path(), [](Args&a, const std::string&v) { a.tokens = v; }},
           {"--stats", "full|diag",
            "full: the whole X^T X of each input (n^2 doubles per input: 44 GB of file for a 7B model, written a layer "
            "at a time from 1.4 GB of memory); diag: its diagonal, "
            "what llama.cpp's imatrix holds (default " +
                std::string(d.stats_full ? "full" : "diag") + ")",
            kCalibrate, false, one_of({"full", "diag"}),
            [](Args&a, const std::string&v) { a.stats_full = v == "full"; }},
           {"--imatrix", "", "also write DIR/imatrix.gguf, the diagonal statistics as a llama.cpp importance matrix",
            kCalibrate, false, nullptr, [](Args&a, const std::string&) { a.imatrix = true; }},
           {"--calibration", "FILE",
            "data-aware LoftQ: fit each target's outputs on calibration inputs instead of its weights. FILE is the "
            "statistics.safetensors of 'loftq calibrate' or a llama.cpp imatrix (GGUF or legacy .dat), recognized by "
            "content; every target needs statistics of its width (q/k/v and gate/up may share an entry); the report "
            "records each target's output error under QLoRA, data-free and data-aware LoftQ",
            kModel, false, nonempty_path(), [](Args&a, const std::string&v) { a.calibration = v; }},
           OptionDef{"--calibration-missing", "refuse|data-free",
                     "with --calibration, a target without statistics: refused, or computed data-free and listed in "
                     "the report "
                     "(default refuse)",
                     kModel, false, one_of({"refuse", "data-free"}),
                     [](Args&a, const std::string&v) { a.calibration_data_free = v == "data-free"; }}
               .excluding([](const Args&a) {
                 return a.calibration.empty() ? "--calibration-missing needs --calibration" : std::string();
               }),
           OptionDef{
               "--calibration-damping", "X",
               "with --calibration, lambda of the damped metric H + lambda * mean(diag H) * I, a number in 0..1000 "
               "(default " +
                   number_text(loftq::DataAwareOptions{}.damping) + " with full statistics, " +
                   number_text(loftq::DataAwareOptions{}.diagonal_damping) + " with diagonal ones)",
               kModel, false,
               [](const std::string&v) -> std::string {
                 double x = 0;
                 return parse_number(v, x) && x >= 0 && x <= 1000
                            ? std::string()
                            : "invalid value '" + v + "': expected a number in 0..1000";
               },
               [](Args&a, const std::string&v) { parse_number(v, a.calibration_damping); }}
               .excluding([](const Args&a) {
                 return a.calibration.empty() ? "--calibration-damping needs --calibration" : std::string();
               })})
    t.push_back(std::move(r));
}

}  // namespace

const std::vector<OptionDef>& option_table() {
  static const std::vector<OptionDef> table = [] {
    const Args d;
    std::vector<OptionDef> t;
    rows_1(t, d);
    rows_2(t, d);
    rows_3(t, d);
    rows_4(t, d);
    rows_5(t, d);
    return t;
  }();
  return table;
}

}  // namespace loftq_cli

// The option table and the CLI11 parser built from it.
//
// Each option is declared once, with the commands that accept it; the parser
// of every command and the help text are generated from the table. Values are
// kept as the strings the user typed and checked by the validators here, so
// the accepted forms are exactly the documented ones (a decimal count, not
// CLI11's own conversions, which would also take "0x10" or "010" as octal).

#include "options.hpp"

#include "errors.hpp"
#include "staged_output.hpp"

#include <loftq/io/bnb.hpp>
#include <loftq/version.hpp>

#include <CLI/CLI.hpp>

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <sstream>

namespace loftq_cli {

const char* quantizer_name(loftq::Quantizer::Kind k) {
  return k == loftq::Quantizer::Kind::normal_float ? "nf" : "uniform";
}
const char* scale_name(bool search) { return search ? "search" : "absmax"; }
const char* start_name(loftq::Start s) { return s == loftq::Start::zero ? "zero" : "svd"; }

loftq::Options library_options(const Args& a) {
  loftq::Options opt;
  opt.cancel = cancel_flag();
  opt.rank = a.rank;
  opt.iterations = a.iters;
  opt.svd.method = a.svd;
  opt.svd.seed = a.seed;
  opt.start = a.start;
  opt.scale_search = a.scale_search;
  opt.keep_best = a.keep_best;
  opt.threads = a.threads;
  return opt;
}

namespace {

enum Command : unsigned { kInit = 1, kModel = 2, kMerge = 4, kCore = kInit | kModel, kAll = 7 };

struct CommandDef {
  const char* name;
  unsigned bit;
  const char* usage;
  const char* description;
};

const CommandDef kCommands[] = {
    {"init", kInit, "loftq init --input W.npy --output DIR [options]",
     "LoftQ-initialize LoRA factors for one weight matrix W (m x n): W ~ Q + A B^T, with Q block-wise quantized and "
     "A (m x r), B (n x r) of rank r. Writes DIR/Q.npy (m x n), DIR/A.npy (m x r), DIR/B.npy (n x r), all float32 C "
     "order, and DIR/report.json (settings, per-iteration errors, timing). PEFT's factors are lora_A = B^T and "
     "lora_B = A (with lora_alpha == r)."},
    {"model", kModel, "loftq model --input PATH --output DIR [options]",
     "LoftQ-initialize every target weight of a safetensors checkpoint (or of a GGUF file for llama.cpp: see "
     "--format gguf). Targets are the 2-D tensors named "
     "<prefix>.<module>.weight with <module> in --target-modules. DIR receives adapter_model.safetensors "
     "(base_model.model.<module path>.lora_A.weight (r x in) and .lora_B.weight (out x r), float32, scaled so that "
     "(lora_alpha / r) * lora_B * lora_A = A B^T), adapter_config.json (PEFT LoraConfig), model.safetensors "
     "(dequantized Q for targets in the input's dtype, every other tensor copied byte for byte; sharded like the "
     "input, with its index, when the input is sharded), with --packed model.packed.safetensors (bit-packed codes "
     "and block scales, see README.md), loftq_report.json (per tensor: shape, bits, rank, error history, QLoRA "
     "baseline error, squared error, bits per weight, seconds; the bit allocation), and the config.json, "
     "generation_config.json and tokenizer files found next to the input."},
    {"merge", kMerge, "loftq merge --input PATH --shards DIR1,DIR2,... --output DIR [--overwrite] [--quiet]",
     "Assemble the outputs of 'loftq model --shard K/N' runs (all N, same settings) and the original checkpoint "
     "PATH into the output an unsharded run writes (identical tensors)."},
};

const char* const kExitStatus =
    "exit status:\n"
    "  0    success\n"
    "  1    bad input or failure: unreadable, malformed or truncated input, a\n"
    "       tensor that is not 2-D or not float, NaN or Inf in W, rank > min(m, n),\n"
    "       unsupported --bits, output path unusable or equal to the input; one\n"
    "       line on stderr and no output is written\n"
    "  2    usage error: unknown command or option, missing --input/--output,\n"
    "       missing, malformed, out-of-range or repeated value (a count of 0,\n"
    "       e.g. --rank 0 or --iters 0, is a usage error)\n"
    "  130  interrupted (SIGINT/SIGTERM/SIGHUP); no output is written\n"
    "\n"
    "Options take their value as '--opt VALUE' or '--opt=VALUE', each at most once.\n"
    "Counts (--rank, --iters, --block-size, --threads) are decimal integers >= 1.\n";

// A check on one raw value: "" when it is fine, else the complaint.
using Check = std::function<std::string(const std::string&)>;
using Apply = std::function<void(Args&, const std::string&)>;

struct OptionDef {
  std::string flag;   // "--bits"
  std::string value;  // "N"; empty for a flag
  std::string help;
  unsigned commands;
  bool required;
  Check check;
  Apply apply;
};

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
    if (r.ec == std::errc::result_out_of_range || x < lo || x > hi)
      return "value '" + v + "' is out of range " + range;
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

std::vector<std::string> split_list(const std::string& v, bool keep_repeats = false) {
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

Check list() {
  return [](const std::string& v) -> std::string {
    for (const std::string& item : split_list(v))
      if (item.empty()) return "invalid value '" + v + "': empty list item";
    return {};
  };
}

const std::vector<OptionDef>& option_table() {
  static const std::vector<OptionDef> table = [] {
    const Args d;
    const std::string budget_lo = std::to_string(budget_bits().front()), budget_hi = std::to_string(budget_bits().back());
    std::vector<OptionDef> t = {
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
         kModel | kMerge, true, nonempty_path(), [](Args& a, const std::string& v) { a.output = v; }},
        {"--shards", "DIR1,DIR2,...", "the output directories of all N 'loftq model --shard K/N' runs", kMerge, true,
         list(), [](Args& a, const std::string& v) { a.shards = split_list(v, /*keep_repeats=*/true); }},
        {"--bits", "N", "bits per weight, 2..8 (default " + std::to_string(d.bits) + ")", kCore, false,
         // Any well-formed count: the library decides which widths it supports
         // (an unsupported one is bad input, exit 1).
         count(0, kIntMax),
         [](Args& a, const std::string& v) {
           a.bits = static_cast<int>(to_u64(v));
           a.bits_given = true;
         }},
        {"--rank", "N", "LoRA rank r, 1..min(m, n) (default " + std::to_string(d.rank) + ")", kCore, false,
         count(1, kIntMax), [](Args& a, const std::string& v) { a.rank = static_cast<Eigen::Index>(to_u64(v)); }},
        {"--iters", "N", "LoftQ alternating steps (default " + std::to_string(d.iters) + ")", kCore, false,
         count(1, kIntMax), [](Args& a, const std::string& v) { a.iters = static_cast<int>(to_u64(v)); }},
        {"--quantizer", "nf|uniform",
         std::string("normal-float (QLoRA NF-k) or uniform grid (default ") + quantizer_name(d.kind) + ")", kCore,
         false, one_of({"nf", "uniform"}),
         [](Args& a, const std::string& v) {
           a.kind = v == "nf" ? loftq::Quantizer::Kind::normal_float : loftq::Quantizer::Kind::uniform;
         }},
        {"--block-size", "N",
         "elements per quantization block of the row-major flattening (default " + std::to_string(d.block_size) + ")",
         kCore, false, count(1, kIntMax),
         [](Args& a, const std::string& v) { a.block_size = static_cast<Eigen::Index>(to_u64(v)); }},
        {"--scale", "absmax|search",
         std::string("block scales: absmax, or searched per block for the lowest squared error (same storage) "
                     "(default ") + scale_name(d.scale_search) + ")",
         kCore, false, one_of({"absmax", "search"}),
         [](Args& a, const std::string& v) { a.scale_search = v == "search"; }},
        {"--svd", "exact|randomized",
         std::string("truncated SVD method (default ") + loftq::to_string(d.svd) + ")", kCore, false,
         one_of({"exact", "randomized"}),
         [](Args& a, const std::string& v) {
           a.svd = v == "exact" ? loftq::SVDMethod::exact : loftq::SVDMethod::randomized;
         }},
        {"--seed", "N", "seed of the randomized SVD, 0..2^64-1 (default " + std::to_string(d.seed) + ")", kCore, false,
         count(0, std::numeric_limits<std::uint64_t>::max()), [](Args& a, const std::string& v) { a.seed = to_u64(v); }},
        {"--start", "zero|svd",
         std::string("zero: LoftQ's A = B = 0 start; svd: start from the top-r SVD of W (default ") +
             start_name(d.start) + ")",
         kCore, false, one_of({"zero", "svd"}),
         [](Args& a, const std::string& v) { a.start = v == "zero" ? loftq::Start::zero : loftq::Start::svd; }},
        {"--double-quant", "",
         "double quantization (QLoRA): the fp32 block scales are quantized to 8 bits in blocks of 256 after "
         "subtracting their mean (0.5 -> 0.127 bits/weight at block 64), then A, B are refit to the rounded Q once; "
         "Q (and the packed scales) are that Q",
         kCore, false, nullptr, [](Args& a, const std::string&) { a.double_quant = true; }},
        {"--threads", "N",
         "worker threads, 1.." + std::to_string(kMaxThreads) +
             " (default: OpenMP's); the results are bit-identical for any thread count",
         kCore, false, count(1, kMaxThreads),
         [](Args& a, const std::string& v) { a.threads = static_cast<int>(to_u64(v)); }},
        {"--last", "", "return the last iterate (as the reference does), not the one with the lowest error", kCore,
         false, nullptr, [](Args& a, const std::string&) { a.keep_best = false; }},
        {"--bits-budget", "B",
         "mixed precision instead of --bits: " + budget_lo + ", 3 or " + budget_hi +
             " bits per target, chosen (exact knapsack) to minimize the total squared error ||W - Q - A B^T||^2 "
             "with an average of at most B code bits per weight, " + budget_lo + " <= B <= " + budget_hi +
             " (block scales not counted); measures each target at every width, then recomputes the chosen one; "
             "not with --shard",
         kModel, false,
         [budget_lo, budget_hi](const std::string& v) -> std::string {
           double x = 0;
           if (!parse_number(v, x) || x < budget_bits().front() || x > budget_bits().back())
             return "invalid value '" + v + "': expected a number of bits per weight in " + budget_lo + ".." + budget_hi;
           return {};
         },
         [](Args& a, const std::string& v) { parse_number(v, a.bits_budget); }},
        {"--lora-alpha", "A", "PEFT lora_alpha, a number in 1e-6..1e6 (default: r)", kModel, false,
         [](const std::string& v) -> std::string {
           double x = 0;
           return parse_number(v, x) && lora_alpha_in_range(x)
                      ? std::string()
                      : "invalid value '" + v + "': expected a number in 1e-6..1e6";
         },
         [](Args& a, const std::string& v) { parse_number(v, a.lora_alpha); }},
        {"--target-modules", "LIST", std::string("comma-separated module names (default ") + kDefaultTargets + ")",
         kModel, false, list(), [](Args& a, const std::string& v) { a.modules = split_list(v); }},
        {"--format", "dequantized|bnb-nf4|gguf",
         "the base model.safetensors: dequantized, Q in the input's dtype; bnb-nf4, the targets as "
         "bitsandbytes NF4 (packed codes, absmax, quant_state; with --double-quant bitsandbytes' nested absmax) and "
         "config.json with its quantization_config, which transformers loads without quantizing again; needs "
         "--bits 4 --quantizer nf, a block size of 64..4096 (a power of 2) and config.json next to the input; not "
         "with --shard or --bits-budget. gguf: PATH is a GGUF v3 file (F32, F16 or BF16 targets "
         "blk.N.<module>.weight, <module> one of attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down, "
         "which --target-modules also accepts by their HF names q_proj, ...); "
         "DIR receives model.gguf (every key-value pair and tensor copied, the targets as Q in the --quant type) and "
         "adapter.gguf (a llama.cpp LoRA adapter: llama-cli -m DIR/model.gguf --lora DIR/adapter.gguf) and "
         "loftq_report.json; the alternation quantizes in the --quant format itself, --scale absmax being ggml's "
         "own block scales; a target whose rows are not multiples of 32 is copied unchanged without an adapter "
         "(llama.cpp's fallback); not with --bits, --bits-budget, --shard, --packed or --double-quant "
         "(default dequantized)",
         kModel, false, one_of({"dequantized", "bnb-nf4", "gguf"}),
         [](Args& a, const std::string& v) {
           a.bnb_nf4 = v == "bnb-nf4";
           a.gguf = v == "gguf";
         }},
        {"--quant", "iq4_nl|q4_0|q8_0",
         "--format gguf: the ggml type of the targets in model.gguf, blocks of 32 with an fp16 scale: iq4_nl "
         "(16 non-uniform levels, 4.5 bits per weight), q4_0 (4.5) or q8_0 (8.5) (default iq4_nl)",
         kModel, false, one_of({"iq4_nl", "q4_0", "q8_0"}),
         [](Args& a, const std::string& v) {
           a.quant = v == "q4_0" ? loftq::GgmlFormat::q4_0
                                 : v == "q8_0" ? loftq::GgmlFormat::q8_0 : loftq::GgmlFormat::iq4_nl;
           a.quant_given = true;
         }},
        {"--packed", "", "also write model.packed.safetensors", kModel, false, nullptr,
         [](Args& a, const std::string&) { a.packed = true; }},
        {"--shard", "K/N",
         "process only targets i (0-based, in sorted name order) with i % N == K - 1, 1 <= K <= N, into a partial "
         "output (adapter_model.safetensors, shard_model.safetensors, loftq_report.json); combine the N outputs "
         "with merge",
         kModel, false,
         [](const std::string& v) -> std::string {
           const std::size_t slash = v.find('/');
           if (slash == std::string::npos) return "invalid value '" + v + "': expected K/N";
           const std::string n = v.substr(slash + 1), k = v.substr(0, slash);
           std::string e = count(1, 1000000)(n);
           if (e.empty()) e = count(1, to_u64(n))(k);
           return e;
         },
         [](Args& a, const std::string& v) {
           const std::size_t slash = v.find('/');
           a.shard_n = static_cast<int>(to_u64(v.substr(slash + 1)));
           a.shard_k = static_cast<int>(to_u64(v.substr(0, slash)));
         }},
        {"--overwrite", "", "replace an existing DIR (only once the new one is complete)", kModel | kMerge, false,
         nullptr, [](Args& a, const std::string&) { a.overwrite = true; }},
        {"--quiet", "", "print nothing on success (no progress, no summary)", kAll, false, nullptr,
         [](Args& a, const std::string&) { a.quiet = true; }},
    };
    return t;
  }();
  return table;
}

// Greedy word wrap of `text` to `width` columns, every line after the first
// indented by `indent`. "(default X)" stays on one line so it can be found.
std::string wrap(const std::string& text, std::size_t first_col, std::size_t indent, std::size_t width = 79) {
  std::istringstream in(text);
  std::vector<std::string> words;
  for (std::string w; in >> w;) {
    if (!words.empty() && words.back() == "(default") {
      words.back() += " " + w;
      continue;
    }
    words.push_back(w);
  }
  std::string out;
  std::size_t col = first_col;
  bool line_start = true;
  for (const std::string& w : words) {
    if (!line_start && col + 1 + w.size() > width) {
      out += "\n" + std::string(indent, ' ');
      col = indent;
      line_start = true;
    }
    if (!line_start) {
      out += ' ';
      ++col;
    }
    out += w;
    col += w.size();
    line_start = false;
  }
  return out;
}

constexpr std::size_t kOptColumn = 24;

// The options of one command, as CLI11 holds them (help and version last).
std::string options_help(const CLI::App* sub) {
  std::string out;
  for (const CLI::Option* o : sub->get_options()) {
    std::string names = o->get_name(false, true);  // "-h,--help"
    for (std::size_t c = names.find(','); c != std::string::npos; c = names.find(',', c + 2)) names.insert(c + 1, " ");
    std::string head = "  " + names;
    if (!o->get_option_text().empty()) head += " " + o->get_option_text();
    out += head;
    if (head.size() + 1 >= kOptColumn) {
      out += "\n" + std::string(kOptColumn, ' ');
    } else {
      out += std::string(kOptColumn - head.size(), ' ');
    }
    out += wrap(o->get_description(), kOptColumn, kOptColumn) + "\n";
  }
  return out;
}

const CommandDef& command_def(const std::string& name) {
  for (const CommandDef& c : kCommands)
    if (name == c.name) return c;
  return kCommands[0];
}

// Help generated from the CLI11 apps: a command's own, or all of them.
class HelpFormatter : public CLI::Formatter {
 public:
  std::string make_help(const CLI::App* app, std::string, CLI::AppFormatMode) const override {
    if (app->get_parent() == nullptr) return top_help(app);
    const CommandDef& c = command_def(app->get_name());
    return std::string("usage: ") + c.usage + "\n\n" + wrap(c.description, 0, 0) + "\n\noptions:\n" +
           options_help(app) + "\n" + kExitStatus;
  }

  static std::string top_help(const CLI::App* app) {
    std::string out = "usage: ";
    for (const CommandDef& c : kCommands) out += std::string(&c == kCommands ? "" : "       ") + c.usage + "\n";
    out += "       loftq help | --help | --version\n";
    for (const CommandDef& c : kCommands) {
      const CLI::App* sub = app->get_subcommand(c.name);
      out += std::string("\nloftq ") + c.name + ": " + wrap(c.description, 8 + std::string(c.name).size(), 2) +
             "\n\n" + c.name + " options:\n" + options_help(sub);
    }
    return out + "\n" + kExitStatus;
  }
};

// Builds the parser: a subcommand per command, each with the table's options
// that name it, plus help and version.
struct Parser {
  CLI::App app{"", "loftq"};
  std::map<std::string, std::vector<std::pair<const OptionDef*, CLI::Option*>>> attached;

  Parser() {
    auto fmt = std::make_shared<HelpFormatter>();
    app.formatter(fmt);
    app.set_help_flag("-h,--help", "show this help");
    app.set_version_flag("--version", loftq::version());
    app.require_subcommand(1);
    for (const CommandDef& c : kCommands) {
      CLI::App* sub = app.add_subcommand(c.name, c.description);
      sub->formatter(fmt);
      for (const OptionDef& d : option_table()) {
        if (!(d.commands & c.bit)) continue;
        CLI::Option* o;
        if (d.value.empty()) {
          o = sub->add_flag(d.flag, d.help)->disable_flag_override();
        } else {
          o = sub->add_option(d.flag, CLI::callback_t{}, d.help)->type_size(1)->expected(1)->option_text(d.value);
          const std::string flag = d.flag;
          const Check check = d.check;
          // CLI11 takes a following option as the value ('--input --last');
          // the tool never did: that is a missing value.
          o->check(CLI::Validator(
              [check](std::string& v) -> std::string {
                if (v.size() >= 2 && v.compare(0, 2, "--") == 0) return "needs a value, got the option '" + v + "'";
                return check(v);
              },
              ""));
          if (d.required) o->required();
        }
        // Repeats are collected and refused after parsing, with one message
        // for options and flags alike.
        o->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
        attached[c.name].emplace_back(&d, o);
      }
      sub->set_help_flag("-h,--help", "show this help");
      sub->set_version_flag("--version", loftq::version(), "show the version");
    }
    app.add_subcommand("help", "show this help");
    app.add_subcommand("version", "show the version");
  }
};

}  // namespace

std::string help_text() {
  Parser p;
  return p.app.help();
}

Parsed parse_args(const std::vector<std::string>& argv) {
  Parsed out;
  Parser p;
  if (argv.empty()) {
    out.action = Parsed::Action::usage_help;
    out.text = p.app.help();
    return out;
  }
  // A first word that is no command and no option: say so, rather than
  // CLI11's "A subcommand is required".
  const std::string& first = argv[0];
  if (first.empty() || first[0] != '-') {
    bool known = first == "help" || first == "version";
    for (const CommandDef& c : kCommands) known = known || first == c.name;
    if (!known) throw UsageError{"unknown command '" + first + "'"};
  }
  std::vector<std::string> reversed(argv.rbegin(), argv.rend());
  try {
    p.app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    out.action = Parsed::Action::help;
    out.text = p.app.help();
    return out;
  } catch (const CLI::CallForVersion&) {
    out.action = Parsed::Action::version;
    out.text = "loftq " + loftq::version() + "\n";
    return out;
  } catch (const CLI::ParseError& e) {
    throw UsageError{e.what()};
  }
  if (p.app.got_subcommand("help")) {
    out.action = Parsed::Action::help;
    out.text = HelpFormatter::top_help(&p.app);
    return out;
  }
  if (p.app.got_subcommand("version")) {
    out.action = Parsed::Action::version;
    out.text = "loftq " + loftq::version() + "\n";
    return out;
  }
  Args& a = out.args;
  for (const CommandDef& c : kCommands)
    if (p.app.got_subcommand(c.name)) a.command = c.name;
  for (const auto& [def, opt] : p.attached.at(a.command)) {
    if (opt->count() > 1) throw UsageError{"option " + def->flag + " given more than once"};
    if (opt->count() == 1) def->apply(a, def->value.empty() ? std::string() : opt->results().at(0));
  }
  if (a.bits_budget > 0 && a.bits_given)
    throw UsageError{"--bits and --bits-budget exclude each other: the budget chooses the widths"};
  // The allocation weighs every target against every other; one shard only
  // sees its own.
  if (a.bits_budget > 0 && a.shard_n > 0) throw UsageError{"--bits-budget cannot be combined with --shard"};
  if (a.bnb_nf4) {
    // bitsandbytes has NF4 at 64..4096-element blocks and nothing else.
    if (a.kind != loftq::Quantizer::Kind::normal_float || a.bits_budget > 0 || a.bits != 4)
      throw UsageError{"--format bnb-nf4 needs --bits 4 --quantizer nf (bitsandbytes has no other 4-bit "
                       "normal float and no NF2 or NF3)"};
    if (!loftq::io::bnb_block_size_ok(static_cast<std::int64_t>(a.block_size)))
      throw UsageError{"--format bnb-nf4 needs --block-size 64, 128, 256, 512, 1024, 2048 or 4096 (got " +
                       std::to_string(a.block_size) + ")"};
    if (a.shard_n > 0) throw UsageError{"--format bnb-nf4 cannot be combined with --shard"};
  }
  if (a.quant_given && !a.gguf) throw UsageError{"--quant needs --format gguf"};
  if (a.gguf && (a.bits_given || a.bits_budget > 0 || a.shard_n > 0 || a.packed || a.double_quant))
    throw UsageError{"--format gguf takes its width from --quant: not with --bits, --bits-budget, --shard, --packed "
                     "or --double-quant"};
  if (a.command == "model" && a.modules.empty()) a.modules = split_list(kDefaultTargets);
  return out;
}

}  // namespace loftq_cli

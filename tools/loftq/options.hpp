#pragma once
// The tool's command line: one table of options (options.cpp) from which the
// CLI11 parser of every command and the --help text are built.

#include <loftq/data_aware.hpp>
#include <loftq/ggml_format.hpp>
#include <loftq/initialize.hpp>
#include <loftq/options.hpp>
#include <loftq/quantizer.hpp>
#include <loftq/svd.hpp>

#include "common/llama_quant_mix.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace loftq {
namespace io {}
}  // namespace loftq

namespace loftq_cli {

// The library's I/O namespace, under one name in the whole tool.
namespace io = loftq::io;

constexpr int kMaxThreads = 1024;
constexpr const char* kDefaultTargets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";

// The widths --bits-budget chooses from.
inline const std::vector<int>& budget_bits() {
  static const std::vector<int> b = {2, 3, 4};
  return b;
}

// Everything any command reads from its command line. A command uses the
// fields of the options it accepts; the others keep these defaults.
struct Args {
  std::string command;  // init, model, merge or calibrate
  std::string input, output;
  // The library's defaults, so a change there reaches the tool.
  int bits = 4;  // the tool's own: the library has no default width
  bool bits_given = false;
  Eigen::Index rank = loftq::Options{}.rank;
  int iters = loftq::Options{}.iterations;
  loftq::Quantizer::Kind kind = loftq::Quantizer::Kind::normal_float;
  Eigen::Index block_size = loftq::Quantizer(kind, bits).block_size;
  loftq::SVDMethod svd = loftq::Options{}.svd.method;
  std::uint64_t seed = loftq::Options{}.svd.seed;
  int threads = loftq::Options{}.threads;  // 0: not given (OpenMP's default)
  bool keep_best = loftq::Options{}.keep_best;
  bool quiet = false;
  loftq::Start start = loftq::Options{}.start;
  bool scale_search = loftq::Options{}.scale_search;
  bool double_quant = false;
  // model
  double lora_alpha = 0;  // 0: r
  std::vector<std::string> modules;
  int shard_k = 0, shard_n = 0;  // 0: not sharded
  bool overwrite = false, packed = false;
  bool bnb_nf4 = false;    // --format bnb-nf4: the base as bitsandbytes NF4 instead of dequantized Q
  double bits_budget = 0;  // 0: one width for every target (--bits)
  // --format gguf: a GGUF file in, model.gguf + adapter.gguf out (cmd_model_gguf.cpp)
  bool gguf = false;
  loftq::GgmlFormat quant = loftq::GgmlFormat::iq4_nl;  // --quant
  bool quant_given = false;
  // --quant q4_k_m etc.: llama.cpp's per-tensor types (common/llama_quant_mix.hpp); quant is then the mix's base type
  std::optional<loftq_common::LlamaMix> mix;
  std::string adapter_type = "f16";  // --adapter-type: f32, f16, bf16 or q8_0, adapter.gguf's lora_a / lora_b
  // model --calibration: statistics for data-aware LoftQ (calibration_input.hpp)
  std::string calibration;
  bool calibration_data_free = false;  // --calibration-missing data-free
  double calibration_damping = -1;     // --calibration-damping; -1: loftq::DataAwareOptions' per-mode defaults
  // calibrate
  std::string tokens;
  bool stats_full = true;  // --stats full|diag
  bool imatrix = false;
  // merge
  std::vector<std::string> shards;
};

// The lora_alpha values the tool accepts (--lora-alpha and a shard's
// report). The adapter is scaled by sqrt(r / lora_alpha): far outside this
// range it overflows to Inf or underflows to zeros in float32.
inline bool lora_alpha_in_range(double x) { return x >= 1e-6 && x <= 1e6; }

// The ggml format loftq writes for a ggml type, or none for a type it does not write (Q5_0, F16, ...).
inline loftq::GgmlFormat ggml_format_of(loftq::io::GgmlType t) {
  for (const std::string& n : loftq::ggml_format_names()) {
    const loftq::GgmlFormat f = loftq::ggml_format_from_name(n);
    if (loftq::io::ggml_type_of(f) == t) return f;
  }
  return loftq::GgmlFormat::none;
}

// What the command line asks for.
struct Parsed {
  enum class Action { run, help, version, usage_help } action = Action::run;  // help: also --help-markdown
  Args args;                                                                  // action run
  std::string text;  // help or version text; usage_help: help for stderr
};

// argv without the program name. Throws UsageError.
Parsed parse_args(const std::vector<std::string>& argv);

// The settings a model run's report records ("settings"): each option
// table row that has a settings key writes it.
nlohmann::json settings_json(const Args& a);
// merge: the options of a shard's recorded settings, read back by the same
// rows; throws InputError unless every field is usable.
Args args_from_settings(const nlohmann::json& settings);

// Names the report and the summary use.
const char* quantizer_name(loftq::Quantizer::Kind k);
const char* scale_name(bool search);
const char* start_name(loftq::Start s);

// The loftq::Options of the core settings (init and model).
loftq::Options library_options(const Args& a);

}  // namespace loftq_cli

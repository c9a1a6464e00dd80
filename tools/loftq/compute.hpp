#pragma once
// The compute step of `loftq model`: one target's W in, its result out.
// Which computation runs is the options' choice: LoftQ with the block
// quantizer of --bits (or of each width a --bits-budget allocation chose),
// with double quantization (ours or bitsandbytes'), or LoftQ in a ggml block
// format (--format gguf).

#include "calibration_input.hpp"
#include "options.hpp"
#include "source.hpp"

#include <loftq/double_quant.hpp>
#include <loftq/ggml_quantizer.hpp>
#include <loftq/initialize.hpp>
#include <loftq/io/bnb.hpp>
#include <loftq/mixed_precision.hpp>
#include <loftq/quantizer.hpp>
#include <loftq/workspace.hpp>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace loftq_cli {

class Progress;

// One target's result, as the sinks write it.
struct TargetResult {
  loftq::Result<float> r;
  loftq::DoubleQuantEffect dq;
  loftq::BnbNestedScales nested;  // bitsandbytes' double quantization (bnb-nf4 with --double-quant)
  double sq_err = 0;              // ||W - Q - A B^T||^2
  int bits = 0;
  std::vector<double> candidates;  // squared error at each width of a bit budget
  double seconds = 0;
  // With --calibration: the report's per-target "calibration", with the
  // output-space errors of QLoRA, data-free and data-aware LoftQ.
  nlohmann::json calibration;
  double out_qlora = 0, out_free = 0, out_aware = 0;
};

class Compute {
 public:
  // Validates every width the run may use (unsupported -> InputError) before any work.
  explicit Compute(const Args& a);

  // With --calibration: matches every target of `src` to its statistics
  // before any work (InputError when one has none, or of another width).
  void check_targets(const Source& src);
  bool calibrated() const { return calib_ != nullptr; }
  // The report's "calibration" (with --calibration).
  nlohmann::json calibration_json() const { return calib_->describe(); }

  // W comes from the TensorPrefetcher, with w2 = ||W||^2. Computations run
  // one at a time (they share one loftq::Workspace), on one thread.
  TargetResult run(const ModelTarget& t, const ConstMapF& W, double w2);
  // Hands a written result's code sets back for the next run() to reuse (its
  // Q is freed); safe from any thread (the writer's), while run() works.
  void give_back(loftq::Result<float>&& r);

  // With --bits-budget: computes every target of `src` at every width, then
  // allocates the widths (reading the targets once more is left to the
  // pipeline). Only the errors are kept; initialize's determinism makes the
  // recomputation of the chosen width bit-identical to the measured run.
  // Without a budget every target gets --bits.
  void choose_widths(const Source& src, Progress& progress, std::size_t& done);

  // The width of each target (by name), known after choose_widths().
  const std::map<std::string, int>& bits_of() const { return bits_of_; }
  // --format gguf with --bits-budget: the ggml format chosen for each target (by name), after choose_widths().
  const std::map<std::string, loftq::GgmlFormat>& ggml_formats() const { return formats_; }
  // --format gguf with --bits-budget: each target's squared error in each format measured (by name).
  const std::map<std::string, std::map<loftq::GgmlFormat, double>>& ggml_measured() const { return measured_ggml_; }
  // And in ggml's own Q5_0 and Q5_1 (by name, then ggml type number): llama.cpp's mixes fall back to them for rows
  // that are not whole super-blocks, and loftq writes neither.
  const std::map<std::string, std::map<std::uint32_t, double>>& ggml_plain_measured() const { return measured_plain_; }
  // Computations of all targets of `src`: one each, or with a budget one per candidate and the chosen one.
  std::size_t total_runs(const Source& src) const;
  bool budget() const { return a_.bits_budget > 0; }
  // The report's "bits_allocation" (with a budget).
  nlohmann::json allocation_json() const;
  // The summary's line about the widths (with a budget), given the report.
  void print_allocation(const nlohmann::json& report) const;

 private:
  TargetResult run_bits(const ModelTarget& t, const ConstMapF& W, double w2, int bits, bool double_quant, bool bnb);
  // LoftQ of target t's W at `bits` (--format gguf: in t's ggml format), in the output metric of `stats` when not
  // null.
  loftq::Result<float> loftq_of(const ModelTarget& t, const ConstMapF& W, int bits,
                                const loftq::InputStatistics* stats);
  // --format gguf with --bits-budget: choose_widths() over each target's candidate ggml formats.
  void choose_ggml_formats(const Source& src, Progress& progress, std::size_t& done);
  // The output-space comparison of a calibrated target (TargetResult::calibration).
  void compare(const ModelTarget& t, const ConstMapF& W, int bits, TargetResult& out);

  const Args& a_;
  loftq::Options opt_;
  std::map<int, loftq::Quantizer> quantizers_;
  bool gguf_ = false;
  std::map<std::string, int> bits_of_;
  std::map<std::string, std::vector<double>> measured_;
  loftq::BitAllocation alloc_;
  std::map<std::string, loftq::GgmlFormat> formats_;
  std::map<std::string, std::map<loftq::GgmlFormat, double>> measured_ggml_;
  std::map<std::string, std::map<std::uint32_t, double>> measured_plain_;
  loftq::ChoiceAllocation ggml_alloc_;
  double ggml_weights_ = 0, ggml_adapter_bits_ = 0;
  std::unique_ptr<CalibrationInput> calib_;
  // Buffers reused from target to target: a fresh target's pages cost the
  // kernel's zeroing, once a large share of the run (bench/whole_model.md).
  // Between two computations it holds at most what one takes, which the next
  // one reuses, or frees before it allocates: the ResidentBound counts them in
  // that computation's work. A written result's code set, from give_back() to
  // the next run(), is outside the count (a byte per weight at most).
  loftq::Workspace<float> ws_;
  std::mutex returned_m_;
  std::vector<loftq::Result<float>> returned_;  // from give_back(), for ws_ at the next run()
};

}  // namespace loftq_cli

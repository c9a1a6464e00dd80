#pragma once
// The reports the commands write: report.json (init) and
// loftq_report.json (model, merge), all made by one ReportBuilder.

#include "options.hpp"

#include <loftq/double_quant.hpp>
#include <loftq/initialize.hpp>
#include <loftq/mixed_precision.hpp>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace loftq_cli {

// Two-space indented, invalid UTF-8 replaced, a final newline.
std::string dump_json(const nlohmann::json& j);

// A report: the tool's version and the input, then what the command adds,
// and last the run's wall-clock seconds. Keys are kept sorted (nlohmann's
// object), so the order in which they are set does not matter.
class ReportBuilder {
 public:
  explicit ReportBuilder(const std::string& input);
  nlohmann::json& operator[](const std::string& key) { return j_[key]; }
  nlohmann::json& json() { return j_; }
  // model, merge: the per-tensor entries and the run-wide totals over them.
  void tensors(const nlohmann::json& tensors);
  // The file's text, with "seconds".
  std::string finish(double seconds);

 private:
  nlohmann::json j_;
};

nlohmann::json double_quant_json(const loftq::DoubleQuantEffect& e);

// The LoftQ iterations that ran. double_quantize() appends the error after
// its refit to the history; that entry is not an iteration.
std::size_t iterations_run(const loftq::Result<float>& r, bool double_quant);

// init's report.json.
struct InitFacts {
  std::string dtype;
  Eigen::Index rows = 0, cols = 0;
  double seconds = 0;
};
std::string init_report(const Args& a, const InitFacts& f, const loftq::Result<float>& r,
                        const loftq::DoubleQuantEffect& dq);

// model: one tensor's entry. `candidates` are the squared errors measured at
// each width of a bit budget (empty without one).
struct TensorFacts {
  std::vector<std::uint64_t> shape;
  std::string dtype, module;
  int bits = 0;
  loftq::GgmlFormat ggml = loftq::GgmlFormat::none;  // --format gguf: the stored format
  double sq_err = 0, seconds = 0;
  std::vector<double> candidates;
};
nlohmann::json tensor_entry(const Args& a, const TensorFacts& t, const loftq::Result<float>& r,
                            const loftq::DoubleQuantEffect& dq);

// model --bits-budget: how the widths were chosen.
nlohmann::json bits_allocation_json(double budget, const loftq::BitAllocation& alloc,
                                    const std::map<std::string, std::vector<double>>& measured,
                                    const std::map<std::string, int>& bits_of);

}  // namespace loftq_cli

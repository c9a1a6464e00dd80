#pragma once
// The reports the commands write: report.json (init) and
// loftq_report.json (model, merge).

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
nlohmann::json init_report(const Args& a, const InitFacts& f, const loftq::Result<float>& r,
                           const loftq::DoubleQuantEffect& dq);

// model: one tensor's entry. `candidates` are the squared errors measured at
// each width of a bit budget (empty without one).
struct TensorFacts {
  std::vector<std::uint64_t> shape;
  std::string dtype, module;
  int bits = 0;
  double sq_err = 0, seconds = 0;
  std::vector<double> candidates;
};
nlohmann::json tensor_entry(const Args& a, const TensorFacts& t, const loftq::Result<float>& r,
                            const loftq::DoubleQuantEffect& dq);

// Run-wide figures from the per-tensor entries, summed in name order so that
// an unsharded run and a merge of shards report the same numbers.
void add_totals(nlohmann::json& rep, const nlohmann::json& tensors);

// model --bits-budget: how the widths were chosen.
nlohmann::json bits_allocation_json(double budget, const loftq::BitAllocation& alloc,
                                    const std::map<std::string, std::vector<double>>& measured,
                                    const std::map<std::string, int>& bits_of);

}  // namespace loftq_cli

#include "report.hpp"

#include <loftq/threads.hpp>
#include <loftq/version.hpp>

namespace loftq_cli {

std::string dump_json(const nlohmann::json& j) {
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

namespace {

// Run-wide figures from the per-tensor entries, summed in name order so that
// an unsharded run and a merge of shards report the same numbers.
void add_totals(nlohmann::json& rep, const nlohmann::json& tensors) {
  double weights = 0, code_bits = 0, storage_bits = 0, total_sq = 0;
  for (const auto& e : tensors) {
    if (!e.contains("shape") || !e["shape"].is_array() || e["shape"].size() != 2) continue;
    const double n = e["shape"][0].get<double>() * e["shape"][1].get<double>();
    weights += n;
    if (e.contains("bits") && e["bits"].is_number()) code_bits += n * e["bits"].get<double>();
    if (e.contains("bits_per_weight") && e["bits_per_weight"].is_number())
      storage_bits += n * e["bits_per_weight"].get<double>();
    if (e.contains("sq_err") && e["sq_err"].is_number()) total_sq += e["sq_err"].get<double>();
  }
  rep["average_code_bits"] = weights > 0 ? code_bits / weights : 0.0;
  rep["average_bits_per_weight"] = weights > 0 ? storage_bits / weights : 0.0;  // codes + scales
  rep["total_sq_err"] = total_sq;
}

}  // namespace

ReportBuilder::ReportBuilder(const std::string& input) {
  j_["version"] = loftq::version();
  j_["input"] = input;
}

void ReportBuilder::tensors(const nlohmann::json& tensors) {
  add_totals(j_, tensors);
  j_["tensors"] = tensors;
}

std::string ReportBuilder::finish(double seconds) {
  j_["seconds"] = seconds;
  return dump_json(j_);
}

nlohmann::json double_quant_json(const loftq::DoubleQuantEffect& e) {
  return {{"scheme", "int8 absmax, mean subtracted"},           {"block", loftq::kDoubleQuantBlock},
          {"bits_per_weight_before", e.bits_per_weight_before}, {"rel_err_before", e.error_before},
          {"rel_err_rounded_scales", e.error_rounded},          {"refit", e.refit_kept}};
}

std::size_t iterations_run(const loftq::Result<float>& r, bool double_quant) {
  return r.history.size() - (double_quant && !r.history.empty() ? 1 : 0);
}

std::string init_report(const Args& a, const InitFacts& f, const loftq::Result<float>& r,
                        const loftq::DoubleQuantEffect& dq) {
  ReportBuilder rep(a.input);
  rep["dtype"] = f.dtype;
  rep["shape"] = {f.rows, f.cols};
  rep["bits"] = a.bits;
  rep["rank"] = a.rank;
  rep["iterations"] = a.iters;
  rep["iterations_run"] = iterations_run(r, a.double_quant);
  rep["quantizer"] = quantizer_name(a.kind);
  rep["block_size"] = a.block_size;
  rep["scale"] = scale_name(a.scale_search);
  rep["svd"] = loftq::to_string(a.svd);
  rep["seed"] = a.seed;
  rep["start"] = start_name(a.start);
  rep["threads"] = loftq::thread_count(a.threads);
  rep["keep_best"] = a.keep_best;
  rep["best_iteration"] = r.best_iteration;
  rep["history"] = r.history;
  rep["rel_err"] = r.error();
  rep["qlora_rel_err"] = r.qlora_error;
  rep["bits_per_weight"] = r.packed.bits_per_weight();
  rep["double_quant"] = a.double_quant ? double_quant_json(dq) : nlohmann::json(false);
  return rep.finish(f.seconds);
}

nlohmann::json tensor_entry(const Args& a, const TensorFacts& t, const loftq::Result<float>& r,
                            const loftq::DoubleQuantEffect& dq) {
  nlohmann::json e;
  e["shape"] = t.shape;
  e["dtype"] = t.dtype;
  e["module"] = t.module;
  e["bits"] = t.bits;
  e["rank"] = a.rank;
  e["iterations_run"] = iterations_run(r, a.double_quant);
  e["best_iteration"] = r.best_iteration;
  e["history"] = r.history;
  e["rel_err"] = r.error();
  e["sq_err"] = t.sq_err;
  e["qlora_rel_err"] = r.qlora_error;
  // The double quantization knows its storage; PackedMatrix does not know bitsandbytes' nested one, nor a ggml
  // format's fp16 scales and super-block fields: those count what the file stores.
  e["bits_per_weight"] = a.gguf           ? loftq::ggml_format_bits_per_weight(t.ggml)
                         : a.double_quant ? dq.bits_per_weight_after
                                          : r.packed.bits_per_weight();
  if (a.double_quant) e["double_quant"] = double_quant_json(dq);
  if (!t.candidates.empty()) {
    nlohmann::json c = nlohmann::json::object();
    for (std::size_t j = 0; j < budget_bits().size(); ++j) c[std::to_string(budget_bits()[j])] = t.candidates[j];
    e["candidate_sq_err"] = c;
  }
  e["seconds"] = t.seconds;
  return e;
}

nlohmann::json bits_allocation_json(double budget, const loftq::BitAllocation& alloc,
                                    const std::map<std::string, std::vector<double>>& measured,
                                    const std::map<std::string, int>& bits_of) {
  const std::vector<int>& cand = budget_bits();
  std::map<int, int> widths;
  for (const auto& kv : bits_of) ++widths[kv.second];
  double at_min = 0;
  for (const auto& kv : measured) at_min += kv.second.front();
  nlohmann::json counts = nlohmann::json::object();
  for (const auto& kv : widths) counts[std::to_string(kv.first)] = kv.second;
  return {{"budget", budget},
          {"candidates", cand},
          {"solver", "exact multiple-choice knapsack (dynamic programming)"},
          {"exact", alloc.exact},
          {"gap_bits", alloc.gap_bits},
          {"average_code_bits", alloc.average_bits},
          {"total_sq_err", alloc.total_sq_error},
          {"total_sq_err_all_" + std::to_string(cand.front()) + "_bit", at_min},
          {"tensors_per_width", counts}};
}

}  // namespace loftq_cli

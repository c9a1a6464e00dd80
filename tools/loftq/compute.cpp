#include "compute.hpp"

#include "checkpoint_plan.hpp"
#include "commands.hpp"
#include "errors.hpp"
#include "model_pipeline.hpp"
#include "progress.hpp"
#include "report.hpp"

#include <loftq/bnb_double_quant.hpp>
#include <loftq/data_aware.hpp>
#include <loftq/ggml_format.hpp>

#include <chrono>
#include <cstdio>

namespace loftq_cli {

Compute::Compute(const Args& a) : a_(a), opt_(library_options(a)) {
  if (!a.calibration.empty())
    calib_ = std::make_unique<CalibrationInput>(a.calibration, a.calibration_data_free, a.calibration_damping);
  if (a.gguf) {  // each target has its ggml format (ModelTarget::ggml)
    gguf_ = true;
    return;
  }
  for (int b : budget() ? budget_bits() : std::vector<int>{a.bits}) {
    try {
      quantizers_.emplace(b, loftq::Quantizer(a.kind, b, a.block_size, /*symmetric=*/true));
    } catch (const loftq::Error& e) {
      throw InputError{"--bits " + std::to_string(b) + ": " + e.what()};
    }
  }
}

std::size_t Compute::runs_per_target() const { return budget() ? budget_bits().size() + 1 : 1; }

void Compute::check_targets(const Source& src) {
  if (calib_) calib_->check(src.targets());
}

loftq::Result<float> Compute::loftq_of(const ModelTarget& t, const ConstMapF& W, int bits,
                                       const loftq::InputStatistics* stats) {
  {
    std::lock_guard<std::mutex> lk(returned_m_);
    for (loftq::Result<float>& r : returned_) ws_.recycle(std::move(r));
    returned_.clear();
  }
  const loftq::DataAwareOptions da = calib_ ? calib_->data_aware_options() : loftq::DataAwareOptions{};
  if (gguf_) {
    const loftq::GgmlQuantizer q(t.ggml);
    return stats ? loftq::initialize(W, q, *stats, opt_, da, ws_) : loftq::initialize(W, q, opt_, ws_);
  }
  const loftq::Quantizer& q = quantizers_.at(bits);
  return stats ? loftq::initialize(W, q, *stats, opt_, da, ws_) : loftq::initialize(W, q, opt_, ws_);
}

void Compute::give_back(loftq::Result<float>&& r) {
  // Q is freed now: kept for the target after next, it would stay resident
  // beside the next target's residual, one m x n buffer above the peak of a
  // run without reuse. The code sets are a fraction of that.
  r.Q = RowMatrixF();
  std::lock_guard<std::mutex> lk(returned_m_);
  returned_.push_back(std::move(r));
}

void Compute::compare(const ModelTarget& t, const ConstMapF& W, int bits, TargetResult& out) {
  out.calibration = calib_->target_json(t);
  const loftq::InputStatistics* stats = calib_->of(t);
  if (!stats) return;
  try {
    loftq::Result<float> free = loftq_of(t, W, bits, nullptr);
    const RowMatrixF approx_free = free.Q + free.A * free.B.transpose();
    ws_.recycle(std::move(free));
    const RowMatrixF approx = out.r.Q + out.r.A * out.r.B.transpose();
    out.out_qlora = out.r.qlora_error;
    out.out_free = loftq::output_error(W, approx_free, *stats);
    out.out_aware = loftq::output_error(W, approx, *stats);
  } catch (const loftq::Error& e) {
    if (e.code() == loftq::Errc::cancelled) throw Interrupted{};
    throw InputError{t.where + ": " + e.what()};
  }
  out.calibration["output_rel_err"] = {
      {"qlora", out.out_qlora}, {"loftq_data_free", out.out_free}, {"loftq_data_aware", out.out_aware}};
}

TargetResult Compute::run_bits(const ModelTarget& t, const ConstMapF& W, double w2, int bits, bool double_quant,
                               bool bnb) {
  TargetResult out;
  out.bits = bits;
  try {
    out.r = loftq_of(t, W, bits, calib_ ? calib_->of(t) : nullptr);
    if (!gguf_) {
      // bitsandbytes stores its own nested scales; Q (and the refit) follow what it recovers.
      if (double_quant)
        out.dq = bnb ? loftq::bnb_double_quantize(W, out.r, out.nested, opt_) : loftq::double_quantize(W, out.r, opt_);
    }
  } catch (const loftq::Error& e) {
    if (e.code() == loftq::Errc::cancelled) throw Interrupted{};
    throw InputError{t.where + ": " + numeric_failure(e, W)};
  }
  if (!result_finite(out.r, opt_.threads)) throw InputError{t.where + ": " + numeric_failure(not_finite_result(), W)};
  out.sq_err = loftq::squared_error(out.r, w2);
  return out;
}

TargetResult Compute::run(const ModelTarget& t, const ConstMapF& W, double w2) {
  const auto t0 = std::chrono::steady_clock::now();
  const int bits = gguf_ ? loftq::ggml_format_bits(t.ggml) : bits_of_.at(t.name);
  TargetResult out = run_bits(t, W, w2, bits, a_.double_quant, a_.bnb_nf4);
  if (budget()) out.candidates = measured_.at(t.name);
  if (calib_) compare(t, W, bits, out);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

void Compute::choose_widths(const Source& src, Progress& progress, std::size_t& done) {
  if (!budget()) {
    for (const ModelTarget& t : src.targets()) bits_of_[t.name] = gguf_ ? loftq::ggml_format_bits(t.ggml) : a_.bits;
    return;
  }
  // Nothing is on disk yet, so a signal here simply ends the process.
  std::vector<loftq::MatrixErrors> errs;
  std::vector<const ModelTarget*> order;
  for (const ModelTarget& t : src.targets()) order.push_back(&t);
  TensorPrefetcher reader(src, order);
  for (const ModelTarget* t : order) {
    const TensorPrefetcher::Loaded in = reader.next();
    loftq::MatrixErrors me;
    me.numel = static_cast<std::int64_t>(t->rows * t->cols);
    const loftq::InputStatistics* stats = calib_ ? calib_->of(*t) : nullptr;
    for (int b : budget_bits()) {
      TargetResult r = run_bits(*t, in.W, in.w2, b, a_.double_quant, false);
      // With statistics the budget goes where the layer's outputs gain most.
      me.sq_error.push_back(stats ? loftq::output_sq_error(in.W, RowMatrixF(r.r.Q + r.r.A * r.r.B.transpose()), *stats)
                                  : r.sq_err);
      ws_.recycle(std::move(r.r));
      progress.update(++done, t->name + " @ " + std::to_string(b) + " bits");
    }
    measured_[t->name] = me.sq_error;
    errs.push_back(std::move(me));
  }
  try {
    alloc_ = loftq::allocate_bits(errs, budget_bits(), a_.bits_budget);
  } catch (const loftq::Error& e) {
    throw InputError{std::string("--bits-budget: ") + e.what()};
  }
  for (std::size_t i = 0; i < order.size(); ++i) bits_of_[order[i]->name] = alloc_.bits[i];
}

nlohmann::json Compute::allocation_json() const {
  return bits_allocation_json(a_.bits_budget, alloc_, measured_, bits_of_);
}

void Compute::print_allocation(const nlohmann::json& rep) const {
  std::map<int, int> widths;
  for (const auto& kv : bits_of_) ++widths[kv.second];
  std::string mix;
  for (const auto& kv : widths)
    mix += (mix.empty() ? "" : ", ") + std::to_string(kv.second) + " at " + std::to_string(kv.first) + " bits";
  std::printf("  bit budget %.4g: %s; average %.4f code bits per weight (%.4f with scales)\n", a_.bits_budget,
              mix.c_str(), rep["average_code_bits"].get<double>(), rep["average_bits_per_weight"].get<double>());
}

}  // namespace loftq_cli

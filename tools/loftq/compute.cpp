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
#include <loftq/io/ggml_dequantize.hpp>
#include <loftq/io/ggml_q5.hpp>
#include <loftq/io/ggml_types.hpp>

#include <chrono>
#include <cmath>
#include <limits>
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

namespace {

// The ggml formats a --bits-budget allocation offers a target of rows `cols` long: every format loftq writes whose
// blocks fit the rows.
std::vector<loftq::GgmlFormat> ggml_candidates(std::uint64_t cols) {
  std::vector<loftq::GgmlFormat> out;
  for (loftq::GgmlFormat f : {loftq::GgmlFormat::q2_K, loftq::GgmlFormat::q3_K, loftq::GgmlFormat::iq4_xs,
                              loftq::GgmlFormat::q4_0, loftq::GgmlFormat::iq4_nl, loftq::GgmlFormat::q4_K,
                              loftq::GgmlFormat::q5_K, loftq::GgmlFormat::q6_K, loftq::GgmlFormat::q8_0})
    if (cols % static_cast<std::uint64_t>(loftq::ggml_format_block(f)) == 0) out.push_back(f);
  return out;
}

// The bits adapter.gguf stores for a target: lora_a (ne [cols, r]) and lora_b (ne [r, rows]) in --adapter-type, a
// Q8_0 lora_b of a rank that is not whole blocks in F16 (as sink_gguf.cpp writes them).
std::int64_t adapter_bits(const Args& a, const ModelTarget& t) {
  const std::uint32_t ta = static_cast<std::uint32_t>(a.adapter_type == "f16"    ? io::GgmlType::F16
                                                      : a.adapter_type == "bf16" ? io::GgmlType::BF16
                                                      : a.adapter_type == "q8_0" ? io::GgmlType::Q8_0
                                                                                 : io::GgmlType::F32);
  const std::uint32_t tb = ta == static_cast<std::uint32_t>(io::GgmlType::Q8_0) && a.rank % loftq::kGgmlBlock != 0
                               ? static_cast<std::uint32_t>(io::GgmlType::F16)
                               : ta;
  const std::uint64_t r = static_cast<std::uint64_t>(a.rank);
  return 8 *
         static_cast<std::int64_t>(io::ggml_nbytes(ta, {t.cols, r}, t.name) + io::ggml_nbytes(tb, {r, t.rows}, t.name));
}

}  // namespace

std::size_t Compute::total_runs(const Source& src) const {
  if (!budget()) return src.targets().size();
  std::size_t n = 0;
  for (const ModelTarget& t : src.targets()) n += 1 + (gguf_ ? ggml_candidates(t.cols).size() : budget_bits().size());
  return n;
}

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
  if (budget() && !gguf_) out.candidates = measured_.at(t.name);
  if (calib_) compare(t, W, bits, out);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

void Compute::choose_widths(const Source& src, Progress& progress, std::size_t& done) {
  if (!budget()) {
    for (const ModelTarget& t : src.targets()) bits_of_[t.name] = gguf_ ? loftq::ggml_format_bits(t.ggml) : a_.bits;
    return;
  }
  if (gguf_) {
    choose_ggml_formats(src, progress, done);
    return;
  }
  // Nothing is on disk yet, so a signal here simply ends the process.
  std::vector<loftq::MatrixErrors> errs;
  std::vector<const ModelTarget*> order;
  for (const ModelTarget& t : src.targets()) order.push_back(&t);
  TensorPrefetcher reader(src, order, default_resident_bound(order));
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
    reader.release(*t);
  }
  try {
    alloc_ = loftq::allocate_bits(errs, budget_bits(), a_.bits_budget);
  } catch (const loftq::Error& e) {
    throw InputError{std::string("--bits-budget: ") + e.what()};
  }
  for (std::size_t i = 0; i < order.size(); ++i) bits_of_[order[i]->name] = alloc_.bits[i];
}

void Compute::choose_ggml_formats(const Source& src, Progress& progress, std::size_t& done) {
  std::vector<loftq::MatrixChoices> choices;
  std::vector<std::vector<loftq::GgmlFormat>> offered;
  std::vector<const ModelTarget*> order;
  // The costs are known before any LoftQ run: a budget no choice meets is refused at once.
  double cheapest = 0, weights = 0;
  for (const ModelTarget& t : src.targets()) {
    order.push_back(&t);
    double c = std::numeric_limits<double>::infinity();
    for (loftq::GgmlFormat f : ggml_candidates(t.cols))
      c = std::min(c, 8.0 * static_cast<double>(io::ggml_nbytes(static_cast<std::uint32_t>(io::ggml_type_of(f)),
                                                                {t.cols, t.rows}, t.name)));
    cheapest += c + static_cast<double>(adapter_bits(a_, t));
    weights += static_cast<double>(t.rows * t.cols);
  }
  if (cheapest > std::floor(a_.bits_budget * weights))
    throw InputError{"--bits-budget " + std::to_string(a_.bits_budget) + " is below " +
                     std::to_string(cheapest / weights) +
                     " bits per weight, the cheapest ggml types that fit the targets with their adapters"};
  TensorPrefetcher reader(src, order, default_resident_bound(order));
  for (const ModelTarget* t : order) {
    const TensorPrefetcher::Loaded in = reader.next();
    const loftq::InputStatistics* stats = calib_ ? calib_->of(*t) : nullptr;
    loftq::MatrixChoices mc;
    const std::int64_t adapter = adapter_bits(a_, *t);
    offered.push_back(ggml_candidates(t->cols));
    for (loftq::GgmlFormat f : offered.back()) {
      ModelTarget tf = *t;
      tf.ggml = f;
      TargetResult r = run_bits(tf, in.W, in.w2, loftq::ggml_format_bits(f), false, false);
      const double e =
          stats ? loftq::output_sq_error(in.W, RowMatrixF(r.r.Q + r.r.A * r.r.B.transpose()), *stats) : r.sq_err;
      ws_.recycle(std::move(r.r));
      measured_ggml_[t->name][f] = e;
      mc.sq_error.push_back(e);
      // What the two files store for the target: ggml's blocks of Q, and the adapter, which every format shares.
      mc.cost.push_back(8 * static_cast<std::int64_t>(io::ggml_nbytes(static_cast<std::uint32_t>(io::ggml_type_of(f)),
                                                                      {t->cols, t->rows}, t->name)) +
                        adapter);
      progress.update(++done, t->name + " @ " + loftq::ggml_format_name(f));
    }
    if (t->cols % static_cast<std::uint64_t>(loftq::kGgmlBlock) == 0)
      for (const io::GgmlType q5 : {io::GgmlType::Q5_0, io::GgmlType::Q5_1}) {
        const std::vector<unsigned char> blocks =
            io::ggml_q5_blocks(q5, in.W.data(), static_cast<std::size_t>(in.W.size()));
        RowMatrixF Q(in.W.rows(), in.W.cols());
        io::ggml_dequantize(static_cast<std::uint32_t>(q5), blocks.data(), blocks.size(),
                            static_cast<std::uint64_t>(Q.size()), Q.data());
        measured_plain_[t->name][static_cast<std::uint32_t>(q5)] =
            stats ? loftq::output_sq_error(in.W, Q, *stats) : (in.W.cast<double>() - Q.cast<double>()).squaredNorm();
      }
    ggml_weights_ += static_cast<double>(t->rows * t->cols);
    ggml_adapter_bits_ += static_cast<double>(adapter);
    choices.push_back(std::move(mc));
    reader.release(*t);
  }
  try {
    ggml_alloc_ =
        loftq::allocate_choices(choices, static_cast<std::int64_t>(std::floor(a_.bits_budget * ggml_weights_)));
  } catch (const loftq::Error& e) {
    throw InputError{std::string("--bits-budget: ") + e.what()};
  }
  for (std::size_t i = 0; i < order.size(); ++i) {
    const loftq::GgmlFormat f = offered[i][ggml_alloc_.choice[i]];
    formats_[order[i]->name] = f;
    bits_of_[order[i]->name] = loftq::ggml_format_bits(f);
  }
}

nlohmann::json Compute::allocation_json() const {
  if (!gguf_) return bits_allocation_json(a_.bits_budget, alloc_, measured_, bits_of_);
  nlohmann::json counts = nlohmann::json::object(), measured = nlohmann::json::object();
  for (const auto& kv : formats_)
    counts[loftq::ggml_format_name(kv.second)] = counts.value(loftq::ggml_format_name(kv.second), 0) + 1;
  for (const auto& kv : measured_ggml_) {
    nlohmann::json m = nlohmann::json::object();
    for (const auto& fe : kv.second) m[loftq::ggml_format_name(fe.first)] = fe.second;
    measured[kv.first] = m;
  }
  const double total = static_cast<double>(ggml_alloc_.total_cost);
  return {{"budget", a_.bits_budget},
          {"counts", "bits per weight of the targets as model.gguf and adapter.gguf store them (ggml's blocks)"},
          {"solver", "exact multiple-choice knapsack (dynamic programming)"},
          {"exact", ggml_alloc_.exact},
          {"gap_bits", static_cast<double>(ggml_alloc_.gap_cost) / ggml_weights_},
          {"average_bits_per_weight", total / ggml_weights_},
          {"average_bits_per_weight_without_adapter", (total - ggml_adapter_bits_) / ggml_weights_},
          {"total_sq_err", ggml_alloc_.total_sq_error},
          {"tensors_per_type", counts},
          {"candidate_sq_err", measured}};
}

void Compute::print_allocation(const nlohmann::json& rep) const {
  if (gguf_) {
    const nlohmann::json& b = rep["bits_allocation"];
    std::string mix;
    for (const auto& kv : b["tensors_per_type"].items())
      mix += (mix.empty() ? "" : ", ") + std::to_string(kv.value().get<int>()) + " " + kv.key();
    std::printf("  bit budget %.4g: %s; average %.4f bits per weight with the adapter (%.4f without)\n", a_.bits_budget,
                mix.c_str(), b["average_bits_per_weight"].get<double>(),
                b["average_bits_per_weight_without_adapter"].get<double>());
    if (b.contains("llama_cpp_recipe") && !b["llama_cpp_recipe"].is_null())
      std::printf("  llama.cpp's recipe at this budget: %s, %.4f bits per weight (no adapter)\n",
                  b["llama_cpp_recipe"]["name"].get<std::string>().c_str(),
                  b["llama_cpp_recipe"]["average_bits_per_weight"].get<double>());
    return;
  }
  std::map<int, int> widths;
  for (const auto& kv : bits_of_) ++widths[kv.second];
  std::string mix;
  for (const auto& kv : widths)
    mix += (mix.empty() ? "" : ", ") + std::to_string(kv.second) + " at " + std::to_string(kv.first) + " bits";
  std::printf("  bit budget %.4g: %s; average %.4f code bits per weight (%.4f with scales)\n", a_.bits_budget,
              mix.c_str(), rep["average_code_bits"].get<double>(), rep["average_bits_per_weight"].get<double>());
}

}  // namespace loftq_cli

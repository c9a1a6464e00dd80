// loftq model: every target weight of a safetensors checkpoint, streamed.
//
// A target is computed while the next one is read (TensorPrefetcher) and the
// previous one written (BackgroundWriter, model_pipeline.hpp): three targets
// in memory at most. Every output file is written at known offsets as the
// tensors are produced, into the staging directory (staged_output.hpp).

#include "checkpoint_plan.hpp"
#include "commands.hpp"
#include "errors.hpp"
#include "model_pipeline.hpp"
#include "report.hpp"

#include <loftq/loftq.hpp>

#include <chrono>
#include <cstdio>
#include <set>

namespace loftq_cli {

namespace {

// One target's LoftQ result (and double quantization), as written out.
struct TargetResult {
  loftq::Result<float> r;
  loftq::DoubleQuantEffect dq;
  loftq::BnbNestedScales nested;  // bitsandbytes' double quantization (bnb-nf4 with --double-quant)
  double sq_err = 0;              // ||W - Q - A B^T||^2
};

// W comes from the TensorPrefetcher, with w2 = ||W||^2.
TargetResult compute_target(const st::SafetensorsFile& f, const Target& t, const ConstMapF& W, double w2,
                            const loftq::Quantizer& q, const loftq::Options& opt, bool double_quant, bool bnb) {
  TargetResult out;
  const std::string where = f.path() + ": tensor '" + printable(t.name) + "'";
  try {
    out.r = loftq::initialize(W, q, opt);
    // bitsandbytes stores its own nested scales; Q (and the refit) follow what it recovers.
    if (double_quant) out.dq = bnb ? loftq::bnb_double_quantize(W, out.r, out.nested, opt) : loftq::double_quantize(W, out.r, opt);
  } catch (const loftq::Error& e) {
    if (e.code() == loftq::Errc::cancelled) throw Interrupted{};
    throw InputError{where + ": " + numeric_failure(e, W)};
  }
  if (!result_finite(out.r, opt.threads))
    throw InputError{where + ": " + numeric_failure(not_finite_result(), W)};
  out.sq_err = loftq::squared_error(out.r, w2);
  return out;
}

}  // namespace

int run_model(const Args& a) {
  const auto t_start = std::chrono::steady_clock::now();
  const bool budget = a.bits_budget > 0;
  // Every width this run may use, validated (unsupported -> exit 1) before any work.
  std::map<int, loftq::Quantizer> quantizers;
  for (int b : budget ? budget_bits() : std::vector<int>{a.bits}) {
    try {
      quantizers.emplace(b, loftq::Quantizer(a.kind, b, a.block_size, /*symmetric=*/true));
    } catch (const loftq::Error& e) {
      throw InputError{"--bits " + std::to_string(b) + ": " + e.what()};
    }
  }
  if (a.bnb_nf4) {
    // bitsandbytes has NF4 at 64..4096-element blocks and nothing else.
    if (a.kind != loftq::Quantizer::Kind::normal_float || budget || a.bits != 4)
      throw InputError{"--format bnb-nf4 needs --bits 4 --quantizer nf (bitsandbytes has no other 4-bit "
                       "normal float and no NF2 or NF3)"};
    if (!st::bnb_block_size_ok(static_cast<std::int64_t>(a.block_size)))
      throw InputError{"--format bnb-nf4 needs --block-size 64, 128, 256, 512, 1024, 2048 or 4096 (got " +
                       std::to_string(a.block_size) + ")"};
    if (a.shard_n > 0) throw InputError{"--format bnb-nf4 cannot be combined with --shard"};
  }
  const st::Checkpoint ck(a.input);
  const bool shard_run = a.shard_n > 0;
  if (!shard_run) check_checkpoint_names(ck, a.packed);
  StagedOutput out(a.output, a.overwrite ? StagedOutput::Existing::replace : StagedOutput::Existing::refuse,
                   checkpoint_inputs(ck, a.input));
  const Plan plan = plan_targets(ck, a.modules, a.rank, a.input);
  std::vector<const Target*> sel;
  for (std::size_t i = 0; i < plan.targets.size(); ++i)
    if (in_shard(i, a.shard_k, a.shard_n)) sel.push_back(&plan.targets[i]);

  const Settings s = Settings::of(a);
  if (s.bnb_nf4) check_bnb_output(ck, a.input, s, plan.targets);
  const loftq::Options opt = library_options(a);
  apply_threads(a.threads);

  const std::size_t runs_per_target = budget ? budget_bits().size() + 1 : 1;
  Progress progress(sel.size() * runs_per_target, a.quiet);
  progress.update(0, "");
  std::size_t done = 0;

  // Mixed precision: measure every target at every width, then allocate.
  // Only the errors are kept (one tensor in memory at a time, as without a
  // budget); the chosen width is recomputed when it is written, which
  // initialize's determinism makes bit-identical to the measured run. Nothing
  // is on disk yet, so a signal here simply ends the process.
  std::map<std::string, int> bits_of;
  std::map<std::string, std::vector<double>> measured;
  loftq::BitAllocation alloc;
  if (budget) {
    std::vector<loftq::MatrixErrors> errs;
    TensorPrefetcher reader(ck, sel);
    for (const Target* t : sel) {
      const TensorPrefetcher::Loaded in = reader.next();
      loftq::MatrixErrors me;
      me.numel = static_cast<std::int64_t>(t->rows * t->cols);
      for (int b : budget_bits()) {
        me.sq_error.push_back(
            compute_target(ck.file(t->file), *t, in.W, in.w2, quantizers.at(b), opt, a.double_quant, false).sq_err);
        progress.update(++done, t->name + " @ " + std::to_string(b) + " bits");
      }
      measured[t->name] = me.sq_error;
      errs.push_back(std::move(me));
    }
    try {
      alloc = loftq::allocate_bits(errs, budget_bits(), a.bits_budget);
    } catch (const loftq::Error& e) {
      throw InputError{std::string("--bits-budget: ") + e.what()};
    }
    for (std::size_t i = 0; i < sel.size(); ++i) bits_of[sel[i]->name] = alloc.bits[i];
  } else {
    for (const Target* t : sel) bits_of[t->name] = a.bits;
  }

  out.stage();  // from here a signal only raises a flag; we clean up
  Writers w = open_writers(out, ck, sel, shard_run, s, bits_of);
  std::set<std::string> selected;
  for (const Target* t : sel) selected.insert(t->name);
  std::map<std::string, const Target*> by_name;
  for (const Target& t : plan.targets) by_name[t.name] = &t;

  // The order of the work: targets and, in a full run, the other tensors
  // copied through, file by file in data order.
  struct Job {
    const Target* target;                  // or null: a copy
    std::size_t file = 0;
    const st::TensorInfo* info = nullptr;  // for a copy
  };
  std::vector<Job> jobs;
  std::vector<const Target*> order;
  if (shard_run) {
    for (const Target* t : sel) jobs.push_back({t});
  } else {
    for (std::size_t fi = 0; fi < ck.num_files(); ++fi)
      for (const st::TensorInfo& t : ck.file(fi).tensors())
        jobs.push_back(selected.count(t.name) ? Job{by_name.at(t.name)} : Job{nullptr, fi, &t});
  }
  for (const Job& j : jobs)
    if (j.target) order.push_back(j.target);

  nlohmann::json tensors = nlohmann::json::object();
  double sum_err = 0, sum_qlora = 0;
  TensorPrefetcher reader(ck, order);
  BackgroundWriter writer;  // declared after w: joined before w's files are abandoned
  auto process = [&](const Target& t) {
    const st::SafetensorsFile& f = ck.file(t.file);
    TensorFacts facts;
    facts.shape = {t.rows, t.cols};
    facts.dtype = st::dtype_name(t.info->dtype);
    facts.module = t.module;
    facts.bits = bits_of.at(t.name);
    if (budget) facts.candidates = measured.at(t.name);
    const auto t0 = std::chrono::steady_clock::now();
    const TensorPrefetcher::Loaded in = reader.next();
    auto tr = std::make_shared<TargetResult>(
        compute_target(f, t, in.W, in.w2, quantizers.at(facts.bits), opt, a.double_quant, s.bnb_nf4));
    const loftq::Result<float>& r = tr->r;
    facts.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    facts.sq_err = tr->sq_err;
    tensors[t.name] = tensor_entry(a, facts, r, tr->dq);
    sum_err += r.error();
    sum_qlora += r.qlora_error;
    st::SafetensorsWriter* bw = w.base[w.base_of.at(t.name)].get();
    writer.submit([&a, &s, &w, tr, bw, tp = &t, fp = &f] {
      const st::SafetensorsFile& f = *fp;
      loftq::Result<float>& r = tr->r;
      if (s.bnb_nf4) {
        try {
          st::write_bnb_nf4(*bw, bnb_target(*tp), r.packed, a.double_quant ? &tr->nested : nullptr);
        } catch (const loftq::Error& e) {
          throw InputError{f.path() + ": tensor '" + tp->name + "': " + e.what()};
        }
      } else {
        bw->write_float(tp->name, r.Q.data(), static_cast<std::uint64_t>(r.Q.size()), tp->info->dtype);
      }
      r.Q.resize(0, 0);
      const auto peft = loftq::to_peft(r, s.alpha);
      if (!peft.lora_A.allFinite() || !peft.lora_B.allFinite())
        throw InputError{f.path() + ": tensor '" + printable(tp->name) + "': the adapter at lora_alpha " +
                         std::to_string(s.alpha) + " is not finite"};
      w.adapter->write(tp->name, peft);
      if (w.packed) w.packed->write(tp->name, r.packed);
    });
    ++done;
    progress.update(done, t.name);
    check_interrupt();
  };

  for (const Job& j : jobs) {
    if (j.target) {
      process(*j.target);
    } else {
      const st::SafetensorsFile& f = ck.file(j.file);
      writer.submit([fp = &f, info = j.info, bw = w.base[j.file].get()] { copy_tensor(*fp, *info, *bw, info->name); });
    }
  }
  writer.finish();
  w.commit();

  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  nlohmann::json rep;
  rep["version"] = loftq::version();
  rep["input"] = a.input;
  rep["input_identity"] = checkpoint_identity(ck);
  rep["settings"] = s.j;
  rep["threads"] = loftq::thread_count(a.threads);
  rep["target_modules_matched"] = plan.modules;
  rep["num_targets"] = plan.targets.size();
  if (shard_run) rep["shard"] = {{"index", a.shard_k}, {"count", a.shard_n}};
  add_totals(rep, tensors);
  if (budget) rep["bits_allocation"] = bits_allocation_json(a.bits_budget, alloc, measured, bits_of);
  rep["tensors"] = tensors;
  rep["seconds"] = total;
  out.write_file(kReportFile, dump_json(rep));
  if (!shard_run) write_full_extras(out, ck, a.input, s, plan.modules, plan.targets);
  out.publish();

  if (!a.quiet) {
    const double k = sel.empty() ? 1.0 : static_cast<double>(sel.size());
    std::printf("loftq %s: %s -> %s: %zu of %zu target tensors%s, mean rel. error %.6f (QLoRA %.6f), %.1f s\n",
                loftq::version().c_str(), printable(a.input).c_str(), printable(out.dir().string()).c_str(), sel.size(),
                plan.targets.size(),
                shard_run ? (" (shard " + std::to_string(a.shard_k) + "/" + std::to_string(a.shard_n) + ")").c_str()
                          : "",
                sum_err / k, sum_qlora / k, total);
    if (budget) {
      std::map<int, int> widths;
      for (const auto& kv : bits_of) ++widths[kv.second];
      std::string mix;
      for (const auto& kv : widths)
        mix += (mix.empty() ? "" : ", ") + std::to_string(kv.second) + " at " + std::to_string(kv.first) + " bits";
      std::printf("  bit budget %.4g: %s; average %.4f code bits per weight (%.4f with scales)\n", a.bits_budget,
                  mix.c_str(), rep["average_code_bits"].get<double>(), rep["average_bits_per_weight"].get<double>());
    }
    std::fflush(stdout);
  }
  return kExitOk;
}

}  // namespace loftq_cli

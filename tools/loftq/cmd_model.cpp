// loftq model: one pipeline for every input and output format.
//
//   source (source.hpp)  ->  compute (compute.hpp)  ->  sinks (sink.hpp)
//
// A target is computed while the next one is read (TensorPrefetcher) and the
// previous one written (BackgroundWriter, model_pipeline.hpp): three targets
// in memory at most, fewer where the resident bound says so. Every output file is written at known offsets as the
// tensors are produced, into the staging directory (staged_output.hpp).

#include "checkpoint_plan.hpp"
#include "commands.hpp"
#include "compute.hpp"
#include "content_identity.hpp"
#include "errors.hpp"
#include "model_pipeline.hpp"
#include "progress.hpp"
#include "report.hpp"
#include "sink.hpp"
#include "source.hpp"
#include "source_gguf.hpp"
#include "staged_output.hpp"

#include <loftq/threads.hpp>
#include <loftq/version.hpp>

#include <chrono>
#include <filesystem>
#include <cstdio>
#include <memory>

namespace loftq_cli {

namespace {

using Sinks = std::vector<std::unique_ptr<Sink>>;

struct Computed {
  nlohmann::json tensors = nlohmann::json::object();  // the report's entries
  double sum_err = 0, sum_qlora = 0;                  // for the summary's means
  double out_qlora = 0, out_free = 0, out_aware = 0;  // with --calibration: output-space sums
  std::size_t calibrated = 0;                         // targets computed with statistics
};

// The report entry of a computed target.
nlohmann::json entry_of(const Args& a, const ModelTarget& t, const TargetResult& res, const Sinks& sinks) {
  TensorFacts facts;
  facts.shape = {t.rows, t.cols};
  facts.dtype = t.dtype;
  facts.module = t.module;
  facts.bits = res.bits;
  facts.ggml = t.ggml;
  facts.candidates = res.candidates;
  facts.sq_err = res.sq_err;
  facts.seconds = res.seconds;
  nlohmann::json e = tensor_entry(a, facts, res.r, res.dq);
  if (!res.calibration.is_null()) e["calibration"] = res.calibration;
  for (const auto& s : sinks) s->annotate(e, t, res);
  return e;
}

// A result on its way to the sinks; freeing it (written, or dropped after a
// failure) returns its bytes to the reader's bound.
struct Written : TargetResult {
  Written(TensorPrefetcher& reader, const ModelTarget& t, TargetResult&& r)
      : TargetResult(std::move(r)), reader_(reader), t_(t) {}
  ~Written() {
    static_cast<TargetResult&>(*this) = TargetResult{};  // the matrices first
    reader_.release(t_);
  }
  Written(const Written&) = delete;
  Written& operator=(const Written&) = delete;

 private:
  TensorPrefetcher& reader_;
  const ModelTarget& t_;
};

// Every step of the source: targets computed and handed to the sinks on the
// writer thread, the other tensors copied through on it.
Computed run_steps(const Args& a, const Source& src, Compute& compute, const Sinks& sinks, Progress& progress,
                   std::size_t& done) {
  const std::vector<Step> steps = src.steps();
  std::vector<const ModelTarget*> order;
  for (const Step& s : steps)
    if (s.target) order.push_back(s.target);
  Computed c;
  TensorPrefetcher reader(src, order, default_resident_bound(order));
  BackgroundWriter writer;  // joined before the sinks' files are abandoned, and before reader
  for (const Step& s : steps) {
    if (!s.target) {
      writer.submit([&src, &sinks, copy = s.copy] {
        src.copy(copy,
                 [&](const std::string& name, std::size_t file, const void* data, std::uint64_t n, std::uint64_t off) {
                   for (const auto& k : sinks) k->copy(name, file, data, n, off);
                 });
      });
      continue;
    }
    const ModelTarget& t = *s.target;
    const TensorPrefetcher::Loaded in = reader.next();
    auto res = std::make_shared<Written>(reader, t, compute.run(t, in.W, in.w2));
    c.tensors[t.name] = entry_of(a, t, *res, sinks);
    c.sum_err += res->r.error();
    c.sum_qlora += res->r.qlora_error;
    if (res->calibration.contains("output_rel_err")) {
      c.out_qlora += res->out_qlora;
      c.out_free += res->out_free;
      c.out_aware += res->out_aware;
      ++c.calibrated;
    }
    writer.submit([&sinks, &compute, res = std::move(res), &t] {
      for (const auto& k : sinks) k->write(t, *res);
      compute.give_back(std::move(res->r));  // its buffers serve a later target
    });
    progress.update(++done, t.name);
    check_interrupt();
  }
  writer.finish();
  return c;
}

// A shard's files by content, for merge to check that what it joins is what
// this run wrote.
nlohmann::json shard_file_identities(const StagedOutput& out) {
  nlohmann::json files = nlohmann::json::object();
  for (const char* name : {kShardModelFile, kAdapterFile, kPackedFile})
    if (std::filesystem::exists(out.path(name))) files[name] = content_identity(out.path(name).string());
  return files;
}

void print_summary(const Args& a, const Source& src, const Compute& compute, const StagedOutput& out, const Computed& c,
                   const nlohmann::json& rep, double seconds) {
  src.print_notes();
  const double k = src.targets().empty() ? 1.0 : static_cast<double>(src.targets().size());
  std::printf("loftq %s: %s -> %s: %s, mean rel. error %.6f (QLoRA %.6f), %.1f s\n", loftq::version().c_str(),
              printable(a.input).c_str(), printable(out.dir().string()).c_str(), src.summary_count().c_str(),
              c.sum_err / k, c.sum_qlora / k, seconds);
  if (compute.budget()) compute.print_allocation(rep);
  if (c.calibrated > 0) {
    const double n = static_cast<double>(c.calibrated);
    std::printf(
        "  output rel. error on the calibration inputs (%zu targets): QLoRA %.6f, LoftQ %.6f, "
        "data-aware LoftQ %.6f\n",
        c.calibrated, c.out_qlora / n, c.out_free / n, c.out_aware / n);
  }
  std::fflush(stdout);
}

}  // namespace

int run_model(const Args& a) {
  const auto t_start = std::chrono::steady_clock::now();
  Compute compute(a);
  const std::unique_ptr<Source> src = open_source(a);
  StagedOutput out(a.output, a.overwrite ? StagedOutput::Existing::replace : StagedOutput::Existing::refuse,
                   src->input_files());
  src->plan(a);
  compute.check_targets(*src);
  check_output(a, *src);
  apply_threads(a.threads);

  Progress progress(compute.total_runs(*src), a.quiet);
  progress.update(0, "");
  std::size_t done = 0;
  compute.choose_widths(*src, progress, done);
  if (a.gguf && compute.budget()) static_cast<GgufSource&>(*src).set_formats(compute.ggml_formats());

  out.stage();  // from here a signal only raises a flag; we clean up
  const Sinks sinks = open_sinks(a, *src, out, compute.bits_of());
  const Computed c = run_steps(a, *src, compute, sinks, progress, done);
  for (const auto& k : sinks) k->commit();

  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  ReportBuilder rep(a.input);
  rep["settings"] = settings_json(a);
  rep["threads"] = loftq::thread_count(a.threads);
  src->describe(rep.json());
  if (compute.budget()) rep["bits_allocation"] = compute.allocation_json();
  if (a.gguf && compute.budget())
    static_cast<const GgufSource&>(*src).compare_llama_recipes(a, compute.ggml_measured(),
                                                               compute.ggml_plain_measured(), rep["bits_allocation"]);
  if (compute.calibrated()) rep["calibration"] = compute.calibration_json();
  rep.tensors(c.tensors);
  if (a.shard_n > 0) rep["files"] = shard_file_identities(out);
  out.write_file(kReportFile, rep.finish(total));
  for (const auto& k : sinks) k->finish(out);
  out.publish();
  if (!a.quiet) print_summary(a, *src, compute, out, c, rep.json(), total);
  return kExitOk;
}

}  // namespace loftq_cli

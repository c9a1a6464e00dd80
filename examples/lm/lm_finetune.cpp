// What users get after fine-tuning: LoRA on a quantized llama2.c model
// (stories260K), trained from each initialization with the same data, seeds
// and batches, and measured on held-out data at init and after K Adam steps.
//
//   Task 1 (recovery): KL(p_fp || p_model) on sequences sampled from the
//     full-precision model, i.e. how much of the quantization damage LoRA
//     repairs.
//   Task 2 (new behaviour): KL(p_teacher || p_model) on sequences sampled
//     from a teacher that is the full-precision model plus a random rank-4
//     update of every linear, i.e. something the base model does not do but
//     that LoRA of rank >= 4 can represent exactly, so that what a method
//     reaches shows how much of its adapter is still free.
//
// Every linear (q, k, v, o, gate, up, down) of every layer is quantized with
// NF-k (block 64) and carries a LoRA adapter (lora_alpha 16); the embedding,
// which is also the classifier, stays in full precision. Methods: LoRA on the
// full-precision model (upper bound), QLoRA (Q = q(W) with absmax scales,
// lora_B = 0, kaiming-uniform lora_A), LoftQ with the reference's settings,
// with the library's defaults, with each default alone (at 2 and 4 bits:
// scale search, SVD start, best iterate), data-aware LoftQ
// (input statistics of every linear under the full-precision model on the
// training sequences) and a 2.5-bit mixed 2/3/4-bit allocation. The
// tool_* rows take data-aware LoftQ through files and the `loftq` program,
// as a user runs it (through_tool.hpp): full statistics from
// `loftq calibrate`, and the diagonal ones of its llama.cpp imatrix.
//
// Writes summary.csv, curves.csv and one SVG per task, width and rank to
// --out (default: the current directory). Deterministic for a given --seed,
// whatever the thread count. Exit code 77 when the checkpoint is absent.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <algorithm>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "adam.hpp"
#include "common/llama2c.hpp"
#include "finetune_methods.hpp"
#include "results.hpp"
#include "through_tool.hpp"
#include "common/lm/model.hpp"

#ifndef LOFTQ_SHARED_DATA_DIR
#define LOFTQ_SHARED_DATA_DIR "../shared/data"
#endif
#ifndef LOFTQ_TOOL_PATH
#define LOFTQ_TOOL_PATH "loftq"
#endif

namespace {

using namespace lm_finetune;

struct Settings {
  std::string model = std::string(LOFTQ_SHARED_DATA_DIR) + "/stories260K.bin";
  std::string out = ".";
  std::string loftq = LOFTQ_TOOL_PATH;  // the program the tool_* rows run
  double damping = -1;                  // --damping; -1: loftq::DataAwareOptions' defaults
  bool quick = false;
  int steps = -1;  // Adam steps per task; -1: 100, or 40 with --quick
  std::uint64_t seed = 0;
  // One rate per task, the same for every method. Recovery starts next to
  // its optimum (LoftQ's init is already close to W), so it gets the middle of
  // the usual LoRA range; the shift must be learned from scratch.
  double lr = 3e-4, shift_lr = 1e-3;
  int shift_rank = 4;
  double shift_size = 0.1;
  int batch = 16;
  std::vector<int> bits = {2, 3, 4};
  std::vector<int> ranks = {8, 16};
  int n_train = 64, n_test = 32, seq_len = 40;
  std::vector<std::string> methods;  // empty: all
};

void usage(const char* argv0) {
  std::printf(
      "usage: %s [--model PATH] [--quick] [--steps K] [--seed N] [--lr X] [--shift-lr X] [--shift-rank K]\n"
      "          [--shift-size X] [--methods A,B] [--bits B,..] [--ranks R,..] [--loftq PATH] [--damping X]\n"
      "          [--out DIR]\n"
      "  --model PATH  llama2.c checkpoint (default %s/stories260K.bin)\n"
      "  --quick       2 and 4 bits, rank 8, smaller sets, no leave-one-out rows: under a minute on 2 cores\n"
      "  --steps K     Adam steps per task (default 100; 40 with --quick)\n"
      "  --seed N      data, sampling and lora_A seed (default 0)\n"
      "  --lr X        Adam learning rate on the recovery task, the same for every method (default 3e-4)\n"
      "  --shift-lr X  Adam learning rate on the shift task (default 1e-3)\n"
      "  --shift-rank K  rank of the teacher's update of every linear (default 4)\n"
      "  --shift-size X  its Frobenius norm relative to the linear's (default 0.1)\n"
      "  --methods A,B  run only these methods (default: all; QLoRA is the tables' reference)\n"
      "  --bits B,..   quantization widths, from 2, 3, 4 (default 2,3,4; 2,4 with --quick)\n"
      "  --ranks R,..  LoRA ranks (default 8,16; 8 with --quick)\n"
      "  --loftq PATH  the loftq program the tool_* rows run (default %s); rows skipped when it is absent\n"
      "  --damping X   the data-aware rows' lambda in H + lambda mean(diag H) I (default %g with full\n"
      "                statistics, %g with diagonal ones)\n"
      "  --out DIR     where summary.csv, curves.csv and the SVGs go (default .)\n",
      argv0, LOFTQ_SHARED_DATA_DIR, LOFTQ_TOOL_PATH, loftq::DataAwareOptions{}.damping,
      loftq::DataAwareOptions{}.diagonal_damping);
}

// A comma-separated list of integers, each in lo..hi.
std::vector<int> int_list(const std::string& opt, const std::string& list, int lo, int hi) {
  std::vector<int> out;
  for (std::size_t p = 0; p <= list.size();) {
    const std::size_t e = std::min(list.find(',', p), list.size());
    const std::string item = list.substr(p, e - p);
    std::size_t used = 0;
    int v = 0;
    try {
      v = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v < lo || v > hi)
      throw std::runtime_error(opt + ": '" + item + "' is not an integer in " + std::to_string(lo) + ".." +
                               std::to_string(hi));
    out.push_back(v);
    p = e + 1;
  }
  return out;
}

bool parse(int argc, char** argv, Settings& s) {
  std::vector<int> bits, ranks;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--model")
      s.model = value();
    else if (a == "--out")
      s.out = value();
    else if (a == "--quick")
      s.quick = true;
    else if (a == "--steps")
      s.steps = std::stoi(value());
    else if (a == "--seed")
      s.seed = std::stoull(value());
    else if (a == "--lr")
      s.lr = std::stod(value());
    else if (a == "--shift-lr")
      s.shift_lr = std::stod(value());
    else if (a == "--shift-rank")
      s.shift_rank = std::stoi(value());
    else if (a == "--shift-size")
      s.shift_size = std::stod(value());
    else if (a == "--bits")
      bits = int_list(a, value(), 2, 4);
    else if (a == "--ranks")
      ranks = int_list(a, value(), 1, 64);
    else if (a == "--loftq")
      s.loftq = value();
    else if (a == "--damping")
      s.damping = std::stod(value());
    else if (a == "--methods") {
      std::string list = value();
      for (std::size_t p = 0; p <= list.size();) {
        const std::size_t e = std::min(list.find(',', p), list.size());
        const std::string name = list.substr(p, e - p);
        const auto& specs = method_specs();
        if (std::none_of(specs.begin(), specs.end(), [&](const MethodSpec& m) { return name == m.name; }))
          throw std::runtime_error("--methods: unknown method '" + name + "'");
        s.methods.push_back(name);
        p = e + 1;
      }
    } else if (a == "--help" || a == "-h")
      return false;
    else
      throw std::runtime_error("unknown option " + a);
  }
  if (s.quick) {
    s.bits = {2, 4};
    s.ranks = {8};
    s.n_train = 32;
    s.n_test = 16;
    s.seq_len = 32;
  }
  if (!bits.empty()) s.bits = bits;
  if (!ranks.empty()) s.ranks = ranks;
  if (s.steps < 0) s.steps = s.quick ? 40 : 100;
  if (s.steps < 1 || s.steps > 100000 || !(s.lr > 0) || !(s.shift_lr > 0))
    throw std::runtime_error("--steps must be in 1..100000, --lr and --shift-lr > 0");
  if (!(s.damping == -1 || (s.damping >= 0 && s.damping <= 1000)))
    throw std::runtime_error("--damping must be in 0..1000");
  if (s.shift_rank < 1 || s.shift_rank > 64 || !(s.shift_size >= 0 && s.shift_size <= 10))
    throw std::runtime_error("--shift-rank must be in 1..64 and --shift-size in 0..10");
  return true;
}

loftq::DataAwareOptions data_aware_options(const Settings& s) {
  loftq::DataAwareOptions da;
  if (s.damping >= 0) da.damping = da.diagonal_damping = s.damping;
  return da;
}

// The batches of every step, drawn once: each epoch is a seeded shuffle of
// the training set, so every method sees the same examples in the same order.
std::vector<std::vector<std::size_t>> make_schedule(std::size_t n, int batch, int steps, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::size_t> perm(n);
  std::vector<std::vector<std::size_t>> out;
  std::size_t pos = n;
  for (int s = 0; s < steps; ++s) {
    std::vector<std::size_t> b;
    for (int i = 0; i < batch; ++i) {
      if (pos == n) {
        std::iota(perm.begin(), perm.end(), std::size_t{0});
        std::shuffle(perm.begin(), perm.end(), rng);
        pos = 0;
      }
      b.push_back(perm[pos++]);
    }
    out.push_back(std::move(b));
  }
  return out;
}

RunResult train(const Method& m, const std::vector<ExampleF>& train_set, const std::vector<ExampleF>& test_set,
                lm::Loss loss, const std::vector<std::vector<std::size_t>>& schedule, double lr) {
  LoraF lora = m.lora, grad;
  lm::Adam<float> opt(lr);
  RunResult r;
  auto eval = [&](int step) {
    const double v = lm::loss_and_grad<float>(m.weights, lora, test_set, loss, nullptr);
    r.curve.step.push_back(step);
    r.curve.value.push_back(v);
    return v;
  };
  r.init = eval(0);
  const int steps = static_cast<int>(schedule.size()), every = std::max(1, steps / 10);
  std::vector<ExampleF> batch;
  for (int s = 0; s < steps; ++s) {
    batch.clear();
    for (std::size_t i : schedule[static_cast<std::size_t>(s)]) batch.push_back(train_set[i]);
    lm::loss_and_grad<float>(m.weights, lora, batch, loss, &grad);
    opt.step(lora, grad);
    if ((s + 1) % every == 0 || s + 1 == steps) r.final = eval(s + 1);
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  try {
    if (!parse(argc, argv, s)) {
      usage(argv[0]);
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lm_finetune: %s\n", e.what());
    usage(argv[0]);
    return 2;
  }
  if (!std::filesystem::exists(s.model)) {
    std::printf("lm_finetune: %s is absent; nothing to do\n", s.model.c_str());
    return 77;
  }
  try {
    const auto t0 = std::chrono::steady_clock::now();
    const Model fp = lm::read_checkpoint(s.model);
    std::mt19937_64 rng(s.seed);
    const auto train_seqs = sample_sequences(fp, s.n_train, s.seq_len, rng);
    const auto test_seqs = sample_sequences(fp, s.n_test, s.seq_len, rng);
    const auto kl_train = distillation_examples(fp, train_seqs), kl_test = distillation_examples(fp, test_seqs);
    const Model teacher = shifted_teacher(fp, s.shift_rank, s.shift_size, rng);
    const auto shift_train_seqs = sample_sequences(teacher, s.n_train, s.seq_len, rng);
    const auto shift_test_seqs = sample_sequences(teacher, s.n_test, s.seq_len, rng);
    const auto shift_train = distillation_examples(teacher, shift_train_seqs);
    const auto shift_test = distillation_examples(teacher, shift_test_seqs);
    // How far the teacher is from the base (the shift task's loss for the
    // full-precision model before fine-tuning), and whether it still makes
    // confident predictions rather than near-uniform ones.
    const double shift_gap = lm::loss_and_grad<float>(fp, lm::make_lora<float>(fp.config, 1, kLoraAlpha, {}),
                                                      shift_test, lm::Loss::kl, nullptr);
    const auto stats = lm::collect_statistics(fp, train_seqs);  // full X^T X of every linear input
    // The tool_* rows: the model and training sequences through files and
    // `loftq calibrate`, once; skipped with a note when the program is absent
    // unless --methods asked for them.
    std::unique_ptr<ThroughTool> tool;
    bool want_tool = false;
    for (const auto& spec : method_specs())
      if (through_tool(spec.init) &&
          (s.methods.empty() || std::find(s.methods.begin(), s.methods.end(), spec.name) != s.methods.end()))
        want_tool = true;
    if (want_tool && access(s.loftq.c_str(), X_OK) != 0) {
      if (!s.methods.empty()) throw std::runtime_error("--loftq " + s.loftq + ": not an executable program");
      std::printf("lm_finetune: %s is absent; the tool_* rows are skipped\n", s.loftq.c_str());
      want_tool = false;
    }
    if (want_tool)
      tool = std::make_unique<ThroughTool>(s.loftq, (std::filesystem::path(s.out) / "through_tool").string(), fp,
                                           train_seqs);
    const auto schedule = make_schedule(static_cast<std::size_t>(s.n_train), s.batch, s.steps, s.seed + 1);
    const auto shift_schedule = make_schedule(static_cast<std::size_t>(s.n_train), s.batch, s.steps, s.seed + 2);
    // The checkpoint's file name only: the output stays the same wherever the data directory is.
    std::printf(
        "lm_finetune: %s, lora_alpha %g, seed %llu\n"
        "  both tasks: %d train / %d held-out sampled sequences of %d tokens, batch %d, %d Adam steps\n"
        "  recovery: lr %g\n"
        "  shift: a rank-%d update of relative size %g on every linear, lr %g; the base's KL to the teacher\n"
        "    is %.3f, and their mean entropies are %.3f (teacher) and %.3f (base) nats/token\n",
        std::filesystem::path(s.model).filename().c_str(), kLoraAlpha, static_cast<unsigned long long>(s.seed),
        s.n_train, s.n_test, s.seq_len, s.batch, s.steps, s.lr, s.shift_rank, s.shift_size, s.shift_lr, shift_gap,
        mean_entropy(shift_test), mean_entropy(kl_test));

    std::vector<Row> rows;
    for (int rank : s.ranks) {
      std::vector<std::pair<const MethodSpec*, int>> todo;
      for (const auto& spec : method_specs()) {
        if (!s.methods.empty() && std::find(s.methods.begin(), s.methods.end(), spec.name) == s.methods.end()) continue;
        if (through_tool(spec.init) && !tool) continue;
        if (spec.init == Init::full_precision || spec.init == Init::mixed)
          todo.push_back({&spec, spec.init == Init::mixed ? 0 : 32});
        else
          for (int b : s.bits) {
            // The one-default-at-a-time ablation runs at the widths the
            // targets are set at (2 and 4 bits), to keep the default run short.
            // The leave-one-out rows are the evidence for the defaults, which
            // the full run gives; --quick (the test) keeps the add-one rows.
            const bool leave_one_out = spec.init == Init::no_scale_search || spec.init == Init::no_svd_start ||
                                       spec.init == Init::no_keep_best;
            if (leave_one_out && s.quick) continue;
            if (!is_ablation(spec.init) || b != 3) todo.push_back({&spec, b});
          }
      }
      for (const auto& [spec, b] : todo) {
        const int width = b == 0 || b == 32 ? 2 : b;
        Row row;
        Method m;
        if (through_tool(spec->init)) {
          m = tool->run(spec->name, spec->init == Init::tool_imatrix, width, rank, s.damping);
          const auto& specs = method_specs();
          const auto da =
              std::find_if(specs.begin(), specs.end(), [](const MethodSpec& x) { return x.init == Init::data_aware; });
          if (spec->init == Init::tool_data_aware) {
            const InitDiff d =
                compare_inits(m, make_method(*da, width, rank, fp, stats, s.seed, data_aware_options(s)));
            row.init_vs_data_aware = d.same_order;
            row.qk_vs_data_aware = d.rotary;
          }
        } else {
          m = make_method(*spec, width, rank, fp, stats, s.seed, data_aware_options(s));
        }
        row.method = m.name;
        row.bits_group = b;
        row.bits = m.bits;
        row.rank = rank;
        row.weight_error = m.weight_error;
        row.task[0] = train(m, kl_train, kl_test, lm::Loss::kl, schedule, s.lr);
        row.task[1] = train(m, shift_train, shift_test, lm::Loss::kl, shift_schedule, s.shift_lr);
        std::fprintf(stderr, "  r%-2d %-4s %-20s KL %.4f -> %.4f   shift %.4f -> %.4f   (%.0f s)\n", rank,
                     b == 0    ? "mix"
                     : b == 32 ? "fp"
                               : std::to_string(b).c_str(),
                     m.name.c_str(), row.task[0].init, row.task[0].final, row.task[1].init, row.task[1].final,
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        if (row.init_vs_data_aware >= 0)
          std::fprintf(stderr,
                       "       init vs in-process data_aware (Q + sBA, worst linear, relative): v/o/gate/up/down %.1e, "
                       "q/k %.1e\n",
                       row.init_vs_data_aware, row.qk_vs_data_aware);
        rows.push_back(std::move(row));
      }
    }
    print_tables(rows, s.steps);
    print_targets(rows, s.ranks, s.bits);
    write_outputs(rows, s.out, s.bits, s.ranks);
    std::printf("\nwall time %.1f s; wrote summary.csv, curves.csv and SVGs to %s\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), s.out.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lm_finetune: %s\n", e.what());
    return 1;
  }
  return 0;
}

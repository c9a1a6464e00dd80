#pragma once
// Data-aware LoftQ the way a user runs it: through files and the `loftq`
// program rather than the library in-process.
//
//   1. the full-precision model is written as a Hugging Face checkpoint
//      (q_proj and k_proj rows in transformers' rotary order) and the
//      training sequences as an int32 .npy;
//   2. `loftq calibrate` computes the input statistics of every linear from
//      them (statistics.safetensors, and llama.cpp's imatrix.gguf);
//   3. `loftq model --calibration FILE` writes the base and the PEFT adapter;
//   4. both are read back (the rotary order undone) as a Method to fine-tune.
//
// The statistics equal the in-process ones bit for bit (float64 in the
// file), and so do the initializations of v, o, gate, up and down. q_proj
// and k_proj are computed on row-permuted matrices: the quantization is the
// same (each 64-wide row is one block), the truncated SVD of a row-permuted
// matrix equal to rounding.

#include <loftq/io/safetensors.hpp>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "common/lm/load.hpp"
#include "common/lm/save.hpp"
#include "finetune_methods.hpp"

extern char** environ;

namespace lm_finetune {

// Hugging Face module paths of the seven linears, in lm::kQ..kDown order.
inline const char* hf_module(int kind) {
  static const char* const m[lm::kKinds] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                            "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                            "mlp.down_proj"};
  return m[kind];
}

// Runs a program to completion; anything but exit 0 throws.
inline void run_program(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ);
  if (rc != 0) throw std::runtime_error(args[0] + ": cannot run: " + std::strerror(rc));
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) throw std::runtime_error(args[0] + ": waitpid failed");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::string cmd;
    for (const auto& a : args) cmd += (cmd.empty() ? "" : " ") + a;
    throw std::runtime_error("'" + cmd + "' failed (status " + std::to_string(status) + ")");
  }
}

class ThroughTool {
 public:
  // Writes the model and tokens into `work` (created; removed by the
  // destructor) and runs `loftq calibrate` once for all rows.
  ThroughTool(std::string loftq, const std::string& work, const Model& fp,
              const std::vector<std::vector<int>>& train_seqs)
      : loftq_(std::move(loftq)), work_(work), fp_(fp) {
    namespace fs = std::filesystem;
    fs::remove_all(work_);
    fs::create_directories(work_ / "fp");
    lm::write_hf_checkpoint(fp, (work_ / "fp").string());
    lm::write_tokens_npy((work_ / "train.npy").string(), train_seqs);
    run_program({loftq_, "calibrate", "--input", (work_ / "fp").string(), "--tokens", (work_ / "train.npy").string(),
                 "--output", (work_ / "stats").string(), "--imatrix", "--quiet"});
  }
  ThroughTool(const ThroughTool&) = delete;
  ThroughTool& operator=(const ThroughTool&) = delete;
  ~ThroughTool() {
    std::error_code ec;
    std::filesystem::remove_all(work_, ec);
  }

  // `loftq model` at `bits` (NF, block 64) and `rank`, lora_alpha
  // kLoraAlpha, with statistics.safetensors (full) or imatrix.gguf
  // (diagonal), read back as a Method.
  // damping < 0: the tool's default.
  Method run(const std::string& name, bool imatrix, int bits, int rank, double damping) const {
    namespace fs = std::filesystem;
    const fs::path out = work_ / (name + "_b" + std::to_string(bits) + "_r" + std::to_string(rank));
    const fs::path stats = work_ / "stats" / (imatrix ? "imatrix.gguf" : "statistics.safetensors");
    std::vector<std::string> args = {loftq_,          "model",
                                     "--input",       (work_ / "fp").string(),
                                     "--output",      out.string(),
                                     "--bits",        std::to_string(bits),
                                     "--rank",        std::to_string(rank),
                                     "--lora-alpha",  number(kLoraAlpha),
                                     "--calibration", stats.string(),
                                     "--quiet"};
    if (damping >= 0) args.insert(args.end(), {"--calibration-damping", number(damping)});
    run_program(args);
    Method m = read_back(name, out.string(), bits, rank);
    fs::remove_all(out);
    return m;
  }

 private:
  // Exact in decimal: %.17g round-trips a double.
  static std::string number(double x) {
    char b[40];
    std::snprintf(b, sizeof b, "%.17g", x);
    return b;
  }

  Method read_back(const std::string& name, const std::string& dir, int bits, int rank) const {
    const lm::Config& c = fp_.config;
    Method m;
    m.name = name;
    m.rank = rank;
    m.bits = bits;
    m.weights = lm::read_hf_checkpoint(dir);  // the base; q and k back in the interleaved order
    const std::array<bool, lm::kKinds> all = {true, true, true, true, true, true, true};
    m.lora = lm::make_lora<float>(c, rank, kLoraAlpha, all);
    const loftq::io::SafetensorsFile ad(dir + "/adapter_model.safetensors");
    double err2 = 0, norm2 = 0;
    for (int l = 0; l < c.n_layers; ++l)
      for (int k = 0; k < lm::kKinds; ++k) {
        const std::string p = "base_model.model.model.layers." + std::to_string(l) + "." + hf_module(k) + ".lora_";
        lm::Adapter<float>& a = m.lora.layers[static_cast<std::size_t>(l)][k];
        a.A = ad.read_matrix(ad.at(p + "A.weight"));
        const auto B = ad.read_matrix(ad.at(p + "B.weight"));
        // lora_B's rows are the output rows: undo the rotary order as the base's.
        a.B = k == lm::kQ   ? lm::detail::unpermute_rotary(B, c.n_heads)
              : k == lm::kK ? lm::detail::unpermute_rotary(B, c.n_kv_heads)
                            : lm::Mat<float>(B);
        if (a.A.rows() != rank || a.B.cols() != rank)
          throw std::runtime_error(dir + ": adapter of layer " + std::to_string(l) + " is not of rank " +
                                   std::to_string(rank));
        const lm::Mat<float>& W = fp_.layers[static_cast<std::size_t>(l)].W[k];
        const lm::Mat<float>& Q = m.weights.layers[static_cast<std::size_t>(l)].W[k];
        err2 += (W - Q - a.scaling * a.B * a.A).cast<double>().squaredNorm();
        norm2 += W.cast<double>().squaredNorm();
      }
    m.weight_error = std::sqrt(err2 / norm2);
    return m;
  }

  std::string loftq_;
  std::filesystem::path work_;
  const Model& fp_;
};

// How far one initialization is from another: the largest relative
// difference, over the linears, of the effective weights Q + s B A, and the
// number of linears whose Q is bit-identical.
struct InitDiff {
  double max_rel = 0;
  int identical_q = 0, linears = 0;
};

inline InitDiff compare_inits(const Method& a, const Method& b) {
  InitDiff d;
  for (std::size_t l = 0; l < a.weights.layers.size(); ++l)
    for (int k = 0; k < lm::kKinds; ++k) {
      const lm::Mat<float>&Qa = a.weights.layers[l].W[k], &Qb = b.weights.layers[l].W[k];
      const lm::Adapter<float>&x = a.lora.layers[l][k], &y = b.lora.layers[l][k];
      const Eigen::MatrixXd ea = (Qa + x.scaling * x.B * x.A).cast<double>();
      const Eigen::MatrixXd eb = (Qb + y.scaling * y.B * y.A).cast<double>();
      d.max_rel = std::max(d.max_rel, (ea - eb).norm() / eb.norm());
      d.identical_q += Qa == Qb ? 1 : 0;
      ++d.linears;
    }
  return d;
}

}  // namespace lm_finetune

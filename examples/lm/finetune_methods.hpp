#pragma once
// Data and initializations for the lm_finetune example: held-out and training
// sets drawn from the full-precision model itself, and one (Q, lora_A,
// lora_B) per linear for every initialization method compared.

#include <loftq/loftq.hpp>

#include <Eigen/QR>
#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "common/lm/calibrate.hpp"
#include "common/lm/model.hpp"

namespace lm_finetune {

using lm::Mat;
using Model = lm::Weights<float>;
using LoraF = lm::Lora<float>;
using ExampleF = lm::Example<float>;

constexpr int kBos = 1;
constexpr double kLoraAlpha = 16;

// Ancestral samples at temperature 1, all sequences advanced together so
// each step is one batched forward pass. Draws happen in sequence order, so
// the samples depend on the seed only.
inline std::vector<std::vector<int>> sample_sequences(const Model& w, int n, int T, std::mt19937_64& rng) {
  std::vector<std::vector<int>> seqs(static_cast<std::size_t>(n), std::vector<int>{kBos});
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int t = 1; t < T; ++t) {
    const auto logits = lm::forward_logits<float>(w, nullptr, seqs);
    for (std::size_t b = 0; b < seqs.size(); ++b) {
      const Mat<float> p = lm::softmax_rows<float>(logits[b].bottomRows(1));
      const double x = u(rng);
      double acc = 0;
      int pick = static_cast<int>(p.cols()) - 1;
      for (Eigen::Index j = 0; j < p.cols(); ++j) {
        acc += p(0, j);
        if (x < acc) {
          pick = static_cast<int>(j);
          break;
        }
      }
      seqs[b].push_back(pick);
    }
  }
  return seqs;
}

// Match a teacher's next-token distributions at every position of the given
// sequences (task 1: the full-precision model; task 2: a shifted teacher).
inline std::vector<ExampleF> distillation_examples(const Model& fp, const std::vector<std::vector<int>>& seqs) {
  const auto logits = lm::forward_logits<float>(fp, nullptr, seqs);
  std::vector<ExampleF> out(seqs.size());
  for (std::size_t b = 0; b < seqs.size(); ++b) {
    out[b].tokens = seqs[b];
    out[b].teacher = lm::softmax_rows(logits[b]);
    out[b].mask.assign(seqs[b].size(), 1);
  }
  return out;
}

// Task 2, a new behaviour within the adapter's reach: the teacher is the
// full-precision model with a random rank-`rank` update added to every
// linear, ||dW||_F = size * ||W||_F, in directions drawn independently of W.
// With rank <= the adapters' rank, LoRA on the full-precision model can match
// the teacher exactly, so what a method reaches measures how much of its
// adapter is still free for something new once the quantization error has
// taken its share.
inline Model shifted_teacher(const Model& fp, int rank, double size, std::mt19937_64& rng) {
  std::normal_distribution<double> g(0.0, 1.0);
  auto orthonormal = [&](Eigen::Index rows) {
    Eigen::MatrixXd X(rows, rank);
    for (Eigen::Index j = 0; j < X.cols(); ++j)
      for (Eigen::Index i = 0; i < X.rows(); ++i) X(i, j) = g(rng);
    return Eigen::MatrixXd(Eigen::HouseholderQR<Eigen::MatrixXd>(X).householderQ() *
                           Eigen::MatrixXd::Identity(rows, rank));
  };
  for (const auto& layer : fp.layers)
    for (int k = 0; k < lm::kKinds; ++k)
      if (rank < 1 || rank > std::min(layer.W[k].rows(), layer.W[k].cols()))
        throw loftq::Error(loftq::Errc::invalid_argument, "shifted_teacher: rank " + std::to_string(rank) +
                                                              " does not fit a " + std::to_string(layer.W[k].rows()) +
                                                              "x" + std::to_string(layer.W[k].cols()) + " linear");
  Model t = fp;
  for (auto& layer : t.layers)
    for (int k = 0; k < lm::kKinds; ++k) {
      Mat<float>& W = layer.W[k];
      const Eigen::MatrixXd U = orthonormal(W.rows()), V = orthonormal(W.cols());
      const double c = size * W.cast<double>().norm() / std::sqrt(static_cast<double>(rank));
      W += (c * U * V.transpose()).cast<float>();
    }
  return t;
}

// The teacher's mean entropy per position, in nats.
inline double mean_entropy(const std::vector<ExampleF>& examples) {
  double h = 0;
  double positions = 0;
  for (const auto& e : examples) {
    const Eigen::ArrayXXd p = e.teacher.cast<double>().array();
    h -= (p > 0).select(p * p.log(), 0.0).sum();
    positions += static_cast<double>(p.rows());
  }
  return positions > 0 ? h / positions : 0;
}

enum class Init {
  full_precision,
  qlora,
  reference,
  defaults,
  scale_search,
  svd_start,
  keep_best,  // the reference plus one default
  no_scale_search,
  no_svd_start,
  no_keep_best,  // the defaults minus one
  data_aware,
  mixed,
  tool_data_aware,  // data_aware through `loftq calibrate` and `loftq model --calibration` (through_tool.hpp)
  tool_imatrix      // the same with the diagonal statistics of llama.cpp's imatrix.gguf
};

// The rows that run the `loftq` program rather than the library.
inline bool through_tool(Init i) { return i == Init::tool_data_aware || i == Init::tool_imatrix; }

// The one-default-at-a-time rows (either direction).
inline bool is_ablation(Init i) {
  return i == Init::scale_search || i == Init::svd_start || i == Init::keep_best || i == Init::no_scale_search ||
         i == Init::no_svd_start || i == Init::no_keep_best;
}

struct MethodSpec {
  Init init;
  const char* name;
};

inline const std::vector<MethodSpec>& method_specs() {
  static const std::vector<MethodSpec> m = {{Init::full_precision, "fp_lora"},
                                            {Init::qlora, "qlora"},
                                            {Init::reference, "loftq_ref"},
                                            {Init::defaults, "loftq_default"},
                                            {Init::scale_search, "ref+scale_search"},
                                            {Init::svd_start, "ref+svd_start"},
                                            {Init::keep_best, "ref+keep_best"},
                                            {Init::no_scale_search, "default-scale_search"},
                                            {Init::no_svd_start, "default-svd_start"},
                                            {Init::no_keep_best, "default-keep_best"},
                                            {Init::data_aware, "data_aware"},
                                            {Init::mixed, "mixed_2.5"},
                                            {Init::tool_data_aware, "tool_data_aware"},
                                            {Init::tool_imatrix, "tool_imatrix"}};
  return m;
}

// The reference's settings (PEFT's LoftQ): T = 5, absmax scales, zero start,
// last iterate, exact SVD. The single-change variants add one default to
// it, or take one away from the defaults.
inline loftq::Options options_for(Init init, int rank) {
  loftq::Options o;
  o.rank = rank;
  // These matrices are at most 172 x 64: splitting them over threads costs
  // more in fork/join (and in spinning when the cores are shared) than it
  // saves. The results do not depend on the thread count either way.
  o.threads = 1;
  o.svd.threads = 1;
  if (init == Init::defaults || init == Init::data_aware || init == Init::mixed) return o;
  if (init == Init::no_scale_search || init == Init::no_svd_start || init == Init::no_keep_best) {
    o.scale_search = init != Init::no_scale_search;
    if (init == Init::no_svd_start) o.start = loftq::Start::zero;
    o.keep_best = init != Init::no_keep_best;
    return o;
  }
  o.iterations = 5;
  o.scale_search = init == Init::scale_search;
  o.start = init == Init::svd_start ? loftq::Start::svd : loftq::Start::zero;
  o.keep_best = init == Init::keep_best;
  o.svd.method = loftq::SVDMethod::exact;
  return o;
}

inline loftq::Quantizer nf(int bits) { return loftq::Quantizer(loftq::Quantizer::Kind::normal_float, bits); }

struct Method {
  std::string name;
  double bits = 0;  // average code bits per adapted weight; 32 for the unquantized base
  int rank = 0;
  Model weights;  // base weights with each adapted linear replaced by its Q
  LoraF lora;
  double weight_error = 0;  // ||W - Q - s B A|| / ||W|| over all adapted matrices
};

// Builds one method's model. `seed` seeds the random lora_A of QLoRA-style
// inits (different per matrix, the same across methods).
inline Method make_method(const MethodSpec& spec, int bits, int rank, const Model& fp, const lm::Calibration& stats,
                          std::uint64_t seed, const loftq::DataAwareOptions& da = {}) {
  const lm::Config& c = fp.config;
  const std::array<bool, lm::kKinds> all = {true, true, true, true, true, true, true};
  Method m;
  m.name = spec.name;
  m.rank = rank;
  m.weights = fp;
  m.lora = lm::make_lora<float>(c, rank, kLoraAlpha, all);
  std::vector<int> widths(static_cast<std::size_t>(c.n_layers * lm::kKinds), bits);
  if (spec.init == Init::mixed) {
    std::vector<loftq::MatrixErrors> errs;
    for (const auto& layer : fp.layers)
      for (int k = 0; k < lm::kKinds; ++k)
        errs.push_back(loftq::measure_errors(layer.W[k], nf(2), {2, 3, 4}, options_for(spec.init, rank)));
    widths = loftq::allocate_bits(errs, {2, 3, 4}, 2.5).bits;
  }
  double err2 = 0, norm2 = 0, bit_sum = 0, numel = 0;
  for (int l = 0; l < c.n_layers; ++l)
    for (int k = 0; k < lm::kKinds; ++k) {
      const std::size_t idx = static_cast<std::size_t>(l * lm::kKinds + k);
      const Mat<float>& W = fp.layers[static_cast<std::size_t>(l)].W[k];
      lm::Adapter<float>& ad = m.lora.layers[static_cast<std::size_t>(l)][k];
      Mat<float>& Q = m.weights.layers[static_cast<std::size_t>(l)].W[k];
      const int b = widths[idx];
      loftq::Options o = options_for(spec.init, rank);
      if (spec.init == Init::full_precision || spec.init == Init::qlora) {
        // PEFT's init: lora_B = 0, lora_A ~ U(-1/sqrt(in), 1/sqrt(in)), which
        // qlora_init draws into B^T.
        o.svd.seed = seed * 1000003u + idx;
        const auto r = loftq::qlora_init(W, nf(spec.init == Init::qlora ? b : 4), o);
        if (spec.init == Init::qlora) Q = r.Q;
        ad.A = r.B.transpose();
        ad.B.setZero();
      } else {
        const auto r = spec.init == Init::data_aware ? loftq::initialize(W, nf(b), stats.at(l, k), o, da)
                                                     : loftq::initialize(W, nf(b), o);
        const auto p = loftq::to_peft(r, kLoraAlpha);
        Q = r.Q;
        ad.A = p.lora_A;
        ad.B = p.lora_B;
      }
      const Mat<float> approx = Q + ad.scaling * ad.B * ad.A;
      err2 += (W - approx).cast<double>().squaredNorm();
      norm2 += W.cast<double>().squaredNorm();
      bit_sum += static_cast<double>(b) * static_cast<double>(W.size());
      numel += static_cast<double>(W.size());
    }
  m.bits = spec.init == Init::full_precision ? 32 : bit_sum / numel;
  m.weight_error = std::sqrt(err2 / norm2);
  return m;
}

}  // namespace lm_finetune

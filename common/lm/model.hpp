#pragma once
// A llama2.c-format language model with PEFT-style LoRA adapters on any of
// its seven linear kinds, and a hand-written backward pass for the adapters
// (base weights frozen). Templated on the scalar so gradients can be checked
// in double.
//
// Determinism: sequences of a batch are independent, so they are spread over
// OpenMP threads (dynamically, which keeps both cores busy when another
// process takes one for a while); each sequence is computed serially into its
// own gradient buffer, and the buffers and losses are summed in sequence
// order afterwards, so no result depends on which thread ran what. Eigen's own threading is held at 1 during a call
// (its GEMM blocking, and so its rounding, depends on the thread count). The
// results are therefore bit-identical for any number of threads.

#include <loftq/error.hpp>
#include <loftq/threads.hpp>

#include <Eigen/Core>
#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/llama2c.hpp"
#include "common/lm/instances.hpp"
#include "common/lm/layers.hpp"

namespace lm {

// Adapters per layer and kind; an inactive Adapter (empty A) is no LoRA.
template <class S>
struct Lora {
  std::vector<std::array<Adapter<S>, kKinds>> layers;

  // Same shapes, all zeros: gradient and optimizer-state buffers.
  Lora zeros_like() const {
    Lora z;
    z.layers.resize(layers.size());
    for (std::size_t l = 0; l < layers.size(); ++l)
      for (int k = 0; k < kKinds; ++k) {
        const Adapter<S>& a = layers[l][k];
        Adapter<S>& b = z.layers[l][k];
        b.scaling = a.scaling;
        if (!a.active()) continue;
        b.A = Mat<S>::Zero(a.A.rows(), a.A.cols());
        b.B = Mat<S>::Zero(a.B.rows(), a.B.cols());
      }
    return z;
  }

  template <class F>
  void for_each(Lora& other, F&& f) {
    for (std::size_t l = 0; l < layers.size(); ++l)
      for (int k = 0; k < kKinds; ++k)
        if (layers[l][k].active()) {
          f(layers[l][k].A, other.layers[l][k].A);
          f(layers[l][k].B, other.layers[l][k].B);
        }
  }
};

// Adapters of rank r on the chosen kinds, A and B zero, scaling alpha / r.
template <class S>
Lora<S> make_lora(const Config& c, int rank, double lora_alpha, const std::array<bool, kKinds>& targets) {
  if (rank < 1) throw loftq::Error(loftq::Errc::invalid_argument, "make_lora: rank must be >= 1");
  Lora<S> lora;
  lora.layers.resize(static_cast<std::size_t>(c.n_layers));
  for (auto& layer : lora.layers)
    for (int k = 0; k < kKinds; ++k) {
      if (!targets[k]) continue;
      const auto shape = kind_shape(c, k);
      layer[k].A = Mat<S>::Zero(rank, shape[1]);
      layer[k].B = Mat<S>::Zero(shape[0], rank);
      layer[k].scaling = static_cast<S>(lora_alpha / rank);
    }
  return lora;
}

template <class S>
struct LayerActs {
  Mat<S> x_in, xn1, q, k, v, att_out, x_mid, xn2, h1, h3, hh;  // q and k after rotation
  Vec<S> rstd1, rstd2;
  std::vector<Mat<S>> Pt;        // attention probabilities per head, transposed (key x query)
  std::array<Mat<S>, kKinds> u;  // x A^T of each adapted linear
};

template <class S>
struct Acts {
  std::vector<LayerActs<S>> layers;
  Mat<S> x_final, xn_final, logits;  // logits: T x vocab, next-token logits at each position
  Vec<S> rstd_final;
};

using loftq::EigenSerialScope;  // Eigen held serial: the same bits for any thread count

// Base weights are replaceable (e.g. by a quantized Q), so their shapes are
// checked on every call rather than trusted from the reader.
template <class S>
void check_weights(const Weights<S>& w) {
  const Config& c = w.config;
  auto fail = [](const std::string& what) { throw loftq::Error(loftq::Errc::invalid_argument, "weights: " + what); };
  if (w.layers.size() != static_cast<std::size_t>(c.n_layers)) fail("wrong number of layers");
  if (w.embedding.rows() != c.vocab_size || w.embedding.cols() != c.dim) fail("embedding is not vocab_size x dim");
  if (!c.shared_classifier && (w.classifier.rows() != c.vocab_size || w.classifier.cols() != c.dim))
    fail("classifier is not vocab_size x dim");
  if (w.rms_final.size() != c.dim) fail("rms_final has the wrong length");
  for (const auto& l : w.layers) {
    if (l.rms_att.size() != c.dim || l.rms_ffn.size() != c.dim) fail("an RMSNorm weight has the wrong length");
    for (int k = 0; k < kKinds; ++k) {
      const auto shape = kind_shape(c, k);
      if (l.W[k].rows() != shape[0] || l.W[k].cols() != shape[1])
        fail(std::string(kind_name(k)) + " has the wrong shape");
    }
  }
}

template <class S>
void check_lora(const Config& c, const Lora<S>* lora) {
  if (!lora) return;
  if (lora->layers.size() != static_cast<std::size_t>(c.n_layers))
    throw loftq::Error(loftq::Errc::invalid_argument, "LoRA has the wrong number of layers");
  for (const auto& layer : lora->layers)
    for (int k = 0; k < kKinds; ++k) {
      const Adapter<S>& a = layer[k];
      if (!a.active()) continue;
      const auto shape = kind_shape(c, k);
      if (a.A.cols() != shape[1] || a.B.rows() != shape[0] || a.B.cols() != a.A.rows())
        throw loftq::Error(loftq::Errc::invalid_argument, std::string("LoRA shapes do not fit ") + kind_name(k));
    }
}

inline void check_tokens(const Config& c, const std::vector<int>& tokens) {
  if (tokens.empty() || tokens.size() > static_cast<std::size_t>(c.seq_len))
    throw loftq::Error(loftq::Errc::invalid_argument, "sequence length " + std::to_string(tokens.size()) +
                                                          " is outside 1.." + std::to_string(c.seq_len));
  for (int t : tokens)
    if (t < 0 || t >= c.vocab_size)
      throw loftq::Error(loftq::Errc::invalid_argument, "token " + std::to_string(t) + " is outside the vocabulary");
}

// One decoder layer of one sequence: x (T x dim) is the layer's input on
// entry and its output on return; `la` receives the activations. `ad` is the
// layer's adapters or null. The one definition of a layer's forward, shared by
// forward_sequence and the calibration pass (calibrate.hpp).
template <class S>
void forward_layer(const Config& c, const LayerWeights<S>& lw, const std::array<Adapter<S>, kKinds>* ad,
                   const RopeTable<S>& rope, Mat<S>& x, LayerActs<S>& la) {
  auto adapter = [&](int k) { return ad ? &(*ad)[static_cast<std::size_t>(k)] : nullptr; };
  Mat<S> tmp;
  la.x_in = x;
  rmsnorm_forward(la.x_in, lw.rms_att, c.rms_eps, la.xn1, la.rstd1);
  linear_forward(la.xn1, lw.W[kQ], adapter(kQ), la.q, la.u[kQ]);
  linear_forward(la.xn1, lw.W[kK], adapter(kK), la.k, la.u[kK]);
  linear_forward(la.xn1, lw.W[kV], adapter(kV), la.v, la.u[kV]);
  rope_apply(la.q, rope, c.head_size(), false);
  rope_apply(la.k, rope, c.head_size(), false);
  attention_forward(c, la.q, la.k, la.v, la.Pt, la.att_out);
  linear_forward(la.att_out, lw.W[kO], adapter(kO), tmp, la.u[kO]);
  la.x_mid = la.x_in + tmp;
  rmsnorm_forward(la.x_mid, lw.rms_ffn, c.rms_eps, la.xn2, la.rstd2);
  linear_forward(la.xn2, lw.W[kGate], adapter(kGate), la.h1, la.u[kGate]);
  linear_forward(la.xn2, lw.W[kUp], adapter(kUp), la.h3, la.u[kUp]);
  swiglu_forward(la.h1, la.h3, la.hh);
  linear_forward(la.hh, lw.W[kDown], adapter(kDown), tmp, la.u[kDown]);
  x = la.x_mid + tmp;
}

// The embeddings of a sequence's tokens (T x dim).
template <class S>
Mat<S> embed(const Weights<S>& w, const std::vector<int>& tokens) {
  Mat<S> x(static_cast<Eigen::Index>(tokens.size()), w.config.dim);
  for (Eigen::Index t = 0; t < x.rows(); ++t) x.row(t) = w.embedding.row(tokens[static_cast<std::size_t>(t)]);
  return x;
}

// One sequence (positions 0..T-1), all activations kept. Inputs are assumed
// checked (check_tokens, check_lora).
template <class S>
void forward_sequence(const Weights<S>& w, const Lora<S>* lora, const std::vector<int>& tokens, Acts<S>& a) {
  const Config& c = w.config;
  const RopeTable<S> rope(static_cast<Eigen::Index>(tokens.size()), c.head_size(), c.rope_theta);
  Mat<S> x = embed(w, tokens);
  a.layers.resize(w.layers.size());
  for (std::size_t l = 0; l < w.layers.size(); ++l)
    forward_layer(c, w.layers[l], lora ? &lora->layers[l] : nullptr, rope, x, a.layers[l]);
  a.x_final = x;
  rmsnorm_forward(a.x_final, w.rms_final, c.rms_eps, a.xn_final, a.rstd_final);
  a.logits.noalias() = a.xn_final * w.output_matrix().transpose();
}

// From the gradient of the logits down to every adapter; adds into `grad`.
template <class S>
void backward_sequence(const Weights<S>& w, const Lora<S>& lora, const Acts<S>& a, const Mat<S>& dlogits,
                       Lora<S>& grad) {
  const Config& c = w.config;
  const RopeTable<S> rope(dlogits.rows(), c.head_size(), c.rope_theta);
  const Mat<S> dxn = dlogits * w.output_matrix();
  Mat<S> dx = Mat<S>::Zero(dxn.rows(), dxn.cols());
  rmsnorm_backward(dxn, a.x_final, w.rms_final, a.rstd_final, dx);
  Mat<S> dhh, dh1, dh3, dxn2, datt, dq, dk, dv, dxn1;
  for (std::size_t l = w.layers.size(); l-- > 0;) {
    const LayerWeights<S>& lw = w.layers[l];
    const LayerActs<S>& la = a.layers[l];
    const auto& ad = lora.layers[l];
    auto& g = grad.layers[l];
    linear_backward(dx, la.hh, lw.W[kDown], &ad[kDown], la.u[kDown], &g[kDown], dhh, false);
    swiglu_backward(dhh, la.h1, la.h3, dh1, dh3);
    linear_backward(dh1, la.xn2, lw.W[kGate], &ad[kGate], la.u[kGate], &g[kGate], dxn2, false);
    linear_backward(dh3, la.xn2, lw.W[kUp], &ad[kUp], la.u[kUp], &g[kUp], dxn2, true);
    rmsnorm_backward(dxn2, la.x_mid, lw.rms_ffn, la.rstd2, dx);  // dx is now d(x_mid)
    linear_backward(dx, la.att_out, lw.W[kO], &ad[kO], la.u[kO], &g[kO], datt, false);
    attention_backward(c, datt, la.q, la.k, la.v, la.Pt, dq, dk, dv);
    rope_apply(dq, rope, c.head_size(), true);
    rope_apply(dk, rope, c.head_size(), true);
    linear_backward(dq, la.xn1, lw.W[kQ], &ad[kQ], la.u[kQ], &g[kQ], dxn1, false);
    linear_backward(dk, la.xn1, lw.W[kK], &ad[kK], la.u[kK], &g[kK], dxn1, true);
    linear_backward(dv, la.xn1, lw.W[kV], &ad[kV], la.u[kV], &g[kV], dxn1, true);
    rmsnorm_backward(dxn1, la.x_in, lw.rms_att, la.rstd1, dx);  // d(x_in)
  }
}

enum class Loss {
  cross_entropy,  // -log p_model(target) at each counted position
  kl,             // KL(p_teacher || p_model) at each counted position
};

// One training or evaluation sequence.
template <class S>
struct Example {
  std::vector<int> tokens;          // model input, positions 0..T-1
  std::vector<int> targets;         // cross-entropy: the next token at each position (T entries)
  Mat<S> teacher;                   // KL: T x vocab teacher next-token probabilities
  std::vector<unsigned char> mask;  // T entries; nonzero positions count in the loss
};

namespace detail {

template <class S>
void check_example(const Config& c, const Example<S>& e, Loss loss) {
  check_tokens(c, e.tokens);
  const std::size_t T = e.tokens.size();
  if (e.mask.size() != T) throw loftq::Error(loftq::Errc::invalid_argument, "example mask has the wrong length");
  if (loss == Loss::cross_entropy) {
    if (e.targets.size() != T)
      throw loftq::Error(loftq::Errc::invalid_argument, "example targets have the wrong length");
    for (std::size_t t = 0; t < T; ++t)
      if (e.mask[t] && (e.targets[t] < 0 || e.targets[t] >= c.vocab_size))
        throw loftq::Error(loftq::Errc::invalid_argument, "target token outside the vocabulary");
  } else if (e.teacher.rows() != static_cast<Eigen::Index>(T) || e.teacher.cols() != c.vocab_size) {
    throw loftq::Error(loftq::Errc::invalid_argument, "teacher distributions must be T x vocab_size");
  }
}

// Sum of the per-position losses of one sequence, and (when dlogits is
// given) their gradient with respect to the logits times `inv_count`.
// Works on columns of transposed copies so the exp and log over the
// vocabulary are contiguous and vectorized.
template <class S>
double sequence_loss(const Mat<S>& logits, const Example<S>& e, Loss kind, S inv_count, Mat<S>* dlogits) {
  const Eigen::Index T = logits.rows(), V = logits.cols();
  const Mat<S> lt = logits.transpose();
  Mat<S> teacher_t;
  if (kind == Loss::kl) teacher_t = e.teacher.transpose();
  Mat<S> dt = Mat<S>::Zero(V, T);
  double total = 0;
  Vec<S> logp(V), p(V);
  for (Eigen::Index t = 0; t < T; ++t) {
    if (!e.mask[static_cast<std::size_t>(t)]) continue;
    const auto l = lt.col(t);
    const S mx = l.maxCoeff();
    const S lse = mx + std::log((l.array() - mx).exp().sum());
    logp = l.array() - lse;
    p = logp.array().exp().matrix();
    if (kind == Loss::cross_entropy) {
      const int y = e.targets[static_cast<std::size_t>(t)];
      total -= static_cast<double>(logp(y));
      dt.col(t) = p * inv_count;
      dt(y, t) -= inv_count;
    } else {
      const auto pt = teacher_t.col(t).array();
      // Terms with p_teacher = 0 contribute 0 (the limit of p log p).
      const S kl = (pt > S(0)).select(pt * (pt.max(std::numeric_limits<S>::min()).log() - logp.array()), S(0)).sum();
      total += static_cast<double>(kl);
      // d KL / d logit_j = p_model_j - p_teacher_j (the teacher sums to 1).
      dt.col(t) = (p.array() - pt).matrix() * inv_count;
    }
  }
  if (dlogits) *dlogits = dt.transpose();
  return total;
}

}  // namespace detail

// Below this many positions a batch runs on the calling thread: a parallel
// region costs more than it saves there (and much more when other processes
// hold the cores and idle threads spin at the barrier).
constexpr std::size_t kParallelMinPositions = 64;

template <class T>
struct NonDeduced {
  using type = T;
};

// Mean loss over every counted position of the batch; with `grad`, also the
// gradient of that mean for every active adapter (grad is overwritten and
// shaped like `lora`). `grad` does not take part in deducing S, so nullptr
// can be passed for the loss alone.
template <class S>
double loss_and_grad(const Weights<S>& w, const Lora<S>& lora, const std::vector<Example<S>>& batch, Loss kind,
                     typename NonDeduced<Lora<S>*>::type grad) {
  const Config& c = w.config;
  check_weights(w);
  check_lora(c, &lora);
  std::size_t count = 0, positions = 0;
  for (const auto& e : batch) {
    detail::check_example(c, e, kind);
    for (unsigned char m : e.mask) count += m ? 1 : 0;
    positions += e.tokens.size();
  }
  if (count == 0) throw loftq::Error(loftq::Errc::invalid_argument, "loss_and_grad: no position counts in the loss");
  const S inv = static_cast<S>(1.0 / static_cast<double>(count));
  const long n = static_cast<long>(batch.size());
  std::vector<double> losses(batch.size());
  std::vector<Lora<S>> grads(grad ? batch.size() : 0);
  EigenSerialScope serial;
#pragma omp parallel for schedule(dynamic, 1) if (positions >= kParallelMinPositions)
  for (long b = 0; b < n; ++b) {
    const auto& e = batch[static_cast<std::size_t>(b)];
    Acts<S> a;
    forward_sequence(w, &lora, e.tokens, a);
    Mat<S> dlogits;
    losses[static_cast<std::size_t>(b)] = detail::sequence_loss(a.logits, e, kind, inv, grad ? &dlogits : nullptr);
    if (grad) {
      Lora<S>& g = grads[static_cast<std::size_t>(b)];
      g = lora.zeros_like();
      backward_sequence(w, lora, a, dlogits, g);
    }
  }
  double total = 0;
  for (double x : losses) total += x;
  if (grad) {
    *grad = lora.zeros_like();
    for (auto& g : grads) grad->for_each(g, [](Mat<S>& acc, Mat<S>& part) { acc += part; });
  }
  return total / static_cast<double>(count);
}

// Logits (T x vocab) of each sequence; lora may be null (the base model).
template <class S>
std::vector<Mat<S>> forward_logits(const Weights<S>& w, const Lora<S>* lora,
                                   const std::vector<std::vector<int>>& seqs) {
  check_weights(w);
  check_lora(w.config, lora);
  std::size_t positions = 0;
  for (const auto& s : seqs) {
    check_tokens(w.config, s);
    positions += s.size();
  }
  std::vector<Mat<S>> out(seqs.size());
  const long n = static_cast<long>(seqs.size());
  EigenSerialScope serial;
#pragma omp parallel for schedule(dynamic, 1) if (positions >= kParallelMinPositions)
  for (long b = 0; b < n; ++b) {
    Acts<S> a;
    forward_sequence(w, lora, seqs[static_cast<std::size_t>(b)], a);
    out[static_cast<std::size_t>(b)] = std::move(a.logits);
  }
  return out;
}

// Next-token probabilities (softmax of the logits), e.g. a teacher's.
template <class S>
Mat<S> softmax_rows(const Mat<S>& logits) {
  Mat<S> p(logits.rows(), logits.cols());
  for (Eigen::Index t = 0; t < logits.rows(); ++t) {
    const S mx = logits.row(t).maxCoeff();
    S sum = 0;
    for (Eigen::Index j = 0; j < logits.cols(); ++j) sum += (p(t, j) = std::exp(logits(t, j) - mx));
    p.row(t) /= sum;
  }
  return p;
}

#ifdef LOFTQ_LM_INSTANCE
#define LOFTQ_LM_MODEL_INSTANCES(S)                                                                                  \
  LOFTQ_LM_INSTANCE void forward_sequence<S>(const Weights<S>&, const Lora<S>*, const std::vector<int>&, Acts<S>&);  \
  LOFTQ_LM_INSTANCE void backward_sequence<S>(const Weights<S>&, const Lora<S>&, const Acts<S>&, const Mat<S>&,      \
                                              Lora<S>&);                                                             \
  LOFTQ_LM_INSTANCE double loss_and_grad<S>(const Weights<S>&, const Lora<S>&, const std::vector<Example<S>>&, Loss, \
                                            Lora<S>*);                                                               \
  LOFTQ_LM_INSTANCE std::vector<Mat<S>> forward_logits<S>(const Weights<S>&, const Lora<S>*,                         \
                                                          const std::vector<std::vector<int>>&);
LOFTQ_LM_MODEL_INSTANCES(float)
LOFTQ_LM_MODEL_INSTANCES(double)
#undef LOFTQ_LM_MODEL_INSTANCES
#endif

}  // namespace lm

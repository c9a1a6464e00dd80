#pragma once
// Calibration: the second moments of every linear layer's input (X^T X, or
// its diagonal, and the token count) over a set of token sequences, under the
// model's own forward pass (forward_layer, the one the rest of common/lm/
// runs). Data-aware LoftQ (loftq/data_aware.hpp) minimizes the output error
// under these statistics.
//
// Inputs shared by several linears are collected once: q/k/v read the
// attention norm's output, gate/up the feed-forward norm's. Per layer that is
// four inputs: q/k/v (dim), o (dim), gate/up (dim) and down (hidden_dim).
//
// Schedule: layer by layer. Every sequence's hidden state goes through
// layer l, `batch` sequences at a time, before any goes through layer l + 1,
// so that a layer's statistics are complete when the loop leaves it and can
// be handed to `on_layer` (a file writer) and freed. Within a batch the
// layer's forward runs in parallel over the sequences, each serially (Eigen
// held at one thread, so every product is a T x in by in x out GEMM whose
// rounding does not depend on the thread count); then each sequence's inputs
// are added to the statistics in sequence order, each add split over the
// threads by InputStatistics' fixed column blocks. Every sum therefore sees
// the same operands in the same order for any thread count or batch size:
// the results are bit-identical, and equal to adding one sequence at a time.
//
// Weights: the whole model when given Weights; over a LayerSource
// (layer_source.hpp), the embedding until the hidden states are made, then
// one layer's, 4 (2 d^2 + 2 d kv + 3 d h) bytes in float (0.81 GB for 7B).
//
// Peak memory besides the weights, with N sequences of T tokens (the
// longest), B = batch, d = dim, kv = kv_dim, h = hidden_dim, H = n_heads,
// L = n_layers, s = sizeof(S):
//   statistics   full: 8 (3 d^2 + h^2) bytes per layer held, L layers
//                without on_layer, one with it; diagonal: 8 (3 d + h) per layer
//   hidden       s N T d bytes (every sequence's state between layers)
//   activations  B s T (8 d + 2 kv + 3 h + H T) bytes (one layer's, per sequence)
//   widening     8 min(T, 1024) h bytes (InputStatistics::add's double copy)
// so the full statistics of a 7B LLaMA (d 4096, h 11008, L 32) take 44 GB
// held whole, 1.4 GB a layer at a time with on_layer; diagonal ones 6.0 MB.

#include <loftq/error.hpp>
#include <loftq/input_statistics.hpp>
#include <loftq/threads.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/lm/model.hpp"

namespace lm {

// Hugging Face's module path of linear `kind` in decoder layer `layer`, e.g.
// "model.layers.3.self_attn.q_proj" or "model.layers.3.mlp.down_proj".
inline std::string module_path(int layer, int kind) {
  const bool attention = kind == kQ || kind == kK || kind == kV || kind == kO;
  return "model.layers." + std::to_string(layer) + (attention ? ".self_attn." : ".mlp.") + kind_name(kind);
}

struct LinearInput;

struct CalibrationOptions {
  loftq::StatsMode mode = loftq::StatsMode::full;
  int threads = 0;  // 0: loftq::thread_count()'s default
  int batch = 0;    // sequences advanced together; 0: the thread count
  // Called after each sequence's statistics are in, in sequence order, with
  // the number of sequences done and the total.
  // Called after each batch of each layer: done of total = n_layers x sequences.
  std::function<void(std::size_t done, std::size_t total)> progress;
  // Checked before each sequence's forward through each layer; when raised
  // the call throws loftq::Error(Errc::cancelled).
  const std::atomic<bool>* cancel = nullptr;
  // When set, each layer's four inputs (q/k/v, o, gate/up, down) are handed
  // over, complete, as the loop leaves the layer, and the returned
  // Calibration holds no inputs: memory for one layer's statistics instead
  // of the model's.
  std::function<void(std::vector<LinearInput>& layer)> on_layer;
};

// The statistics of one input and every linear that reads it.
struct LinearInput {
  int layer = 0;
  int kind = kQ;                     // the first reader: kQ, kO, kGate or kDown
  std::string name;                  // module_path(layer, kind)
  std::vector<std::string> targets;  // module paths of all readers, `name` first
  std::vector<int> kinds;            // their kinds, in the same order
  loftq::InputStatistics stats;
};

struct Calibration {
  std::vector<LinearInput> inputs;  // per layer: q/k/v, o, gate/up, down
  std::int64_t sequences = 0;
  std::int64_t tokens = 0;

  // The input read by a module (any of the sharing targets), or invalid_argument.
  const LinearInput& at(const std::string& module) const {
    for (const auto& in : inputs)
      for (const auto& t : in.targets)
        if (t == module) return in;
    throw loftq::Error(loftq::Errc::invalid_argument, "calibration: no linear named '" + module + "'");
  }
  const loftq::InputStatistics& at(int layer, int kind) const {
    if (layer < 0 || kind < 0 || kind >= kKinds || static_cast<std::size_t>(layer) * 4 >= inputs.size())
      throw loftq::Error(loftq::Errc::invalid_argument,
                         "calibration: no layer " + std::to_string(layer) + " kind " + std::to_string(kind));
    const int slot = kind <= kV ? 0 : kind == kO ? 1 : kind <= kUp ? 2 : 3;
    return inputs[static_cast<std::size_t>(layer) * 4 + static_cast<std::size_t>(slot)].stats;
  }
};

namespace detail {

inline LinearInput make_input(const Config& c, int layer, std::vector<int> kinds, loftq::StatsMode mode) {
  LinearInput in{layer, kinds.front(), module_path(layer, kinds.front()),
                 {},    kinds,         loftq::InputStatistics(kind_shape(c, kinds.front())[1], mode)};
  for (int k : kinds) in.targets.push_back(module_path(layer, k));
  return in;
}

inline void check_cancel(const std::atomic<bool>* cancel) {
  if (cancel && cancel->load(std::memory_order_relaxed))
    throw loftq::Error(loftq::Errc::cancelled, "collect_statistics: cancelled");
}

}  // namespace detail

namespace detail {

// A whole model in memory, as collect_layers reads it.
template <class S>
struct WholeModel {
  const Weights<S>& w;
  const Mat<S>& embedding() { return w.embedding; }
  void drop_embedding() {}
  const LayerWeights<S>& layer(int l) { return w.layers[static_cast<std::size_t>(l)]; }
};

// The schedule above over a model `m` whose weights are asked for in this
// order: embedding() (vocab x dim), kept until drop_embedding(); then
// layer(0), layer(1), ..., each reference used until the next call. The
// sums do not depend on where the weights come from.
template <class S, class Model>
Calibration collect_layers(const Config& c, Model& m, const std::vector<std::vector<int>>& seqs,
                           const CalibrationOptions& o) {
  if (seqs.empty()) throw loftq::Error(loftq::Errc::invalid_argument, "collect_statistics: no sequences");
  if (o.batch < 0) throw loftq::Error(loftq::Errc::invalid_argument, "collect_statistics: batch must be >= 0");
  for (const auto& s : seqs) check_tokens(c, s);
  Calibration cal;
  const int threads = loftq::thread_count(o.threads);
  const std::size_t n = seqs.size();
  const std::size_t batch = static_cast<std::size_t>(o.batch > 0 ? o.batch : std::max(1, threads));
  const std::size_t total = static_cast<std::size_t>(c.n_layers) * n;
  std::map<Eigen::Index, RopeTable<S>> ropes;  // by sequence length
  for (const auto& s : seqs) {
    const Eigen::Index T = static_cast<Eigen::Index>(s.size());
    if (!ropes.count(T)) ropes.emplace(T, RopeTable<S>(T, c.head_size(), c.rope_theta));
  }
  check_cancel(o.cancel);
  EigenSerialScope serial;
  std::vector<Mat<S>> x(n);  // every sequence's hidden state between layers
  {
    const Mat<S>& E = m.embedding();
    loftq::detail::parallel_for(static_cast<std::int64_t>(n), threads, [&](std::int64_t b) {
      const std::vector<int>& tokens = seqs[static_cast<std::size_t>(b)];
      Mat<S>& xb = x[static_cast<std::size_t>(b)];
      xb.resize(static_cast<Eigen::Index>(tokens.size()), c.dim);
      for (Eigen::Index t = 0; t < xb.rows(); ++t) xb.row(t) = E.row(tokens[static_cast<std::size_t>(t)]);
    });
  }
  m.drop_embedding();
  std::vector<LayerActs<S>> acts(std::min(batch, n));
  const std::array<Adapter<S>, kKinds>* const no_adapters = nullptr;
  for (int l = 0; l < c.n_layers; ++l) {
    std::vector<LinearInput> in;
    in.push_back(make_input(c, l, {kQ, kK, kV}, o.mode));
    in.push_back(make_input(c, l, {kO}, o.mode));
    in.push_back(make_input(c, l, {kGate, kUp}, o.mode));
    in.push_back(make_input(c, l, {kDown}, o.mode));
    check_cancel(o.cancel);
    const LayerWeights<S>& lw = m.layer(l);
    for (std::size_t s0 = 0; s0 < n; s0 += batch) {
      const std::size_t nb = std::min(batch, n - s0);
      check_cancel(o.cancel);
      loftq::detail::parallel_for(static_cast<std::int64_t>(nb), threads, [&](std::int64_t bi) {
        const std::size_t b = static_cast<std::size_t>(bi);
        check_cancel(o.cancel);
        forward_layer(c, lw, no_adapters, ropes.at(x[s0 + b].rows()), x[s0 + b], acts[b]);
      });
      for (std::size_t b = 0; b < nb; ++b) {
        const LayerActs<S>& a = acts[b];
        in[0].stats.add(a.xn1, threads);
        in[1].stats.add(a.att_out, threads);
        in[2].stats.add(a.xn2, threads);
        in[3].stats.add(a.hh, threads);
      }
      if (o.progress) o.progress(static_cast<std::size_t>(l) * n + s0 + nb, total);
    }
    if (o.on_layer)
      o.on_layer(in);
    else
      for (auto& i : in) cal.inputs.push_back(std::move(i));
  }
  cal.sequences = static_cast<std::int64_t>(n);
  for (const auto& s : seqs) cal.tokens += static_cast<std::int64_t>(s.size());
  return cal;
}

}  // namespace detail

// Statistics of every linear's input over `seqs` (each 1..seq_len tokens,
// every id inside the vocabulary; else invalid_argument). A model read a
// layer at a time is layer_source.hpp's overload, with the same sums.
template <class S>
Calibration collect_statistics(const Weights<S>& w, const std::vector<std::vector<int>>& seqs,
                               const CalibrationOptions& o = {}) {
  check_weights(w);
  detail::WholeModel<S> m{w};
  return detail::collect_layers<S>(w.config, m, seqs, o);
}

}  // namespace lm

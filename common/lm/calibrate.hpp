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
// rounding does not depend on the thread count). The four inputs' rows are
// then copied, in double and in sequence order, into a stage of C tokens per
// input (stats_chunk: a fixed function of the model's widths and the token
// count); each full stage (and the last, partial one of a layer) is added to
// all four statistics at once, in one parallel pass over their fixed column
// blocks (loftq::detail::add_together). The chunks are cut from the layer's
// stream of tokens, not from sequences or batches, so the statistics are
// updated by GEMMs of depth C even for short sequences, and every sum sees
// the same operands in the same order for any thread count or batch size:
// the results are bit-identical, and equal to adding the concatenated
// sequences C tokens at a time.
//
// Small models: a parallel region ends only when every thread has run, which
// on a busy machine can wait a time slice, far longer than a small layer's
// work. So the default batch and C are sized by memory (kWorkingSet each),
// not by the thread count: stories260K runs one forward region and one
// statistics update per layer for a few thousand tokens.
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
//   activations  B s T (8 d + 2 kv + 3 h + H T) bytes (one layer's, per
//                sequence); by default B holds this to 64 MiB or the thread
//                count's sequences, whichever is more
//   stage        8 C (3 d + h) bytes (the inputs' rows in double, C tokens:
//                64 MiB's worth, at least 512, at most all there are; for 7B
//                95 MB from 512 tokens on, 24 MB at 2 x 64)
// so the full statistics of a 7B LLaMA (d 4096, h 11008, L 32) take 44 GB
// held whole, 1.4 GB a layer at a time with on_layer; diagonal ones 6.0 MB.

#include <loftq/error.hpp>
#include <loftq/input_statistics.hpp>
#include <loftq/threads.hpp>

#include <algorithm>
#include <array>
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
  int batch = 0;    // sequences advanced together; 0: by memory (see above), at least the thread count
  // C, the tokens per statistics update; 0: stats_chunk()'s, by memory. The
  // last bits of the sums depend on it (their order), never on threads or batch.
  std::int64_t chunk = 0;
  // Called after each batch of each layer's forward, with done of total =
  // n_layers x sequences.
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

// What the default batch's activations and the stage of rows each aim at.
constexpr double kWorkingSet = 64.0 * 1024 * 1024;
// The least tokens per statistics update: the GEMMs' depth. Past a few
// hundred they gain little (Eigen's depth blocking is about 256).
constexpr Eigen::Index kMinStatsChunk = 512;

// C, the tokens per statistics update: kWorkingSet of staged rows (8 (3 d + h)
// bytes a token), at least kMinStatsChunk, at most the tokens there are. It
// depends on the model and the token count only, never on threads or batch.
inline Eigen::Index stats_chunk(const Config& c, std::int64_t tokens) {
  const double per_token = 8.0 * (3.0 * c.dim + c.hidden_dim);
  const auto by_memory = static_cast<std::int64_t>(kWorkingSet / per_token);
  return static_cast<Eigen::Index>(std::min(tokens, std::max<std::int64_t>(kMinStatsChunk, by_memory)));
}

// The default batch: sequences whose activations (s T (8 d + 2 kv + 3 h + H T)
// bytes each, T the longest) fit kWorkingSet, at least `threads`.
template <class S>
std::size_t default_batch(const Config& c, std::size_t longest, int threads) {
  const double T = static_cast<double>(longest);
  const double per_seq =
      sizeof(S) * T * (8.0 * c.dim + 2.0 * c.kv_dim() + 3.0 * c.hidden_dim + static_cast<double>(c.n_heads) * T);
  return std::max<std::size_t>(static_cast<std::size_t>(std::max(1, threads)),
                               static_cast<std::size_t>(kWorkingSet / per_seq));
}

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
  if (o.chunk < 0) throw loftq::Error(loftq::Errc::invalid_argument, "collect_statistics: chunk must be >= 0");
  for (const auto& s : seqs) check_tokens(c, s);
  Calibration cal;
  const int threads = loftq::thread_count(o.threads);
  const std::size_t n = seqs.size();
  std::size_t longest = 0;
  std::int64_t stream = 0;  // tokens in all sequences
  for (const auto& s : seqs) {
    longest = std::max(longest, s.size());
    stream += static_cast<std::int64_t>(s.size());
  }
  const std::size_t batch =
      std::min(n, o.batch > 0 ? static_cast<std::size_t>(o.batch) : default_batch<S>(c, longest, threads));
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
  std::vector<LayerActs<S>> acts(batch);
  const std::array<Adapter<S>, kKinds>* const no_adapters = nullptr;
  const Eigen::Index chunk =
      o.chunk > 0 ? static_cast<Eigen::Index>(std::min(o.chunk, stream)) : stats_chunk(c, stream);
  std::array<Eigen::MatrixXd, 4> stage;  // q/k/v, o, gate/up, down: rows not yet added
  Eigen::Index staged = 0;
  for (int l = 0; l < c.n_layers; ++l) {
    std::vector<LinearInput> in;
    in.push_back(make_input(c, l, {kQ, kK, kV}, o.mode));
    in.push_back(make_input(c, l, {kO}, o.mode));
    in.push_back(make_input(c, l, {kGate, kUp}, o.mode));
    in.push_back(make_input(c, l, {kDown}, o.mode));
    for (std::size_t i = 0; i < 4; ++i) stage[i].resize(chunk, in[i].stats.features());
    auto flush = [&] {
      if (staged == 0) return;
      std::vector<loftq::detail::WidenedSamples> parts;
      for (std::size_t i = 0; i < 4; ++i) parts.push_back({&in[i].stats, &stage[i], staged});
      loftq::detail::add_together(parts, threads);
      staged = 0;
    };
    check_cancel(o.cancel);
    const LayerWeights<S>& lw = m.layer(l);
    for (std::size_t s0 = 0; s0 < n; s0 += batch) {
      const std::size_t nb = std::min(batch, n - s0);
      check_cancel(o.cancel);
      // Sequences may differ in length: handed out one at a time.
      loftq::detail::parallel_for_dynamic(static_cast<std::int64_t>(nb), threads, [&](std::int64_t bi) {
        const std::size_t b = static_cast<std::size_t>(bi);
        check_cancel(o.cancel);
        forward_layer(c, lw, no_adapters, ropes.at(x[s0 + b].rows()), x[s0 + b], acts[b]);
      });
      for (std::size_t b = 0; b < nb; ++b) {
        const LayerActs<S>& a = acts[b];
        const std::array<const Mat<S>*, 4> rows = {&a.xn1, &a.att_out, &a.xn2, &a.hh};
        for (Eigen::Index r0 = 0; r0 < a.xn1.rows();) {
          const Eigen::Index len = std::min(chunk - staged, a.xn1.rows() - r0);
          // Serial: a copy is cheap next to the statistics' products, and a
          // parallel region per sequence costs small models more than it saves.
          for (std::size_t i = 0; i < 4; ++i)
            stage[i].middleRows(staged, len) = rows[i]->middleRows(r0, len).template cast<double>();
          staged += len;
          r0 += len;
          if (staged == chunk) flush();
        }
      }
      if (o.progress) o.progress(static_cast<std::size_t>(l) * n + s0 + nb, total);
    }
    flush();
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

#ifdef LOFTQ_LM_INSTANCE
LOFTQ_LM_INSTANCE Calibration detail::collect_layers<float, detail::WholeModel<float>>(
    const Config&, detail::WholeModel<float>&, const std::vector<std::vector<int>>&, const CalibrationOptions&);
LOFTQ_LM_INSTANCE Calibration detail::collect_layers<double, detail::WholeModel<double>>(
    const Config&, detail::WholeModel<double>&, const std::vector<std::vector<int>>&, const CalibrationOptions&);
#endif

}  // namespace lm

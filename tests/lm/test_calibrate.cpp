// Calibration statistics (common/lm/calibrate.hpp) and the model and token
// loaders (common/lm/load.hpp): the statistics against a float64 brute force
// over an independent per-token forward pass, the three model formats
// against each other on the same weights, determinism, refusal of bad tokens,
// and cancellation.

#include <doctest/doctest.h>

#include <loftq/detail/half.hpp>
#include <loftq/io/gguf.hpp>
#include <loftq/io/safetensors.hpp>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "common/llama2c.hpp"
#include "common/lm/calibrate.hpp"
#include "common/lm/load.hpp"
#include "common/lm/save.hpp"

namespace {

namespace fs = std::filesystem;
using lm::Mat;

std::string shared(const std::string& name) { return std::string(LOFTQ_SHARED_DATA_DIR) + "/" + name; }
bool exists(const std::string& path) { return std::ifstream(path).good(); }

#define REQUIRE_STORIES()                                              \
  if (!exists(shared("stories260K.bin"))) {                            \
    MESSAGE("skipped: " << shared("stories260K.bin") << " is absent"); \
    return;                                                            \
  }

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("loftq_test_calibrate_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

std::vector<std::vector<int>> random_sequences(int vocab, const std::vector<int>& lengths, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> id(0, vocab - 1);
  std::vector<std::vector<int>> seqs;
  for (int T : lengths) {
    std::vector<int> s(static_cast<std::size_t>(T));
    for (int& t : s) t = id(rng);
    seqs.push_back(s);
  }
  return seqs;
}

// --- An independent float64 forward, one position at a time with a key/value
// cache, as llama2.c's run.c computes it; it records every linear's input.
// Sums of x x^T per layer and input: [layer][0 q/k/v, 1 o, 2 gate/up, 3 down].
using Sums = std::vector<std::array<Eigen::MatrixXd, 4>>;

Sums brute_force_sums(const lm::Weights<float>& wf, const std::vector<std::vector<int>>& seqs) {
  const lm::Config& c = wf.config;
  const int d = c.dim, hs = c.head_size(), kvd = c.kv_dim(), group = c.n_heads / c.n_kv_heads;
  std::vector<std::array<Eigen::MatrixXd, 4>> sums(static_cast<std::size_t>(c.n_layers));
  for (auto& s : sums) {
    s[0] = s[1] = s[2] = Eigen::MatrixXd::Zero(d, d);
    s[3] = Eigen::MatrixXd::Zero(c.hidden_dim, c.hidden_dim);
  }
  auto W = [&](int l, int k) { return wf.layers[static_cast<std::size_t>(l)].W[k].cast<double>().eval(); };
  auto rmsnorm = [&](const Eigen::VectorXd& x, const lm::Vec<float>& g) {
    double ss = 0;
    for (int j = 0; j < d; ++j) ss += x(j) * x(j);
    const double r = 1.0 / std::sqrt(ss / d + 1e-5);
    Eigen::VectorXd y(d);
    for (int j = 0; j < d; ++j) y(j) = static_cast<double>(g(j)) * x(j) * r;
    return y;
  };
  auto outer = [](Eigen::MatrixXd& S, const Eigen::VectorXd& v) {
    for (Eigen::Index i = 0; i < v.size(); ++i)
      for (Eigen::Index j = 0; j < v.size(); ++j) S(i, j) += v(i) * v(j);
  };
  for (const auto& seq : seqs) {
    std::vector<std::vector<Eigen::VectorXd>> kcache(static_cast<std::size_t>(c.n_layers)),
        vcache(static_cast<std::size_t>(c.n_layers));
    for (std::size_t pos = 0; pos < seq.size(); ++pos) {
      Eigen::VectorXd x = wf.embedding.row(seq[pos]).transpose().cast<double>();
      for (int l = 0; l < c.n_layers; ++l) {
        const auto& lw = wf.layers[static_cast<std::size_t>(l)];
        auto& S = sums[static_cast<std::size_t>(l)];
        const Eigen::VectorXd xn = rmsnorm(x, lw.rms_att);
        outer(S[0], xn);
        Eigen::VectorXd q = W(l, lm::kQ) * xn, k = W(l, lm::kK) * xn, v = W(l, lm::kV) * xn;
        for (int i = 0; i < d; i += 2) {  // run.c's RoPE: pairs (i, i+1), freq from i mod head_size
          const double freq = 1.0 / std::pow(10000.0, static_cast<double>(i % hs) / hs);
          const double a = static_cast<double>(pos) * freq, cr = std::cos(a), sr = std::sin(a);
          auto rot = [&](Eigen::VectorXd& u) {
            const double u0 = u(i), u1 = u(i + 1);
            u(i) = u0 * cr - u1 * sr;
            u(i + 1) = u0 * sr + u1 * cr;
          };
          rot(q);
          if (i < kvd) rot(k);
        }
        kcache[static_cast<std::size_t>(l)].push_back(k);
        vcache[static_cast<std::size_t>(l)].push_back(v);
        Eigen::VectorXd att = Eigen::VectorXd::Zero(d);
        for (int h = 0; h < c.n_heads; ++h) {
          const int g = h / group;
          std::vector<double> score(pos + 1);
          double mx = -1e300;
          for (std::size_t s = 0; s <= pos; ++s) {
            score[s] = q.segment(h * hs, hs).dot(kcache[static_cast<std::size_t>(l)][s].segment(g * hs, hs)) /
                       std::sqrt(static_cast<double>(hs));
            mx = std::max(mx, score[s]);
          }
          double z = 0;
          for (double& e : score) z += (e = std::exp(e - mx));
          for (std::size_t s = 0; s <= pos; ++s)
            att.segment(h * hs, hs) += score[s] / z * vcache[static_cast<std::size_t>(l)][s].segment(g * hs, hs);
        }
        outer(S[1], att);
        x += W(l, lm::kO) * att;
        const Eigen::VectorXd xn2 = rmsnorm(x, lw.rms_ffn);
        outer(S[2], xn2);
        const Eigen::VectorXd h1 = W(l, lm::kGate) * xn2, h3 = W(l, lm::kUp) * xn2;
        Eigen::VectorXd hh(h1.size());
        for (Eigen::Index j = 0; j < h1.size(); ++j) hh(j) = h1(j) / (1.0 + std::exp(-h1(j))) * h3(j);
        outer(S[3], hh);
        x += W(l, lm::kDown) * hh;
      }
    }
  }
  return sums;
}

double rel_diff(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b) { return (a - b).norm() / b.norm(); }

// Bitwise equality of two calibrations' sums.
void check_identical(const lm::Calibration& a, const lm::Calibration& b) {
  REQUIRE(a.inputs.size() == b.inputs.size());
  CHECK(a.tokens == b.tokens);
  for (std::size_t i = 0; i < a.inputs.size(); ++i) {
    const auto& x = a.inputs[i].stats;
    const auto& y = b.inputs[i].stats;
    CHECK(x.count() == y.count());
    if (x.mode() == loftq::StatsMode::full)
      CHECK(loftq::detail::StatsAccess::sums(x) == loftq::detail::StatsAccess::sums(y));
    else
      CHECK(loftq::detail::StatsAccess::diagonal_sums(x) == loftq::detail::StatsAccess::diagonal_sums(y));
  }
}

// --- Writers of the same weights in the other formats.

enum class GgufWeights { f32, f16, bf16, q8_0 };

// Q8_0 blocks of a row-major tensor (ggml's quantize_row_q8_0_ref: d =
// amax / 127 stored as fp16, codes round(x / d)).
std::vector<unsigned char> q8_0_bytes(const lm::RowMat& M) {
  std::vector<unsigned char> out;
  const float* x = M.data();
  for (Eigen::Index b = 0; b < M.size() / 32; ++b) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    const float d = amax / 127, id = d != 0 ? 1 / d : 0;
    const std::uint16_t h = loftq::detail::float_to_half(d);
    out.push_back(static_cast<unsigned char>(h & 0xff));
    out.push_back(static_cast<unsigned char>(h >> 8));
    for (int j = 0; j < 32; ++j)
      out.push_back(static_cast<unsigned char>(static_cast<std::int8_t>(std::lround(x[b * 32 + j] * id))));
  }
  return out;
}

lm::RowMat q8_0_dequant(const lm::RowMat& M) {
  const std::vector<unsigned char> b = q8_0_bytes(M);
  lm::RowMat out(M.rows(), M.cols());
  for (Eigen::Index k = 0; k < M.size(); ++k) {
    const unsigned char* blk = b.data() + (k / 32) * 34;
    const float d = loftq::detail::half_to_float(static_cast<std::uint16_t>(blk[0] | (blk[1] << 8)));
    out.data()[k] = static_cast<float>(static_cast<std::int8_t>(blk[2 + k % 32])) * d;
  }
  return out;
}

// A llama-architecture GGUF of `w` (q and k in the interleaved order, as
// llama.cpp stores them). Matrices whose rows are whole 32-blocks take the
// requested type (Q8_0), everything else F32/F16.
void write_gguf(const lm::Weights<float>& w, const std::string& path, GgufWeights type) {
  using loftq::io::GgmlType;
  const lm::Config& c = w.config;
  std::vector<loftq::io::GgufKV> kvs = {
      loftq::io::gguf_kv_string("general.architecture", "llama"),
      loftq::io::gguf_kv_u32("llama.context_length", static_cast<std::uint32_t>(c.seq_len)),
      loftq::io::gguf_kv_u32("llama.embedding_length", static_cast<std::uint32_t>(c.dim)),
      loftq::io::gguf_kv_u32("llama.feed_forward_length", static_cast<std::uint32_t>(c.hidden_dim)),
      loftq::io::gguf_kv_u32("llama.block_count", static_cast<std::uint32_t>(c.n_layers)),
      loftq::io::gguf_kv_u32("llama.attention.head_count", static_cast<std::uint32_t>(c.n_heads)),
      loftq::io::gguf_kv_u32("llama.attention.head_count_kv", static_cast<std::uint32_t>(c.n_kv_heads)),
      loftq::io::gguf_kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f),
      loftq::io::gguf_kv_f32("llama.rope.freq_base", 10000.0f),
  };
  std::vector<std::pair<std::string, lm::RowMat>> t;
  t.push_back({"token_embd.weight", w.embedding});
  for (int l = 0; l < c.n_layers; ++l) {
    const auto& lw = w.layers[static_cast<std::size_t>(l)];
    const std::string p = "blk." + std::to_string(l) + ".";
    t.push_back({p + "attn_norm.weight", lm::RowMat(lw.rms_att.transpose())});
    t.push_back({p + "attn_q.weight", lw.W[lm::kQ]});
    t.push_back({p + "attn_k.weight", lw.W[lm::kK]});
    t.push_back({p + "attn_v.weight", lw.W[lm::kV]});
    t.push_back({p + "attn_output.weight", lw.W[lm::kO]});
    t.push_back({p + "ffn_norm.weight", lm::RowMat(lw.rms_ffn.transpose())});
    t.push_back({p + "ffn_gate.weight", lw.W[lm::kGate]});
    t.push_back({p + "ffn_up.weight", lw.W[lm::kUp]});
    t.push_back({p + "ffn_down.weight", lw.W[lm::kDown]});
  }
  t.push_back({"output_norm.weight", lm::RowMat(w.rms_final.transpose())});
  if (!c.shared_classifier) t.push_back({"output.weight", w.classifier});
  std::vector<loftq::io::GgufTensorDecl> decl;
  std::vector<GgmlType> types;
  for (const auto& [name, M] : t) {
    const bool vec = M.rows() == 1;
    GgmlType ty = type == GgufWeights::f16 ? GgmlType::F16 : type == GgufWeights::bf16 ? GgmlType::BF16 : GgmlType::F32;
    if (type == GgufWeights::q8_0 && !vec && M.cols() % 32 == 0) ty = GgmlType::Q8_0;
    types.push_back(ty);
    decl.push_back(
        {name,
         vec ? std::vector<std::uint64_t>{static_cast<std::uint64_t>(M.cols())}
             : std::vector<std::uint64_t>{static_cast<std::uint64_t>(M.cols()), static_cast<std::uint64_t>(M.rows())},
         static_cast<std::uint32_t>(ty)});
  }
  loftq::io::GgufWriter wr(path, kvs, decl);
  for (std::size_t i = 0; i < t.size(); ++i) {
    const lm::RowMat& M = t[i].second;
    std::vector<unsigned char> bytes;
    if (types[i] == GgmlType::Q8_0) {
      bytes = q8_0_bytes(M);
    } else if (types[i] == GgmlType::F16) {
      for (Eigen::Index k = 0; k < M.size(); ++k) {
        const std::uint16_t h = loftq::detail::float_to_half(M.data()[k]);
        bytes.push_back(static_cast<unsigned char>(h & 0xff));
        bytes.push_back(static_cast<unsigned char>(h >> 8));
      }
    } else if (types[i] == GgmlType::BF16) {
      bytes.resize(static_cast<std::size_t>(M.size()) * 2);
      loftq::io::from_float(loftq::io::Dtype::BF16, M.data(), static_cast<std::size_t>(M.size()), bytes.data());
    } else {
      bytes.resize(static_cast<std::size_t>(M.size()) * 4);
      std::memcpy(bytes.data(), M.data(), bytes.size());
    }
    wr.write(t[i].first, bytes.data(), bytes.size());
  }
  wr.commit();
}

// `w` with every tensor rounded through a 16-bit storage type.
lm::Weights<float> rounded(const lm::Weights<float>& w, loftq::io::Dtype d) {
  auto r = [&](auto& M) {
    std::vector<unsigned char> b(static_cast<std::size_t>(M.size()) * 2);
    loftq::io::from_float(d, M.data(), static_cast<std::size_t>(M.size()), b.data());
    loftq::io::to_float(d, b.data(), static_cast<std::size_t>(M.size()), M.data());
  };
  lm::Weights<float> o = w;
  r(o.embedding);
  r(o.rms_final);
  if (!o.config.shared_classifier) r(o.classifier);
  for (auto& lw : o.layers) {
    r(lw.rms_att);
    r(lw.rms_ffn);
    for (auto& M : lw.W) r(M);
  }
  return o;
}

void write_tokens_npy(const std::string& path, const char* descr, int itemsize, const std::vector<std::int64_t>& ids,
                      std::size_t rows, std::size_t cols) {
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" +
                       std::to_string(rows) + ", " + std::to_string(cols) + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  const unsigned char len[2] = {static_cast<unsigned char>(header.size() & 0xff),
                                static_cast<unsigned char>(header.size() >> 8)};
  f.write(reinterpret_cast<const char*>(len), 2);
  f << header;
  for (std::int64_t v : ids) {
    if (itemsize == 4) {
      const std::int32_t x = static_cast<std::int32_t>(v);
      f.write(reinterpret_cast<const char*>(&x), 4);
    } else {
      f.write(reinterpret_cast<const char*>(&v), 8);
    }
  }
}

}  // namespace

TEST_CASE("calibration statistics equal a float64 brute force over an independent forward") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  const lm::Config& c = w.config;
  const auto seqs = random_sequences(c.vocab_size, {17, 32, 9}, 7);
  const Sums brute = brute_force_sums(w, seqs);

  lm::CalibrationOptions o;
  o.threads = 1;
  // The double instantiation differs from the brute force only in summation order.
  const lm::Calibration cd = lm::collect_statistics(w.cast<double>(), seqs, o);
  // The float forward rounds activations to float.
  const lm::Calibration cf = lm::collect_statistics(w, seqs, o);
  REQUIRE(cd.inputs.size() == static_cast<std::size_t>(4 * c.n_layers));
  CHECK(cd.tokens == 17 + 32 + 9);
  CHECK(cd.sequences == 3);
  for (int l = 0; l < c.n_layers; ++l)
    for (int s = 0; s < 4; ++s) {
      const auto& in = cd.inputs[static_cast<std::size_t>(4 * l + s)];
      CHECK(in.layer == l);
      CHECK(in.stats.count() == 58);
      const Eigen::MatrixXd& ref = brute[static_cast<std::size_t>(l)][static_cast<std::size_t>(s)];
      const Eigen::MatrixXd Hd = in.stats.gram() * 58.0;
      const Eigen::MatrixXd Hf = cf.inputs[static_cast<std::size_t>(4 * l + s)].stats.gram() * 58.0;
      CHECK(rel_diff(Hd, ref) < 1e-12);
      CHECK(rel_diff(Hf, ref) < 1e-5);
    }
  // Names and sharing.
  CHECK(cd.inputs[0].name == "model.layers.0.self_attn.q_proj");
  CHECK(cd.inputs[0].targets == std::vector<std::string>{"model.layers.0.self_attn.q_proj",
                                                         "model.layers.0.self_attn.k_proj",
                                                         "model.layers.0.self_attn.v_proj"});
  CHECK(cd.inputs[2].targets == std::vector<std::string>{"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"});
  CHECK(cd.inputs[3].name == "model.layers.0.mlp.down_proj");
  CHECK(&cd.at("model.layers.1.mlp.up_proj") == &cd.inputs[6]);
  CHECK(&cd.at(1, lm::kV) == &cd.inputs[4].stats);
  CHECK_THROWS_AS(cd.at("model.layers.9.mlp.up_proj"), loftq::Error);
}

TEST_CASE("diagonal statistics are the diagonal of the full ones") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  const auto seqs = random_sequences(w.config.vocab_size, {40, 25}, 11);
  lm::CalibrationOptions o;
  const lm::Calibration full = lm::collect_statistics(w, seqs, o);
  o.mode = loftq::StatsMode::diagonal;
  const lm::Calibration diag = lm::collect_statistics(w, seqs, o);
  REQUIRE(full.inputs.size() == diag.inputs.size());
  for (std::size_t i = 0; i < full.inputs.size(); ++i) {
    CHECK(diag.inputs[i].stats.mode() == loftq::StatsMode::diagonal);
    const Eigen::VectorXd a = diag.inputs[i].stats.diagonal(), b = full.inputs[i].stats.diagonal();
    // The same products; only the order of the sums may differ (GEMM vs a
    // column reduction), so agreement is to a few units in the last place.
    CHECK(((a - b).cwiseAbs().array() <= 1e-13 * b.cwiseAbs().array()).all());
  }
}

TEST_CASE("calibration is bit-identical for 1 and 2 threads and any batch") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  const auto seqs = random_sequences(w.config.vocab_size, {64, 31, 64, 5, 50}, 3);
  for (auto mode : {loftq::StatsMode::full, loftq::StatsMode::diagonal}) {
    lm::CalibrationOptions o;
    o.mode = mode;
    o.threads = 1;
    o.batch = 1;
    const lm::Calibration a = lm::collect_statistics(w, seqs, o);
    o.threads = 2;
    o.batch = 0;
    const lm::Calibration b = lm::collect_statistics(w, seqs, o);
    o.batch = 3;
    const lm::Calibration c3 = lm::collect_statistics(w, seqs, o);
    check_identical(a, b);
    check_identical(a, c3);
  }
}

TEST_CASE("statistics handed over layer by layer equal the ones held whole") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  const auto seqs = random_sequences(w.config.vocab_size, {40, 17, 40}, 21);
  lm::CalibrationOptions o;
  o.threads = 2;
  const lm::Calibration whole = lm::collect_statistics(w, seqs, o);
  lm::Calibration streamed;
  int layers = 0;
  o.on_layer = [&](std::vector<lm::LinearInput>& layer) {
    REQUIRE(layer.size() == 4);
    CHECK(layer[0].layer == layers);  // in order, each once
    ++layers;
    for (auto& in : layer) streamed.inputs.push_back(std::move(in));
  };
  const lm::Calibration rest = lm::collect_statistics(w, seqs, o);
  CHECK(layers == w.config.n_layers);
  CHECK(rest.inputs.empty());
  streamed.tokens = rest.tokens;
  streamed.sequences = rest.sequences;
  CHECK(rest.tokens == 97);
  check_identical(whole, streamed);
}

TEST_CASE("bad tokens are refused") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  const int V = w.config.vocab_size;
  auto code = [&](const std::vector<std::vector<int>>& s) {
    try {
      lm::collect_statistics(w, s);
    } catch (const loftq::Error& e) {
      return e.code();
    }
    return loftq::Errc::cancelled;  // not thrown
  };
  CHECK(code({{1, 2, V}}) == loftq::Errc::invalid_argument);
  CHECK(code({{1, -1}}) == loftq::Errc::invalid_argument);
  CHECK(code({}) == loftq::Errc::invalid_argument);
  CHECK(code({std::vector<int>(static_cast<std::size_t>(w.config.seq_len) + 1, 1)}) == loftq::Errc::invalid_argument);

  TempDir dir("tokens");
  // int32 and int64 files read back as written.
  write_tokens_npy(dir / "ok32.npy", "<i4", 4, {1, 2, 3, 4, 5, V - 1}, 2, 3);
  write_tokens_npy(dir / "ok64.npy", "<i8", 8, {1, 2, 3, 4, 5, V - 1}, 3, 2);
  CHECK(lm::read_tokens(dir / "ok32.npy", w.config) == std::vector<std::vector<int>>{{1, 2, 3}, {4, 5, V - 1}});
  CHECK(lm::read_tokens(dir / "ok64.npy", w.config) == std::vector<std::vector<int>>{{1, 2}, {3, 4}, {5, V - 1}});
  // An id past the vocabulary, a negative one, one past int32, a float file,
  // and sequences longer than the context.
  write_tokens_npy(dir / "big.npy", "<i4", 4, {1, 2, 3, 4, V, 6}, 2, 3);
  write_tokens_npy(dir / "neg.npy", "<i8", 8, {1, -2}, 1, 2);
  write_tokens_npy(dir / "huge.npy", "<i8", 8, {1, std::int64_t(1) << 40}, 1, 2);
  write_tokens_npy(dir / "float.npy", "<f4", 4, {0, 0}, 1, 2);
  std::vector<std::int64_t> longer(static_cast<std::size_t>(w.config.seq_len) + 1, 1);
  write_tokens_npy(dir / "long.npy", "<i4", 4, longer, 1, longer.size());
  for (const char* f : {"big.npy", "neg.npy", "huge.npy", "long.npy"}) {
    CAPTURE(f);
    try {
      lm::read_tokens(dir / f, w.config);
      FAIL("accepted");
    } catch (const loftq::Error& e) {
      CHECK(e.code() == loftq::Errc::invalid_argument);
      CHECK(std::string(e.what()).find(f) != std::string::npos);
    }
  }
  try {
    lm::read_tokens(dir / "big.npy", w.config);
  } catch (const loftq::Error& e) {
    CHECK(std::string(e.what()).find("token id " + std::to_string(V) + " (sequence 1, position 1)") !=
          std::string::npos);
  }
  CHECK_THROWS_AS(lm::read_tokens(dir / "float.npy", w.config), loftq::Error);
}

TEST_CASE("cancellation is honoured and progress is reported per sequence and layer") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  const auto seqs = random_sequences(w.config.vocab_size, {8, 8, 8, 8}, 5);
  std::atomic<bool> cancel{false};
  std::vector<std::size_t> seen;
  lm::CalibrationOptions o;
  o.batch = 1;
  o.cancel = &cancel;
  const std::size_t steps = 4 * static_cast<std::size_t>(w.config.n_layers);
  o.progress = [&](std::size_t done, std::size_t total) {
    CHECK(total == steps);
    seen.push_back(done);
    if (done == 2) cancel = true;
  };
  try {
    lm::collect_statistics(w, seqs, o);
    FAIL("not cancelled");
  } catch (const loftq::Error& e) {
    CHECK(e.code() == loftq::Errc::cancelled);
  }
  CHECK(seen == std::vector<std::size_t>{1, 2});
  // Raised before the call: nothing runs.
  seen.clear();
  CHECK_THROWS_AS(lm::collect_statistics(w, seqs, o), loftq::Error);
  CHECK(seen.empty());
  // Lowered: the whole run completes.
  cancel = false;
  seen.clear();
  o.progress = [&](std::size_t done, std::size_t) { seen.push_back(done); };
  CHECK(lm::collect_statistics(w, seqs, o).sequences == 4);
  std::vector<std::size_t> every(steps);
  std::iota(every.begin(), every.end(), std::size_t{1});
  CHECK(seen == every);
}

TEST_CASE("Hugging Face and GGUF checkpoints of the same weights give the same statistics") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  const auto seqs = random_sequences(w.config.vocab_size, {33, 20}, 13);
  lm::CalibrationOptions o;
  o.threads = 2;
  const lm::Calibration ref = lm::collect_statistics(w, seqs, o);
  TempDir dir("formats");

  SUBCASE("Hugging Face, sharded, q/k in transformers' order") {
    lm::write_hf_checkpoint(w, dir.path.string(), loftq::io::Dtype::F32, 2);
    const lm::Weights<float> h = lm::read_model(dir.path.string());
    CHECK(h.config.dim == w.config.dim);
    CHECK(h.config.n_kv_heads == w.config.n_kv_heads);
    CHECK(h.config.seq_len == w.config.seq_len);
    CHECK(h.config.rms_eps == 1e-5);
    CHECK(h.config.shared_classifier == w.config.shared_classifier);
    for (std::size_t l = 0; l < w.layers.size(); ++l)
      for (int k = 0; k < lm::kKinds; ++k) CHECK(h.layers[l].W[k] == w.layers[l].W[k]);
    check_identical(lm::collect_statistics(h, seqs, o), ref);
    // Without the inverse permutation the rotary pairs would be wrong: the
    // permuted q differs from the original.
    CHECK(Mat<float>(lm::hf_permute(w.layers[0].W[lm::kQ], w.config.n_heads)) != w.layers[0].W[lm::kQ]);
  }
  SUBCASE("Hugging Face BF16: the weights rounded to bfloat16") {
    lm::write_hf_checkpoint(w, dir.path.string(), loftq::io::Dtype::BF16, 2);
    const lm::Weights<float> h = lm::read_hf_checkpoint(dir.path.string());
    const lm::Weights<float> r = rounded(w, loftq::io::Dtype::BF16);
    CHECK(h.layers[0].W[lm::kQ] != w.layers[0].W[lm::kQ]);
    check_identical(lm::collect_statistics(h, seqs, o), lm::collect_statistics(r, seqs, o));
  }
  SUBCASE("GGUF BF16 and F16: the weights rounded") {
    write_gguf(w, dir / "bf.gguf", GgufWeights::bf16);
    check_identical(lm::collect_statistics(lm::read_model(dir / "bf.gguf"), seqs, o),
                    lm::collect_statistics(rounded(w, loftq::io::Dtype::BF16), seqs, o));
    write_gguf(w, dir / "f16.gguf", GgufWeights::f16);
    check_identical(lm::collect_statistics(lm::read_model(dir / "f16.gguf"), seqs, o),
                    lm::collect_statistics(rounded(w, loftq::io::Dtype::F16), seqs, o));
  }
  SUBCASE("GGUF F32") {
    write_gguf(w, dir / "m.gguf", GgufWeights::f32);
    const lm::Weights<float> g = lm::read_model(dir / "m.gguf");
    CHECK(g.config.vocab_size == w.config.vocab_size);
    check_identical(lm::collect_statistics(g, seqs, o), ref);
  }
  SUBCASE("GGUF F16") {
    write_gguf(w, dir / "m16.gguf", GgufWeights::f16);
    const lm::Weights<float> g = lm::read_model(dir / "m16.gguf");
    CHECK(g.layers[0].W[lm::kQ] != w.layers[0].W[lm::kQ]);
    const lm::Calibration got = lm::collect_statistics(g, seqs, o);
    for (std::size_t i = 0; i < ref.inputs.size(); ++i)
      CHECK(rel_diff(got.inputs[i].stats.gram(), ref.inputs[i].stats.gram()) < 1e-2);
  }
  SUBCASE("GGUF Q8_0: ggml's dequantization") {
    write_gguf(w, dir / "q8.gguf", GgufWeights::q8_0);
    const lm::Weights<float> g = lm::read_model(dir / "q8.gguf");
    const Mat<float> expect = q8_0_dequant(w.layers[1].W[lm::kGate]);
    CHECK(g.layers[1].W[lm::kGate] == expect);
    CHECK(g.layers[1].W[lm::kGate] != w.layers[1].W[lm::kGate]);
    CHECK(g.layers[1].W[lm::kDown] == w.layers[1].W[lm::kDown]);  // 172 columns: not whole blocks, kept F32
    lm::Weights<float> d = w;
    for (auto& lw : d.layers)
      for (int k = 0; k < lm::kKinds; ++k)
        if (lw.W[k].cols() % 32 == 0) lw.W[k] = q8_0_dequant(lw.W[k]);
    d.embedding = q8_0_dequant(w.embedding);
    check_identical(lm::collect_statistics(g, seqs, o), lm::collect_statistics(d, seqs, o));
  }
}

TEST_CASE("loaders refuse inconsistent checkpoints") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  TempDir dir("bad");
  lm::write_hf_checkpoint(w, dir.path.string(), loftq::io::Dtype::F32, 2);
  // A config whose hidden size disagrees with the tensors.
  std::string cfg;
  {
    std::ifstream f(dir / "config.json");
    cfg.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  const std::string key = "\"hidden_size\": " + std::to_string(w.config.dim);
  const std::size_t at = cfg.find(key);
  REQUIRE(at != std::string::npos);
  std::ofstream(dir / "config.json") << cfg.substr(0, at) << "\"hidden_size\": " << 2 * w.config.dim
                                     << cfg.substr(at + key.size());
  CHECK_THROWS_AS(lm::read_hf_checkpoint(dir.path.string()), loftq::Error);
  CHECK_THROWS_AS(lm::parse_hf_config("{\"model_type\": \"gpt2\"}", "x"), loftq::Error);
  CHECK_THROWS_AS(lm::parse_hf_config("[1]", "x"), loftq::Error);
  CHECK_THROWS_AS(lm::read_gguf_model(dir / "missing.gguf"), loftq::Error);
}

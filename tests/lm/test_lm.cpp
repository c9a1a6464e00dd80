// The llama2.c-format LM used by the fine-tuning example: checkpoint reader,
// forward pass (against reference logits and an independent per-token
// implementation), LoRA gradients (against finite differences), exactness of
// a zero LoRA, thread-count independence, and hostile checkpoints.

#include <doctest/doctest.h>

#include <loftq/io/npy.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "examples/lm/adam.hpp"
#include "common/llama2c.hpp"
#include "common/lm/model.hpp"

// Its own namespace: the test program compiles this file with others as one
// unit (tests/lm/CMakeLists.txt).
namespace test_lm {

namespace {

using lm::Mat;

std::string shared(const std::string& name) { return std::string(LOFTQ_SHARED_DATA_DIR) + "/" + name; }
bool exists(const std::string& path) { return std::ifstream(path).good(); }

// A 1-D little-endian int32 .npy (the reference tokens); loftq's reader
// handles floating-point arrays only.
std::vector<int> read_npy_int32(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<unsigned char> b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  REQUIRE(b.size() >= 10);
  REQUIRE(std::memcmp(b.data(), "\x93NUMPY", 6) == 0);
  REQUIRE(b[6] == 1);
  const std::size_t hlen = b[8] | (b[9] << 8);
  const std::string header(b.begin() + 10, b.begin() + 10 + static_cast<long>(hlen));
  REQUIRE(header.find("'<i4'") != std::string::npos);
  const std::size_t n = (b.size() - 10 - hlen) / 4;
  REQUIRE(header.find("(" + std::to_string(n) + ",)") != std::string::npos);
  std::vector<int> out(n);
  std::memcpy(out.data(), b.data() + 10 + hlen, n * 4);
  return out;
}

// Serializes weights in the checkpoint layout (negative vocab_size when the
// classifier is separate); the rotary tables are written from the formula.
std::vector<unsigned char> checkpoint_bytes(const lm::Weights<float>& w) {
  const lm::Config& c = w.config;
  std::vector<float> f;
  auto put = [&](const Mat<float>& M) {  // row-major (out, in)
    for (Eigen::Index i = 0; i < M.rows(); ++i)
      for (Eigen::Index j = 0; j < M.cols(); ++j) f.push_back(M(i, j));
  };
  auto putv = [&](const lm::Vec<float>& v) { f.insert(f.end(), v.data(), v.data() + v.size()); };
  put(w.embedding);
  for (auto& l : w.layers) putv(l.rms_att);
  for (int k : {lm::kQ, lm::kK, lm::kV, lm::kO})
    for (auto& l : w.layers) put(l.W[k]);
  for (auto& l : w.layers) putv(l.rms_ffn);
  for (int k : {lm::kGate, lm::kDown, lm::kUp})
    for (auto& l : w.layers) put(l.W[k]);
  putv(w.rms_final);
  const int half = c.head_size() / 2;
  for (int part = 0; part < 2; ++part)
    for (int t = 0; t < c.seq_len; ++t)
      for (int p = 0; p < half; ++p) {
        const double a = t * std::pow(10000.0, -2.0 * p / c.head_size());
        f.push_back(static_cast<float>(part == 0 ? std::cos(a) : std::sin(a)));
      }
  if (!c.shared_classifier) put(w.classifier);
  const std::int32_t h[7] = {c.dim,     c.hidden_dim, c.n_layers,
                             c.n_heads, c.n_kv_heads, c.shared_classifier ? c.vocab_size : -c.vocab_size,
                             c.seq_len};
  std::vector<unsigned char> bytes(sizeof h + f.size() * 4);
  std::memcpy(bytes.data(), h, sizeof h);
  std::memcpy(bytes.data() + sizeof h, f.data(), f.size() * 4);
  return bytes;
}

lm::Weights<float> random_weights(const lm::Config& c, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> n(0.f, 1.f);
  auto mat = [&](int r, int cols, float s) {
    Mat<float> M(r, cols);
    for (Eigen::Index i = 0; i < M.size(); ++i) M.data()[i] = s * n(g);
    return M;
  };
  auto vec = [&](int len) {
    lm::Vec<float> v(len);
    for (int i = 0; i < len; ++i) v(i) = 1.f + 0.2f * n(g);
    return v;
  };
  lm::Weights<float> w;
  w.config = c;
  w.embedding = mat(c.vocab_size, c.dim, 1.f);
  if (!c.shared_classifier) w.classifier = mat(c.vocab_size, c.dim, 0.5f);
  w.layers.resize(static_cast<std::size_t>(c.n_layers));
  for (auto& l : w.layers) {
    l.rms_att = vec(c.dim);
    l.rms_ffn = vec(c.dim);
    for (int k = 0; k < lm::kKinds; ++k) {
      const auto s = lm::kind_shape(c, k);
      l.W[k] = mat(s[0], s[1], 1.f / std::sqrt(static_cast<float>(s[1])));
    }
  }
  w.rms_final = vec(c.dim);
  return w;
}

lm::Config tiny_config(bool shared_classifier) {
  lm::Config c;
  c.dim = 16;
  c.hidden_dim = 24;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;  // grouped-query
  c.vocab_size = 32;
  c.seq_len = 16;
  c.shared_classifier = shared_classifier;
  return c;
}

std::vector<int> random_tokens(int T, int vocab, unsigned seed) {
  std::mt19937 g(seed);
  std::vector<int> t(static_cast<std::size_t>(T));
  for (auto& x : t) x = static_cast<int>(g() % static_cast<unsigned>(vocab));
  return t;
}

// run.c's forward, one token at a time with a key/value cache, written from
// run.c (plain loops, float tables of its own), sharing nothing with lm::
// beyond the weight container.
template <class S>
Mat<S> per_token_logits(const lm::Weights<S>& w, const std::vector<int>& tokens) {
  const lm::Config& c = w.config;
  const int d = c.dim, hd = c.hidden_dim, hs = d / c.n_heads, kvd = d * c.n_kv_heads / c.n_heads;
  const int kvmul = c.n_heads / c.n_kv_heads, T = static_cast<int>(tokens.size());
  const Mat<S>& cls = c.shared_classifier ? w.embedding : w.classifier;
  std::vector<std::vector<S>> kc(w.layers.size(), std::vector<S>(static_cast<std::size_t>(T * kvd)));
  std::vector<std::vector<S>> vc = kc;
  auto rmsnorm = [&](std::vector<S>& o, const std::vector<S>& x, const lm::Vec<S>& wt) {
    S ss = 0;
    for (int j = 0; j < d; ++j) ss += x[j] * x[j];
    ss = S(1) / std::sqrt(ss / d + S(1e-5));
    for (int j = 0; j < d; ++j) o[j] = wt(j) * (ss * x[j]);
  };
  auto matmul = [](std::vector<S>& o, const std::vector<S>& x, const Mat<S>& W) {
    for (Eigen::Index i = 0; i < W.rows(); ++i) {
      S v = 0;
      for (Eigen::Index j = 0; j < W.cols(); ++j) v += W(i, j) * x[static_cast<std::size_t>(j)];
      o[static_cast<std::size_t>(i)] = v;
    }
  };
  Mat<S> logits(T, c.vocab_size);
  std::vector<S> x(d), xb(d), xb2(d), q(d), k(kvd), v(kvd), hb(hd), hb2(hd), att(T), lg(c.vocab_size);
  for (int pos = 0; pos < T; ++pos) {
    for (int j = 0; j < d; ++j) x[j] = w.embedding(tokens[pos], j);
    for (std::size_t l = 0; l < w.layers.size(); ++l) {
      const auto& L = w.layers[l];
      rmsnorm(xb, x, L.rms_att);
      matmul(q, xb, L.W[lm::kQ]);
      matmul(k, xb, L.W[lm::kK]);
      matmul(v, xb, L.W[lm::kV]);
      for (int i = 0; i < d; i += 2) {
        const double freq = 1.0 / std::pow(10000.0, static_cast<double>(i % hs) / hs);
        const S fr = static_cast<S>(std::cos(pos * freq)), fi = static_cast<S>(std::sin(pos * freq));
        for (int r = 0; r < (i < kvd ? 2 : 1); ++r) {
          std::vector<S>& vec = r == 0 ? q : k;
          const S v0 = vec[i], v1 = vec[i + 1];
          vec[i] = v0 * fr - v1 * fi;
          vec[i + 1] = v0 * fi + v1 * fr;
        }
      }
      std::copy(k.begin(), k.end(), kc[l].begin() + pos * kvd);
      std::copy(v.begin(), v.end(), vc[l].begin() + pos * kvd);
      for (int h = 0; h < c.n_heads; ++h) {
        const int kvh = h / kvmul;
        S mx = -1e30f;
        for (int t = 0; t <= pos; ++t) {
          S s = 0;
          for (int i = 0; i < hs; ++i) s += q[h * hs + i] * kc[l][t * kvd + kvh * hs + i];
          att[t] = s / std::sqrt(static_cast<S>(hs));
          mx = std::max(mx, att[t]);
        }
        S sum = 0;
        for (int t = 0; t <= pos; ++t) sum += (att[t] = std::exp(att[t] - mx));
        for (int i = 0; i < hs; ++i) {
          S o = 0;
          for (int t = 0; t <= pos; ++t) o += att[t] / sum * vc[l][t * kvd + kvh * hs + i];
          xb[h * hs + i] = o;
        }
      }
      matmul(xb2, xb, L.W[lm::kO]);
      for (int j = 0; j < d; ++j) x[j] += xb2[j];
      rmsnorm(xb, x, L.rms_ffn);
      matmul(hb, xb, L.W[lm::kGate]);
      matmul(hb2, xb, L.W[lm::kUp]);
      for (int i = 0; i < hd; ++i) hb[i] = hb[i] / (S(1) + std::exp(-hb[i])) * hb2[i];
      std::vector<S> down(d);
      matmul(down, hb, L.W[lm::kDown]);
      for (int j = 0; j < d; ++j) x[j] += down[j];
    }
    rmsnorm(xb, x, w.rms_final);
    matmul(lg, xb, cls);
    for (int j = 0; j < c.vocab_size; ++j) logits(pos, j) = lg[j];
  }
  return logits;
}

const std::array<bool, lm::kKinds> kAllKinds = {true, true, true, true, true, true, true};

// A LoRA with random, non-zero A and B on every kind.
template <class S>
lm::Lora<S> random_lora(const lm::Config& c, int rank, unsigned seed) {
  lm::Lora<S> lora = lm::make_lora<S>(c, rank, 2.0 * rank, kAllKinds);
  std::mt19937 g(seed);
  std::normal_distribution<double> n(0.0, 0.3);
  for (auto& layer : lora.layers)
    for (auto& a : layer) {
      for (Eigen::Index i = 0; i < a.A.size(); ++i) a.A.data()[i] = static_cast<S>(n(g));
      for (Eigen::Index i = 0; i < a.B.size(); ++i) a.B.data()[i] = static_cast<S>(n(g));
    }
  return lora;
}

// Examples for either loss: positions from `first` on count; the teacher is
// another random model's next-token distribution.
template <class S>
std::vector<lm::Example<S>> make_batch(const lm::Weights<S>& teacher, int n, int T, int first, unsigned seed) {
  const lm::Config& c = teacher.config;
  std::vector<lm::Example<S>> batch(static_cast<std::size_t>(n));
  for (int b = 0; b < n; ++b) {
    auto& e = batch[static_cast<std::size_t>(b)];
    e.tokens = random_tokens(T - b % 2, c.vocab_size, seed + static_cast<unsigned>(b));  // ragged lengths
    const std::size_t len = e.tokens.size();
    e.targets = random_tokens(static_cast<int>(len), c.vocab_size, seed + 100 + static_cast<unsigned>(b));
    e.mask.assign(len, 0);
    for (std::size_t t = static_cast<std::size_t>(first); t < len; ++t) e.mask[t] = 1;
    e.teacher = lm::softmax_rows(lm::forward_logits<S>(teacher, nullptr, {e.tokens})[0]);
  }
  return batch;
}

}  // namespace

TEST_CASE("forward pass matches the reference logits of stories260K") {
  const std::string bin = shared("stories260K.bin");
  if (!exists(bin) || !exists(shared("stories260K_logits.npy"))) {
    MESSAGE("skipped: " << bin << " or the reference logits are absent");
    return;
  }
  const lm::Weights<float> w = lm::read_checkpoint(bin);
  CHECK(w.config.dim == 64);
  CHECK(w.config.n_kv_heads == 4);
  CHECK(w.config.shared_classifier);
  const std::vector<int> tokens = read_npy_int32(shared("stories260K_logits_tokens.npy"));
  const auto ref = loftq::io::read_npy_matrix<float>(shared("stories260K_logits.npy"));
  REQUIRE(ref.rows() == static_cast<Eigen::Index>(tokens.size()));
  const Mat<float> logits = lm::forward_logits<float>(w, nullptr, {tokens})[0];
  REQUIRE(logits.rows() == ref.rows());
  REQUIRE(logits.cols() == ref.cols());
  const double err = (logits - ref).cwiseAbs().maxCoeff();
  MESSAGE("max |logit - reference| = " << err);
  CHECK(err < 1e-4);

  // The per-token KV-cache loop gives the same logits.
  const double err2 = (per_token_logits(w, tokens) - logits).cwiseAbs().maxCoeff();
  CHECK(err2 < 1e-4);
}

TEST_CASE("forward pass matches a per-token implementation on a tiny GQA model") {
  for (bool shared_cls : {true, false}) {
    const lm::Weights<double> w = random_weights(tiny_config(shared_cls), 7).cast<double>();
    const std::vector<int> tokens = random_tokens(13, w.config.vocab_size, 3);
    const Mat<double> a = lm::forward_logits<double>(w, nullptr, {tokens})[0];
    const Mat<double> b = per_token_logits(w, tokens);
    CHECK((a - b).cwiseAbs().maxCoeff() < 1e-12);
  }
}

TEST_CASE("LoRA gradients match central finite differences in double") {
  const lm::Config c = tiny_config(true);
  const lm::Weights<double> w = random_weights(c, 11).cast<double>();
  const lm::Weights<double> teacher = random_weights(c, 12).cast<double>();
  const auto batch = make_batch(teacher, 3, 7, 2, 5);
  for (lm::Loss kind : {lm::Loss::cross_entropy, lm::Loss::kl}) {
    lm::Lora<double> lora = random_lora<double>(c, 3, 21);
    lm::Lora<double> grad;
    lm::loss_and_grad(w, lora, batch, kind, &grad);
    const double h = 1e-5;
    for (std::size_t l = 0; l < lora.layers.size(); ++l)
      for (int k = 0; k < lm::kKinds; ++k)
        for (int which = 0; which < 2; ++which) {
          Mat<double>& P = which == 0 ? lora.layers[l][k].A : lora.layers[l][k].B;
          const Mat<double>& G = which == 0 ? grad.layers[l][k].A : grad.layers[l][k].B;
          double worst = 0, scale = G.cwiseAbs().maxCoeff();
          for (Eigen::Index i = 0; i < P.size(); ++i) {
            const double p0 = P.data()[i];
            P.data()[i] = p0 + h;
            const double up = lm::loss_and_grad(w, lora, batch, kind, nullptr);
            P.data()[i] = p0 - h;
            const double dn = lm::loss_and_grad(w, lora, batch, kind, nullptr);
            P.data()[i] = p0;
            worst = std::max(worst, std::abs((up - dn) / (2 * h) - G.data()[i]));
          }
          INFO("loss " << (kind == lm::Loss::kl ? "kl" : "ce") << ", layer " << l << ", " << lm::kind_name(k)
                       << (which == 0 ? " lora_A" : " lora_B") << ": max |fd - analytic| " << worst << ", max |g| "
                       << scale);
          CHECK(scale > 1e-4);  // the check is not vacuous
          CHECK(worst < 1e-7 + 1e-6 * scale);
        }
  }
}

TEST_CASE("with lora_B = 0 the logits equal the base model's exactly") {
  const std::string bin = shared("stories260K.bin");
  const lm::Weights<float> w = exists(bin) ? lm::read_checkpoint(bin) : random_weights(tiny_config(true), 3);
  lm::Lora<float> lora = random_lora<float>(w.config, 8, 4);
  for (auto& layer : lora.layers)
    for (auto& a : layer) a.B.setZero();
  const std::vector<std::vector<int>> seqs = {random_tokens(12, w.config.vocab_size, 1),
                                              random_tokens(9, w.config.vocab_size, 2)};
  const auto base = lm::forward_logits<float>(w, nullptr, seqs);
  const auto with = lm::forward_logits<float>(w, &lora, seqs);
  for (std::size_t i = 0; i < seqs.size(); ++i) CHECK((base[i].array() == with[i].array()).all());
}

TEST_CASE("loss and gradients are bit-identical for 1 and 2 threads") {
#ifndef _OPENMP
  MESSAGE("skipped: built without OpenMP");
#else
  const std::string bin = shared("stories260K.bin");
  const lm::Weights<float> w = exists(bin) ? lm::read_checkpoint(bin) : random_weights(tiny_config(true), 3);
  const lm::Weights<float> teacher = random_weights(w.config, 9);
  const auto batch = make_batch(teacher, 9, 16, 3, 8);
  std::size_t positions = 0;
  for (const auto& e : batch) positions += e.tokens.size();
  REQUIRE(positions >= lm::kParallelMinPositions);  // the batch does run in parallel
  const lm::Lora<float> lora = random_lora<float>(w.config, 4, 6);
  const int saved = omp_get_max_threads();
  for (lm::Loss kind : {lm::Loss::cross_entropy, lm::Loss::kl}) {
    lm::Lora<float> g1, g2;
    omp_set_num_threads(1);
    const double l1 = lm::loss_and_grad(w, lora, batch, kind, &g1);
    omp_set_num_threads(2);
    const double l2 = lm::loss_and_grad(w, lora, batch, kind, &g2);
    CHECK(std::memcmp(&l1, &l2, sizeof l1) == 0);
    g1.for_each(g2, [](Mat<float>& a, Mat<float>& b) {
      CHECK(std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0);
    });
  }
  omp_set_num_threads(saved);
#endif
}

TEST_CASE("Adam lowers the loss and follows torch's update rule") {
  const lm::Config c = tiny_config(true);
  const lm::Weights<double> w = random_weights(c, 11).cast<double>();
  const auto batch = make_batch(random_weights(c, 12).cast<double>(), 3, 8, 1, 5);
  lm::Lora<double> lora = random_lora<double>(c, 2, 1);
  // One step from zero moments moves every parameter by lr * g / (|g| + eps').
  lm::Lora<double> before = lora, grad;
  lm::Adam<double> opt(1e-3);
  const double l0 = lm::loss_and_grad(w, lora, batch, lm::Loss::kl, &grad);
  opt.step(lora, grad);
  const double g = grad.layers[0][lm::kQ].A(0, 0);
  CHECK(lora.layers[0][lm::kQ].A(0, 0) ==
        doctest::Approx(before.layers[0][lm::kQ].A(0, 0) - 1e-3 * g / (std::abs(g) + 1e-8)));
  for (int s = 0; s < 30; ++s) {
    lm::loss_and_grad(w, lora, batch, lm::Loss::kl, &grad);
    opt.step(lora, grad);
  }
  CHECK(lm::loss_and_grad(w, lora, batch, lm::Loss::kl, nullptr) < l0);
}

TEST_CASE("the checkpoint reader round-trips and rejects hostile files") {
  for (bool shared_cls : {true, false}) {
    const lm::Weights<float> w = random_weights(tiny_config(shared_cls), 5);
    const auto bytes = checkpoint_bytes(w);
    const lm::Weights<float> r = lm::parse_checkpoint(bytes);
    CHECK(r.config.shared_classifier == shared_cls);
    CHECK(r.output_matrix() == w.output_matrix());
    CHECK(r.layers[1].W[lm::kDown] == w.layers[1].W[lm::kDown]);
    CHECK(r.layers[1].W[lm::kUp] == w.layers[1].W[lm::kUp]);
    CHECK(r.rms_final == w.rms_final);
  }
  const auto good = checkpoint_bytes(random_weights(tiny_config(false), 5));
  auto expect_error = [](const std::vector<unsigned char>& b, loftq::Errc code) {
    try {
      lm::parse_checkpoint(b, "bad.bin");
      FAIL("accepted a bad checkpoint");
    } catch (const loftq::Error& e) {
      CHECK(e.code() == code);
      CHECK(std::string(e.what()).find("bad.bin") != std::string::npos);
    }
  };
  expect_error({}, loftq::Errc::parse_error);
  expect_error(std::vector<unsigned char>(good.begin(), good.begin() + 27), loftq::Errc::parse_error);
  expect_error(std::vector<unsigned char>(good.begin(), good.end() - 4), loftq::Errc::parse_error);  // truncated
  expect_error(std::vector<unsigned char>(good.begin(), good.begin() + 28), loftq::Errc::parse_error);
  auto extra = good;
  extra.push_back(0);
  expect_error(extra, loftq::Errc::parse_error);
  auto with_field = [&](int field, std::int32_t value) {
    auto b = good;
    std::memcpy(b.data() + 4 * field, &value, 4);
    return b;
  };
  expect_error(with_field(0, 0), loftq::Errc::parse_error);          // dim 0
  expect_error(with_field(0, 17), loftq::Errc::parse_error);         // dim not a multiple of n_heads
  expect_error(with_field(3, 3), loftq::Errc::parse_error);          // n_heads not a multiple of n_kv_heads
  expect_error(with_field(4, 8), loftq::Errc::parse_error);          // more kv heads than heads
  expect_error(with_field(3, 16), loftq::Errc::parse_error);         // head_size 1 cannot rotate pairs
  expect_error(with_field(1, -5), loftq::Errc::parse_error);         // negative hidden_dim
  expect_error(with_field(5, INT32_MIN), loftq::Errc::parse_error);  // |vocab_size| overflows
  expect_error(with_field(2, INT32_MAX), loftq::Errc::parse_error);  // absurd n_layers
  expect_error(with_field(6, 1 << 23), loftq::Errc::parse_error);    // sizes no longer match the file
  expect_error(with_field(5, 32), loftq::Errc::parse_error);         // claims a shared classifier: trailing bytes
  auto nan = good;
  const float q = std::nanf("");
  std::memcpy(nan.data() + 28 + 4 * 40, &q, 4);
  expect_error(nan, loftq::Errc::non_finite);
  CHECK_THROWS_AS(lm::read_checkpoint("/nonexistent/model.bin"), loftq::Error);

  // The model refuses tokens outside the vocabulary or longer than seq_len.
  const lm::Weights<float> w = lm::parse_checkpoint(good);
  CHECK_THROWS_AS(lm::forward_logits<float>(w, nullptr, {{1, 32}}), loftq::Error);
  CHECK_THROWS_AS(lm::forward_logits<float>(w, nullptr, {std::vector<int>(17, 1)}), loftq::Error);
  CHECK_THROWS_AS(lm::forward_logits<float>(w, nullptr, {{}}), loftq::Error);
  // A replaced base weight of the wrong shape, or a LoRA that does not fit.
  lm::Weights<float> bad = w;
  bad.layers[1].W[lm::kUp] = Mat<float>::Zero(w.config.dim, w.config.dim);
  CHECK_THROWS_AS(lm::forward_logits<float>(bad, nullptr, {{1, 2}}), loftq::Error);
  lm::Lora<float> lora = lm::make_lora<float>(w.config, 2, 4, kAllKinds);
  lora.layers[0][lm::kV].B = Mat<float>::Zero(3, 2);
  CHECK_THROWS_AS(lm::forward_logits<float>(w, &lora, {{1, 2}}), loftq::Error);
}

}  // namespace test_lm

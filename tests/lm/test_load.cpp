// common/lm/load.hpp: Hugging Face safetensors, GGUF (F32, F16, BF16, Q8_0)
// and llama2.c checkpoints of the same weights load to the same model and
// give the same statistics; inconsistent checkpoints are refused.
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
#include "calibrate_support.hpp"

// Its own namespace: the test program compiles this file with others as one
// unit (tests/lm/CMakeLists.txt).
namespace test_load {

namespace {

using calibrate_test::check_identical;
using calibrate_test::exists;
using calibrate_test::GgufWeights;
using calibrate_test::q8_0_dequant;
using calibrate_test::random_sequences;
using calibrate_test::rel_diff;
using calibrate_test::rounded;
using calibrate_test::shared;
using calibrate_test::TempDir;
using calibrate_test::write_gguf;
using lm::Mat;

}  // namespace

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
  // The valid config with nesting beyond the tool's bound, or with a key twice, is refused as `loftq model` refuses
  // it (nlohmann's own parser would accept both), with the path.
  REQUIRE(cfg.front() == '{');
  CHECK_NOTHROW(lm::parse_hf_config(cfg, "ok/config.json"));
  const std::string deep = "{\"deep\": " + std::string(100000, '[') + std::string(100000, ']') + ", " + cfg.substr(1);
  CHECK_THROWS_WITH_AS(lm::parse_hf_config(deep, "deep/config.json"),
                       doctest::Contains("deep/config.json: JSON nested deeper than 64"), loftq::Error);
  const std::string twice = "{" + key + ", " + cfg.substr(1);
  CHECK_THROWS_WITH_AS(lm::parse_hf_config(twice, "twice/config.json"),
                       doctest::Contains("twice/config.json: duplicate key"), loftq::Error);
  CHECK_THROWS_AS(lm::read_gguf_model(dir / "missing.gguf"), loftq::Error);
}

}  // namespace test_load

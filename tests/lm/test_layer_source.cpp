// common/lm/layer_source.hpp: a model read a layer at a time gives, in every
// format, the layers of the whole-file readers and bit for bit the statistics
// of the whole model in memory; defects in the last layer's headers are
// refused at opening, a non-finite weight when its layer is reached.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "common/llama2c.hpp"
#include "common/lm/calibrate.hpp"
#include "common/lm/layer_source.hpp"
#include "common/lm/load.hpp"
#include "common/lm/save.hpp"
#include "calibrate_support.hpp"

// Its own namespace: the test program compiles this file with others as one
// unit (tests/lm/CMakeLists.txt).
namespace test_layer_source {

namespace {

using calibrate_test::check_identical;
using calibrate_test::exists;
using calibrate_test::GgufWeights;
using calibrate_test::NamedTensors;
using calibrate_test::random_sequences;
using calibrate_test::shared;
using calibrate_test::TempDir;
using calibrate_test::write_gguf;

// The layer-at-a-time statistics against the whole model's, full and
// diagonal, collected whole and streamed through on_layer.
void check_same_statistics(const std::string& path, const lm::Weights<float>& whole) {
  CAPTURE(path);
  const lm::LayerSource src(path);
  CHECK(src.config().n_layers == whole.config.n_layers);
  const auto seqs = random_sequences(whole.config.vocab_size, {17, 9, 17}, 7);
  for (loftq::StatsMode mode : {loftq::StatsMode::full, loftq::StatsMode::diagonal}) {
    lm::CalibrationOptions o;
    o.mode = mode;
    o.threads = 2;
    const lm::Calibration ref = lm::collect_statistics(whole, seqs, o);
    check_identical(lm::collect_statistics(src, seqs, o), ref);
    lm::Calibration streamed;
    o.batch = 1;
    o.on_layer = [&](std::vector<lm::LinearInput>& layer) {
      for (auto& in : layer) streamed.inputs.push_back(std::move(in));
    };
    const lm::Calibration rest = lm::collect_statistics(src, seqs, o);
    CHECK(rest.inputs.empty());
    streamed.tokens = rest.tokens;
    check_identical(streamed, ref);
  }
}

void check_same_layers(const lm::LayerSource& src, const lm::Weights<float>& w) {
  CHECK(src.embedding() == w.embedding);
  for (int l = 0; l < w.config.n_layers; ++l) {
    const lm::LayerWeights<float> got = src.layer(l);
    const auto& want = w.layers[static_cast<std::size_t>(l)];
    CHECK(got.rms_att == want.rms_att);
    CHECK(got.rms_ffn == want.rms_ffn);
    for (int k = 0; k < lm::kKinds; ++k) CHECK(got.W[k] == want.W[k]);
  }
  CHECK(src.rms_final() == w.rms_final);
}

}  // namespace

TEST_CASE("a model read a layer at a time gives the whole model's layers and statistics in every format") {
  REQUIRE_STORIES();
  const std::string bin = shared("stories260K.bin");
  // parse_checkpoint reads the file's bytes in sequence; the source seeks to
  // each layer's arrays.
  const lm::Weights<float> w = lm::read_checkpoint(bin);
  TempDir dir("layers");

  SUBCASE("llama2.c") {
    check_same_layers(lm::LayerSource(bin), w);
    check_same_statistics(bin, w);
  }
  SUBCASE("Hugging Face, sharded, q/k in transformers' order") {
    lm::write_hf_checkpoint(w, dir.path.string(), loftq::io::Dtype::F32, 2);
    check_same_layers(lm::LayerSource(dir.path.string()), w);
    check_same_statistics(dir.path.string(), lm::read_model(dir.path.string()));
  }
  SUBCASE("GGUF Q8_0") {
    write_gguf(w, dir / "q8.gguf", GgufWeights::q8_0);
    const lm::Weights<float> g = lm::read_model(dir / "q8.gguf");
    CHECK(g.layers[0].W[lm::kQ] != w.layers[0].W[lm::kQ]);
    check_same_layers(lm::LayerSource(dir / "q8.gguf"), g);
    check_same_statistics(dir / "q8.gguf", g);
  }
}

TEST_CASE("the classifier is not read for statistics") {
  REQUIRE_STORIES();
  lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  w.config.shared_classifier = false;
  w.classifier = w.embedding;
  w.classifier(3, 5) = std::numeric_limits<float>::quiet_NaN();
  TempDir dir("classifier");
  lm::write_hf_checkpoint(w, dir.path.string(), loftq::io::Dtype::F32, 2);
  try {
    lm::read_model(dir.path.string());
    FAIL("a NaN classifier was accepted");
  } catch (const loftq::Error& e) {
    CHECK(e.code() == loftq::Errc::non_finite);
    CHECK(std::string(e.what()).find("lm_head.weight") != std::string::npos);
  }
  const lm::LayerSource src(dir.path.string());
  const auto seqs = random_sequences(w.config.vocab_size, {12}, 3);
  w.classifier = lm::Mat<float>();
  w.config.shared_classifier = true;
  check_identical(lm::collect_statistics(src, seqs), lm::collect_statistics(w, seqs));
}

TEST_CASE("defects of the last layer: headers refused at opening, values when the layer is reached") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  const int last = w.config.n_layers - 1;
  const std::string down = "blk." + std::to_string(last) + ".ffn_down.weight";
  TempDir dir("defects");
  auto refused = [&](const std::string& path, loftq::Errc code, const std::string& text) {
    try {
      lm::LayerSource src(path);
      FAIL("opened");
    } catch (const loftq::Error& e) {
      CHECK(e.code() == code);
      CHECK(std::string(e.what()).find(path) != std::string::npos);
      CHECK(std::string(e.what()).find(text) != std::string::npos);
    }
  };
  SUBCASE("GGUF, a tensor missing or of the wrong shape") {
    write_gguf(w, dir / "missing.gguf", GgufWeights::f32, [&](NamedTensors& t) {
      t.erase(std::find_if(t.begin(), t.end(), [&](const auto& x) { return x.first == down; }));
    });
    refused(dir / "missing.gguf", loftq::Errc::parse_error, "tensor '" + down + "' is missing");
    write_gguf(w, dir / "shape.gguf", GgufWeights::f32, [&](NamedTensors& t) {
      for (auto& x : t)
        if (x.first == down) x.second = lm::RowMat(x.second.leftCols(x.second.cols() - 1));
    });
    refused(dir / "shape.gguf", loftq::Errc::parse_error, "tensor '" + down + "' has the wrong shape");
  }
  SUBCASE("Hugging Face, a tensor of the wrong shape") {
    lm::Weights<float> v = w;
    auto& W = v.layers[static_cast<std::size_t>(last)].W[lm::kUp];
    W = lm::Mat<float>(W.topRows(W.rows() - 1));
    lm::write_hf_checkpoint(v, dir.path.string(), loftq::io::Dtype::F32, 2);
    const std::string up = "model.layers." + std::to_string(last) + ".mlp.up_proj.weight";
    refused(dir.path.string(), loftq::Errc::parse_error,
            "tensor '" + up + "' is " + std::to_string(W.rows()) + " x " + std::to_string(W.cols()));
  }
  SUBCASE("llama2.c, a truncated file") {
    std::ifstream f(shared("stories260K.bin"), std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    bytes.resize(bytes.size() - 4);
    std::ofstream(dir / "short.bin", std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    refused(dir / "short.bin", loftq::Errc::parse_error, "(truncated)");
  }
  SUBCASE("an Inf in the last layer: the layers before it are delivered, then the error") {
    write_gguf(w, dir / "inf.gguf", GgufWeights::f32, [&](NamedTensors& t) {
      for (auto& x : t)
        if (x.first == down) x.second(1, 2) = std::numeric_limits<float>::infinity();
    });
    // The same in llama2.c's file: its down weights (w2) are the layers' in
    // turn, each dim x hidden_dim row-major.
    std::ifstream f(shared("stories260K.bin"), std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const lm::Config& c = w.config;
    const std::uint64_t at =
        lm::detail::layout(c, "x").w2 + static_cast<std::uint64_t>(last) * c.dim * c.hidden_dim + 1 * c.hidden_dim + 2;
    const float inf = std::numeric_limits<float>::infinity();
    std::memcpy(bytes.data() + lm::detail::kHeaderBytes + 4 * at, &inf, 4);
    std::ofstream(dir / "inf.bin", std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    const std::string bin_down = "layers." + std::to_string(last) + ".w2";
    for (const auto& [path, tensor] : {std::pair<std::string, std::string>{dir / "inf.gguf", down},
                                       std::pair<std::string, std::string>{dir / "inf.bin", bin_down}}) {
      CAPTURE(path);
      const lm::LayerSource src(path);
      int delivered = 0;
      lm::CalibrationOptions o;
      o.on_layer = [&](std::vector<lm::LinearInput>&) { ++delivered; };
      try {
        lm::collect_statistics(src, random_sequences(w.config.vocab_size, {8}, 1), o);
        FAIL("a non-finite weight was accepted");
      } catch (const loftq::Error& e) {
        CHECK(e.code() == loftq::Errc::non_finite);
        CHECK(std::string(e.what()).find(path + ": tensor '" + tensor + "'") != std::string::npos);
      }
      CHECK(delivered == last);
    }
  }
}

}  // namespace test_layer_source

// loftq/io/bnb.hpp: bitsandbytes NF4 checkpoints.
//
// The decoder below is written from bitsandbytes' published behaviour
// (functional.py dequantize_4bit / dequantize_blockwise, QuantState.from_dict)
// and reads only the file: it shares no code with the encoder.
#include <doctest/doctest.h>

#include <loftq/io/bnb.hpp>
#include <loftq/loftq.hpp>

#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "io_support.hpp"

// Its own namespace: the test program compiles this file with others as one
// unit (tests/io/CMakeLists.txt).
namespace test_bnb {

namespace io = loftq::io;
using io_test::error_code_of;
using io_test::random_matrix;
using io_test::scratch;

namespace {

std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

std::vector<float> floats_of(const io::SafetensorsFile& f, const std::string& name) {
  const io::TensorInfo& t = f.at(name);
  REQUIRE(t.dtype == io::Dtype::F32);
  std::vector<float> v(t.nbytes() / 4);
  f.read_bytes(t, 0, t.nbytes(), v.data());
  return v;
}

// Decodes weight `name` (rows x cols, row-major) the way bitsandbytes does.
std::vector<float> bnb_decode(const io::SafetensorsFile& f, const std::string& name, std::uint64_t rows,
                              std::uint64_t cols) {
  const std::uint64_t n = rows * cols;
  const io::TensorInfo& w = f.at(name);
  REQUIRE(w.dtype == io::Dtype::U8);
  REQUIRE(w.shape == std::vector<std::uint64_t>{(n + 1) / 2, 1});
  const io::TensorInfo& qs = f.at(name + ".quant_state.bitsandbytes__nf4");
  REQUIRE(qs.dtype == io::Dtype::U8);
  REQUIRE(qs.shape.size() == 1);
  const std::vector<unsigned char> raw = f.read_bytes(qs);
  const std::string text(raw.begin(), raw.end());
  const nlohmann::json j = nlohmann::json::parse(text);
  const std::uint64_t bs = j.at("blocksize").get<std::uint64_t>();
  const std::vector<float> qmap = floats_of(f, name + ".quant_map");
  REQUIRE(qmap.size() == 16);
  std::vector<float> absmax;
  const io::TensorInfo& am = f.at(name + ".absmax");
  if (j.contains("nested_offset")) {
    // dequantize_blockwise(absmax, state2) + offset, in fp32.
    REQUIRE(am.dtype == io::Dtype::U8);
    const std::vector<float> nabs = floats_of(f, name + ".nested_absmax");
    const std::vector<float> nmap = floats_of(f, name + ".nested_quant_map");
    const std::uint64_t nbs = j.at("nested_blocksize").get<std::uint64_t>();
    const float offset = static_cast<float>(j.at("nested_offset").get<double>());
    const std::vector<unsigned char> q = f.read_bytes(am);
    for (std::uint64_t b = 0; b < am.nbytes(); ++b) {
      volatile float prod = nmap.at(q[b]) * nabs.at(b / nbs);
      absmax.push_back(prod + offset);
    }
  } else {
    absmax = floats_of(f, name + ".absmax");
  }
  REQUIRE(absmax.size() == (n + bs - 1) / bs);
  const std::vector<unsigned char> bytes = f.read_bytes(w);
  std::vector<float> out(n);
  for (std::uint64_t e = 0; e < n; ++e) {
    const unsigned c = e % 2 == 0 ? bytes[e / 2] >> 4 : bytes[e / 2] & 0xF;
    volatile float v = qmap[c] * absmax[e / bs];
    out[e] = v;
  }
  return out;
}

}  // namespace

TEST_CASE("bnb-nf4 round trip: an independent decoder gives Q bit for bit, with and without double quant") {
  struct Shape {
    Eigen::Index m, n;
    std::int64_t block;
  };
  // 37 x 50: blocks of 64 cross rows and the last one is short, n is odd.
  // 300 x 256 at 64: > 256 blocks, so two nested blocks.
  for (const Shape sh : {Shape{37, 50, 64}, Shape{300, 256, 64}, Shape{33, 96, 128}}) {
    for (const bool dq : {false, true}) {
      CAPTURE(sh.m);
      CAPTURE(sh.block);
      CAPTURE(dq);
      const Eigen::MatrixXf W = random_matrix(sh.m, sh.n, static_cast<unsigned>(sh.m + dq));
      loftq::Options opt;
      opt.rank = 4;
      opt.iterations = 2;
      opt.scale_search = dq;  // error-optimal scales are any absmax to bitsandbytes
      loftq::Result<float> r =
          loftq::initialize(W, loftq::Quantizer(loftq::Quantizer::Kind::normal_float, 4, sh.block), opt);
      loftq::BnbNestedScales nested;
      if (dq) {
        const double before = r.error();
        const loftq::DoubleQuantEffect eff = loftq::bnb_double_quantize(W, r, nested, opt);
        CHECK(eff.error_before == before);
        CHECK(r.error() == eff.error_after);
        CHECK(eff.bits_per_weight_after < eff.bits_per_weight_before);
        CHECK(eff.error_after <= eff.error_rounded);
      }
      const io::BnbTarget t{"m.weight", static_cast<std::uint64_t>(sh.m), static_cast<std::uint64_t>(sh.n),
                            io::Dtype::BF16};
      const std::string path = scratch("bnb_" + std::to_string(sh.m) + (dq ? "_dq" : "") + ".safetensors");
      {
        io::SafetensorsWriter w(path, io::bnb_nf4_tensors(t, sh.block, dq));
        io::write_bnb_nf4(w, t, r.packed, dq ? &nested : nullptr);
        w.commit();
      }
      const io::SafetensorsFile f(path);
      const std::vector<float> q = bnb_decode(f, "m.weight", t.rows, t.cols);
      // r.Q is column-major; bitsandbytes' flattening is row-major.
      std::size_t mismatches = 0;
      for (Eigen::Index i = 0; i < sh.m; ++i)
        for (Eigen::Index j = 0; j < sh.n; ++j)
          mismatches += float_bits(q[static_cast<std::size_t>(i * sh.n + j)]) != float_bits(r.Q(i, j));
      CHECK(mismatches == 0);

      const io::TensorInfo& qs = f.at("m.weight.quant_state.bitsandbytes__nf4");
      const std::vector<unsigned char> raw = f.read_bytes(qs);
      const std::string text(raw.begin(), raw.end());
      const nlohmann::json j = nlohmann::json::parse(text);
      CHECK(j.at("quant_type") == "nf4");
      CHECK(j.at("blocksize") == sh.block);
      CHECK(j.at("dtype") == "bfloat16");
      CHECK(j.at("shape") == nlohmann::json::array({sh.m, sh.n}));
      if (dq) {
        CHECK(j.size() == 7);
        CHECK(j.at("nested_blocksize") == 256);
        CHECK(j.at("nested_dtype") == "float32");
        CHECK(static_cast<float>(j.at("nested_offset").get<double>()) == nested.offset);
        CHECK(f.at("m.weight.nested_quant_map").shape == std::vector<std::uint64_t>{256});
      } else {
        CHECK(j.size() == 4);
        // Byte for byte what json.dumps writes.
        CHECK(text == "{\"quant_type\": \"nf4\", \"blocksize\": " + std::to_string(sh.block) +
                          ", \"dtype\": \"bfloat16\", \"shape\": [" + std::to_string(sh.m) + ", " +
                          std::to_string(sh.n) + "]}");
      }
    }
  }
}

TEST_CASE("bnb-nf4 writer refuses what bitsandbytes cannot read") {
  const Eigen::MatrixXf W = random_matrix(16, 64, 3);
  loftq::Options opt;
  opt.rank = 2;
  opt.iterations = 1;
  const io::BnbTarget t{"m.weight", 16, 64, io::Dtype::F32};
  auto attempt = [&](int bits, loftq::Quantizer::Kind kind) {
    return error_code_of([&] {
      const loftq::Result<float> r = loftq::initialize(W, loftq::Quantizer(kind, bits, 64), opt);
      io::SafetensorsWriter w(scratch("bnb_bad.safetensors"), io::bnb_nf4_tensors(t, 64, false));
      io::write_bnb_nf4(w, t, r.packed, nullptr);
    });
  };
  CHECK(attempt(2, loftq::Quantizer::Kind::normal_float) == loftq::Errc::unsupported);
  CHECK(attempt(4, loftq::Quantizer::Kind::uniform) == loftq::Errc::unsupported);
  CHECK(!attempt(4, loftq::Quantizer::Kind::normal_float));
  CHECK(error_code_of([&] { (void)io::bnb_nf4_tensors(t, 32, false); }) == loftq::Errc::unsupported);
  CHECK(error_code_of([] { (void)io::bnb_dtype_name(io::Dtype::F64); }) == loftq::Errc::unsupported);
  // A skipped module that is a prefix of a quantized one would unquantize it in transformers.
  CHECK(error_code_of([] { (void)io::bnb_skip_modules({"a.gate_proj"}, {"a.gate"}); }) == loftq::Errc::unsupported);
  CHECK(io::bnb_skip_modules({"a.q_proj"}, {"a.k_proj", "a.k_proj"}) ==
        std::vector<std::string>{"a.k_proj", "lm_head"});
  CHECK(io::bnb_skip_modules({"lm_head"}, {}).empty());
  const nlohmann::json c = io::bnb_quantization_config(true, io::Dtype::BF16, {"lm_head"});
  CHECK(c.at("quant_method") == "bitsandbytes");
  CHECK(c.at("load_in_4bit") == true);
  CHECK(c.at("bnb_4bit_quant_type") == "nf4");
  CHECK(c.at("bnb_4bit_use_double_quant") == true);
  CHECK(c.at("bnb_4bit_compute_dtype") == "bfloat16");
  CHECK(c.at("bnb_4bit_quant_storage") == "uint8");
  CHECK(c.at("llm_int8_skip_modules") == nlohmann::json::array({"lm_head"}));
}

}  // namespace test_bnb

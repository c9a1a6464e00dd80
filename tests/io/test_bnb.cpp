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

namespace io = loftq::io;
using io_test::error_code_of;
using io_test::random_matrix;
using io_test::scratch;

namespace {

// create_dynamic_map() as torch 1.13 (CPU) computes it, fp32 bit patterns.
const std::uint32_t kTorchDynamicMap[256] = {
    0xbf7e3333u, 0xbf7a9999u, 0xbf770000u, 0xbf736666u, 0xbf6fccccu, 0xbf6c3333u, 0xbf68999au, 0xbf650000u, 0xbf616666u,
    0xbf5dccccu, 0xbf5a3333u, 0xbf569999u, 0xbf530000u, 0xbf4f6666u, 0xbf4bccccu, 0xbf483333u, 0xbf44999au, 0xbf410000u,
    0xbf3d6667u, 0xbf39cccdu, 0xbf363334u, 0xbf32999au, 0xbf2f0000u, 0xbf2b6667u, 0xbf27cccdu, 0xbf243333u, 0xbf20999au,
    0xbf1d0000u, 0xbf196666u, 0xbf15cccdu, 0xbf123334u, 0xbf0e999au, 0xbf0b0000u, 0xbf076666u, 0xbf03cccdu, 0xbf003333u,
    0xbef93334u, 0xbef20000u, 0xbeeaccccu, 0xbee3999au, 0xbedc6666u, 0xbed53332u, 0xbece0000u, 0xbec6ccccu, 0xbebf999au,
    0xbeb86666u, 0xbeb13332u, 0xbeaa0000u, 0xbea2ccccu, 0xbe9b999au, 0xbe946666u, 0xbe8d3334u, 0xbe860000u, 0xbe7d999au,
    0xbe6f3334u, 0xbe60cccdu, 0xbe526666u, 0xbe440000u, 0xbe359999u, 0xbe273333u, 0xbe18cccdu, 0xbe0a6666u, 0xbdf80000u,
    0xbddb3334u, 0xbdc9eb85u, 0xbdc428f5u, 0xbdbe6667u, 0xbdb8a3d7u, 0xbdb2e148u, 0xbdad1eb8u, 0xbda75c28u, 0xbda1999au,
    0xbd9bd70au, 0xbd96147bu, 0xbd9051ebu, 0xbd8a8f5du, 0xbd84cccdu, 0xbd7e147au, 0xbd728f5du, 0xbd670a3du, 0xbd5b851fu,
    0xbd500000u, 0xbd447ae1u, 0xbd38f5c3u, 0xbd2d70a3u, 0xbd21eb85u, 0xbd166667u, 0xbd0ae147u, 0xbcfeb852u, 0xbce7ae13u,
    0xbcd0a3d7u, 0xbcb9999au, 0xbca28f5cu, 0xbc8b851fu, 0xbc68f5c3u, 0xbc3ae148u, 0xbc1f3b64u, 0xbc160418u, 0xbc0ccccdu,
    0xbc039581u, 0xbbf4bc6au, 0xbbe24dd3u, 0xbbcfdf3bu, 0xbbbd70a4u, 0xbbab020du, 0xbb989374u, 0xbb8624ddu, 0xbb676c8au,
    0xbb428f5cu, 0xbb1db22du, 0xbaf1a9fcu, 0xbaa7ef9du, 0xba7765ffu, 0xba59e83eu, 0xba3c6a80u, 0xba1eecc1u, 0xba016f01u,
    0xb9c7e283u, 0xb98ce705u, 0xb923d70bu, 0xb8ba1f4bu, 0xb88aefb3u, 0xb8378034u, 0xb7b24206u, 0xb70205ffu, 0xb65a1a94u,
    0xb513a3b7u, 0x00000000u, 0x3513a3b7u, 0x365a1a94u, 0x370205ffu, 0x37b24206u, 0x38378034u, 0x388aefb3u, 0x38ba1f4bu,
    0x3923d70bu, 0x398ce705u, 0x39c7e283u, 0x3a016f01u, 0x3a1eecc1u, 0x3a3c6a80u, 0x3a59e83eu, 0x3a7765ffu, 0x3aa7ef9du,
    0x3af1a9fcu, 0x3b1db22du, 0x3b428f5cu, 0x3b676c8au, 0x3b8624ddu, 0x3b989374u, 0x3bab020du, 0x3bbd70a4u, 0x3bcfdf3bu,
    0x3be24dd3u, 0x3bf4bc6au, 0x3c039581u, 0x3c0ccccdu, 0x3c160418u, 0x3c1f3b64u, 0x3c3ae148u, 0x3c68f5c3u, 0x3c8b851fu,
    0x3ca28f5cu, 0x3cb9999au, 0x3cd0a3d7u, 0x3ce7ae13u, 0x3cfeb852u, 0x3d0ae147u, 0x3d166667u, 0x3d21eb85u, 0x3d2d70a3u,
    0x3d38f5c3u, 0x3d447ae1u, 0x3d500000u, 0x3d5b851fu, 0x3d670a3du, 0x3d728f5du, 0x3d7e147au, 0x3d84cccdu, 0x3d8a8f5du,
    0x3d9051ebu, 0x3d96147bu, 0x3d9bd70au, 0x3da1999au, 0x3da75c28u, 0x3dad1eb8u, 0x3db2e148u, 0x3db8a3d7u, 0x3dbe6667u,
    0x3dc428f5u, 0x3dc9eb85u, 0x3ddb3334u, 0x3df80000u, 0x3e0a6666u, 0x3e18cccdu, 0x3e273333u, 0x3e359999u, 0x3e440000u,
    0x3e526666u, 0x3e60cccdu, 0x3e6f3334u, 0x3e7d999au, 0x3e860000u, 0x3e8d3334u, 0x3e946666u, 0x3e9b999au, 0x3ea2ccccu,
    0x3eaa0000u, 0x3eb13332u, 0x3eb86666u, 0x3ebf999au, 0x3ec6ccccu, 0x3ece0000u, 0x3ed53332u, 0x3edc6666u, 0x3ee3999au,
    0x3eeaccccu, 0x3ef20000u, 0x3ef93334u, 0x3f003333u, 0x3f03cccdu, 0x3f076666u, 0x3f0b0000u, 0x3f0e999au, 0x3f123334u,
    0x3f15cccdu, 0x3f196666u, 0x3f1d0000u, 0x3f20999au, 0x3f243333u, 0x3f27cccdu, 0x3f2b6667u, 0x3f2f0000u, 0x3f32999au,
    0x3f363334u, 0x3f39cccdu, 0x3f3d6667u, 0x3f410000u, 0x3f44999au, 0x3f483333u, 0x3f4bccccu, 0x3f4f6666u, 0x3f530000u,
    0x3f569999u, 0x3f5a3333u, 0x3f5dccccu, 0x3f616666u, 0x3f650000u, 0x3f68999au, 0x3f6c3333u, 0x3f6fccccu, 0x3f736666u,
    0x3f770000u, 0x3f7a9999u, 0x3f7e3333u, 0x3f800000u,
};

float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
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

TEST_CASE("bitsandbytes tables: NF4 as get_4bit_type, the dynamic map as torch builds it") {
  const std::vector<float>& nf4 = loftq::normal_float_codebook(4);
  REQUIRE(nf4.size() == 16);
  const double bnb[16] = {-1.0,
                          -0.6961928009986877,
                          -0.5250730514526367,
                          -0.39491748809814453,
                          -0.28444138169288635,
                          -0.18477343022823334,
                          -0.09105003625154495,
                          0.0,
                          0.07958029955625534,
                          0.16093020141124725,
                          0.24611230194568634,
                          0.33791524171829224,
                          0.44070982933044434,
                          0.5626170039176941,
                          0.7229568362236023,
                          1.0};
  for (int i = 0; i < 16; ++i) {
    CHECK(float_bits(nf4[static_cast<std::size_t>(i)]) == float_bits(static_cast<float>(bnb[i])));
    CHECK(float_bits(io::bnb_nf4_table()[static_cast<std::size_t>(i)]) == float_bits(static_cast<float>(bnb[i])));
  }
  const std::vector<float>& map = loftq::bnb_dynamic_map();
  REQUIRE(map.size() == 256);
  for (std::size_t i = 0; i < 256; ++i) CHECK(float_bits(map[i]) == kTorchDynamicMap[i]);
  CHECK(bits_to_float(kTorchDynamicMap[255]) == 1.0f);
}

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

TEST_CASE("bnb nested scales: positive scales stay positive, the offset is their mean") {
  std::vector<float> s(600);
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = i % 50 == 0 ? 2.0f : 0.001f * static_cast<float>(1 + i % 7);
  s[3] = 0.0f;
  const loftq::BnbNestedScales D = loftq::bnb_double_quantize_scales(s);
  REQUIRE(D.absmax.size() == 3);
  double sum = 0;
  for (float x : s) sum += x;
  CHECK(D.offset == static_cast<float>(sum / 600.0));
  const std::vector<float> rec = loftq::recover_scales(D);
  for (std::size_t i = 0; i < s.size(); ++i) {
    CAPTURE(i);
    CHECK(rec[i] >= 0.0f);
    if (s[i] > 0.0f) CHECK(rec[i] > 0.0f);
  }
  CHECK(error_code_of([] { (void)loftq::bnb_double_quantize_scales({1.0f, -1.0f}); }) == loftq::Errc::invalid_argument);
  CHECK(error_code_of([] { (void)loftq::bnb_double_quantize_scales({}); }) == loftq::Errc::invalid_argument);
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

// loftq/io/packed_file.hpp: packed files written, read back and checked
// against the packed layout.
#include <doctest/doctest.h>

#include <loftq/io/packed_file.hpp>
#include <loftq/loftq.hpp>

#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "io_support.hpp"

// Its own namespace: the test program compiles this file with others as one
// unit (tests/io/CMakeLists.txt).
namespace test_packed_file {

namespace io = loftq::io;
using io_test::error_code_of;
using io_test::loftq_result;
using io_test::random_matrix;
using io_test::scratch;

TEST_CASE("packed file round trip, mixed widths and double-quantized scales") {
  for (bool dq : {false, true}) {
    CAPTURE(dq);
    const Eigen::MatrixXf W1 = random_matrix(40, 24, 3), W2 = random_matrix(17, 30, 4);  // 510: a short last block
    const loftq::Result<float> r1 = loftq_result(W1, 4, 3, dq), r2 = loftq_result(W2, 2, 3, dq);
    const std::string path = scratch(std::string("packed") + (dq ? "_dq" : "") + ".safetensors");
    io::PackedSettings s;
    s.block_size = 64;
    s.double_quant = dq;
    {
      io::PackedWriter w(path, {{"a.weight", 40, 24, 4}, {"b.weight", 17, 30, 2}}, s);
      w.write("b.weight", r2.packed);
      w.write("a.weight", r1.packed);
      w.commit();
    }
    const io::SafetensorsFile f(path);
    CHECK(f.metadata().at("loftq.bits") == "mixed");
    CHECK(f.metadata().at("a.weight.bits") == "4");
    CHECK(f.find(dq ? "a.weight.qscales_q" : "a.weight.qscales") != nullptr);
    const io::PackedFile back = io::read_packed(f);
    CHECK(back.settings.kind == s.kind);
    CHECK(back.settings.block_size == s.block_size);
    CHECK(back.settings.scale_search == s.scale_search);
    CHECK(back.settings.double_quant == dq);
    REQUIRE(back.tensors.size() == 2);
    const std::pair<const char*, const loftq::Result<float>*> cases[] = {{"a.weight", &r1}, {"b.weight", &r2}};
    for (const auto& [name, res] : cases) {
      CAPTURE(name);
      const loftq::PackedMatrix& P = back.tensors.at(name);
      CHECK(P.codes == res->packed.codes);
      CHECK(P.scales == res->packed.scales);
      CHECK(P.codebook == res->packed.codebook);
      CHECK(P.scale_dq.codes == res->packed.scale_dq.codes);
      // What the file stands for is the Q the LoftQ run holds.
      const loftq::RowMatrix<float> Q = loftq::dequantize(P);
      CHECK(Q == loftq::RowMatrix<float>(res->Q));
    }
  }
}

TEST_CASE("packed writer and reader refuse inconsistent data") {
  const Eigen::MatrixXf W = random_matrix(16, 16, 5);
  const loftq::Result<float> r = loftq_result(W, 4, 2, false);
  io::PackedSettings s;
  const std::string path = scratch("packed_bad.safetensors");
  {
    io::PackedWriter w(path, {{"w.weight", 16, 16, 3}}, s);  // declared 3 bits, result is 4-bit
    CHECK(error_code_of([&] { w.write("w.weight", r.packed); }) == loftq::Errc::invalid_argument);
    s.double_quant = true;
  }
  {
    io::PackedWriter w(path, {{"w.weight", 16, 16, 4}}, s);  // expects double-quantized scales
    CHECK(error_code_of([&] { w.write("w.weight", r.packed); }) == loftq::Errc::invalid_argument);
  }
  {
    // A ggml type's blocks are GGUF's to store, whatever else matches.
    io::PackedWriter w(path, {{"w.weight", 16, 16, 4}}, io::PackedSettings{});
    loftq::PackedMatrix P = r.packed;
    P.ggml_format = loftq::GgmlFormat::q4_0;
    std::string what;
    try {
      w.write("w.weight", P);
    } catch (const loftq::Error& e) {
      CHECK(e.code() == loftq::Errc::invalid_argument);
      what = e.what();
    }
    CHECK(what.find("q4_0") != std::string::npos);
    CHECK(what.find("GGUF") != std::string::npos);
    w.write("w.weight", r.packed);  // the same matrix without the ggml type is written
  }
  // A file that is not a packed file.
  const std::string plain = scratch("plain.safetensors");
  {
    io::SafetensorsWriter w(plain, {{"x", io::Dtype::F32, {1}}}, {{"format", "pt"}});
    const float x = 1;
    w.write("x", &x, 4);
    w.commit();
  }
  CHECK(error_code_of([&] { (void)io::read_packed(io::SafetensorsFile(plain)); }) == loftq::Errc::parse_error);
  // A declared tensor missing from the file.
  const std::string missing = scratch("packed_missing.safetensors");
  {
    std::map<std::string, std::string> meta = io::packed_metadata({{"w.weight", 16, 16, 4}}, io::PackedSettings{});
    io::SafetensorsWriter w(missing, {{"w.weight.qcodes", io::Dtype::U8, {128}}}, meta);
    const std::vector<unsigned char> zeros(128, 0);
    w.write("w.weight.qcodes", zeros.data(), zeros.size());
    w.commit();
  }
  CHECK(error_code_of([&] { (void)io::read_packed(io::SafetensorsFile(missing)); }) == loftq::Errc::parse_error);
}

}  // namespace test_packed_file

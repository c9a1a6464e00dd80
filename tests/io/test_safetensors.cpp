// loftq/io/safetensors.hpp: round trips, dtype conversions, sharded
// checkpoints, and hostile files (each must be a loftq::Error, never a crash).
#include <doctest/doctest.h>

#include <loftq/io/safetensors.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include "../support/scratch_dir.hpp"

// Its own namespace: the test program compiles this file with others as one
// unit (tests/io/CMakeLists.txt).
namespace test_safetensors {

namespace st = loftq::io;

namespace {

std::string tmp_dir() { return loftq_test::scratch_dir("safetensors"); }

std::string path_of(const std::string& name) { return tmp_dir() + "/" + name; }

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(std::uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A file with the given header text and `data_bytes` zero bytes of data.
std::string raw_file(const std::string& header, std::size_t data_bytes) {
  return le64(header.size()) + header + std::string(data_bytes, '\0');
}

loftq::Errc open_error(const std::string& name, const std::string& bytes) {
  const std::string p = path_of(name);
  write_bytes(p, bytes);
  try {
    st::SafetensorsFile f(p);
  } catch (const loftq::Error& e) {
    const std::string msg = e.what();
    CHECK_MESSAGE(msg.find(p) != std::string::npos, "message names the file: " << msg);
    return e.code();
  }
  FAIL("no error for " << name);
  return loftq::Errc::invalid_argument;
}

void check_parse_error(const std::string& name, const std::string& header, std::size_t data_bytes) {
  CAPTURE(name);
  CHECK(open_error(name, raw_file(header, data_bytes)) == loftq::Errc::parse_error);
}

}  // namespace

TEST_CASE("half and bfloat16 conversions") {
  CHECK(st::half_to_float(0x3c00) == 1.0f);
  CHECK(st::half_to_float(0xc000) == -2.0f);
  CHECK(st::half_to_float(0x7bff) == 65504.0f);
  CHECK(st::half_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(st::half_to_float(0x03ff) == std::ldexp(1023.0f, -24));
  CHECK(std::isinf(st::half_to_float(0x7c00)));
  CHECK(std::isnan(st::half_to_float(0x7e00)));
  CHECK(std::signbit(st::half_to_float(0x8000)));
  // Every half value round-trips exactly.
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const float f = st::half_to_float(static_cast<std::uint16_t>(h));
    if (std::isnan(f)) {
      CHECK(std::isnan(st::half_to_float(st::float_to_half(f))));
      continue;
    }
    REQUIRE(st::float_to_half(f) == h);
  }
  // Round to nearest even, overflow to Inf.
  CHECK(st::float_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);      // tie -> even
  CHECK(st::float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);  // tie -> even (up)
  CHECK(st::float_to_half(65520.0f) == 0x7c00);
  CHECK(st::float_to_half(65519.0f) == 0x7bff);
  CHECK(st::float_to_half(std::ldexp(1.0f, -26)) == 0x0000);
  CHECK(st::float_to_half(std::ldexp(3.0f, -26)) == 0x0001);
  // bfloat16
  CHECK(st::bf16_to_float(0x3f80) == 1.0f);
  CHECK(st::float_to_bf16(1.0f) == 0x3f80);
  CHECK(st::float_to_bf16(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);  // tie -> even
  CHECK(st::float_to_bf16(1.0f + std::ldexp(3.0f, -8)) == 0x3f82);
  CHECK(std::isnan(st::bf16_to_float(st::float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST_CASE("write then read: F32, F16, BF16, other dtypes, metadata") {
  const std::string p = path_of("rt.safetensors");
  std::vector<float> a = {1.5f, -2.25f, 0.0f, 3.0f, 1e-3f, -7.0f};
  std::vector<std::int64_t> ids = {1, -2, 3};
  {
    st::SafetensorsWriter w(p,
                            {{"a.f32", st::Dtype::F32, {2, 3}},
                             {"a.f16", st::Dtype::F16, {2, 3}},
                             {"a.bf16", st::Dtype::BF16, {3, 2}},
                             {"ids", st::Dtype::I64, {3}},
                             {"empty", st::Dtype::F32, {0, 4}}},
                            {{"format", "pt"}, {"note", "x"}});
    // Any order, in pieces.
    w.write("ids", ids.data(), 24);
    w.write_float("a.bf16", a.data(), 6, st::Dtype::BF16);
    w.write_float("a.f16", a.data(), 6, st::Dtype::F16);
    w.write("a.f32", a.data() + 3, 12, 12);
    w.write("a.f32", a.data(), 12, 0);
    w.write("empty", nullptr, 0);
    w.commit();
  }
  st::SafetensorsFile f(p);
  REQUIRE(f.tensors().size() == 5);
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.metadata().at("note") == "x");
  for (const char* n : {"a.f32", "a.f16", "a.bf16"}) {
    const auto v = f.read_float(f.at(n));
    REQUIRE(v.size() == 6);
    for (std::size_t i = 0; i < 6; ++i) CHECK(v[i] == doctest::Approx(a[i]).epsilon(1e-2));
  }
  const auto M = f.read_matrix(f.at("a.f32"));
  CHECK(M.rows() == 2);
  CHECK(M(1, 2) == -7.0f);
  CHECK(f.at("a.bf16").shape == std::vector<std::uint64_t>{3, 2});
  std::int64_t back[3];
  f.read_bytes(f.at("ids"), 0, 24, back);
  CHECK(back[1] == -2);
  CHECK_THROWS_AS(f.read_float(f.at("ids")), loftq::Error);
  CHECK(f.at("empty").nbytes() == 0);
  CHECK(f.data_offset() % 8 == 0);
  CHECK(f.read_float(f.at("a.f32"))[0] == 1.5f);
  CHECK(f.read_bytes(f.at("ids")).size() == 24);
  std::int64_t last = 0;
  f.read_bytes(f.at("ids"), 16, 8, &last);
  CHECK(last == back[2]);
  CHECK_THROWS_AS(f.read_bytes(f.at("ids"), 16, 9, &last), loftq::Error);
  CHECK_THROWS_AS(f.at("nope"), loftq::Error);
}

TEST_CASE("a file that changes while open is an error at the next read, not a signal") {
  const std::string p = path_of("shrinks.safetensors");
  std::vector<float> a(4096, 0.5f);
  auto write = [&] {
    st::SafetensorsWriter w(p, {{"a", st::Dtype::F32, {64, 64}}, {"b", st::Dtype::F32, {64, 64}}});
    w.write("a", a.data(), a.size() * 4);
    w.write("b", a.data(), a.size() * 4);
    w.commit();
  };
  write();
  {
    st::SafetensorsFile f(p);
    CHECK(f.read_float(f.at("b"))[4095] == 0.5f);
    // Truncated under the reader: a memory map would die of SIGBUS here.
    REQUIRE(::truncate(p.c_str(), static_cast<off_t>(f.data_offset() + 4096 * 4 + 100)) == 0);
    CHECK_THROWS_WITH_AS(f.read_float(f.at("b")), doctest::Contains("changed while being read"), loftq::Error);
    CHECK_THROWS_AS(f.read_matrix(f.at("a")), loftq::Error);
  }
  write();
  {
    st::SafetensorsFile f(p);
    // Replaced by rename: the open file is the old one and still reads whole.
    const std::string other = path_of("other.safetensors");
    {
      st::SafetensorsWriter w(other, {{"x", st::Dtype::F32, {1}}});
      const float x = 1;
      w.write("x", &x, 4);
      w.commit();
    }
    REQUIRE(std::rename(other.c_str(), p.c_str()) == 0);
    CHECK(f.read_float(f.at("b"))[0] == 0.5f);
  }
}

TEST_CASE("writer: incomplete or undeclared writes fail and leave nothing") {
  const std::string p = path_of("incomplete.safetensors");
  ::unlink(p.c_str());
  {
    st::SafetensorsWriter w(p, {{"x", st::Dtype::F32, {4}}});
    float v[4] = {1, 2, 3, 4};
    CHECK_THROWS_AS(w.write("y", v, 4), loftq::Error);
    CHECK_THROWS_AS(w.write("x", v, 16, 4), loftq::Error);
    w.write("x", v, 8);
    CHECK_THROWS_AS(w.commit(), loftq::Error);
  }
  CHECK(::access(p.c_str(), F_OK) != 0);
  CHECK_THROWS_AS(st::SafetensorsWriter(p, {{"x", st::Dtype::F32, {1}}, {"x", st::Dtype::F32, {1}}}), loftq::Error);
  CHECK_THROWS_AS(st::SafetensorsWriter(p, {{"x", st::Dtype::F32, {1ull << 62, 1ull << 62}}}), loftq::Error);
  CHECK(::access(p.c_str(), F_OK) != 0);
}

// The header length a written file records (its first 8 bytes).
std::uint64_t recorded_header_length(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  unsigned char b[8] = {};
  f.read(reinterpret_cast<char*>(b), 8);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | b[i];
  return n;
}

TEST_CASE("safetensors_header_size is the length of the header written, and a header readers refuse is not written") {
  const std::string p = path_of("header_size.safetensors");
  const std::vector<std::vector<st::TensorDecl>> decls = {{},
                                                          {{"x", st::Dtype::F32, {}}},
                                                          {{"a", st::Dtype::F16, {3, 5}},
                                                           {"with \"quotes\" and \\", st::Dtype::BF16, {0}},
                                                           {"ctl\x01\t", st::Dtype::I8, {7}},
                                                           {"\xc3\xa9t\xc3\xa9", st::Dtype::F64, {2, 1, 9}},
                                                           {"big", st::Dtype::U8, {1000, 3}}}};
  const std::vector<std::map<std::string, std::string>> metas = {
      {}, {{"format", "pt"}}, {{"k\n", "v\"\x02"}, {"loftq.tensor_bits", "{\"a\":4}"}, {"", ""}}};
  for (const auto& d : decls)
    for (const auto& m : metas) {
      ::unlink(p.c_str());
      st::SafetensorsWriter w(p, d, m);
      for (const st::TensorDecl& t : d) {
        std::uint64_t bytes = st::dtype_size(t.dtype);
        for (std::uint64_t e : t.shape) bytes *= e;
        const std::vector<unsigned char> zeros(4096);
        for (std::uint64_t off = 0; off < bytes; off += zeros.size())
          w.write(t.name, zeros.data(), std::min<std::uint64_t>(zeros.size(), bytes - off), off);
      }
      w.commit();
      CHECK(recorded_header_length(p) == st::safetensors_header_size(d, m));
      CHECK(st::SafetensorsFile(p).tensors().size() == d.size());
    }
  // A header at the limit is reached exactly; one over it is refused before the file exists.
  const std::vector<st::TensorDecl> d = {{"w", st::Dtype::F32, {2}}};
  auto with_fill = [](std::uint64_t n) { return std::map<std::string, std::string>{{"m", std::string(n, 'x')}}; };
  const std::uint64_t fill = st::kMaxHeaderBytes - st::safetensors_header_size(d, with_fill(0));
  CHECK(st::safetensors_header_size(d, with_fill(fill)) == st::kMaxHeaderBytes);
  ::unlink(p.c_str());
  try {
    st::SafetensorsWriter w(p, d, with_fill(fill + 8));
    FAIL("a header over the limit was written");
  } catch (const loftq::Error& e) {
    CHECK(e.code() == loftq::Errc::invalid_argument);
    CHECK(std::string(e.what()).find("over the limit") != std::string::npos);
  }
  CHECK(::access(p.c_str(), F_OK) != 0);
}

TEST_CASE("a valid hand-written file parses") {
  const std::string p = path_of("valid.safetensors");
  write_bytes(p, raw_file(R"({"__metadata__":{"k":"v"},"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},)"
                          R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}  )",
                          12));
  st::SafetensorsFile f(p);
  REQUIRE(f.tensors().size() == 2);
  CHECK(f.tensors()[0].name == "a");
  CHECK(f.tensors()[1].name == "b");
  CHECK(f.metadata().at("k") == "v");
}

TEST_CASE("hostile files are typed errors naming the file") {
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  // Truncation anywhere.
  const std::string good = raw_file(ok, 16);
  for (std::size_t cut : {0ul, 3ul, 7ul, 8ul, 20ul, good.size() - 1}) {
    CAPTURE(cut);
    CHECK(open_error("trunc.safetensors", good.substr(0, cut)) == loftq::Errc::parse_error);
  }
  // Header length past EOF, huge, tiny.
  CHECK(open_error("hlen1.safetensors", le64(1000) + ok + std::string(16, '\0')) == loftq::Errc::parse_error);
  CHECK(open_error("hlen2.safetensors", le64(~0ull) + ok + std::string(16, '\0')) == loftq::Errc::parse_error);
  CHECK(open_error("hlen3.safetensors", le64(0) + ok + std::string(16, '\0')) == loftq::Errc::parse_error);
  {
    // Past the 100 MB cap but within the (sparse) file.
    const std::string p = path_of("hcap.safetensors");
    write_bytes(p, le64(st::kMaxHeaderBytes + 1));
    REQUIRE(::truncate(p.c_str(), static_cast<off_t>(st::kMaxHeaderBytes + 100)) == 0);
    try {
      st::SafetensorsFile f(p);
      FAIL("no error");
    } catch (const loftq::Error& e) {
      CHECK(e.code() == loftq::Errc::parse_error);
      CHECK(std::string(e.what()).find("limit") != std::string::npos);
    }
    ::unlink(p.c_str());
  }
  check_parse_error("badjson", R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]})", 16);
  check_parse_error("notobject", R"([1,2,3])", 0);
  check_parse_error("nul", std::string("{\"a\":\0}", 7), 0);
  // Valid JSON up to a NUL: nlohmann's lexer would stop there and ignore the rest.
  check_parse_error(
      "nultrail", std::string(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})") + std::string("\0\0junk", 6),
      4);
  check_parse_error("nulstring", std::string("{\"a\":{\"dtype\":\"F32\0\",\"shape\":[1],\"data_offsets\":[0,4]}}", 55),
                    4);
  check_parse_error("bom",
                    "\xEF\xBB\xBF"
                    R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                    4);
  check_parse_error("dupmeta", R"({"__metadata__":{"k":"v"},"__metadata__":{}})", 0);
  check_parse_error("dupmetakey", R"({"__metadata__":{"k":"v","k":"w"}})", 0);
  check_parse_error(
      "dupname",
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
      8);
  check_parse_error("dupkey", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"dtype":"F16"}})", 4);
  check_parse_error(
      "overlap",
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      12);
  check_parse_error(
      "same",
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
      8);
  check_parse_error("outofrange", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4);
  check_parse_error("hugeoffset",
                    R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[18446744073709551615,18446744073709551615]}})",
                    0);
  check_parse_error("gap", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8);
  check_parse_error("trailing", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8);
  check_parse_error("reversed", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", 4);
  check_parse_error("bytecount", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8);
  check_parse_error("dtypesize", R"({"a":{"dtype":"F16","shape":[4],"data_offsets":[0,16]}})", 16);
  check_parse_error("overflow",
                    R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,0]}})", 0);
  check_parse_error("overflow2", R"({"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}})", 0);
  check_parse_error("negative", R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", 0);
  check_parse_error("fraction", R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4);
  check_parse_error("bigint", R"({"a":{"dtype":"F32","shape":[1e30],"data_offsets":[0,4]}})", 4);
  check_parse_error("shapestr", R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", 8);
  check_parse_error("offsets3", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 8);
  check_parse_error("nodtype", R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4);
  check_parse_error("dtypenum", R"({"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4);
  check_parse_error("extra", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", 4);
  check_parse_error("entrynotobj", R"({"a":[1,2]})", 0);
  check_parse_error("emptyname", R"({"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
  check_parse_error("metanotstr", R"({"__metadata__":{"k":1}})", 0);
  check_parse_error("metanotobj", R"({"__metadata__":"x"})", 0);
  check_parse_error("deep", std::string(5000, '[') + std::string(5000, ']'), 0);
  check_parse_error("deepobj", R"({"a":{"dtype":"F32","shape":[[[[[[[[[[1]]]]]]]]]],"data_offsets":[0,4]}})", 4);
  CHECK(open_error("unkdtype.safetensors", raw_file(R"({"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", 1)) ==
        loftq::Errc::unsupported);
  // An unknown dtype in a file that is malformed anyway is a parse_error.
  check_parse_error(
      "unkdtype_gap",
      R"({"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
      6);
  check_parse_error("unkdtype_json", R"({"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]},)", 1);
  check_parse_error(
      "unkdtype_key",
      R"({"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]},"b":{"dtype":"F32","shape":[0],"data_offsets":[1,1],"x":0}})",
      1);
  // The tensor is named in per-tensor messages.
  const std::string p = path_of("named.safetensors");
  write_bytes(p, raw_file(R"({"my.weight":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8));
  try {
    st::SafetensorsFile f(p);
    FAIL("no error");
  } catch (const loftq::Error& e) {
    CHECK(std::string(e.what()).find("my.weight") != std::string::npos);
  }
  CHECK_THROWS_AS(st::SafetensorsFile{path_of("does-not-exist")}, loftq::Error);
  CHECK_THROWS_AS(st::SafetensorsFile{tmp_dir()}, loftq::Error);
  // A FIFO in place of a file is refused at once, not waited on.
  const std::string fifo = path_of("fifo.safetensors");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  CHECK_THROWS_AS(st::SafetensorsFile{fifo}, loftq::Error);
  ::unlink(fifo.c_str());
}

TEST_CASE("checkpoints: single file, directory, sharded index") {
  const std::string d = path_of("ckpt");
  ::mkdir(d.c_str(), 0777);
  const float v[4] = {1, 2, 3, 4};
  {
    st::SafetensorsWriter a(d + "/part-1.safetensors", {{"x", st::Dtype::F32, {2, 2}}});
    a.write("x", v, 16);
    a.commit();
    st::SafetensorsWriter b(d + "/part-2.safetensors", {{"y", st::Dtype::F32, {4}}, {"z", st::Dtype::F32, {1}}});
    b.write("y", v, 16);
    b.write("z", v, 4);
    b.commit();
  }
  // No index and two files: ambiguous.
  CHECK_THROWS_AS(st::Checkpoint{d}, loftq::Error);
  const std::string idx = d + "/model.safetensors.index.json";
  write_bytes(
      idx,
      R"({"metadata":{"total_size":36},"weight_map":{"x":"part-1.safetensors","y":"part-2.safetensors","z":"part-2.safetensors"}})");
  {
    st::Checkpoint c(d);
    CHECK(c.sharded());
    CHECK(c.num_files() == 2);
    REQUIRE(c.entries().size() == 3);
    const auto& e = c.entries().at("y");
    CHECK(c.file_name(e.file) == "part-2.safetensors");
    CHECK(c.file(e.file).read_float(*e.info)[3] == 4.0f);
    CHECK(c.index_metadata()["total_size"] == 36);
  }
  {
    st::Checkpoint c(d + "/part-1.safetensors");
    CHECK(!c.sharded());
    CHECK(c.entries().size() == 1);
  }
  auto bad_index = [&](const std::string& text) {
    CAPTURE(text);
    write_bytes(idx, text);
    CHECK_THROWS_AS(st::Checkpoint{d}, loftq::Error);
  };
  bad_index(R"({"weight_map":{"x":"part-1.safetensors","y":"part-2.safetensors"}})");  // z unmapped
  bad_index(R"({"weight_map":{"x":"part-1.safetensors","y":"part-2.safetensors","z":"part-1.safetensors"}})");
  bad_index(
      R"({"weight_map":{"x":"part-1.safetensors","y":"part-2.safetensors","z":"part-2.safetensors","w":"part-2.safetensors"}})");
  bad_index(R"({"weight_map":{"x":"../part-1.safetensors"}})");
  bad_index(R"({"weight_map":{"x":"part-1.safetensors","x":"part-1.safetensors"}})");
  bad_index(R"({"weight_map":{}})");
  bad_index(R"({"weight_map":[]})");
  bad_index(R"({"weight_map":{"x":"missing.safetensors"}})");
  bad_index("not json");
  bad_index(
      "\xEF\xBB\xBF"
      R"({"weight_map":{"x":"part-1.safetensors","y":"part-2.safetensors","z":"part-2.safetensors"}})");
  bad_index(
      std::string(R"({"weight_map":{"x":"part-1.safetensors","y":"part-2.safetensors","z":"part-2.safetensors"}})") +
      std::string(1, '\0'));
  ::unlink(idx.c_str());
  ::unlink((d + "/part-2.safetensors").c_str());
  {
    st::Checkpoint c(d);  // the only .safetensors file in the directory
    CHECK(c.entries().count("x") == 1);
  }
}

TEST_CASE("real weights: stories260K round trip through F32, F16 and BF16") {
  const std::string bin = std::string(LOFTQ_SHARED_DATA_DIR) + "/stories260K.bin";
  std::ifstream f(bin, std::ios::binary);
  if (!f) {
    MESSAGE("skipped: " << bin << " is absent");
    return;
  }
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  REQUIRE(bytes.size() > 28 + 4 * 512 * 64);
  // token_embedding (512 x 64) follows the 7-int32 header.
  std::vector<float> emb(512 * 64);
  std::memcpy(emb.data(), bytes.data() + 28, emb.size() * 4);
  const std::string p = path_of("stories.safetensors");
  {
    st::SafetensorsWriter w(p, {{"model.embed_tokens.weight", st::Dtype::F32, {512, 64}},
                                {"emb.f16", st::Dtype::F16, {512, 64}},
                                {"emb.bf16", st::Dtype::BF16, {512, 64}}});
    w.write_float("model.embed_tokens.weight", emb.data(), emb.size(), st::Dtype::F32);
    w.write_float("emb.f16", emb.data(), emb.size(), st::Dtype::F16);
    w.write_float("emb.bf16", emb.data(), emb.size(), st::Dtype::BF16);
    w.commit();
  }
  st::SafetensorsFile s(p);
  const auto M = s.read_matrix(s.at("model.embed_tokens.weight"));
  CHECK(std::memcmp(M.data(), emb.data(), emb.size() * 4) == 0);
  const auto h = s.read_float(s.at("emb.f16")), b = s.read_float(s.at("emb.bf16"));
  for (std::size_t i = 0; i < emb.size(); ++i) {
    REQUIRE(std::abs(h[i] - emb[i]) <= std::abs(emb[i]) * std::ldexp(1.0f, -11) + std::ldexp(1.0f, -25));
    REQUIRE(std::abs(b[i] - emb[i]) <= std::abs(emb[i]) * std::ldexp(1.0f, -8));
  }
}

}  // namespace test_safetensors

// io/gguf.hpp: the GGUF reader and writer against an independent reading of
// the format (common/gguf_layout.hpp), and ggml's block bytes decoded by
// ggml's published rules (hostile files: test_gguf_hostile.cpp).
#include <loftq/io/gguf.hpp>
#include <loftq/loftq.hpp>

#include "common/gguf_layout.hpp"
#include "gguf_support.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

using gguf_test::TempFile;

namespace gio = loftq::io;
namespace gl = gguf_layout;
using RowMatrixF = loftq::RowMatrix<float>;

RowMatrixF random_matrix(int m, int n, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> N(0.0f, 0.05f);
  RowMatrixF W(m, n);
  for (int i = 0; i < W.size(); ++i) W.data()[i] = N(g);
  return W;
}

}  // namespace

TEST_CASE("the writer's files read back by the library and by the independent parser") {
  TempFile f;
  const std::vector<gio::GgufKV> kvs = {gio::gguf_kv_u32("general.alignment", 64),
                                        gio::gguf_kv_string("general.architecture", "llama"),
                                        gio::gguf_kv_f32("x.f", 0.25f)};
  const std::vector<gio::GgufTensorDecl> decls = {{"a", {3}, 0}, {"b.weight", {64, 2}, 8}, {"c", {2, 2, 2}, 30}};
  {
    gio::GgufWriter w(f.path + ".out", kvs, decls);
    const float a[3] = {1, 2, 3};
    w.write("a", a, 12);
    std::vector<unsigned char> q8(2 * 2 * 34, 0x42), c(16, 0x07);
    w.write("b.weight", q8.data(), 68);
    w.write("b.weight", q8.data(), 68, 68);  // in pieces
    CHECK_THROWS_AS(w.write("c", c.data(), 17), loftq::Error);
    CHECK_THROWS_AS(w.write("zz", c.data(), 1), loftq::Error);
    w.write("c", c.data(), 16);
    w.commit();
  }
  const std::string out = f.path + ".out";
  gio::GgufFile g(out);
  CHECK(g.alignment() == 64);
  CHECK(g.data_offset() % 64 == 0);
  REQUIRE(g.kvs().size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(g.kvs()[i].key == kvs[i].key);
    CHECK(g.kvs()[i].value == kvs[i].value);
  }
  std::string arch;
  CHECK(g.string_value("general.architecture", arch));
  CHECK(arch == "llama");
  REQUIRE(g.tensors().size() == 3);
  CHECK(g.find("b.weight")->nbytes == 136);
  CHECK(g.find("c")->offset % 64 == 0);
  const gl::File ind(out);
  CHECK(ind.alignment == 64);
  REQUIRE(ind.tensors.size() == 3);
  CHECK(ind.tensors[1].offset == g.tensors()[1].offset);
  CHECK(ind.data == g.data_offset());
  CHECK(ind.values(ind.tensors[0]) == std::vector<float>{1, 2, 3});
  CHECK(ind.at(ind.tensors[2])[15] == 0x07);
  ::unlink(out.c_str());
}

TEST_CASE("gguf_header_size is the header the writer writes; a file over the reader's limits is not written") {
  TempFile f;
  const std::string out = f.path + ".out";
  // Alignment 1: the data starts where the header ends.
  const std::vector<gio::GgufKV> kvs = {gio::gguf_kv_u32("general.alignment", 1), gio::gguf_kv_string("s", "abc")};
  const std::vector<gio::GgufTensorDecl> decls = {{"t", {2, 3}, 0}};
  // By hand: 24 bytes of magic, version and counts; per pair the key (8 + length), its type (4) and value
  // (u32: 4; string: 8 + length); per tensor the name (8 + length), n_dims (4), 8 per dimension, type (4), offset (8).
  const std::uint64_t want = 24 + (8 + 17 + 4 + 4) + (8 + 1 + 4 + 8 + 3) + (8 + 1 + 4 + 16 + 4 + 8);
  CHECK(gio::gguf_header_size(kvs, decls) == want);
  {
    gio::GgufWriter w(out, kvs, decls);
    const std::vector<float> v = {1, 2, 3, 4, 5, 6};
    w.write("t", v.data(), 24);
    w.commit();
  }
  const gio::GgufFile g(out);
  CHECK(g.data_offset() == want);
  const gl::File ind(out);
  CHECK(ind.data == want);
  ::unlink(out.c_str());

  // One pair or one tensor more than the reader takes: refused, nothing written.
  std::vector<gio::GgufKV> many;
  for (std::uint64_t i = 0; i <= gio::kGgufMaxKVs; ++i) many.push_back(gio::gguf_kv_u32("k" + std::to_string(i), 1));
  CHECK_THROWS_AS(gio::GgufWriter(out, many, decls), loftq::Error);
  many.pop_back();
  std::vector<gio::GgufTensorDecl> tensors;
  for (std::uint64_t i = 0; i <= gio::kGgufMaxTensors; ++i) tensors.push_back({"t" + std::to_string(i), {1}, 0});
  CHECK_THROWS_AS(gio::GgufWriter(out, kvs, tensors), loftq::Error);
  CHECK(::access(out.c_str(), F_OK) != 0);
  // At the limit, written and read back.
  {
    gio::GgufWriter w(out, many, decls);
    const std::vector<float> v(6, 1.0f);
    w.write("t", v.data(), 24);
    w.commit();
  }
  CHECK(gio::GgufFile(out).kvs().size() == gio::kGgufMaxKVs);
  ::unlink(out.c_str());
}

TEST_CASE("the reader on a file from the independent writer: key-value bytes and tensors") {
  gl::Builder b;
  b.add_u32("general.alignment", 128);
  b.add_string("general.architecture", "llama");
  b.add_string_array("tokenizer.ggml.tokens", {"a", "", "bc"});
  const RowMatrixF W = random_matrix(3, 64, 1);
  b.add_tensor("blk.0.attn_q.weight", {64, 3}, gl::F16,
               gl::Builder::encode_floats(std::vector<float>(W.data(), W.data() + W.size()), gl::F16));
  b.add_tensor("n", {5}, gl::BF16, gl::Builder::encode_floats({1, 2, 3, 4, 5}, gl::BF16));
  TempFile f;
  f.write(b.bytes());
  gio::GgufFile g(f.path);
  CHECK(g.alignment() == 128);
  const gl::File ind(f.path);
  REQUIRE(g.kvs().size() == ind.kvs.size());
  for (std::size_t i = 0; i < g.kvs().size(); ++i) CHECK(g.kvs()[i].value == ind.kvs[i].second.second);
  const RowMatrixF M = g.read_matrix(*g.find("blk.0.attn_q.weight"));
  const std::vector<float> v = ind.values(*ind.find("blk.0.attn_q.weight"));
  CHECK(std::memcmp(M.data(), v.data(), v.size() * 4) == 0);
  CHECK_THROWS_AS(g.read_matrix(*g.find("n")), loftq::Error);  // 1-D
}

TEST_CASE("read_matrix dequantizes a quantized tensor as ggml does, across its row chunks; unknown types are refused") {
  // 600 rows of 4096 Q4_K elements: 1.4 MB, more than one chunk of rows.
  const RowMatrixF W = random_matrix(600, 4096, 9);
  const loftq::PackedMatrix P = loftq::quantize(W, loftq::GgmlQuantizer(loftq::GgmlFormat::q4_K));
  const std::vector<unsigned char> q4k = gio::ggml_block_bytes(P, loftq::GgmlFormat::q4_K);
  gl::Builder b;
  b.add_string("general.architecture", "llama");
  b.add_tensor("blk.0.ffn_up.weight", {4096, 600}, gl::Q4_K, q4k);
  b.add_tensor("blk.0.ffn_down.weight", {64, 2}, 9 /* Q8_1 */, std::vector<unsigned char>(4 * 36, 0));
  TempFile f;
  f.write(b.bytes());
  gio::GgufFile g(f.path);
  const RowMatrixF M = g.read_matrix(*g.find("blk.0.ffn_up.weight"));
  const RowMatrixF D = loftq::dequantize(P);
  REQUIRE(M.rows() == 600);
  REQUIRE(M.cols() == 4096);
  CHECK(std::memcmp(M.data(), D.data(), sizeof(float) * static_cast<std::size_t>(D.size())) == 0);
  try {
    g.read_matrix(*g.find("blk.0.ffn_down.weight"));
    FAIL("no error");
  } catch (const loftq::Error& e) {
    CHECK(e.code() == loftq::Errc::unsupported);
    CHECK(std::string(e.what()).find("Q8_1") != std::string::npos);
  }
}

TEST_CASE("integer_value: every scalar integer type, zero extended; nothing else") {
  gl::Builder b;
  b.add_int("u8", gl::T_U8, 0xfe, 1);
  b.add_int("i8", gl::T_I8, 0xff, 1);  // -1
  b.add_int("u16", gl::T_U16, 0xbeef, 2);
  b.add_int("i16", gl::T_I16, 0x8000, 2);
  b.add_u32("u32", 4096);
  b.add_int("i32", gl::T_I32, 0xffffffffu, 4);  // -1
  b.add_int("u64", gl::T_U64, 0x0123456789abcdefull, 8);
  b.add_int("i64", gl::T_I64, 0x8000000000000000ull, 8);
  b.add_f32("f32", 2.0f);
  b.add_string("s", "12");
  b.add_string_array("a", {"1"});
  TempFile f;
  f.write(b.bytes());
  const gio::GgufFile g(f.path);
  const std::pair<const char*, std::uint64_t> expect[] = {{"u8", 0xfe},
                                                          {"i8", 0xff},
                                                          {"u16", 0xbeef},
                                                          {"i16", 0x8000},
                                                          {"u32", 4096},
                                                          {"i32", 0xffffffffu},
                                                          {"u64", 0x0123456789abcdefull},
                                                          {"i64", 0x8000000000000000ull}};
  for (const auto& e : expect) {
    std::uint64_t v = 7;
    CHECK_MESSAGE(g.integer_value(e.first, v), e.first);
    CHECK_MESSAGE(v == e.second, e.first);
    std::uint64_t w = 7;
    CHECK_MESSAGE(gio::GgufFile::integer_value(*g.find_kv(e.first), w), e.first);
    CHECK_MESSAGE(w == e.second, e.first);
  }
  for (const char* k : {"f32", "s", "a", "absent"}) {
    std::uint64_t v = 7;
    CHECK_MESSAGE(!g.integer_value(k, v), k);
    CHECK(v == 7);
    if (const gio::GgufKV* kv = g.find_kv(k)) CHECK_MESSAGE(!gio::GgufFile::integer_value(*kv, v), k);
    CHECK(v == 7);
  }
}

namespace {

// W quantized in format f: its block bytes are the size ggml's layout gives
// and decode, by ggml's rules, to the library's Q bit for bit.
void check_block_bytes(const RowMatrixF& W, loftq::GgmlFormat f, bool search) {
  loftq::QuantizeOptions o;
  o.scale_search = search;
  const loftq::PackedMatrix P = loftq::quantize(W, loftq::GgmlQuantizer(f), o);
  const RowMatrixF Q = loftq::dequantize(P);
  const std::vector<unsigned char> bytes = gio::ggml_block_bytes(P, f);
  const std::uint32_t type = static_cast<std::uint32_t>(gio::ggml_type_of(f));
  CHECK(type == static_cast<std::uint32_t>(loftq::ggml_format_type_id(f)));
  std::uint64_t be, bb;
  gl::block_of(type, be, bb);
  CHECK(bytes.size() == static_cast<std::size_t>(W.size()) / be * bb);
  CHECK(gio::ggml_type_traits(type)->bytes == bb);
  const std::vector<float> d = gl::decode(type, bytes.data(), static_cast<std::uint64_t>(W.size()));
  CHECK(std::memcmp(d.data(), Q.data(), d.size() * 4) == 0);
}

}  // namespace

TEST_CASE("ggml block bytes decode, by ggml's rules, to the library's Q bit for bit") {
  for (auto f : {loftq::GgmlFormat::q4_0, loftq::GgmlFormat::q8_0, loftq::GgmlFormat::iq4_nl})
    for (bool search : {false, true})
      for (auto shape : {std::pair<int, int>{5, 96}, {1, 32}, {7, 64}})
        check_block_bytes(random_matrix(shape.first, shape.second, 17), f, search);
  // The K formats: the super-blocks the quantizer kept, rows of whole 256s.
  for (auto f : {loftq::GgmlFormat::q2_K, loftq::GgmlFormat::q3_K, loftq::GgmlFormat::q4_K, loftq::GgmlFormat::q5_K,
                 loftq::GgmlFormat::q6_K, loftq::GgmlFormat::iq4_xs})
    for (bool search : {false, true}) check_block_bytes(random_matrix(3, 512, 18), f, search);
  // Bytes that disagree with the codes or the scales are refused.
  loftq::PackedMatrix k_bad = loftq::quantize(random_matrix(2, 256, 3), loftq::GgmlQ4_K{});
  k_bad.ggml_blocks[20] ^= 0x01;  // one code of the first super-block
  CHECK_THROWS_AS(gio::ggml_block_bytes(k_bad, loftq::GgmlFormat::q4_K), loftq::Error);
  k_bad = loftq::quantize(random_matrix(2, 256, 3), loftq::GgmlQ4_K{});
  k_bad.scales[3] *= 2.0f;
  CHECK_THROWS_AS(gio::ggml_block_bytes(k_bad, loftq::GgmlFormat::q4_K), loftq::Error);
  const loftq::PackedMatrix k_odd = loftq::quantize(random_matrix(2, 384, 3), loftq::GgmlQ4_K{});
  CHECK_THROWS_AS(gio::ggml_block_bytes(k_odd, loftq::GgmlFormat::q4_K), loftq::Error);
  const loftq::PackedMatrix k4 = loftq::quantize(random_matrix(2, 256, 3), loftq::GgmlQ4_K{});
  CHECK_THROWS_AS(gio::ggml_block_bytes(k4, loftq::GgmlFormat::q5_K), loftq::Error);
  CHECK_THROWS_AS(
      gio::ggml_block_bytes(loftq::quantize(random_matrix(2, 256, 3), loftq::GgmlQ4_0{}), loftq::GgmlFormat::q4_K),
      loftq::Error);
  // Rows that are not whole blocks have no ggml layout; nor have other codes.
  const loftq::PackedMatrix odd = loftq::quantize(random_matrix(2, 48, 3), loftq::GgmlQ4_0{});
  CHECK_THROWS_AS(gio::ggml_block_bytes(odd, loftq::GgmlFormat::q4_0), loftq::Error);
  const loftq::PackedMatrix nf = loftq::quantize(random_matrix(2, 64, 3), loftq::NormalFloat<4>(32));
  CHECK_THROWS_AS(gio::ggml_block_bytes(nf, loftq::GgmlFormat::q4_0), loftq::Error);
  const loftq::PackedMatrix q4 = loftq::quantize(random_matrix(2, 64, 3), loftq::GgmlQ4_0{});
  CHECK_THROWS_AS(gio::ggml_block_bytes(q4, loftq::GgmlFormat::iq4_nl), loftq::Error);
}

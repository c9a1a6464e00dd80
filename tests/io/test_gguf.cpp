// io/gguf.hpp: the GGUF reader and writer against an independent reading of
// the format (tests/support/gguf_layout.hpp), ggml's block bytes decoded by
// ggml's published rules, and the reader on hostile files.
#include <loftq/io/gguf.hpp>
#include <loftq/loftq.hpp>

#include "common/gguf_layout.hpp"

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

namespace gio = loftq::io;
namespace gl = gguf_layout;
using RowMatrixF = loftq::RowMatrix<float>;

struct TempFile {
  std::string path;
  TempFile() {
    char tmpl[] = "/tmp/loftq-test-gguf-XXXXXX";
    const int fd = ::mkstemp(tmpl);
    REQUIRE(fd >= 0);
    ::close(fd);
    path = tmpl;
  }
  ~TempFile() { ::unlink(path.c_str()); }
  void write(const std::vector<unsigned char>& b) const {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
};

RowMatrixF random_matrix(int m, int n, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> N(0.0f, 0.05f);
  RowMatrixF W(m, n);
  for (int i = 0; i < W.size(); ++i) W.data()[i] = N(g);
  return W;
}

// The header of a file, assembled field by field so each can be broken.
struct Raw {
  std::vector<unsigned char> b;
  void u32(std::uint64_t v) { gl::Builder::put(b, v, 4); }
  void u64(std::uint64_t v) { gl::Builder::put(b, v, 8); }
  void str(const std::string& s) { gl::Builder::put_str(b, s); }
  void head(std::uint64_t nt, std::uint64_t nkv, std::uint32_t version = 3) {
    b = {'G', 'G', 'U', 'F'};
    u32(version);
    u64(nt);
    u64(nkv);
  }
  void tensor(const std::string& name, std::vector<std::uint64_t> ne, std::uint32_t type, std::uint64_t off) {
    str(name);
    u32(ne.size());
    for (auto e : ne) u64(e);
    u32(type);
    u64(off);
  }
  void pad(std::size_t a = 32) { b.resize((b.size() + a - 1) / a * a, 0); }
  void data(std::size_t n) { b.resize(b.size() + n, 0x11); }
};

// Opens bytes as a GGUF file; returns the Errc of the failure, or 0.
int open_code(const std::vector<unsigned char>& bytes) {
  static const TempFile f;
  f.write(bytes);
  try {
    gio::GgufFile g(f.path);
    return 0;
  } catch (const loftq::Error& e) {
    return static_cast<int>(e.code());
  }
}
const int kParse = static_cast<int>(loftq::Errc::parse_error), kUnsup = static_cast<int>(loftq::Errc::unsupported);

// One F32 tensor "t" of 8 elements after `kvs`.
std::vector<unsigned char> one_tensor(const std::function<void(Raw&)>& kvs, std::uint64_t nkv) {
  Raw r;
  r.head(1, nkv);
  kvs(r);
  r.tensor("t", {8}, 0, 0);
  r.pad();
  r.data(32);
  return r.b;
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

TEST_CASE("hostile files: every defect is a loftq::Error") {
  gl::Builder b;
  b.add_string("general.architecture", "llama");
  b.add_string_array("k.arr", {"x", "yy"});
  b.add_tensor("w", {32, 2}, gl::F32, std::vector<unsigned char>(256, 0));
  b.add_tensor("q", {64}, gl::Q8_0, std::vector<unsigned char>(68, 0));
  const std::vector<unsigned char> good = b.bytes();
  CHECK(open_code(good) == 0);
  SUBCASE("every truncation") {
    std::size_t last_ok = good.size();
    for (std::size_t n = 0; n < good.size(); ++n)
      if (open_code(std::vector<unsigned char>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n))) == 0)
        last_ok = std::min(last_ok, n);
    // Only the final tensor's padding may go missing.
    CHECK(last_ok >= good.size() - 31);
  }
  SUBCASE("magic, version") {
    std::vector<unsigned char> v = good;
    v[0] = 'X';
    CHECK(open_code(v) == kParse);
    v = good;
    v[4] = 2;
    CHECK(open_code(v) == kUnsup);
  }
  SUBCASE("huge counts and lengths") {
    Raw r;
    r.head(0, std::uint64_t(1) << 62);
    CHECK(open_code(r.b) == kParse);
    r.head(0, loftq::io::kGgufMaxKVs + 1);  // more than the limit, though the file could hold them
    r.data(14 * (loftq::io::kGgufMaxKVs + 1));
    CHECK(open_code(r.b) == kParse);
    r.head(std::uint64_t(1) << 62, 0);
    CHECK(open_code(r.b) == kParse);
    r.head(0, 1);
    r.u64(std::uint64_t(-1));  // key length
    CHECK(open_code(r.b) == kParse);
    r.head(0, 1);
    r.str("k");
    r.u32(gl::T_ARRAY);
    r.u32(gl::T_U64);
    r.u64(std::uint64_t(1) << 61);
    r.data(64);
    CHECK(open_code(r.b) == kParse);
    r.head(0, 1);
    r.str("k");
    r.u32(gl::T_ARRAY);
    r.u32(gl::T_STRING);
    r.u64(3);
    r.str("a");
    r.u64(std::uint64_t(1) << 40);  // second string's length
    CHECK(open_code(r.b) == kParse);
  }
  SUBCASE("value types") {
    auto kv = [](std::uint32_t type, std::vector<unsigned char> value) {
      return one_tensor(
          [&](Raw& r) {
            r.str("k");
            r.u32(type);
            r.b.insert(r.b.end(), value.begin(), value.end());
          },
          1);
    };
    CHECK(open_code(kv(gl::T_U32, {1, 0, 0, 0})) == 0);
    CHECK(open_code(kv(13, {0, 0, 0, 0})) == kParse);
    CHECK(open_code(kv(gl::T_BOOL, {2})) == kParse);
    CHECK(open_code(kv(gl::T_ARRAY, {gl::T_ARRAY, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0})) == kUnsup);
    CHECK(open_code(kv(gl::T_ARRAY, {77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})) == kParse);
    CHECK(open_code(kv(gl::T_ARRAY, {gl::T_BOOL, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 5})) == kParse);
  }
  SUBCASE("keys: empty, duplicate; alignment") {
    auto two = [](const std::string& k1, const std::string& k2) {
      return one_tensor(
          [&](Raw& r) {
            for (const auto& k : {k1, k2}) {
              r.str(k);
              r.u32(gl::T_U8);
              r.b.push_back(1);
            }
          },
          2);
    };
    CHECK(open_code(two("a", "b")) == 0);
    CHECK(open_code(two("a", "a")) == kParse);
    CHECK(open_code(two("", "b")) == kParse);
    auto align = [](std::uint32_t type, std::uint64_t v) {
      return one_tensor(
          [&](Raw& r) {
            r.str("general.alignment");
            r.u32(type);
            r.u32(v);
          },
          1);
    };
    CHECK(open_code(align(gl::T_U32, 32)) == 0);
    CHECK(open_code(align(gl::T_U32, 48)) == kParse);
    CHECK(open_code(align(gl::T_U32, 0)) == kParse);
    CHECK(open_code(align(gl::T_I32, 32)) == kParse);
  }
  SUBCASE("tensor infos") {
    auto file = [](const std::function<void(Raw&)>& infos, std::uint64_t nt, std::size_t data = 64) {
      Raw r;
      r.head(nt, 0);
      infos(r);
      r.pad();
      r.data(data);
      return r.b;
    };
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {8}, 0, 0); }, 1)) == 0);
    CHECK(open_code(file([](Raw& r) { r.tensor("", {8}, 0, 0); }, 1)) == kParse);
    CHECK(open_code(file([](Raw& r) { r.tensor(std::string(64, 'n'), {8}, 0, 0); }, 1)) == kParse);
    CHECK(open_code(file([](Raw& r) { r.tensor(std::string(63, 'n'), {8}, 0, 0); }, 1)) == 0);
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {}, 0, 0); }, 1)) == kParse);
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {1, 1, 1, 1, 1}, 0, 0); }, 1)) == kParse);
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {8, 0}, 0, 0); }, 1)) == kParse);
    CHECK(open_code(file(
              [](Raw& r) {
                r.tensor("a", {std::uint64_t(1) << 40, std::uint64_t(1) << 40}, 0, 0);
              },
              1)) == kParse);
    CHECK(open_code(file(
              [](Raw& r) {
                r.tensor("a", {std::uint64_t(1) << 62, 4}, 8, 0);
              },
              1)) == kParse);  // bytes overflow
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {8}, 99, 0); }, 1)) == kUnsup);
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {33}, 8, 0); }, 1)) == kParse);  // not whole Q8_0 blocks
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {8}, 0, 1); }, 1)) == kParse);   // misaligned
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {8}, 0, 32); }, 1)) == kParse);  // a gap
    CHECK(open_code(file(
              [](Raw& r) {
                r.tensor("a", {8}, 0, 32);
                r.tensor("b", {8}, 0, 0);
              },
              2)) == kParse);  // out of order
    CHECK(open_code(file(
              [](Raw& r) {
                r.tensor("a", {8}, 0, 0);
                r.tensor("a", {8}, 0, 32);
              },
              2)) == kParse);                                                            // duplicate
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {64}, 0, 0); }, 1, 64)) == kParse);  // past the end
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {8}, 0, std::uint64_t(-32)); }, 1)) == kParse);
  }
}

TEST_CASE("a long key of many strings reads in time linear in the file") {
  // A 1 MiB key holding 16,384 empty strings (a 1.2 MB file): the reader once
  // built an error message naming the key for every element, 16 GB of copies.
  gl::Builder b;
  b.add_string("general.architecture", "llama");
  b.add_string_array(std::string(std::size_t(1) << 20, 'k'), std::vector<std::string>(16384));
  b.add_tensor("w", {32, 2}, gl::F32, std::vector<unsigned char>(256, 0));
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(open_code(b.bytes()) == 0);
  // Generous (a loaded machine, sanitizers); the quadratic reader took 21-34 s.
  CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 5.0);
}

TEST_CASE("reads stay inside the tensor, and a file that changes is an error") {
  gl::Builder b;
  b.add_string("general.architecture", "llama");
  b.add_tensor("w", {32, 2}, gl::F32, std::vector<unsigned char>(256, 0));
  TempFile f;
  f.write(b.bytes());
  gio::GgufFile g(f.path);
  unsigned char buf[8];
  CHECK_THROWS_AS(g.read_bytes(g.tensors()[0], 250, 8, buf), loftq::Error);
  CHECK_THROWS_AS(g.read_bytes(g.tensors()[0], std::uint64_t(-1), 2, buf), loftq::Error);
  CHECK(g.read_matrix(g.tensors()[0]).rows() == 2);
  REQUIRE(::truncate(f.path.c_str(), 100) == 0);
  try {
    g.read_matrix(g.tensors()[0]);
    FAIL("no error");
  } catch (const loftq::Error& e) {
    CHECK(e.code() == loftq::Errc::io_error);
  }
}

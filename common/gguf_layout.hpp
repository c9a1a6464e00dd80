#pragma once
// The GGUF container written out from its published description (ggml
// docs/gguf.md), for the tests only: a small writer and a small trusting
// parser. Nothing here calls the library, so the library's reader and writer
// are checked against an independent reading of the format. The block
// layouts and decoders are common/ggml_layout.hpp.

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/ggml_layout.hpp"

namespace gguf_layout {

enum : std::uint32_t {
  T_U8 = 0,
  T_I8 = 1,
  T_U16 = 2,
  T_I16 = 3,
  T_U32 = 4,
  T_I32 = 5,
  T_F32 = 6,
  T_BOOL = 7,
  T_STRING = 8,
  T_ARRAY = 9,
  T_U64 = 10,
  T_I64 = 11,
  T_F64 = 12
};

struct Tensor {
  std::string name;
  std::vector<std::uint64_t> ne;
  std::uint32_t type = 0;
  std::uint64_t offset = 0, nbytes = 0, numel = 1;
};

// A parsed file (trusted: the test's own or the tool's output).
struct File {
  std::vector<unsigned char> bytes;
  std::uint64_t kv_begin = 24, kv_end = 0, data = 0, alignment = 32;
  std::vector<Tensor> tensors;
  std::vector<std::pair<std::string, std::pair<std::uint32_t, std::vector<unsigned char>>>> kvs;  // key, type, value

  explicit File(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error(path + ": cannot open");
    bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    if (bytes.size() < 24 || std::memcmp(bytes.data(), "GGUF", 4) != 0 || le(&bytes[4], 4) != 3)
      throw std::runtime_error(path + ": not GGUF v3");
    const std::uint64_t nt = le(&bytes[8], 8), nkv = le(&bytes[16], 8);
    std::uint64_t pos = 24;
    auto u = [&](int n) {
      if (pos + n > bytes.size()) throw std::runtime_error("gguf_layout: truncated");
      const std::uint64_t v = le(&bytes[pos], n);
      pos += n;
      return v;
    };
    auto str = [&] {
      const std::uint64_t n = u(8);
      if (n > bytes.size() - pos) throw std::runtime_error("gguf_layout: truncated string");
      std::string s(reinterpret_cast<const char*>(&bytes[pos]), n);
      pos += n;
      return s;
    };
    auto scalar = [](std::uint32_t t) -> int {
      switch (t) {
        case T_U8:
        case T_I8:
        case T_BOOL:
          return 1;
        case T_U16:
        case T_I16:
          return 2;
        case T_U32:
        case T_I32:
        case T_F32:
          return 4;
        case T_U64:
        case T_I64:
        case T_F64:
          return 8;
        default:
          return 0;
      }
    };
    for (std::uint64_t i = 0; i < nkv; ++i) {
      const std::string key = str();
      const std::uint32_t t = static_cast<std::uint32_t>(u(4));
      const std::uint64_t v0 = pos;
      if (t == T_STRING) {
        str();
      } else if (t == T_ARRAY) {
        const std::uint32_t et = static_cast<std::uint32_t>(u(4));
        const std::uint64_t n = u(8);
        for (std::uint64_t k = 0; k < n; ++k)
          if (et == T_STRING)
            str();
          else
            u(scalar(et));
      } else {
        const std::uint64_t v = u(scalar(t));
        if (key == "general.alignment") alignment = v;
      }
      kvs.push_back({key, {t, std::vector<unsigned char>(bytes.begin() + v0, bytes.begin() + pos)}});
    }
    kv_end = pos;
    for (std::uint64_t i = 0; i < nt; ++i) {
      Tensor t;
      t.name = str();
      const std::uint64_t nd = u(4);
      for (std::uint64_t d = 0; d < nd; ++d) {
        t.ne.push_back(u(8));
        t.numel *= t.ne.back();
      }
      t.type = static_cast<std::uint32_t>(u(4));
      t.offset = u(8);
      std::uint64_t be, bb;
      block_of(t.type, be, bb);
      t.nbytes = t.numel / be * bb;
      tensors.push_back(t);
    }
    data = (pos + alignment - 1) / alignment * alignment;
    for (const Tensor& t : tensors)
      if (data + t.offset + t.nbytes > bytes.size()) throw std::runtime_error(path + ": tensor past the end");
  }
  const Tensor* find(const std::string& name) const {
    for (const Tensor& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
  const unsigned char* at(const Tensor& t) const { return bytes.data() + data + t.offset; }
  std::vector<float> values(const Tensor& t) const { return decode(t.type, at(t), t.numel); }
  const std::vector<unsigned char>* kv(const std::string& key) const {
    for (const auto& e : kvs)
      if (e.first == key) return &e.second.second;
    return nullptr;
  }
  std::string kv_string(const std::string& key) const {
    const auto* v = kv(key);
    return v && v->size() >= 8 ? std::string(v->begin() + 8, v->end()) : std::string();
  }
};

// A GGUF file assembled by hand: add key-value pairs and tensors, then bytes().
struct Builder {
  std::vector<unsigned char> kv;
  std::uint64_t n_kv = 0, alignment = 32;
  struct T {
    std::string name;
    std::vector<std::uint64_t> ne;
    std::uint32_t type;
    std::vector<unsigned char> data;
  };
  std::vector<T> tensors;

  static void put(std::vector<unsigned char>& o, std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) o.push_back(static_cast<unsigned char>(v >> (8 * i)));
  }
  static void put_str(std::vector<unsigned char>& o, const std::string& s) {
    put(o, s.size(), 8);
    o.insert(o.end(), s.begin(), s.end());
  }
  void key(const std::string& k, std::uint32_t type) {
    put_str(kv, k);
    put(kv, type, 4);
    ++n_kv;
  }
  void add_string(const std::string& k, const std::string& v) {
    key(k, T_STRING);
    put_str(kv, v);
  }
  void add_u32(const std::string& k, std::uint32_t v) {
    key(k, T_U32);
    put(kv, v, 4);
    if (k == "general.alignment") alignment = v;
  }
  // An integer of type T_U8 ... T_I64 from its `width` low bytes of `bits`.
  void add_int(const std::string& k, std::uint32_t type, std::uint64_t bits, int width) {
    key(k, type);
    put(kv, bits, width);
  }
  void add_f32(const std::string& k, float v) {
    std::uint32_t b;
    std::memcpy(&b, &v, 4);
    key(k, T_F32);
    put(kv, b, 4);
  }
  void add_string_array(const std::string& k, const std::vector<std::string>& v) {
    key(k, T_ARRAY);
    put(kv, T_STRING, 4);
    put(kv, v.size(), 8);
    for (const auto& s : v) put_str(kv, s);
  }
  void add_tensor(const std::string& name, std::vector<std::uint64_t> ne, std::uint32_t type,
                  std::vector<unsigned char> data) {
    tensors.push_back({name, std::move(ne), type, std::move(data)});
  }
  // Floats stored as F32, F16 (round to nearest even via the float's bits) or BF16.
  static std::vector<unsigned char> encode_floats(const std::vector<float>& v, std::uint32_t type) {
    std::vector<unsigned char> o;
    for (float f : v) {
      std::uint32_t u;
      std::memcpy(&u, &f, 4);
      if (type == F32) {
        put(o, u, 4);
      } else if (type == BF16) {
        put(o, (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, 2);
      } else {  // F16, normal range only (the test data stays there)
        const std::uint32_t sign = (u >> 16) & 0x8000u;
        const int e = static_cast<int>((u >> 23) & 0xff) - 127 + 15;
        std::uint32_t m = u & 0x7fffffu;
        std::uint32_t h;
        if (e <= 0) {
          h = sign;  // the test data has no values below 2^-14
        } else {
          h = (static_cast<std::uint32_t>(e) << 10) | (m >> 13);
          const std::uint32_t rest = m & 0x1fffu;
          if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
          h |= sign;
        }
        put(o, h, 2);
      }
    }
    return o;
  }
  std::vector<unsigned char> bytes() const {
    std::vector<unsigned char> o = {'G', 'G', 'U', 'F'};
    put(o, 3, 4);
    put(o, tensors.size(), 8);
    put(o, n_kv, 8);
    o.insert(o.end(), kv.begin(), kv.end());
    std::uint64_t off = 0;
    for (const T& t : tensors) {
      put_str(o, t.name);
      put(o, t.ne.size(), 4);
      for (auto e : t.ne) put(o, e, 8);
      put(o, t.type, 4);
      put(o, off, 8);
      off = (off + t.data.size() + alignment - 1) / alignment * alignment;
    }
    o.resize((o.size() + alignment - 1) / alignment * alignment, 0);
    for (const T& t : tensors) {
      o.insert(o.end(), t.data.begin(), t.data.end());
      o.resize((o.size() + alignment - 1) / alignment * alignment, 0);
    }
    return o;
  }
  void write(const std::string& path) const {
    const std::vector<unsigned char> b = bytes();
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    if (!f) throw std::runtime_error(path + ": cannot write");
  }
};

}  // namespace gguf_layout
